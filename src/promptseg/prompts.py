"""The sparse prompt protocol, written once.

Every consumer — the prompt encoder, the predictor, the ONNX wrapper and the web client — speaks it:

* clicks are points ``(x, y)`` in model-input pixels with labels ``1`` (foreground) / ``0`` (background);
* a box ``(x0, y0, x1, y1)`` is two corner points labelled ``2`` (top-left) and ``3`` (bottom-right),
  appended after the clicks;
* when no box is given, one padding point ``(0, 0)`` labelled ``-1`` is appended (the reference does the
  same, so a lone click still sees a "not a point" token);
* label ``-1`` marks a padding point: it contributes only the learned "not a point" embedding.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor

PAD_LABEL = -1
NEGATIVE_LABEL = 0
POSITIVE_LABEL = 1
BOX_TOP_LEFT_LABEL = 2
BOX_BOTTOM_RIGHT_LABEL = 3
VALID_LABELS = (PAD_LABEL, NEGATIVE_LABEL, POSITIVE_LABEL, BOX_TOP_LEFT_LABEL, BOX_BOTTOM_RIGHT_LABEL)


def sparse_prompt(
    points: Optional[Tuple[Tensor, Tensor]], boxes: Optional[Tensor]
) -> Optional[Tuple[Tensor, Tensor]]:
    """Join clicks and boxes into one point list.

    Args:
        points: ``(coords B×N×2, labels B×N)`` or None.
        boxes: ``B×4`` XYXY boxes (or ``B×1×4``) or None.
    Returns:
        ``(coords B×M×2, labels B×M)`` or None when there is no sparse prompt at all.
    """
    if points is None and boxes is None:
        return None
    coords_parts, label_parts = [], []
    if points is not None:
        coords, labels = points
        coords_parts.append(coords)
        label_parts.append(labels.to(torch.int64))
    if boxes is not None:
        corners = boxes.reshape(-1, 2, 2)
        corner_labels = torch.tensor([BOX_TOP_LEFT_LABEL, BOX_BOTTOM_RIGHT_LABEL], device=boxes.device)
        coords_parts.append(corners.to(coords_parts[0].dtype) if coords_parts else corners)
        label_parts.append(corner_labels.expand(corners.shape[0], 2))
    else:
        coords = coords_parts[0]
        coords_parts.append(coords.new_zeros(coords.shape[0], 1, 2))
        label_parts.append(torch.full((coords.shape[0], 1), PAD_LABEL, device=coords.device, dtype=torch.int64))
    return torch.cat(coords_parts, dim=1), torch.cat(label_parts, dim=1)


# ---------------------------------------------------------------------------------------------------
# Validation of user-supplied (numpy) prompts, shared by the predictor, the CLI and the server.

Size = Tuple[int, int]


def as_array(value: object, name: str) -> np.ndarray:
    """``np.asarray(value)``; a ragged nested sequence is a ``ValueError`` naming ``name``."""
    try:
        return np.asarray(value)
    except ValueError:
        raise ValueError(f"{name} must be a rectangular array, got a ragged sequence (rows of unequal length)") from None


def _numeric(value: object, name: str) -> np.ndarray:
    arr = as_array(value, name)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def check_points(
    point_coords: object, point_labels: object, image_size: Size, batched: bool
) -> Tuple[np.ndarray, np.ndarray]:
    """Validate clicks in original-image pixels → ``(coords B×N×2 float64, labels B×N int64)``.

    ``batched=False`` expects ``N×2`` / ``N``; ``batched=True`` expects ``B×N×2`` / ``B×N``. Labels are
    1 (foreground), 0 (background), -1 (padding) or 2 / 3 (a box's top-left / bottom-right corner, as the
    reference accepts); coordinates other than padding must lie inside the image.
    """
    lead = "B×N" if batched else "N"
    if point_labels is None:
        raise ValueError("point_labels must be given with point_coords")
    coords = _numeric(point_coords, "point_coords").astype(np.float64)
    labels = as_array(point_labels, "point_labels")
    if labels.dtype == np.bool_:  # True / False = foreground / background, as the reference reads them
        labels = labels.astype(np.int64)
    labels = _numeric(labels, "point_labels")
    ndim = 3 if batched else 2
    if coords.ndim != ndim or coords.shape[-1] != 2 or coords.shape[-2] == 0 or coords.shape[0] == 0:
        raise ValueError(f"point_coords must have shape {lead}×2 with {'B, ' if batched else ''}N ≥ 1, got {coords.shape}")
    if labels.shape != coords.shape[:-1]:
        raise ValueError(f"point_labels must have shape {lead} = {coords.shape[:-1]}, got {labels.shape}")
    if np.issubdtype(labels.dtype, np.floating) and not np.all(labels == np.round(labels)):
        raise ValueError(f"point_labels must be integers in {list(VALID_LABELS)}")
    labels = labels.astype(np.int64)
    bad = sorted(set(np.unique(labels).tolist()) - set(VALID_LABELS))
    if bad:
        raise ValueError(
            "point_labels must be 1 (foreground), 0 (background), -1 (padding), 2 (box top-left) or "
            f"3 (box bottom-right), got {bad}"
        )
    h, w = image_size
    outside = (coords[..., 0] < 0) | (coords[..., 0] > w) | (coords[..., 1] < 0) | (coords[..., 1] > h)
    outside &= labels != PAD_LABEL
    if outside.any():
        first = coords[outside][0].tolist()
        raise ValueError(f"point_coords {first} lie outside the image (x in [0, {w}], y in [0, {h}])")
    if not batched:
        coords, labels = coords[None], labels[None]
    return coords, labels


def check_boxes(boxes: object, image_size: Size, batched: bool, name: str = "box") -> np.ndarray:
    """Validate XYXY boxes in original-image pixels → ``B×4`` float64 (``x0 ≤ x1``, ``y0 ≤ y1``, inside)."""
    arr = _numeric(boxes, name).astype(np.float64)
    if batched:
        if arr.ndim != 2 or arr.shape[1] != 4 or arr.shape[0] == 0:
            raise ValueError(f"{name} must have shape B×4 (x0, y0, x1, y1) with B ≥ 1, got {arr.shape}")
    else:
        if arr.shape not in ((4,), (1, 4)):
            raise ValueError(
                f"{name} must have shape 4 or 1×4 (x0, y0, x1, y1), got {arr.shape}; "
                "use predict_many for several boxes"
            )
        arr = arr.reshape(1, 4)
    if (arr[:, 0] > arr[:, 2]).any() or (arr[:, 1] > arr[:, 3]).any():
        raise ValueError(f"{name} must satisfy x0 ≤ x1 and y0 ≤ y1, got {arr[(arr[:, 0] > arr[:, 2]) | (arr[:, 1] > arr[:, 3])][0].tolist()}")
    h, w = image_size
    if (arr[:, [0, 2]] < 0).any() or (arr[:, [0, 2]] > w).any() or (arr[:, [1, 3]] < 0).any() or (arr[:, [1, 3]] > h).any():
        raise ValueError(f"{name} must lie inside the image (x in [0, {w}], y in [0, {h}])")
    return arr
