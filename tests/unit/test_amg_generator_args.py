"""``SamAutomaticMaskGenerator`` checks its numeric options when it is built, not after the encoder ran."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("torch")

from promptseg import SamAutomaticMaskGenerator  # noqa: E402


@pytest.mark.parametrize("option, value, expected", [
    ("pred_iou_thresh", math.nan, "pred_iou_thresh must be a finite number"),  # silently kept no mask before
    ("stability_score_thresh", math.inf, "stability_score_thresh must be a finite number"),
    ("stability_score_offset", -1.0, r"stability_score_offset must be in \[0, inf\]"),
    ("box_nms_thresh", 1.5, r"box_nms_thresh must be in \[0, 1\]"),
    ("crop_nms_thresh", "0.7", "crop_nms_thresh must be a finite number"),
    ("crop_overlap_ratio", True, "crop_overlap_ratio must be a finite number"),
])
def test_bad_numeric_options_name_the_option(tiny_sam, option, value, expected):
    with pytest.raises(ValueError, match=expected):
        SamAutomaticMaskGenerator(tiny_sam, points_per_side=4, **{option: value})


def test_edge_values_are_accepted(tiny_sam):
    import numpy as np

    SamAutomaticMaskGenerator(tiny_sam, points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0,
                              box_nms_thresh=1.0, crop_nms_thresh=0.0, crop_overlap_ratio=np.float32(0.3))


def test_numpy_integer_options_are_accepted_as_by_the_reference(tiny_sam):
    import numpy as np

    gen = SamAutomaticMaskGenerator(tiny_sam, points_per_side=np.int64(4), points_per_batch=np.int32(8),
                                    crop_n_layers=np.int64(1), max_masks=np.int64(5))
    assert [len(g) for g in gen.point_grids] == [16, 16]
    assert (gen.points_per_batch, gen.crop_n_layers, gen.max_masks) == (8, 1, 5)
    assert all(type(v) is int for v in (gen.points_per_batch, gen.crop_n_layers, gen.max_masks))
    with pytest.raises(ValueError, match="points_per_side must be a positive integer"):
        SamAutomaticMaskGenerator(tiny_sam, points_per_side=4.0)


def test_crop_layers_on_an_image_a_few_pixels_wide(tiny_sam):
    """On a 5×7 image the 4×4 layer has crops starting past the image's edge: they hold no pixel and are
    skipped (encoding them raised "image is empty")."""
    import numpy as np

    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    gen = SamAutomaticMaskGenerator(tiny_sam, points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0,
                                    crop_n_layers=2)
    records = gen.generate(image)
    assert records
    for r in records:
        x, y, w, h = r["crop_box"]
        assert w > 0 and h > 0 and x + w <= 7 and y + h <= 5
        assert r["segmentation"].shape == (5, 7)
