"""Train / val / test splits: the data's own where it has them, else stratified with a seed."""

from __future__ import annotations

import numpy as np
import torch

from cnnlab.errors import CnnlabError


def stratified_split(
    idx: np.ndarray, labels: np.ndarray, fraction: float, seed: int, notes: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Split `idx` into (rest, carved) with `fraction` of each class carved out (sorted).

    Uses sklearn's `train_test_split(stratify=...)`; when a class is too small to stratify,
    falls back to a plain seeded shuffle split and adds a note.
    """
    from sklearn.model_selection import train_test_split

    if len(idx) < 2:
        raise CnnlabError(f"cannot split {len(idx)} image(s) into two parts")
    try:
        rest, carved = train_test_split(
            idx, test_size=fraction, stratify=labels[idx], random_state=seed
        )
    except ValueError:
        notes.append("a class has too few images to stratify; the split is random, not stratified")
        rest, carved = train_test_split(idx, test_size=fraction, random_state=seed)
    return np.sort(rest), np.sort(carved)


def make_splits(
    labels: np.ndarray,
    own: dict[str, list[int]],
    *,
    seed: int = 0,
    test_split: float = 0.2,
    val_split: float = 0.0,
    notes: list[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Splits "train", "test" (and "val") as int64 index tensors.

    `own` is the data's own split ("train"/"val"/"test" -> indices). Its test split is used
    as is; without one, `test_split` of the train images (stratified) become test. Its val
    split is kept; without one, `val_split` > 0 carves val out of train (stratified).
    """
    notes = notes if notes is not None else []
    if not 0 < test_split < 1:
        raise CnnlabError(f"test split must be between 0 and 1, got {test_split}")
    if not 0 <= val_split < 1:
        raise CnnlabError(f"val split must be in [0, 1), got {val_split}")
    n = len(labels)
    everything = np.arange(n)
    if own and "train" not in own:
        raise CnnlabError(f"the dataset's own splits ({', '.join(own)}) include no train split")
    train = np.asarray(own["train"], dtype=np.int64) if own else everything
    out: dict[str, np.ndarray] = {}
    if "test" in own:
        out["test"] = np.asarray(own["test"], dtype=np.int64)
    else:
        if own:
            notes.append(f"no test split in the data: {test_split:.0%} of train held out as test")
        train, out["test"] = stratified_split(train, labels, test_split, seed, notes)
    if "val" in own:
        out["val"] = np.asarray(own["val"], dtype=np.int64)
        if val_split > 0:
            notes.append("the data has its own val split; --val-split ignored")
    elif val_split > 0:
        train, out["val"] = stratified_split(train, labels, val_split, seed, notes)
    out["train"] = train
    order = [k for k in ("train", "val", "test") if k in out]
    return {k: torch.from_numpy(np.ascontiguousarray(out[k], dtype=np.int64)) for k in order}
