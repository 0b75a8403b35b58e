"""Pure helpers of the automatic mask generator (``promptseg.amg.helpers``), each on its own.

Expected values come from hand-worked examples and brute-force implementations written here; the
comparisons with the reference ``segment_anything`` (and torchvision) live in
``tests/parity/test_amg_parity.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from promptseg.amg import helpers as H
from promptseg.transforms import get_preprocess_shape, postprocess_masks

# ---------------------------------------------------------------------------------------------------
# Point grids and crops


def test_point_grid_is_cell_centres_x_fastest():
    g = H.build_point_grid(4)
    assert g.shape == (16, 2) and g.dtype == np.float64
    np.testing.assert_allclose(g[:4, 0], [0.125, 0.375, 0.625, 0.875])
    np.testing.assert_allclose(g[:4, 1], 0.125)
    np.testing.assert_allclose(g[4:8, 1], 0.375)
    np.testing.assert_allclose(H.build_point_grid(1), [[0.5, 0.5]])
    with pytest.raises(ValueError):
        H.build_point_grid(0)


def test_layer_point_grids_shrink_per_layer():
    grids = H.build_all_layer_point_grids(32, 2, 2)  # §B: 32×32, 16×16, 8×8
    assert [len(g) for g in grids] == [1024, 256, 64]
    assert [len(g) for g in H.build_all_layer_point_grids(10, 2, 3)] == [100, 9, 1]


def test_crop_boxes_hand_worked():
    boxes, layers = H.generate_crop_boxes((100, 200), 1, 0.5)
    # overlap = int(0.5 · 100 · 2/2) = 50; crop_w = ceil((50 + 200)/2) = 125, crop_h = ceil((50 + 100)/2) = 75
    assert boxes == [[0, 0, 200, 100], [0, 0, 125, 75], [0, 25, 125, 100], [75, 0, 200, 75], [75, 25, 200, 100]]
    assert layers == [0, 1, 1, 1, 1]


@pytest.mark.parametrize("size", [(1500, 2250), (333, 500), (640, 480), (97, 1001)])
def test_crop_boxes_cover_the_image_with_overlap(size):
    h, w = size
    boxes, layers = H.generate_crop_boxes(size, 2, 512 / 1500)
    assert layers == [0] + [1] * 4 + [2] * 16  # §B: 2×2 and 4×4 windows
    for layer, n in ((1, 2), (2, 4)):
        cover = np.zeros(size, np.int32)
        layer_boxes = [b for b, l in zip(boxes, layers) if l == layer]
        for x0, y0, x1, y1 in layer_boxes:
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
            cover[y0:y1, x0:x1] += 1
        assert cover.min() >= 1  # every pixel is in some crop of every layer
        assert cover.max() >= 2  # and neighbouring crops overlap
        xs = sorted({b[0] for b in layer_boxes})
        assert len(xs) == n and xs[0] == 0


# ---------------------------------------------------------------------------------------------------
# Coordinates


def test_uncrop_boxes_points_masks():
    crop = [10, 20, 40, 50]
    boxes = torch.tensor([[0, 0, 5, 6], [1, 2, 3, 4]])
    assert H.uncrop_boxes_xyxy(boxes, crop).tolist() == [[10, 20, 15, 26], [11, 22, 13, 24]]
    pts = torch.tensor([[0.5, 1.5]], dtype=torch.float64)
    assert H.uncrop_points(pts, crop).tolist() == [[10.5, 21.5]]
    masks = torch.ones(2, 30, 30, dtype=torch.bool)
    full = H.uncrop_masks(masks, crop, 60, 70)
    assert full.shape == (2, 60, 70) and int(full[0].sum()) == 900
    assert full[0, 20:50, 10:40].all() and not full[0, :20].any() and not full[0, :, 40:].any()
    assert H.uncrop_masks(masks, [0, 0, 30, 30], 30, 30) is masks


def test_box_near_inner_crop_edge():
    crop = [100, 0, 300, 200]  # right part of a 300×200 image: left edge inner, others image edges
    orig = [0, 0, 300, 200]
    boxes = torch.tensor(
        [
            [0, 50, 50, 100],  # x0 = 100 in the image: on the inner edge
            [21, 50, 60, 100],  # 21 px from it: kept
            [20, 50, 60, 100],  # 20 px: near (atol is inclusive)
            [50, 0, 199, 199],  # touches the image's top/right/bottom edges only: kept
        ]
    )
    assert H.is_box_near_crop_edge(boxes, crop, orig).tolist() == [True, False, True, False]
    whole = H.is_box_near_crop_edge(boxes, orig, orig)
    assert not whole.any()  # the image itself has no inner edge


def test_box_xyxy_to_xywh_copies():
    box = torch.tensor([3, 4, 10, 20])
    assert H.box_xyxy_to_xywh(box).tolist() == [3, 4, 7, 16] and box.tolist() == [3, 4, 10, 20]
    assert H.box_xyxy_to_xywh(np.array([1, 2, 3, 5])).tolist() == [1, 2, 2, 3]


# ---------------------------------------------------------------------------------------------------
# Stability


def test_stability_score_hand_worked():
    logits = torch.full((1, 10, 10), -5.0)
    logits[0, :4, :5] = 2.0  # 20 px above +1
    logits[0, 4:6, :5] = 0.5  # 10 px in (−1, +1]
    logits[0, 6, :5] = 1.0  # 5 px exactly +1: not above it
    score = H.calculate_stability_score(logits, 0.0, 1.0)
    assert score.dtype == torch.float32
    assert score.item() == pytest.approx(20 / 35)
    assert H.calculate_stability_score(logits, 0.0, 0.0).item() == 1.0
    assert torch.isnan(H.calculate_stability_score(torch.full((1, 4, 4), -3.0), 0.0, 1.0)).all()


def test_stability_score_counts_are_exact_at_any_size():
    # 40 000 px per row would overflow int16 row sums; counts are int64
    logits = torch.zeros(1, 3, 40000)
    logits[0, 0] = 2.0
    logits[0, 1, :10000] = 2.0
    logits[0, 1, 10000:] = 0.5
    score = H.calculate_stability_score(logits, 0.0, 1.0)
    assert score.item() == pytest.approx(50000 / 120000)  # the zero row is above −1


# ---------------------------------------------------------------------------------------------------
# NMS


def brute_force_nms(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list:
    """Textbook greedy NMS, one pair at a time. The IoU is a float32 quotient compared with the float64
    threshold (torchvision's kernel): an IoU of exactly 3/10 rounds to 0.3000000119 > 0.3."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep = []
    for i in order:
        ok = True
        for j in keep:
            bi, bj = boxes[i], boxes[j]
            iw = max(0.0, min(bi[2], bj[2]) - max(bi[0], bj[0]))
            ih = max(0.0, min(bi[3], bj[3]) - max(bi[1], bj[1]))
            inter = iw * ih  # integers: exact
            union = (bi[2] - bi[0]) * (bi[3] - bi[1]) + (bj[2] - bj[0]) * (bj[3] - bj[1]) - inter
            if union > 0 and float(np.float32(inter) / np.float32(union)) > thr:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


def random_boxes(n: int, seed: int, ties: bool = True):
    rng = np.random.default_rng(seed)
    xy = rng.integers(0, 60, size=(n, 2))
    wh = rng.integers(0, 30, size=(n, 2))  # zero-width boxes included
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float64)
    scores = rng.integers(0, 5, size=n).astype(np.float64) if ties else rng.random(n)
    return boxes, scores


@pytest.mark.parametrize("thr", [0.0, 0.3, 0.7, 0.95])
@pytest.mark.parametrize("ties", [True, False])
def test_nms_equals_brute_force(thr, ties):
    boxes, scores = random_boxes(300, seed=int(thr * 100) + ties, ties=ties)
    expected = brute_force_nms(boxes, scores, thr)
    got = H.nms(torch.tensor(boxes, dtype=torch.float32), torch.tensor(scores, dtype=torch.float32), thr, block=37)
    assert got.tolist() == expected


def test_nms_edge_cases():
    empty = H.nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert empty.dtype == torch.int64 and empty.numel() == 0
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 0, 0], [0, 0, 0, 0]])
    scores = torch.tensor([0.5, 0.9, 0.3, 0.3])
    assert H.nms(boxes, scores, 0.5).tolist() == [1, 2, 3]  # identical boxes suppressed; empty ones never
    assert H.nms(boxes, scores, 1.0).tolist() == [1, 0, 2, 3]  # IoU is never above 1
    # IoU exactly at the threshold is kept (strictly greater suppresses)
    half = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5]])
    assert H.nms(half, torch.tensor([1.0, 0.5]), 0.5).tolist() == [0, 1]


def test_batched_nms_is_per_category():
    boxes, scores = random_boxes(200, seed=3)
    cats = np.random.default_rng(4).integers(0, 3, size=200)
    got = H.batched_nms(torch.tensor(boxes).float(), torch.tensor(scores).float(), torch.tensor(cats), 0.5)
    expected = set()
    for c in range(3):
        idx = np.flatnonzero(cats == c)
        expected |= {int(idx[i]) for i in brute_force_nms(boxes[idx], scores[idx], 0.5)}
    assert set(got.tolist()) == expected
    assert (np.diff(scores[got.numpy()]) <= 0).all()  # by decreasing score


def test_batched_nms_large_inputs_sorted_by_score():
    boxes, scores = random_boxes(1500, seed=5)  # > 1000 boxes: torchvision's re-sorted layout
    got = H.batched_nms(torch.tensor(boxes).float(), torch.tensor(scores).float(), torch.zeros(1500), 0.6)
    assert set(got.tolist()) == set(brute_force_nms(boxes, scores, 0.6))
    assert (np.diff(scores[got.numpy()]) <= 0).all()


def test_batched_mask_to_box_brute_force():
    rng = np.random.default_rng(0)
    masks = np.zeros((2, 3, 17, 23), bool)
    for idx in np.ndindex(2, 3):
        y0, x0 = rng.integers(0, 10, 2)
        masks[idx][y0 : y0 + rng.integers(1, 7), x0 : x0 + rng.integers(1, 9)] = True
        masks[idx] &= rng.random((17, 23)) < 0.7
    masks[1, 2] = False  # empty
    got = H.batched_mask_to_box(torch.from_numpy(masks))
    assert got.shape == (2, 3, 4) and got.dtype == torch.int64
    for idx in np.ndindex(2, 3):
        ys, xs = np.nonzero(masks[idx])
        expected = [xs.min(), ys.min(), xs.max(), ys.max()] if ys.size else [0, 0, 0, 0]
        assert got[idx].tolist() == expected
    assert H.batched_mask_to_box(torch.zeros(0, 5, 5, dtype=torch.bool)).shape == (0, 4)


# ---------------------------------------------------------------------------------------------------
# RLE


def rle_masks():
    rng = np.random.default_rng(1)
    out = [np.zeros((7, 5), bool), np.ones((7, 5), bool), rng.random((13, 11)) < 0.5, rng.random((1, 9)) < 0.5]
    m = np.zeros((6, 4), bool)
    m[0, 0] = m[-1, -1] = True  # first and last pixel
    out.append(m)
    m = np.zeros((6, 4), bool)
    m[-1, 1] = m[0, 2] = True  # a run crossing from the bottom of one column to the top of the next
    out.append(m)
    return out


@pytest.mark.parametrize("index", range(6))
def test_rle_round_trip_and_area(index):
    mask = rle_masks()[index]
    rle = H.mask_to_rle(mask)
    assert rle["size"] == list(mask.shape)
    assert sum(rle["counts"]) == mask.size
    assert all(isinstance(c, int) for c in rle["counts"])
    assert rle["counts"][0] == (0 if mask.flat[0] else rle["counts"][0])
    np.testing.assert_array_equal(H.rle_to_mask(rle), mask)
    assert H.area_from_rle(rle) == int(mask.sum())
    # column-major runs, starting with zeros
    flat = mask.T.ravel()
    runs = np.repeat(np.arange(len(rle["counts"])) % 2, rle["counts"]).astype(bool)
    np.testing.assert_array_equal(runs, flat)


def test_mask_to_rle_pytorch_batches():
    masks = np.stack([rle_masks()[2], ~rle_masks()[2]])
    rles = H.mask_to_rle_pytorch(torch.from_numpy(masks))
    assert [H.rle_to_mask(r).tolist() for r in rles] == [m.tolist() for m in masks]


def test_rle_from_box_bits_equals_full_encoding():
    rng = np.random.default_rng(2)
    size = (9, 12)
    cases = [((0, 0), (9, 12)), ((0, 0), (3, 4)), ((5, 3), (6, 7)), ((11, 8), (1, 1)), ((2, 0), (9, 3))]
    for (x0, y0), (bh, bw) in cases:
        for _ in range(20):
            bits = rng.random((bh, bw)) < 0.5
            if rng.random() < 0.3:
                bits[-1, :] = bits[0, :] = True  # runs crossing column boundaries
            full = np.zeros(size, bool)
            full[y0 : y0 + bh, x0 : x0 + bw] = bits
            assert H.rle_from_box_bits(bits, (x0, y0), size) == H.mask_to_rle(full)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' decode under numpy 2
def test_coco_rle_matches_pycocotools():
    mask_utils = pytest.importorskip("pycocotools.mask")
    for mask in rle_masks():
        rle = H.coco_encode_rle(H.mask_to_rle(mask))
        assert isinstance(rle["counts"], str) and rle["size"] == list(mask.shape)
        np.testing.assert_array_equal(mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}), mask)
        assert H.coco_encode_mask(mask) == rle


def test_coco_encode_mask_takes_any_nonzero_value_as_foreground():
    """As ``mask_to_rle``: a float 0.5 or an integer 256 is foreground (a uint8 cast made them 0)."""
    pytest.importorskip("pycocotools.mask")
    for mask in (np.array([[0.0, 0.5], [1.0, 0.0]]), np.array([[0, 256], [1, 0]]), np.array([[0, 255], [255, 0]], np.uint8)):
        assert H.coco_encode_mask(mask) == H.coco_encode_rle(H.mask_to_rle(mask))


# ---------------------------------------------------------------------------------------------------
# Small regions (§B: components and holes under 100 px)


def test_remove_small_regions_islands_and_holes():
    pytest.importorskip("cv2")
    mask = np.zeros((40, 40), bool)
    mask[5:30, 5:30] = True  # 625 px object
    mask[12:14, 12:14] = False  # 4 px hole
    mask[35:37, 35:38] = True  # 6 px island
    filled, changed = H.remove_small_regions(mask, 10, "holes")
    assert changed and filled[12:14, 12:14].all() and filled[35:37, 35:38].all()
    cleaned, changed = H.remove_small_regions(filled, 10, "islands")
    assert changed and not cleaned[35:37, 35:38].any() and cleaned[5:30, 5:30].all()
    same, changed = H.remove_small_regions(cleaned, 10, "islands")
    assert not changed and np.array_equal(same, cleaned)
    same, changed = H.remove_small_regions(cleaned, 10, "holes")
    assert not changed
    # every component small: keep the largest; 8-connectivity joins diagonal pixels
    tiny = np.zeros((10, 10), bool)
    tiny[0, 0] = tiny[1, 1] = True  # one diagonal component of 2
    tiny[5:8, 5] = True  # 3 px
    kept, changed = H.remove_small_regions(tiny, 100, "islands")
    assert changed and kept.sum() == 3 and kept[5:8, 5].all()
    # holes are any small components of the inverted mask, also those touching the border (as the reference)
    notch = np.ones((5, 5), bool)
    notch[0, 0] = False
    filled, changed = H.remove_small_regions(notch, 100, "holes")
    assert changed and filled.all()
    with pytest.raises(ValueError):
        H.remove_small_regions(mask, 10, "both")


# ---------------------------------------------------------------------------------------------------
# Low-resolution geometry


SIZES = [  # (img_size, low, original size): identity second resize, upscaling, downscaling, elongated
    (128, 32, (96, 128)),
    (128, 32, (150, 200)),
    (128, 32, (60, 90)),
    (128, 32, (513, 77)),
    (1024, 256, (768, 1024)),
    (1024, 256, (2000, 1333)),
]


def smooth_logits(m: int, low: int, seed: int, scale: float = 4.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(m, 1, max(2, low // 6), max(2, low // 6), generator=gen)
    return F.interpolate(coarse, (low, low), mode="bicubic", align_corners=False)[:, 0] * scale


@pytest.mark.parametrize("img_size,low,size", SIZES)
def test_axis_operators_reproduce_the_upsampling(img_size, low, size):
    input_size = get_preprocess_shape(*size, img_size)
    geo = H.LowResGeometry.build((low, low), img_size, input_size, size)
    for axis, n in ((geo.rows, size[0]), (geo.cols, size[1])):
        assert axis.output_len == n and axis.taps <= 3
        torch.testing.assert_close(axis.weights.sum(1), torch.ones(n), atol=1e-6, rtol=0)
        assert (axis.weights >= 0).all()
        assert int(axis.group_len.sum()) == n and axis.group_start[0] == 0
        assert (axis.group_last - axis.group_first < axis.taps).all()
        assert axis.n_low <= low
    logits = torch.randn(3, low, low)
    a, b = geo.dense()
    full = a @ logits[:, : geo.rows.n_low, : geo.cols.n_low] @ b.T
    ref = postprocess_masks(logits[:, None], input_size, size, img_size)[:, 0]
    torch.testing.assert_close(full, ref, atol=2e-6, rtol=0)
    torch.testing.assert_close(H.render_logits(logits, geo), ref, atol=0, rtol=0)


@pytest.mark.parametrize("img_size,low,size", SIZES[:4] + SIZES[5:])
@pytest.mark.parametrize("kind", ["smooth", "noise"])
def test_low_res_count_bounds_bracket_exact_counts(img_size, low, size, kind):
    input_size = get_preprocess_shape(*size, img_size)
    geo = H.LowResGeometry.build((low, low), img_size, input_size, size)
    logits = smooth_logits(4, low, seed=7) if kind == "smooth" else torch.randn(4, low, low, generator=torch.Generator().manual_seed(8))
    thresholds = [1.0, 0.0, -1.0]
    certain, uncertain = H.low_res_count_bounds(logits, geo, thresholds)
    full = H.render_logits(logits, geo)
    exact = torch.stack([(full > t).flatten(1).sum(1) for t in thresholds], 1)
    assert (certain <= exact).all() and (exact <= certain + uncertain).all()
    if kind == "smooth":  # confident logits: most pixels decided per cell
        assert uncertain.sum() < 0.5 * uncertain.numel() * size[0] * size[1]
    bound = H.stability_upper_bound(logits, geo, 0.0, 1.0)
    stability = H.calculate_stability_score(full, 0.0, 1.0).double()
    assert (bound >= stability - 1e-9).all()


def test_stability_upper_bound_rejects_unstable_masks():
    geo = H.LowResGeometry.build((32, 32), 128, (128, 128), (128, 128))
    ramp = torch.linspace(-3, 3, 32)[None, None, :].expand(1, 32, 32)  # wide soft edge: unstable
    step = torch.where(torch.arange(32) < 16, -20.0, 20.0)[None, None, :].expand(1, 32, 32)  # sharp: stable
    bound = H.stability_upper_bound(torch.cat([ramp, step]), geo, 0.0, 1.0)
    assert bound[0] < 0.8 and bound[1] > 0.95
    assert math.isinf(H.stability_upper_bound(torch.full((1, 32, 32), -5.0), geo, 0.0, 1.0).item())


@pytest.mark.parametrize("img_size,low,size", SIZES[:4])
def test_support_windows_determine_the_mask(img_size, low, size):
    input_size = get_preprocess_shape(*size, img_size)
    geo = H.LowResGeometry.build((low, low), img_size, input_size, size)
    logits = smooth_logits(6, low, seed=3) - 2.0  # a few blobs per mask
    logits[5] = -4.0  # empty mask
    masks = H.render_logits(logits, geo) > 0
    boxes = H.batched_mask_to_box(masks)
    empty = ~masks.flatten(1).any(1)
    windows = H.support_windows(boxes, empty, geo)
    assert windows[5].tolist() == [0, 0, 0, 0]
    for i in torch.nonzero(~empty).flatten().tolist():
        r0, r1, c0, c1 = windows[i].tolist()
        assert 0 <= r0 < r1 <= geo.rows.n_low and 0 <= c0 < c1 <= geo.cols.n_low
        canvas = torch.full((1, low, low), float(logits[i].min()) - 1.0)
        canvas[0, r0:r1, c0:c1] = logits[i, r0:r1, c0:c1]
        np.testing.assert_array_equal((H.render_logits(canvas, geo)[0] > 0).numpy(), masks[i].numpy())
