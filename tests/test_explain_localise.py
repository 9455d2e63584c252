"""Localisation scores on hand-made heatmaps and boxes whose answers are known."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cnnlab.explain.localise import (
    border_area,
    border_width,
    box_mask,
    centre_map,
    distance_to_boxes,
    format_table,
    mass_in_boxes,
    on_border,
    peak,
    pointing_hit,
    scale_boxes,
    score_maps,
)


def test_box_mask_uses_one_based_inclusive_voc_pixels() -> None:
    m = box_mask([(1, 1, 200, 200)], (200, 200))
    assert m.all()  # (1, 1, W, H) is the whole image
    m = box_mask([(3, 2, 5, 4)], (6, 8))  # columns 2..4, rows 1..3 (0-based)
    want = np.zeros((6, 8), bool)
    want[1:4, 2:5] = True
    np.testing.assert_array_equal(m, want)
    assert m.sum() == 9
    # overlapping boxes count their pixels once; boxes beyond the image are clipped
    m = box_mask([(1, 1, 2, 2), (2, 2, 3, 3), (7, 5, 20, 20)], (6, 8))
    assert m.sum() == 4 + 4 - 1 + 2 * 2
    assert not box_mask([], (3, 3)).any()


def test_pointing_game_hits_misses_and_tolerance() -> None:
    heat = np.zeros((10, 10))
    heat[4, 7] = 1.0  # row 4, column 7 -> VOC pixel (x=8, y=5)
    assert peak(heat) == (4, 7)
    assert pointing_hit(heat, [(8, 5, 8, 5)])  # a one-pixel box exactly there
    assert pointing_hit(heat, [(1, 1, 2, 2), (6, 3, 9, 6)])  # any box counts
    assert not pointing_hit(heat, [(1, 1, 7, 10)])  # column 7 is VOC x=8: just outside
    assert distance_to_boxes((4, 7), [(1, 1, 7, 10)]) == 1.0
    assert pointing_hit(heat, [(1, 1, 7, 10)], tolerance=1.0)
    # box columns 0..4, rows 0..1: 3 columns and 3 rows away from (4, 7)
    assert distance_to_boxes((4, 7), [(1, 1, 5, 2)]) == pytest.approx(np.hypot(3, 3))
    assert not pointing_hit(heat, [(1, 1, 5, 2)], tolerance=4.2)
    assert pointing_hit(heat, [(1, 1, 5, 2)], tolerance=4.3)
    assert not pointing_hit(np.zeros((10, 10)), [(1, 1, 10, 10)])  # an empty map points nowhere
    assert not pointing_hit(heat, [])
    ties = np.ones((3, 3))
    assert peak(ties) == (1, 1)  # the tied maximum nearest the ties' centroid
    plateau = np.zeros((8, 8))
    plateau[0:4, 5] = 1.0  # an edge cell upsampled: a 4-pixel plateau along the border
    assert peak(plateau) == (1, 5)  # its centre (1.5, 5); the first of the two nearest
    two = np.zeros((5, 5))
    two[0, 0] = two[4, 4] = 1.0  # apart: one of the maxima, never the empty middle
    assert peak(two) == (0, 0)


def test_mass_in_boxes_is_the_share_inside() -> None:
    heat = np.arange(16, dtype=float).reshape(4, 4)  # total 120
    inside = heat[1:3, 0:2].sum()  # VOC box (1, 2, 2, 3): rows 1..2, columns 0..1
    assert mass_in_boxes(heat, [(1, 2, 2, 3)]) == pytest.approx(inside / 120)
    assert inside == 4 + 5 + 8 + 9
    assert mass_in_boxes(heat, [(1, 1, 4, 4)]) == 1.0
    assert mass_in_boxes(np.zeros((4, 4)), [(1, 1, 4, 4)]) == 0.0
    uniform = np.full((20, 10), 0.3)
    assert mass_in_boxes(uniform, [(1, 1, 5, 4)]) == pytest.approx(20 / 200)  # area fraction


def test_scale_boxes_for_resized_inputs() -> None:
    # 200x200 -> 100x100: pixel edges [0, 200] -> [0, 100]
    assert scale_boxes([(1, 1, 200, 200)], (200, 200), (100, 100)) == [(1, 1, 100, 100)]
    assert scale_boxes([(51, 101, 150, 200)], (200, 200), (100, 100)) == [(26, 51, 75, 100)]
    # anisotropic: H 200 -> 50, W 100 -> 300
    assert scale_boxes([(11, 21, 20, 40)], (200, 100), (50, 300)) == [(31, 6, 60, 10)]
    # the scaled box covers the same fraction of the image (exact when sizes divide)
    box = (41, 61, 120, 160)
    frac = box_mask([box], (200, 200)).mean()
    small = scale_boxes([box], (200, 200), (50, 50))
    assert box_mask(small, (50, 50)).mean() == pytest.approx(frac)
    assert scale_boxes([(5, 5, 5, 5)], (200, 200), (20, 20))[0][2:] >= (1, 1)  # never empty


def test_centre_map_peaks_at_the_centre() -> None:
    c = centre_map((7, 9))
    assert peak(c) == (3, 4) and c.max() == 1.0 and c.min() == 0.0
    assert peak(centre_map((200, 200))) == (100, 100)


def test_border_band() -> None:
    assert border_width((200, 200)) == 8 and border_width((28, 28)) == 1
    assert border_width((10, 300)) == 1  # the shorter side decides
    assert on_border((7, 100), (200, 200)) and not on_border((8, 100), (200, 200))
    assert on_border((100, 192), (200, 200)) and not on_border((100, 191), (200, 200))
    assert border_area((200, 200)) == pytest.approx(1 - 184**2 / 200**2)
    assert border_area((2, 2)) == 1.0


def test_score_maps_per_class_with_known_answers() -> None:
    h = np.zeros((4, 10, 10))
    h[0, 1, 1] = 1.0  # class a: hit, all mass in its box
    # class a: two maxima as far from their centroid; the first, (0, 1), is outside -> miss
    h[1, 8, 8], h[1, 0, 1] = 1.0, 1.0  # mass 0.5
    h[2] = 0.0  # class b: empty map -> miss, mass 0
    h[3, 5, 5] = 2.0  # class b: hit
    h[3, 0, 0] = 2.0 - 1e-9  # almost equal, outside: mass 2 / (4 - 1e-9)
    boxes = [[(1, 1, 3, 3)], [(8, 8, 10, 10)], [(1, 1, 10, 10)], [(5, 5, 7, 7)]]
    labels, predicted = [0, 0, 1, 1], [0, 1, 1, 1]
    r = score_maps(h, boxes, labels, predicted, ["a", "b", "c"])
    a, b, c = r["per_class"]["a"], r["per_class"]["b"], r["per_class"]["c"]
    assert (a["n"], a["correct"], a["pointing"], a["empty_maps"]) == (2, 1, 0.5, 0)
    assert a["mass_in_boxes"] == pytest.approx((1.0 + 0.5) / 2)
    assert (b["n"], b["correct"], b["pointing"], b["empty_maps"]) == (2, 2, 0.5, 1)
    assert b["mass_in_boxes"] == pytest.approx((0.0 + 2 / (4 - 1e-9)) / 2)
    assert c["n"] == 0 and c["pointing"] is None
    # baselines: the centre pixel (5, 5) lies only in image 2's and image 3's boxes
    assert a["baseline"]["pointing_centre"] == 0.0
    assert b["baseline"]["pointing_centre"] == 1.0
    assert a["baseline"]["mass_uniform"] == pytest.approx((9 + 9) / 100 / 2)
    assert b["baseline"]["mass_uniform"] == pytest.approx((1.0 + 0.09) / 2)
    assert r["all"]["n"] == 4 and r["all"]["pointing"] == 0.5
    # maxima on the 1-px border: image 1's (0, 1) only; an empty map has no maximum
    assert a["peak_on_border"] == 0.5 and b["peak_on_border"] == 0.0
    assert r["macro"]["peak_on_border"] == 0.25
    assert r["macro"]["pointing"] == 0.5  # classes without images do not count
    assert r["macro"]["mass_in_boxes"] == pytest.approx(
        (a["mass_in_boxes"] + b["mass_in_boxes"]) / 2
    )
    json.dumps(r)  # plain JSON types
    with pytest.raises(ValueError, match="same length"):
        score_maps(h, boxes[:3], labels, predicted, ["a", "b"])


def test_format_table_lists_every_scored_class() -> None:
    h = np.zeros((2, 4, 4))
    h[:, 0, 0] = 1
    r = score_maps(h, [[(1, 1, 2, 2)], [(3, 3, 4, 4)]], [0, 1], [0, 0], ["crazing", "scratches"])
    r.update({"layer": "features.2", "target": "true", "split": "test", "n": 2})
    r.update({"border_px": 1, "border_area": border_area((4, 4))})
    r["split_source"] = "the run's split.json"
    text = format_table(r)
    assert "crazing" in text and "scratches" in text and "class mean" in text
    assert "100.0%" in text and "0.0%" in text
    assert "outer 1 px of the image (75.0% of its area)" in text
