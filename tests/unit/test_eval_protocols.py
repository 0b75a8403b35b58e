"""Click protocols and metrics of promptseg.eval (§7.1, §D.1)."""

import numpy as np
import pytest

from promptseg.eval import EvalConfig, center_point, evaluate, evaluate_mask, mask_iou, next_click, summarize
from promptseg.eval.grabcut import grabcut_from_box
from promptseg.eval.protocols import box_fill, grid_reference, mask_box


def rect(h=40, w=60, y0=10, y1=30, x0=20, x1=50):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_center_point_is_farthest_from_boundary():
    x, y = center_point(rect())
    assert 29 <= x <= 40 and 19 <= y <= 20  # the plateau 10 px from the long sides of a 20×30 rectangle
    l_shape = rect(y0=0, y1=40, x0=0, x1=10) | rect(y0=30, y1=40, x0=0, x1=60)
    x, y = center_point(l_shape)
    assert l_shape[int(y), int(x)]


def test_center_point_counts_the_image_border_as_boundary():
    full = np.ones((21, 21), bool)
    assert center_point(full) == (10.0, 10.0)


def test_center_point_errors():
    with pytest.raises(ValueError, match="empty"):
        center_point(np.zeros((5, 5), bool))
    with pytest.raises(ValueError, match="H×W"):
        center_point(np.zeros((2, 5, 5), bool))


def test_next_click_labels_and_location():
    gt = rect()
    assert next_click(gt, gt) is None
    pred = np.zeros_like(gt)
    x, y, label = next_click(pred, gt)
    assert label == 1 and gt[int(y), int(x)]
    pred = gt | rect(y0=0, y1=40, x0=0, x1=15)  # large false positive on the left
    x, y, label = next_click(pred, gt)
    assert label == 0 and pred[int(y), int(x)] and not gt[int(y), int(x)]


def test_center_point_and_next_click_read_any_nonzero_value_as_foreground():
    """As mask_iou does: a float, 0/255 or label-valued mask is its nonzero pixels (a uint8 cast sent the
    first click to (0, 0) outside the mask, and a bitwise ``gt & ~pred`` missed a mask of 2s entirely)."""
    gt = rect()
    for other in (gt * 0.9, gt.astype(np.uint16) * 256, gt.astype(np.uint8) * 2):
        assert center_point(other) == center_point(gt)
        assert next_click(np.zeros_like(gt), other) == next_click(np.zeros_like(gt), gt)
        assert next_click(other, np.zeros_like(gt)) == next_click(gt, np.zeros_like(gt))
    assert next_click(gt.astype(np.uint8) * 255, gt) is None


def test_mask_iou_and_box():
    a, b = rect(x0=20, x1=40), rect(x0=30, x1=50)
    assert mask_iou(a, b) == pytest.approx(10 / 30)
    assert mask_iou(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) == 1.0
    assert mask_box(rect()).tolist() == [20, 10, 49, 29]


def test_box_fill_is_the_filled_inclusive_box():
    gt = rect(x0=20, x1=50, y0=10, y1=30)
    np.testing.assert_array_equal(box_fill(mask_box(gt), gt.shape), gt)  # a rectangle is its own filled box
    disk = np.hypot(*np.mgrid[-20:21, -20:21]) <= 20
    filled = box_fill(mask_box(disk), disk.shape)
    assert filled.all() and mask_iou(filled, disk) == pytest.approx(disk.sum() / disk.size)
    clipped = box_fill(np.array([-3.0, -2.0, 4.0, 1.0]), (5, 6))  # clipped to the image
    assert clipped.sum() == 2 * 5 and clipped[:2, :5].all()
    for outside in ([-5, -5, -2, -2], [-9, 0, -3, 4], [0, -4, 5, -2]):  # wholly left of / above the image
        assert not box_fill(np.array(outside, float), (5, 6)).any()


def test_grid_reference_is_the_mask_drawn_at_a_grid_and_brought_back():
    aligned = np.zeros((256, 256), bool)
    aligned[:, 32:104] = True  # a band with its edges on the 8-px cells of a 32×32 grid: drawn exactly
    assert grid_reference(aligned, 256, 32) == 1.0
    aligned[:40] = False  # ... but bilinear upsampling rounds the corners a grid cannot hold
    assert 0.99 < grid_reference(aligned, 256, 32) < 1.0
    disk = np.hypot(*np.mgrid[-128:128, -128:128]) <= 10.5  # 21 px across: boundaries inside the cells
    levels = [grid_reference(disk, 256, g) for g in (8, 16, 32, 64, 256)]
    assert levels[-1] == 1.0  # a grid of pixels is the mask itself
    assert levels == sorted(levels) and levels[0] < 0.5 < levels[2] < 1.0  # finer grids draw it better
    # any image size: the mask is resized like the image, padded, and brought back the same way
    wide = np.zeros((100, 160), bool)
    wide[20:70, 30:110] = True
    assert 0.95 < grid_reference(wide, 256, 32) < 1.0
    with pytest.raises(ValueError, match="grid must be in"):
        grid_reference(wide, 256, 0)
    with pytest.raises(ValueError, match="H×W"):
        grid_reference(wide[None], 256, 32)


class OraclePredictor:
    """A predictor double that returns the ground truth: exercises the loop's bookkeeping."""

    def __init__(self, gt):
        self.gt = gt

    def set_image(self, image):
        pass

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None, multimask_output=True):
        n = 3 if multimask_output else 1
        masks = np.repeat(self.gt[None], n, 0)
        return masks, np.linspace(0.9, 0.8, n), np.zeros((n, 8, 8), np.float32)


def test_perfect_predictor_needs_one_click():
    gt = rect()
    image = np.zeros((*gt.shape, 3), np.uint8)
    rec = evaluate_mask(OraclePredictor(gt), image, gt, EvalConfig(grabcut=False))
    assert rec["point_top1"] == rec["box"] == rec["box_fill"] == 1.0  # the gt is a rectangle
    assert rec["noc@85"] == rec["noc@90"] == 1
    assert len(rec["clicks_iou"]) == 20
    assert "token_grid" not in rec  # a predictor without a SAM behind it has no token grid
    assert rec["box_area_ratio"] == 1.0 and summarize([rec])["box/area_ratio_median"] == 1.0


def test_evaluate_mask_reads_a_0_255_mask_as_binary():
    gt = rect()
    image = np.zeros((*gt.shape, 3), np.uint8)
    config = EvalConfig(grabcut=False, max_clicks=3)
    assert evaluate_mask(OraclePredictor(gt), image, gt.astype(np.uint8) * 255, config) == evaluate_mask(
        OraclePredictor(gt), image, gt, config)  # box_area_ratio was divided by 255


def test_grabcut_finds_a_contrasting_object():
    rng = np.random.default_rng(0)
    image = (rng.random((80, 80, 3)) * 60).astype(np.uint8)
    gt = np.zeros((80, 80), bool)
    gt[20:60, 25:55] = True
    image[gt] = (220, 40, 30)
    pred = grabcut_from_box(image, np.array([15, 12, 65, 68]))
    assert mask_iou(pred, gt) > 0.9


def test_grabcut_keeps_the_last_row_and_column_of_an_inclusive_box():
    """``mask_box`` gives inclusive corners: GrabCut's rectangle must cover column x1 and row y1, or the
    object's own edge pixels become definite background (a tight box then loses the whole object)."""
    rng = np.random.default_rng(0)
    image = (rng.random((80, 80, 3)) * 60).astype(np.uint8)
    gt = rect(h=80, w=80, y0=20, y1=60, x0=25, x1=55)
    image[gt] = (220, 40, 30)
    pred = grabcut_from_box(image, mask_box(gt))
    assert pred[20:60, 54].all() and pred[59, 25:55].all()
    assert mask_iou(pred, gt) > 0.95
    for box in ([10, 10, 10, 10], [10, 10, 10, 20], [79, 79, 79, 79], [0, 0, 79, 78]):  # degenerate boxes run
        assert grabcut_from_box(image, np.array(box, float)).shape == gt.shape
    assert grabcut_from_box(image, np.array([0, 0, 79, 79], float)).all()  # the whole image


def test_grabcut_result_does_not_depend_on_the_calls_before_it():
    """GrabCut's k-means start draws from OpenCV's global generator: seeded per call, a mask's baseline is
    the same whatever was evaluated before it (and in any order or subset of masks)."""
    import cv2

    from promptseg.io import read_image, sample_images

    image = cv2.resize(read_image(next(p for p in sample_images() if p.name == "coffee.jpg")), (128, 96))
    box = np.array([13, 10, 102, 86], float)  # on this photo GrabCut's result hinges on its start
    unseeded = set()
    for s in range(5):
        cv2.setRNGSeed(7 * s + 1)
        unseeded.add(int(grabcut_from_box(image, box, seed=None).sum()))
    assert len(unseeded) > 1  # the check below is not vacuous
    first = grabcut_from_box(image, box)
    cv2.setRNGSeed(12345)
    grabcut_from_box(image, np.array([5, 5, 30, 30], float), seed=None)  # other calls move the generator
    np.testing.assert_array_equal(grabcut_from_box(image, box), first)


def test_evaluate_skips_empty_masks_even_without_an_area_floor():
    big = rect()
    items = [{"image": np.zeros((*big.shape, 3), np.uint8), "masks": np.stack([big, np.zeros_like(big)])}]
    summary, records = evaluate(OraclePredictor(big), items, EvalConfig(grabcut=False, max_clicks=2, min_area=0),
                                progress=False)
    assert summary["masks"] == 1 and records[0]["mask_index"] == 0


def test_evaluate_skips_items_without_masks():
    """The sample format allows K = 0 masks (an image without annotations): skipped, not a reshape error."""
    big = rect()
    image = np.zeros((*big.shape, 3), np.uint8)
    items = [{"image": image, "masks": np.zeros((0, *big.shape), bool), "image_id": "empty"},
             {"image": image, "masks": big[None], "image_id": "one"}]
    summary, records = evaluate(OraclePredictor(big), items, EvalConfig(grabcut=False, max_clicks=2), progress=False)
    assert summary["masks"] == 1 and records[0]["image_id"] == "one"


def test_evaluate_with_a_real_model(tiny_sam):
    from promptseg import SamPredictor

    gt = rect(h=100, w=160, y0=20, y1=70, x0=30, x1=110)
    image = np.zeros((100, 160, 3), np.uint8)
    image[gt] = 200
    summary, records = evaluate(SamPredictor(tiny_sam), [{"image": image, "masks": gt[None], "image_id": "a"}],
                                EvalConfig(max_clicks=5), progress=False)
    assert summary["masks"] == 1 and len(records[0]["clicks_iou"]) == 5
    for key in ("miou/point_top1", "miou/point_oracle", "miou/box", "miou/box_fill", "miou/grabcut_box", "noc@85", "noc@90"):
        assert key in summary
    assert summary["miou/point_oracle"] >= summary["miou/point_top1"]
    assert summary["miou/clicks_best"] == max(records[0]["clicks_iou"])
    # the ground truth at the tiny model's token grid, as grid_reference draws it
    encoder = tiny_sam.image_encoder.config
    grid = (encoder.img_size, encoder.img_size // encoder.patch_size)
    assert records[0]["token_grid"] == summary["miou/token_grid"] == grid_reference(gt, *grid)
    _, plain = evaluate(SamPredictor(tiny_sam), [{"image": image, "masks": gt[None]}],
                        EvalConfig(max_clicks=2, grabcut=False, token_grid=False), progress=False)
    assert "token_grid" not in plain[0]
    assert 1 <= summary["noc@90"] <= 5
    with pytest.raises(ValueError, match="no masks"):
        summarize([])


def test_evaluate_skips_masks_below_the_area_limits():
    big = rect()
    small = np.zeros_like(big)
    small[:3, :3] = True  # 9 px
    items = [{"image": np.zeros((*big.shape, 3), np.uint8), "masks": np.stack([big, small])}]
    count = lambda config: evaluate(OraclePredictor(big), items, config, progress=False)[0]["masks"]  # noqa: E731
    assert count(EvalConfig(grabcut=False, max_clicks=2, min_area=1)) == 2
    assert count(EvalConfig(grabcut=False, max_clicks=2)) == 1  # 16 px by default
    fraction = big.sum() / big.size
    assert count(EvalConfig(grabcut=False, max_clicks=2, min_area=1, min_area_fraction=fraction / 2)) == 1
    with pytest.raises(ValueError, match="no masks"):
        count(EvalConfig(grabcut=False, max_clicks=2, min_area=1, min_area_fraction=fraction * 2))


def test_records_name_their_masks():
    """Each record says which mask it is (so reports compare mask by mask) and, where the item says, its kind."""
    big = rect()
    inner = np.zeros_like(big)
    inner[12:20, 22:30] = True
    tiny = np.zeros_like(big)
    tiny[0, 0] = True  # below the 16-px floor: skipped, yet the indices keep counting it
    item = {"image": np.zeros((*big.shape, 3), np.uint8), "masks": np.stack([tiny, big, inner]), "image_id": "7",
            "names": ["dot", "box", "window"], "parents": [-1, -1, 1]}
    _, recs = evaluate(OraclePredictor(big), [item], EvalConfig(grabcut=False, max_clicks=2), progress=False)
    assert [(r["image_id"], r["mask_index"], r["name"], r["part"]) for r in recs] == [("7", 1, "box", False),
                                                                                      ("7", 2, "window", True)]
    assert recs[1]["area_fraction"] == pytest.approx(64 / big.size)
    _, plain = evaluate(OraclePredictor(big), [{"image": item["image"], "masks": big[None]}],
                        EvalConfig(grabcut=False, max_clicks=2), progress=False)
    assert plain[0]["mask_index"] == 0 and "part" not in plain[0] and "name" not in plain[0]


def test_eval_config_and_max_masks_are_checked():
    """The CLI checked these; the Python API took max_clicks=0 (NoC 0, the best score, for masks that never
    reach τ) and max_masks=0 (one mask evaluated)."""
    for bad, name in (({"max_clicks": 0}, "max_clicks"), ({"max_clicks": 2.0}, "max_clicks"),
                      ({"noc_thresholds": (0.85, 1.5)}, "noc_thresholds"), ({"report_clicks": (0, 1)}, "report_clicks"),
                      ({"min_area_fraction": 1.0}, "min_area_fraction")):
        with pytest.raises(ValueError, match=name):
            EvalConfig(**bad)
    big = rect()
    items = [{"image": np.zeros((*big.shape, 3), np.uint8), "masks": big[None]}]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_masks"):
            evaluate(OraclePredictor(big), items, EvalConfig(grabcut=False), max_masks=bad, progress=False)
    EvalConfig(max_clicks=np.int64(3), report_clicks=(1, 2))
