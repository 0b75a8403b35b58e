"""GrabCut (OpenCV) from a box: the classical baseline for box prompts."""

from __future__ import annotations

import numpy as np


def grabcut_from_box(image: np.ndarray, box: np.ndarray, iterations: int = 5) -> np.ndarray:
    """``H×W×3`` uint8 RGB image and XYXY ``box`` → ``H×W`` bool mask (definite + probable foreground)."""
    import cv2

    h, w = image.shape[:2]
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    x0, y0 = max(0, min(x0, w - 1)), max(0, min(y0, h - 1))
    x1, y1 = max(x0 + 1, min(x1, w)), max(y0 + 1, min(y1, h))
    mask = np.zeros((h, w), np.uint8)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    if (x1 - x0) >= w - 1 and (y1 - y0) >= h - 1:  # box is the whole image: GrabCut has no background model
        return np.ones((h, w), bool)
    cv2.grabCut(np.ascontiguousarray(image[..., ::-1]), mask, (x0, y0, x1 - x0, y1 - y0), bgd, fgd, iterations, cv2.GC_INIT_WITH_RECT)
    return (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
