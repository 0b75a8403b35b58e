"""``promptseg.SamAutomaticMaskGenerator`` against ``segment_anything``'s on the same random weights.

Acceptance: on every image and setting, ≥ 99 % of the reference's masks are matched by a promptseg mask
with IoU ≥ 0.95, the mask counts agree within 1 %, and matched records have equal ``bbox``, ``area``,
``point_coords`` and ``crop_box`` (here: all of them; a pixel may legitimately flip where promptseg's
logits differ from the reference's in the 6th decimal, so the test allows 1 % of records to differ by
at most 1 px in the box and 0.5 % in area), and close ``predicted_iou`` / ``stability_score``.

Random weights alone give masks that cover the whole image, so NMS would keep one of them. The
``localized`` models add the same point-centred bump to the decoder logits of *both* implementations
(three radii for the three outputs: subpart, part, whole) and squash the IoU predictions into (0, 1):
masks are then blobs of varied size around their point with a random texture (islands and holes for
the small-region pass), and every filter — predicted IoU, stability, NMS, crop edges — has work to do.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch

segment_anything = pytest.importorskip("segment_anything")
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools, numpy 2

from promptseg import SamAutomaticMaskGenerator  # noqa: E402
from promptseg.amg import generator as generator_module  # noqa: E402
from promptseg.amg import helpers as H  # noqa: E402
from amg_match import assert_same_masks  # noqa: E402  (tests/parity/amg_match.py)

IMAGES = {"square": (120, 120), "landscape": (150, 200), "portrait": (200, 130)}
RADII = (0.12, 0.22, 0.4)  # of img_size, for multimask outputs 1..3


def localize(model: torch.nn.Module, amplitude: float = 6.0, texture: float = 6.0) -> torch.nn.Module:
    """Patch ``model`` (an instance of either implementation) so its masks are blobs around the point."""
    pe, dec = model.prompt_encoder, model.mask_decoder
    pe_forward, dec_forward = pe.forward, dec.forward
    size = model.image_encoder.img_size
    state = {}

    def prompt_forward(points, boxes=None, masks=None, *rest):
        state["xy"] = None if points is None else points[0][:, 0, :].to(torch.float32)
        return pe_forward(points, boxes, masks, *rest)

    def decoder_forward(*args, **kwargs):
        low, iou = dec_forward(*args, **kwargs)
        xy = state["xy"]
        h, w = low.shape[-2:]
        ys = (torch.arange(h, dtype=torch.float32) + 0.5) * (size / h)
        xs = (torch.arange(w, dtype=torch.float32) + 0.5) * (size / w)
        d2 = (xs[None, None, :] - xy[:, 0, None, None]) ** 2 + (ys[None, :, None] - xy[:, 1, None, None]) ** 2
        radii = torch.tensor(RADII, dtype=torch.float32)[: low.shape[1]] * size
        bump = amplitude * (1 - d2[:, None] / radii[None, :, None, None] ** 2)
        return texture * low + bump.clamp(min=-2 * amplitude), torch.sigmoid(8 * iou + 1)

    pe.forward = prompt_forward
    dec.forward = decoder_forward
    return model


@pytest.fixture(scope="module")
def localized(helpers):
    ref, ours = helpers.make_pair(helpers.TINY_CONFIG)
    return localize(ref), localize(ours)


@pytest.fixture(scope="module")
def images(helpers):
    return {name: helpers.make_image(*shape, seed=i + 1) for i, (name, shape) in enumerate(IMAGES.items())}


# ---------------------------------------------------------------------------------------------------
# Comparison


def run_both(pair, image, **options):
    ref_model, our_model = pair
    expected = segment_anything.SamAutomaticMaskGenerator(ref_model, **options).generate(image)
    got = SamAutomaticMaskGenerator(our_model, **options).generate(image)
    return expected, got


FILTERS = dict(points_per_side=16, pred_iou_thresh=0.5, stability_score_thresh=0.6)
SETTINGS = {
    "filters": FILTERS,
    "crops": {**FILTERS, "crop_n_layers": 1},
    "small-regions": {**FILTERS, "min_mask_region_area": 60},
}


def test_plain_random_model_every_mask(tiny_pair, images):
    """Unpatched random weights, filters and NMS off: all 768 masks (16×16 points × 3), same order."""
    options = dict(points_per_side=16, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    expected, got = run_both(tiny_pair, images["landscape"], **options)
    assert len(expected) == 768
    assert_same_masks(expected, got, IMAGES["landscape"], min_count=768)
    assert [r["point_coords"] for r in got] == [r["point_coords"] for r in expected]


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("name", list(IMAGES))
def test_same_masks(localized, images, name, setting):
    expected, got = run_both(localized, images[name], **SETTINGS[setting])
    assert_same_masks(expected, got, IMAGES[name], min_count=24)


@pytest.mark.parametrize("output_mode", ["uncompressed_rle", "coco_rle"])
def test_rle_output_modes(localized, images, output_mode):
    pytest.importorskip("pycocotools")
    options = {**SETTINGS["crops"], "output_mode": output_mode}
    expected, got = run_both(localized, images["portrait"], **options)
    assert_same_masks(expected, got, IMAGES["portrait"], min_count=24)
    by_key = {(tuple(r["point_coords"][0]), tuple(r["bbox"])): r["segmentation"] for r in expected}
    same = sum(by_key.get((tuple(r["point_coords"][0]), tuple(r["bbox"]))) == r["segmentation"] for r in got)
    assert same >= 0.99 * len(expected)
    for r in got:
        seg = r["segmentation"]
        assert seg["size"] == list(IMAGES["portrait"])
        assert isinstance(seg["counts"], list if output_mode == "uncompressed_rle" else str)


def test_small_region_pass_changes_masks(localized, images, monkeypatch):
    """The setting of the parity test above does exercise the islands/holes pass (not a no-op)."""
    calls = []
    original = H.remove_small_regions

    def counting(mask, area, mode):
        out = original(mask, area, mode)
        calls.append(out[1])
        return out

    monkeypatch.setattr(generator_module, "remove_small_regions", counting)
    SamAutomaticMaskGenerator(localized[1], **SETTINGS["small-regions"]).generate(images["landscape"])
    assert any(calls) and len(calls) > 20


# ---------------------------------------------------------------------------------------------------
# promptseg's own paths give the same records


def test_low_res_window_path_equals_bits_path(localized, images, monkeypatch):
    options = {**SETTINGS["crops"], "output_mode": "uncompressed_rle"}
    kept = SamAutomaticMaskGenerator(localized[1], **options).generate(images["landscape"])
    monkeypatch.setattr(generator_module, "_BITS_BUDGET_BYTES", 0)  # keep every mask as a low-res window
    windows = SamAutomaticMaskGenerator(localized[1], **options).generate(images["landscape"])
    assert windows == kept and len(kept) > 24


def test_render_chunks_do_not_change_results(localized, images, monkeypatch):
    options = dict(FILTERS, box_nms_thresh=0.8)
    base = SamAutomaticMaskGenerator(localized[1], **options).generate(images["square"])
    monkeypatch.setattr(generator_module, "_RENDER_CHUNK_BYTES", 4 * 120 * 120)  # one mask at a time
    other = SamAutomaticMaskGenerator(localized[1], **options).generate(images["square"])
    assert len(base) == len(other) > 24
    for a, b in zip(base, other):
        assert {k: v for k, v in a.items() if k != "segmentation"} == {k: v for k, v in b.items() if k != "segmentation"}
        np.testing.assert_array_equal(a["segmentation"], b["segmentation"])


def test_banded_upsampling_of_huge_crops(localized, images, monkeypatch):
    """Crops whose single mask exceeds the float budget are upsampled in bands of rows (matrix products
    with the same resize weights): the same masks, up to float rounding at the threshold."""
    options = dict(SETTINGS["crops"], output_mode="uncompressed_rle")
    base = SamAutomaticMaskGenerator(localized[1], **options).generate(images["landscape"])
    monkeypatch.setattr(generator_module, "_RENDER_CHUNK_BYTES", 4 * 200 * 16)  # 16-row bands
    monkeypatch.setattr(generator_module, "_BITS_BUDGET_BYTES", 2000)  # most masks kept as low-res windows
    banded = SamAutomaticMaskGenerator(localized[1], **options).generate(images["landscape"])
    assert_same_masks(base, banded, IMAGES["landscape"], min_count=24)


def test_points_per_batch_does_not_change_results(localized, images):
    """Only the decoder's float rounding depends on the batch (matrix-product blocking): same masks."""
    options = dict(FILTERS, box_nms_thresh=0.8)
    base = SamAutomaticMaskGenerator(localized[1], **options, points_per_batch=64).generate(images["square"])
    other = SamAutomaticMaskGenerator(localized[1], **options, points_per_batch=7).generate(images["square"])
    assert_same_masks(base, other, IMAGES["square"], min_count=24)


def test_stability_pre_rejection_drops_only_unstable_masks(localized, images):
    """With a stability threshold, the low-res bound drops masks before upsampling; the kept set is that
    of thresholding exact scores afterwards (the filter-free run, filtered here)."""
    image = images["landscape"]
    options = dict(points_per_side=16, pred_iou_thresh=0.0, box_nms_thresh=1.0)
    everything = SamAutomaticMaskGenerator(localized[1], stability_score_thresh=0.0, **options).generate(image)
    filtered = SamAutomaticMaskGenerator(localized[1], stability_score_thresh=0.75, **options).generate(image)
    expected = [r for r in everything if np.float32(r["stability_score"]) >= np.float32(0.75)]
    assert 0 < len(filtered) < len(everything)
    assert [(r["point_coords"], r["bbox"], r["area"]) for r in filtered] == [
        (r["point_coords"], r["bbox"], r["area"]) for r in expected
    ]


# ---------------------------------------------------------------------------------------------------
# Helpers against the reference's utilities and torchvision


def test_helpers_match_reference_utils():
    from segment_anything.utils import amg as ref

    for n in (1, 7, 32):
        np.testing.assert_array_equal(H.build_point_grid(n), ref.build_point_grid(n))
    for size in ((1500, 2250), (333, 500), (640, 480), (97, 1001), (2000, 3000)):
        for layers in (0, 1, 2):
            assert H.generate_crop_boxes(size, layers, 512 / 1500) == ref.generate_crop_boxes(size, layers, 512 / 1500)
    rng = np.random.default_rng(0)
    boxes = torch.as_tensor(rng.integers(0, 300, size=(200, 4))).sort(dim=1).values[:, [0, 1, 2, 3]]
    boxes = torch.stack([boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]], 1)
    for crop in ([0, 0, 300, 300], [100, 0, 300, 200], [50, 60, 250, 260]):
        assert torch.equal(
            H.is_box_near_crop_edge(boxes, crop, [0, 0, 300, 300]), ref.is_box_near_crop_edge(boxes, crop, [0, 0, 300, 300])
        )
    logits = torch.randn(5, 3, 40, 50) * 2
    torch.testing.assert_close(
        H.calculate_stability_score(logits, 0.0, 1.0), ref.calculate_stability_score(logits, 0.0, 1.0), atol=0, rtol=0
    )
    masks = torch.rand(6, 30, 40) < 0.02
    masks[0] = False
    assert torch.equal(H.batched_mask_to_box(masks), ref.batched_mask_to_box(masks))
    masks = torch.rand(4, 23, 17) < 0.5
    masks[1] = True
    assert H.mask_to_rle_pytorch(masks) == ref.mask_to_rle_pytorch(masks)


def test_small_regions_and_coco_match_reference():
    pytest.importorskip("cv2")
    pytest.importorskip("pycocotools")
    from segment_anything.utils import amg as ref

    rng = np.random.default_rng(3)
    for seed in range(5):
        mask = np.asarray(torch.nn.functional.interpolate(torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(seed)), (60, 70), mode="bilinear")[0, 0] > 0.5)
        mask ^= rng.random(mask.shape) < 0.01  # speckle: islands and holes
        for mode in ("holes", "islands"):
            got, changed = H.remove_small_regions(mask, 30, mode)
            exp, exp_changed = ref.remove_small_regions(mask, 30, mode)
            assert changed == exp_changed
            np.testing.assert_array_equal(got, exp)
        rle = H.mask_to_rle(mask)
        assert H.coco_encode_rle(rle) == ref.coco_encode_rle(rle)


@pytest.mark.parametrize("n", [300, 1500])
def test_nms_matches_torchvision_including_order(n):
    torchvision_ops = pytest.importorskip("torchvision.ops")
    rng = np.random.default_rng(n)
    xy = rng.integers(0, 100, size=(n, 2))
    boxes = torch.as_tensor(np.concatenate([xy, xy + rng.integers(0, 40, size=(n, 2))], 1), dtype=torch.float32)
    for scores in (torch.as_tensor(rng.integers(0, 4, n), dtype=torch.float32), torch.rand(n)):
        for thr in (0.3, 0.7):
            expected = torchvision_ops.batched_nms(boxes, scores, torch.zeros(n), thr)
            assert H.batched_nms(boxes, scores, torch.zeros(n), thr).tolist() == expected.tolist()
        cats = torch.as_tensor(rng.integers(0, 3, n))
        expected = torchvision_ops.batched_nms(boxes, scores, cats, 0.5)
        got = H.batched_nms(boxes, scores, cats, 0.5)
        assert set(got.tolist()) == set(expected.tolist())


# ---------------------------------------------------------------------------------------------------
# Beyond the reference


def test_presets_and_validation(tiny_sam):
    edges = SamAutomaticMaskGenerator.from_preset(tiny_sam, "edges")
    assert len(edges.point_grids[0]) == 256 and edges.pred_iou_thresh == 0 and edges.stability_score_thresh == 0
    proposals = SamAutomaticMaskGenerator.from_preset(tiny_sam, "proposals", points_per_batch=128)
    assert len(proposals.point_grids[0]) == 4096 and proposals.box_nms_thresh == 0.9
    assert proposals.max_masks == 1000 and proposals.points_per_batch == 128 and proposals.crop_n_layers == 0
    sa1b = SamAutomaticMaskGenerator.from_preset(tiny_sam, "sa1b")
    assert [len(g) for g in sa1b.point_grids] == [1024, 256, 64] and sa1b.min_mask_region_area == 100
    default = SamAutomaticMaskGenerator.from_preset(tiny_sam)
    assert default.pred_iou_thresh == 0.88 and default.stability_score_thresh == 0.95 and default.box_nms_thresh == 0.7
    with pytest.raises(ValueError, match="preset"):
        SamAutomaticMaskGenerator.from_preset(tiny_sam, "everything")
    with pytest.raises(ValueError, match="exactly one"):
        SamAutomaticMaskGenerator(tiny_sam, points_per_side=None)
    with pytest.raises(ValueError, match="exactly one"):
        SamAutomaticMaskGenerator(tiny_sam, point_grids=[H.build_point_grid(4)])
    with pytest.raises(ValueError, match="output_mode"):
        SamAutomaticMaskGenerator(tiny_sam, output_mode="png")
    with pytest.raises(ValueError, match="point_grids"):
        SamAutomaticMaskGenerator(tiny_sam, points_per_side=None, point_grids=[H.build_point_grid(4)], crop_n_layers=1)
    with pytest.raises(ValueError, match="max_masks"):
        SamAutomaticMaskGenerator(tiny_sam, max_masks=0)


def test_max_masks_ranks_by_mean_of_confidence_and_stability(localized, images):
    options = dict(points_per_side=16, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=0.9)
    everything = SamAutomaticMaskGenerator(localized[1], **options).generate(images["square"])
    top = SamAutomaticMaskGenerator(localized[1], **options, max_masks=20).generate(images["square"])
    assert len(everything) > 20 and len(top) == 20
    rank = lambda r: (r["predicted_iou"] + r["stability_score"]) / 2  # noqa: E731
    assert [rank(r) for r in top] == sorted((rank(r) for r in everything), reverse=True)[:20]



def test_max_masks_ranks_empty_masks_last(helpers, images):
    """An empty mask has a NaN stability score (0 / 0, kept when the stability filter is off, as in the
    reference); ``max_masks`` must rank it last, not first (torch sorts NaN above every number)."""
    _, model = helpers.make_pair(helpers.TINY_CONFIG)
    model = localize(model)
    decoder_forward = model.mask_decoder.forward

    def third_output_empty(*args, **kwargs):
        low, iou = decoder_forward(*args, **kwargs)
        low = low.clone()
        low[:, 2] = -10.0  # no pixel above threshold - offset: empty mask, stability NaN
        return low, iou

    model.mask_decoder.forward = third_output_empty
    options = dict(points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=0.9)
    everything = SamAutomaticMaskGenerator(model, **options).generate(images["square"])
    assert sum(np.isnan(r["stability_score"]) for r in everything) > 5
    top = SamAutomaticMaskGenerator(model, **options, max_masks=5).generate(images["square"])
    assert len(top) == 5 and all(r["area"] > 0 and not np.isnan(r["stability_score"]) for r in top)


def test_empty_masks_of_crops_keep_their_box_through_the_small_region_pass(helpers, images):
    """An empty mask's box is its crop's corner (the reference's ``[x0, y0, 0, 0]``); the small-region pass
    leaves an unchanged mask's box as it is, as the reference does (it gave ``[0, 0, 0, 0]``)."""
    pair = tuple(localize(m) for m in helpers.make_pair(helpers.TINY_CONFIG))
    for model in pair:
        decoder_forward = model.mask_decoder.forward

        def third_output_empty(*args, _forward=decoder_forward, **kwargs):
            low, iou = _forward(*args, **kwargs)
            low = low.clone()
            low[:, 2] = -10.0  # no pixel above threshold - offset: an empty mask
            return low, iou

        model.mask_decoder.forward = third_output_empty
    image = images["square"][:50, :56]
    options = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=0.99,
                   crop_nms_thresh=0.99, crop_n_layers=1, min_mask_region_area=5)
    expected, got = run_both(pair, image, **options)
    empty = lambda records: sorted((r["bbox"], r["crop_box"]) for r in records if r["area"] == 0)  # noqa: E731
    assert any(bbox[:2] != [0, 0] for bbox, _ in empty(expected))
    assert empty(got) == empty(expected)


def test_explicit_grids_grayscale_input_and_progress(localized, images, capsys):
    grid = H.build_point_grid(5)
    gen = SamAutomaticMaskGenerator(localized[1], points_per_side=None, point_grids=[grid], **{k: v for k, v in FILTERS.items() if k != "points_per_side"}, progress=True)
    gray = images["square"][..., 0]
    records = gen.generate(gray)
    assert records == [] or records[0]["segmentation"].shape == gray.shape
    expected = gen.generate(np.repeat(gray[..., None], 3, axis=2))
    assert len(records) == len(expected)
    assert "batch" in capsys.readouterr().err


@pytest.mark.parametrize("crop_n_layers", [0, 1])
@pytest.mark.parametrize("own", [True, False])
def test_generate_on_an_image_already_set_encodes_it_once(localized, images, crop_n_layers, own):
    """``generate(image, predictor=p)`` uses ``p``'s embedding for the whole-image crop: the same records,
    one encoding fewer, and ``p`` still holds the image afterwards."""
    from promptseg import SamPredictor

    model, image = localized[1], images["landscape"]
    options = dict(FILTERS, box_nms_thresh=0.8, crop_n_layers=crop_n_layers)
    expected = SamAutomaticMaskGenerator(model, **options).generate(image)
    generator = SamAutomaticMaskGenerator(model, **options)
    predictor = generator.predictor if own else SamPredictor(model)
    predictor.set_image(image)
    calls = []
    hook = model.image_encoder.register_forward_hook(lambda *args: calls.append(1))
    try:
        got = generator.generate(image, predictor=predictor)
    finally:
        hook.remove()
    assert len(calls) == (0 if crop_n_layers == 0 else 4)  # the 2×2 sub-crops of layer 1 only
    assert predictor.is_image_set and predictor.original_size == image.shape[:2]
    assert len(got) == len(expected) > 0
    for a, b in zip(got, expected):
        assert np.array_equal(a["segmentation"], b["segmentation"]) and a["predicted_iou"] == b["predicted_iou"]


def test_generate_rejects_a_predictor_that_does_not_hold_the_image(localized, images, helpers):
    from promptseg import SamPredictor

    model = localized[1]
    generator = SamAutomaticMaskGenerator(model, **FILTERS)
    with pytest.raises(ValueError, match="exactly one image set"):
        generator.generate(images["square"], predictor=SamPredictor(model))
    other = SamPredictor(model)
    other.set_image(images["portrait"])
    with pytest.raises(ValueError, match="size"):
        generator.generate(images["square"], predictor=other)
    foreign = SamPredictor(helpers.make_pair(helpers.TINY_CONFIG)[1])
    foreign.set_image(images["square"])
    with pytest.raises(ValueError, match="this generator's model"):
        generator.generate(images["square"], predictor=foreign)
    with pytest.raises(TypeError, match="SamPredictor"):
        generator.generate(images["square"], predictor=object())
