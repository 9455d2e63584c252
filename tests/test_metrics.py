"""Metrics against scikit-learn's definitions, on random and hand-made labels."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, precision_recall_fscore_support
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from cnnlab.metrics import classification_report, confusion_matrix


@st.composite
def label_pairs(draw):
    k = draw(st.integers(1, 6))
    n = draw(st.integers(1, 60))
    y_true = draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n))
    y_pred = draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n))
    return k, np.array(y_true), np.array(y_pred)


# k = 1 is a legitimate case; sklearn's reference functions warn about it (labels are passed)
@pytest.mark.filterwarnings("ignore:A single label was found:UserWarning")
@settings(max_examples=150, deadline=None)
@given(label_pairs())
def test_report_matches_sklearn(case) -> None:
    k, y_true, y_pred = case
    names = [f"c{i}" for i in range(k)]
    r = classification_report(y_true, y_pred, names)
    labels = list(range(k))
    p, rc, f, s = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    assert r["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert r["n"] == len(y_true)
    np.testing.assert_array_equal(
        np.array(r["confusion_matrix"]), sk_confusion_matrix(y_true, y_pred, labels=labels)
    )
    for i, name in enumerate(names):
        m = r["per_class"][name]
        assert m["precision"] == pytest.approx(p[i])
        assert m["recall"] == pytest.approx(rc[i])
        assert m["f1"] == pytest.approx(f[i])
        assert m["support"] == s[i]
    mp, mr, mf, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="macro", zero_division=0
    )
    assert r["macro_avg"]["precision"] == pytest.approx(mp)
    assert r["macro_avg"]["recall"] == pytest.approx(mr)
    assert r["macro_avg"]["f1"] == pytest.approx(mf)


def test_known_answer() -> None:
    # true 0,0,0,1,1,2 ; pred 0,0,1,1,2,2
    cm = confusion_matrix(np.array([0, 0, 0, 1, 1, 2]), np.array([0, 0, 1, 1, 2, 2]), 3)
    assert cm.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    r = classification_report([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 2, 2], ["a", "b", "c"])
    assert r["accuracy"] == pytest.approx(4 / 6)
    assert r["per_class"]["a"] == {"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3}
    assert r["per_class"]["c"]["precision"] == 0.5


def test_never_predicted_class_has_zero_precision() -> None:
    r = classification_report([0, 1], [0, 0], ["a", "b"])
    assert r["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
