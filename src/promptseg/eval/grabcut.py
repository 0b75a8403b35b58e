"""GrabCut (OpenCV) from a box: the classical baseline for box prompts."""

from __future__ import annotations

from typing import Optional

import numpy as np


def grabcut_from_box(image: np.ndarray, box: np.ndarray, iterations: int = 5, seed: Optional[int] = 0) -> np.ndarray:
    """``H×W×3`` uint8 RGB image and XYXY ``box`` → ``H×W`` bool mask (definite + probable foreground).

    ``box`` has inclusive corners (``x1``, ``y1`` = the last column and row inside, as
    :func:`promptseg.eval.protocols.mask_box` gives them). GrabCut initialises its colour models from
    OpenCV's global random generator; ``seed`` reseeds it first (``cv2.setRNGSeed``) so that a mask's
    result does not depend on the calls before it; ``None`` leaves the generator alone.
    """
    from promptseg.io import import_cv2

    cv2 = import_cv2("the GrabCut baseline")

    h, w = image.shape[:2]
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    x0, y0 = max(0, min(x0, w - 1)), max(0, min(y0, h - 1))
    x1, y1 = max(x0, min(x1, w - 1)), max(y0, min(y1, h - 1))  # inclusive corners (``x1`` = last column)
    mask = np.zeros((h, w), np.uint8)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    if x1 - x0 + 1 >= w and y1 - y0 + 1 >= h:  # box is the whole image: GrabCut has no background model
        return np.ones((h, w), bool)
    rect = (x0, y0, x1 - x0 + 1, y1 - y0 + 1)
    if seed is not None:
        cv2.setRNGSeed(int(seed))
    cv2.grabCut(np.ascontiguousarray(image[..., ::-1]), mask, rect, bgd, fgd, iterations, cv2.GC_INIT_WITH_RECT)
    return (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
