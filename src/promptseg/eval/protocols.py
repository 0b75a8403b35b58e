"""Pure helpers of the click protocols (§D.1 "Point sampling"): where a simulated user clicks.

* First click: the point farthest from the object boundary — the maximum of the mask's interior
  distance transform (the image border counts as boundary).
* Next clicks: the point farthest from the boundary of the error region between ground truth and
  prediction; positive (1) inside a false negative, negative (0) inside a false positive.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np


def _distance_transform(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance of every foreground pixel to the nearest background pixel or image border."""
    from promptseg.io import import_cv2

    cv2 = import_cv2("click placement")

    padded = np.pad((np.asarray(mask) != 0).astype(np.uint8), 1)  # any nonzero value is foreground
    return cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]


def center_point(mask: np.ndarray) -> Tuple[float, float]:
    """``(x, y)`` of the maximum of the interior distance transform of the ``H×W`` bool ``mask``."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be H×W, got shape {mask.shape}")
    if not mask.any():
        raise ValueError("mask is empty: no point to click")
    dist = _distance_transform(mask)
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return float(x), float(y)


def next_click(pred: np.ndarray, gt: np.ndarray) -> Tuple[float, float, int] | None:
    """The next simulated click ``(x, y, label)`` correcting ``pred`` towards ``gt``; None if they agree."""
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)  # 0/1, 0/255 or label-valued masks
    if pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must have the same shape")
    false_neg = gt & ~pred
    false_pos = pred & ~gt
    best = None
    for error, label in ((false_neg, 1), (false_pos, 0)):
        if error.any():
            dist = _distance_transform(error)
            idx = int(np.argmax(dist))
            if best is None or dist.flat[idx] > best[0]:
                y, x = np.unravel_index(idx, dist.shape)
                best = (float(dist.flat[idx]), float(x), float(y), label)
    return None if best is None else best[1:]


def mask_overlap(a: np.ndarray, b: np.ndarray) -> Tuple[int, int]:
    """``(intersection, union)`` pixel counts of two bool masks."""
    return int(np.logical_and(a, b).sum()), int(np.logical_or(a, b).sum())


def overlap_iou(intersection: int, union: int) -> float:
    """IoU from pixel counts (1.0 when the union is empty): of one pair, or of counts summed over many."""
    return 1.0 if union == 0 else intersection / union


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks (1.0 when both are empty)."""
    return overlap_iou(*mask_overlap(a, b))


def mask_box(mask: np.ndarray) -> np.ndarray:
    """Tight XYXY box of a bool mask with inclusive corners (``x1`` = last column), as SAM's tools use."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float64)


def box_fill(box: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    """The filled ``H×W`` rectangle of an inclusive-corner XYXY box (as :func:`mask_box` returns): the
    trivial box "segmenter", a floor any box-prompted model should beat."""
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    out = np.zeros(shape, dtype=bool)
    out[max(y0, 0) : max(y1 + 1, 0), max(x0, 0) : max(x1 + 1, 0)] = True  # a negative stop would wrap around
    return out


def grid_reference(gt: np.ndarray, img_size: int, grid: int) -> float:
    """IoU of the ``H×W`` bool ``gt`` with itself drawn at a ``grid × grid`` resolution of the model's input
    frame, then brought back to the image as SAM brings back its low-res logits.

    Each cell's foreground fraction (:func:`promptseg.transforms.mask_to_grid`), centred at 0.5, goes
    through :func:`promptseg.transforms.postprocess_to_binary` (bilinear to the padded frame, crop,
    bilinear to the image, threshold). With ``grid`` = the encoder's token grid (``img_size / patch``) it
    is the level of a mask that is right cell by cell but knows nothing finer than a patch: a model whose
    masks beat it has learned boundaries inside its patches. A reference level, not a bound.
    """
    from promptseg.transforms import get_preprocess_shape, mask_to_grid, postprocess_to_binary

    if gt.ndim != 2:
        raise ValueError(f"gt must be H×W, got shape {gt.shape}")
    if not 1 <= grid <= img_size:
        raise ValueError(f"grid must be in [1, img_size={img_size}], got {grid}")
    frac = mask_to_grid(gt, img_size, grid) - 0.5
    input_size = get_preprocess_shape(gt.shape[0], gt.shape[1], img_size)
    drawn = postprocess_to_binary(frac, input_size, tuple(gt.shape), img_size)[0, 0].numpy()
    return mask_iou(drawn, gt.astype(bool))
