"""Matching two automatic-mask record lists (the acceptance rule of the AMG issue), shared by parity tests.

≥ 99 % of the reference's masks matched by a promptseg mask with IoU ≥ 0.95, the counts within 1 %,
matched records with equal ``point_coords``/``crop_box`` and close ``bbox``/``area``/scores.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from promptseg.amg import helpers as H


def as_mask(segmentation, shape) -> np.ndarray:
    if isinstance(segmentation, np.ndarray):
        return segmentation
    if isinstance(segmentation["counts"], list):
        return H.rle_to_mask(segmentation)
    from pycocotools import mask as mask_utils

    rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode()}
    return mask_utils.decode(rle).astype(bool)


def assert_same_masks(expected, got, shape, min_count: int = 1) -> None:
    assert len(expected) >= min_count, f"only {len(expected)} reference masks: the test does not test much"
    assert abs(len(got) - len(expected)) <= 0.01 * len(expected), (len(got), len(expected))
    ref_masks = np.stack([as_mask(r["segmentation"], shape) for r in expected]).reshape(len(expected), -1)
    our_masks = np.stack([as_mask(r["segmentation"], shape) for r in got]).reshape(len(got), -1)
    assert ref_masks.dtype == our_masks.dtype == np.bool_
    ref_f, our_f = ref_masks.astype(np.float32), our_masks.astype(np.float32)
    inter = ref_f @ our_f.T
    union = ref_f.sum(1)[:, None] + our_f.sum(1)[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    best = iou.argmax(1)
    matched = iou[np.arange(len(expected)), best] >= 0.95
    assert matched.mean() >= 0.99, f"{int((~matched).sum())} of {len(expected)} reference masks unmatched"
    exact = 0
    for i in np.flatnonzero(matched):
        r, o = expected[i], got[best[i]]
        assert o["point_coords"] == r["point_coords"] and o["crop_box"] == r["crop_box"]
        assert set(o) == set(r)
        assert o["predicted_iou"] == pytest.approx(r["predicted_iou"], abs=1e-4)
        if math.isnan(r["stability_score"]):
            assert math.isnan(o["stability_score"])
        else:
            assert o["stability_score"] == pytest.approx(r["stability_score"], abs=1e-3)
        assert max(abs(a - b) for a, b in zip(o["bbox"], r["bbox"])) <= 1
        assert abs(o["area"] - r["area"]) <= max(1, 0.005 * r["area"])
        assert o["area"] == int(our_masks[best[i]].sum())
        exact += o["bbox"] == r["bbox"] and o["area"] == r["area"]
    assert exact >= 0.99 * matched.sum(), f"only {exact} of {int(matched.sum())} matched records have equal bbox/area"
