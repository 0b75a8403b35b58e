"""promptseg.eval.vos: DAVIS region J and boundary F, checked on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from promptseg.eval import vos


def _square(top, left, side=20, shape=(100, 100)):
    m = np.zeros(shape, bool)
    m[top : top + side, left : left + side] = True
    return m


def test_identical_disjoint_and_empty_conventions():
    a = _square(20, 20)
    assert vos.region_jaccard(a, a) == 1.0 and vos.boundary_f(a, a) == 1.0
    b = _square(60, 60)
    assert vos.region_jaccard(a, b) == 0.0 and vos.boundary_f(a, b) == 0.0
    empty = np.zeros_like(a)
    assert vos.region_jaccard(empty, empty) == 1.0 and vos.boundary_f(empty, empty) == 1.0  # both empty
    assert vos.region_jaccard(empty, a) == 0.0 and vos.boundary_f(empty, a) == 0.0
    assert vos.region_jaccard(a, empty) == 0.0 and vos.boundary_f(a, empty) == 0.0


def test_boundary_map_is_the_davis_ring():
    # seg2bmap marks a ring one pixel outside the top/left edges and on the bottom/right rows: a 20×20
    # square at rows/cols 20..39 → the border of rows/cols 19..39, 4 × 20 = 80 pixels
    b = vos.boundary_map(_square(20, 20))
    ring = np.zeros_like(b)
    ring[19:40, 19:40] = True
    ring[20:39, 20:39] = False
    np.testing.assert_array_equal(b, ring)
    assert b.sum() == 80


def test_tolerance_is_0008_of_the_diagonal_rounded_up():
    assert vos.boundary_tolerance((100, 100)) == 2  # ceil(0.008 · 141.4) = ceil(1.13)
    assert vos.boundary_tolerance((480, 854)) == 8  # DAVIS frames: ceil(7.84)
    assert vos.boundary_tolerance((100, 100), bound_th=3) == 3  # ≥ 1: pixels


def test_shifted_square_known_values():
    gt = _square(20, 20)
    # shift by 1 px (within the 2 px tolerance): J = 20·19 / (20·21), every boundary pixel matched
    one = _square(20, 21)
    assert vos.region_jaccard(one, gt) == pytest.approx(380 / 420)
    assert vos.boundary_f(one, gt) == 1.0
    # shift by 10 px: J = 20·10 / (20·30). Of the 80 ring pixels of each, 30 lie within 2 px of the other
    # ring: 13 on the top row (columns up to 2 past the other's right end), 13 on the bottom row and
    # 2 + 2 at the ends of the inner vertical edge → precision = recall = F = 30/80
    ten = _square(20, 30)
    assert vos.region_jaccard(ten, gt) == pytest.approx(1 / 3)
    assert vos.boundary_f(ten, gt) == pytest.approx(30 / 80)
    # shift by 3 px vertically, tolerance 3 px given in pixels: all matched
    assert vos.boundary_f(_square(23, 20), gt, bound_th=3) == 1.0


def _brute_f(pred, gt, radius):
    pb, gb = vos.boundary_map(pred), vos.boundary_map(gt)
    pp, gp = np.argwhere(pb), np.argwhere(gb)
    if len(pp) == 0 and len(gp) == 0:
        return 1.0
    if len(pp) == 0 or len(gp) == 0:
        return 0.0
    d = np.sqrt(((pp[:, None, :] - gp[None, :, :]) ** 2).sum(-1))
    precision = float((d.min(axis=1) <= radius).mean())
    recall = float((d.min(axis=0) <= radius).mean())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def test_boundary_f_matches_brute_force_and_numpy_dilation_matches_opencv():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:60, 0:80]
    for i in range(4):
        cy, cx, r = rng.uniform(15, 45), rng.uniform(15, 65), rng.uniform(6, 14)
        gt = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        pred = (yy - cy - rng.normal(0, 2)) ** 2 / 1.2 + (xx - cx - rng.normal(0, 3)) ** 2 <= (r * 1.1) ** 2
        radius = vos.boundary_tolerance(gt.shape)
        assert vos.boundary_f(pred, gt) == pytest.approx(_brute_f(pred, gt, radius))
        b = vos.boundary_map(pred)
        for rad in (1, 2, 5):
            np.testing.assert_array_equal(vos.dilate(b, rad, use_cv2=False), vos.dilate(b, rad, use_cv2=True))


def test_statistics_mean_recall_decay():
    s = vos.statistics([1.0, 1.0, 0.0, 0.0])
    assert s["mean"] == 0.5 and s["recall"] == 0.5 and s["decay"] == 1.0
    s = vos.statistics([0.8] * 10)
    assert s["mean"] == pytest.approx(0.8) and s["recall"] == 1.0 and s["decay"] == pytest.approx(0.0)
    assert math.isnan(vos.statistics([])["mean"])


def test_evaluate_sequence_and_summary():
    gt, pred = [], []
    for t in range(4):
        g = np.zeros((100, 100), np.int32)
        g[_square(10, 10 + t)] = 1
        g[_square(60, 60)] = 2
        p = g.copy()
        if t == 2:
            p[p == 2] = 0  # object 2 lost in frame 2
        gt.append(g)
        pred.append(p)
    res = vos.evaluate_sequence(pred, gt)  # frames 1 and 2 (first and last excluded)
    assert res["frames"] == [1, 2]
    assert res["objects"][1]["J"] == [1.0, 1.0]
    assert res["objects"][2]["J"] == [1.0, 0.0] and res["objects"][2]["F"] == [1.0, 0.0]
    assert res["J_mean"] == pytest.approx(0.75) and res["JF_mean"] == pytest.approx(0.75)
    all_frames = vos.evaluate_sequence(pred, gt, exclude_first_last=False)
    assert all_frames["frames"] == [0, 1, 2, 3] and all_frames["objects"][2]["J_mean"] == pytest.approx(0.75)
    summary = vos.summarize({"a": res, "b": vos.evaluate_sequence(gt, gt)})
    assert summary["num_objects"] == 4
    assert summary["J_mean"] == pytest.approx((1 + 0.5 + 1 + 1) / 4)
    assert summary["JF_mean"] == pytest.approx((summary["J_mean"] + summary["F_mean"]) / 2)
    assert summary["sequences"]["b"]["JF_mean"] == 1.0


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="same shape"):
        vos.region_jaccard(np.zeros((3, 3)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="pred must be a 2-D"):
        vos.boundary_f(np.zeros((3, 3, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="pred has 1 frames but gt has 2"):
        vos.evaluate_sequence([np.zeros((3, 3))], [np.zeros((3, 3))] * 2)
    with pytest.raises(ValueError, match="frame 0"):
        vos.evaluate_sequence([np.zeros((3, 3))], [np.zeros((4, 3))])
