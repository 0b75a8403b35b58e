"""Video object segmentation metrics: region similarity J and boundary accuracy F (DAVIS definitions).

* **J** (:func:`region_jaccard`) — intersection over union of the predicted and ground-truth masks of one
  object in one frame; 1 when both are empty.
* **F** (:func:`boundary_f`) — the F-measure of boundary precision and recall: the one-pixel boundaries of
  both masks (:func:`boundary_map`, DAVIS ``seg2bmap``) are matched within a tolerance of
  ``ceil(0.008 × image diagonal)`` pixels (a disk), as in the DAVIS toolkit: a boundary pixel of one mask
  counts as matched when a boundary pixel of the other lies within the disk. Both empty → 1; exactly one
  empty → 0.
* Per object, the per-frame values are summarised as DAVIS does (:func:`statistics`): mean ``M``, recall
  ``O`` (fraction of frames above 0.5) and decay ``D`` (first quarter minus last quarter). The benchmark
  number **J&F** is the mean of J-mean and F-mean over all objects of all sequences.
* :func:`evaluate_sequence` scores label-map sequences (0 = background, ``k`` = object ``k``), by default
  skipping the first frame (given to the method) and the last, as DAVIS 2017 semi-supervised does.

Only numpy is needed; OpenCV, when installed, dilates faster (same result).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

#: DAVIS boundary tolerance as a fraction of the image diagonal.
BOUND_TH = 0.008


# --------------------------------------------------------------------------------------------- per frame
def _binary(mask: Any, name: str) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D H×W mask, got shape {arr.shape}")
    return arr.astype(bool) if arr.dtype != np.bool_ else arr


def _pair(pred: Any, gt: Any) -> Tuple[np.ndarray, np.ndarray]:
    p, g = _binary(pred, "pred"), _binary(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred and gt must have the same shape, got {p.shape} and {g.shape}")
    return p, g


def region_jaccard(pred: np.ndarray, gt: np.ndarray) -> float:
    """J: ``|pred ∩ gt| / |pred ∪ gt|`` of two ``H×W`` masks; 1.0 when both are empty."""
    p, g = _pair(pred, gt)
    union = int(np.count_nonzero(p | g))
    if union == 0:
        return 1.0
    return int(np.count_nonzero(p & g)) / union


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """One-pixel boundary of a mask (DAVIS ``seg2bmap``) → ``H×W`` bool.

    A pixel is on the boundary when it differs from its east, south or south-east neighbour; the last
    row compares with the east neighbour only, the last column with the south one only, and the
    bottom-right pixel is never a boundary. For a filled rectangle this is a closed ring that runs
    one pixel outside its top and left edges and on its bottom and right rows.
    """
    seg = _binary(mask, "mask")
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def boundary_tolerance(shape: Tuple[int, int], bound_th: float = BOUND_TH) -> int:
    """Tolerance radius in pixels: ``bound_th`` itself when ≥ 1, else ``ceil(bound_th × diagonal)``."""
    if bound_th >= 1:
        return int(round(bound_th))
    return int(math.ceil(bound_th * math.hypot(shape[0], shape[1])))


def _disk(radius: int) -> np.ndarray:
    """``(2r+1)×(2r+1)`` bool disk ``x² + y² ≤ r²`` (scikit-image's ``disk``)."""
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return (xx**2 + yy**2) <= radius**2


def dilate(mask: np.ndarray, radius: int, use_cv2: Optional[bool] = None) -> np.ndarray:
    """Binary dilation of ``mask`` by a disk of ``radius`` pixels (OpenCV when available, else numpy)."""
    m = _binary(mask, "mask")
    if radius <= 0:
        return m.copy()
    kernel = _disk(radius)
    if use_cv2 is None or use_cv2:
        try:
            import cv2
        except ImportError:
            if use_cv2:
                raise
        else:
            return cv2.dilate(m.astype(np.uint8), kernel.astype(np.uint8)).astype(bool)
    h, w = m.shape
    padded = np.zeros((h + 2 * radius, w + 2 * radius), dtype=bool)
    padded[radius : radius + h, radius : radius + w] = m
    out = np.zeros_like(m)
    for dy, dx in zip(*np.nonzero(kernel)):
        out |= padded[dy : dy + h, dx : dx + w]
    return out


def boundary_f(pred: np.ndarray, gt: np.ndarray, bound_th: float = BOUND_TH) -> float:
    """F: boundary F-measure of two ``H×W`` masks with the DAVIS tolerance (see the module docstring)."""
    p, g = _pair(pred, gt)
    radius = boundary_tolerance(p.shape, bound_th)
    pb, gb = boundary_map(p), boundary_map(g)
    n_p, n_g = int(pb.sum()), int(gb.sum())
    if n_p == 0 and n_g == 0:
        return 1.0
    if n_p == 0 or n_g == 0:
        return 0.0  # precision or recall is 0
    precision = int(np.count_nonzero(pb & dilate(gb, radius))) / n_p
    recall = int(np.count_nonzero(gb & dilate(pb, radius))) / n_g
    if precision + recall == 0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


# --------------------------------------------------------------------------------------------- summaries
def statistics(values: Sequence[float]) -> Dict[str, float]:
    """DAVIS summary of per-frame values: ``mean``, ``recall`` (fraction > 0.5), ``decay``.

    Decay is the mean of the first of four bins of frames minus the mean of the last (the DAVIS bins:
    ``linspace`` cut points, so short sequences get overlapping bins rather than empty ones).
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return {"mean": float("nan"), "recall": float("nan"), "decay": float("nan")}
    ids = (np.round(np.linspace(1, arr.size, 5) + 1e-10) - 1).astype(int)
    bins = [arr[ids[i] : ids[i + 1] + 1] for i in range(4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        decay = float(np.nanmean(bins[0]) - np.nanmean(bins[3]))
        return {"mean": float(np.nanmean(arr)), "recall": float(np.nanmean(arr > 0.5)), "decay": decay}


def _label_frames(frames: Sequence[Any], name: str) -> List[np.ndarray]:
    out = []
    for i, f in enumerate(frames):
        arr = np.asarray(f)
        if arr.ndim != 2:
            raise ValueError(f"{name}[{i}] must be a 2-D H×W label map, got shape {arr.shape}")
        out.append(arr)
    return out


def evaluate_sequence(
    pred: Sequence[np.ndarray],
    gt: Sequence[np.ndarray],
    object_ids: Optional[Sequence[int]] = None,
    exclude_first_last: bool = True,
    bound_th: float = BOUND_TH,
) -> Dict[str, Any]:
    """J and F of one sequence of label maps.

    Args:
        pred, gt: the predicted and ground-truth label maps, one ``H×W`` int array per frame (same
            count and sizes; 0 = background, ``k`` = object ``k``).
        object_ids: objects to score (default: every label of the ground truth's first frame, or of all
            frames if the first is empty). An object missing from a prediction frame counts as empty.
        exclude_first_last: skip the first frame (the given annotation) and the last, as DAVIS 2017's
            semi-supervised evaluation does (sequences of ≤ 2 frames then keep all frames).
    Returns:
        ``{"objects": {id: {"J": [...], "F": [...], "J_mean", "J_recall", "J_decay", "F_mean", …}},
        "J_mean", "F_mean", "JF_mean", "frames"}`` — sequence values are means over its objects.
    """
    p_frames, g_frames = _label_frames(pred, "pred"), _label_frames(gt, "gt")
    if len(p_frames) != len(g_frames):
        raise ValueError(f"pred has {len(p_frames)} frames but gt has {len(g_frames)}")
    if not g_frames:
        raise ValueError("gt has no frames")
    for i, (p, g) in enumerate(zip(p_frames, g_frames)):
        if p.shape != g.shape:
            raise ValueError(f"frame {i}: pred shape {p.shape} differs from gt shape {g.shape}")
    if object_ids is None:
        ids = np.unique(g_frames[0])
        if not (ids > 0).any():
            ids = np.unique(np.concatenate([np.unique(g) for g in g_frames]))
        object_ids = [int(i) for i in ids if i > 0]
    frames = list(range(len(g_frames)))
    if exclude_first_last and len(frames) > 2:
        frames = frames[1:-1]
    objects: Dict[int, Dict[str, Any]] = {}
    for oid in object_ids:
        js = [region_jaccard(p_frames[t] == oid, g_frames[t] == oid) for t in frames]
        fs = [boundary_f(p_frames[t] == oid, g_frames[t] == oid, bound_th) for t in frames]
        record: Dict[str, Any] = {"J": js, "F": fs}
        for key, values in (("J", js), ("F", fs)):
            for stat, value in statistics(values).items():
                record[f"{key}_{stat}"] = value
        objects[int(oid)] = record
    j = float(np.mean([o["J_mean"] for o in objects.values()])) if objects else float("nan")
    f = float(np.mean([o["F_mean"] for o in objects.values()])) if objects else float("nan")
    return {"objects": objects, "J_mean": j, "F_mean": f, "JF_mean": (j + f) / 2.0, "frames": frames}


def summarize(sequences: Mapping[str, Mapping[str, Any]]) -> Dict[str, Any]:
    """Benchmark summary over sequences scored by :func:`evaluate_sequence` (DAVIS: mean over all objects).

    Returns ``{"J_mean", "J_recall", "J_decay", "F_mean", "F_recall", "F_decay", "JF_mean",
    "num_objects", "sequences": {name: {"J_mean", "F_mean", "JF_mean"}}}``.
    """
    records = [o for seq in sequences.values() for o in seq["objects"].values()]
    out: Dict[str, Any] = {}
    for key in ("J", "F"):
        for stat in ("mean", "recall", "decay"):
            vals = [r[f"{key}_{stat}"] for r in records]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", category=RuntimeWarning)
                out[f"{key}_{stat}"] = float(np.nanmean(vals)) if vals else float("nan")
    out["JF_mean"] = (out["J_mean"] + out["F_mean"]) / 2.0
    out["num_objects"] = len(records)
    out["sequences"] = {
        name: {"J_mean": s["J_mean"], "F_mean": s["F_mean"], "JF_mean": s["JF_mean"]} for name, s in sequences.items()
    }
    return out
