"""Pure helpers of the automatic mask generator (segment-anything.txt §4 "Fully automatic stage", §B).

Every function here is free of state and tested on its own (``tests/unit/test_amg_helpers.py``). They
reproduce the decisions of the reference ``segment_anything.utils.amg`` exactly (same point grids, crop
boxes, edge test, stability score, box NMS including its order among equal scores, RLE layout), without
torchvision: the box NMS is written here in torch.

Two groups go beyond the reference and make the generator fast without changing its decisions:

* :class:`AxisResampling` / :class:`LowResGeometry` describe, per image axis, how the decoder's
  low-resolution logits become full-resolution logits (two bilinear resizes: to the padded model
  input, then — after removing the padding — to the image or crop). Every full-resolution logit is a
  convex combination of at most 3×3 neighbouring low-resolution logits.
* :func:`low_res_count_bounds` bounds, from the low-resolution logits alone, the pixel counts above
  ``threshold ± offset`` that the reference measures on the upsampled logits (the stability score, §B
  "Filtering"). Output pixels are grouped into cells that share the same low-resolution support; a cell
  whose support lies entirely above (below) a threshold, by a margin larger than any rounding error,
  is counted (skipped) as a whole; only cells whose support straddles the threshold — a band along the
  mask boundary — are uncertain. :func:`stability_upper_bound` turns this into a bound that rejects
  unstable masks without upsampling them.
* :func:`support_windows` gives the low-res window that determines a mask inside its box, so a mask
  can be kept as a small low-res window and rendered later, exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from itertools import product
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

Box = Sequence[int]  # XYXY, integer pixels

# ---------------------------------------------------------------------------------------------------
# Point grids and crops (§B "Cropping").


def build_point_grid(n_per_side: int) -> np.ndarray:
    """``n²×2`` points (x, y) of a regular grid in [0, 1]², cell centres, x varying fastest."""
    if n_per_side < 1:
        raise ValueError(f"a point grid needs at least 1 point per side, got {n_per_side}")
    offset = 1.0 / (2 * n_per_side)
    side = np.linspace(offset, 1.0 - offset, n_per_side)
    xs = np.tile(side[None, :], (n_per_side, 1))
    ys = np.tile(side[:, None], (1, n_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> List[np.ndarray]:
    """One grid per crop layer ``0..n_layers``; layer ``i`` has ``int(n_per_side / scale_per_layer**i)``
    points per side (§B: 32×32 on the image, 16×16 and 8×8 in the 2×2 and 4×4 crops)."""
    return [build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(n_layers + 1)]


def generate_crop_boxes(
    im_size: Tuple[int, int], n_layers: int, overlap_ratio: float
) -> Tuple[List[List[int]], List[int]]:
    """Crop boxes (XYXY) and their layer indices: the whole image (layer 0), then for layer ``i ≥ 1`` a
    ``2^i × 2^i`` grid of partially overlapping windows (§B: 2×2 and 4×4). The overlap of layer ``i`` is
    ``overlap_ratio · short side · 2 / 2^i`` pixels; boxes are listed column by column (x outer)."""
    im_h, im_w = im_size
    short_side = min(im_h, im_w)
    boxes: List[List[int]] = [[0, 0, im_w, im_h]]
    layers: List[int] = [0]

    def crop_len(orig_len: int, n_crops: int, overlap: int) -> int:
        return int(math.ceil((overlap * (n_crops - 1) + orig_len) / n_crops))

    for i_layer in range(n_layers):
        n_per_side = 2 ** (i_layer + 1)
        overlap = int(overlap_ratio * short_side * (2 / n_per_side))
        crop_w = crop_len(im_w, n_per_side, overlap)
        crop_h = crop_len(im_h, n_per_side, overlap)
        x0s = [int((crop_w - overlap) * i) for i in range(n_per_side)]
        y0s = [int((crop_h - overlap) * i) for i in range(n_per_side)]
        for x0, y0 in product(x0s, y0s):
            boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layers.append(i_layer + 1)
    return boxes, layers


# ---------------------------------------------------------------------------------------------------
# Coordinates.


def box_xyxy_to_xywh(box: Any) -> Any:
    """``[x0, y0, x1, y1]`` → ``[x0, y0, w, h]`` (a copy; numpy, torch or list)."""
    out = box.clone() if isinstance(box, Tensor) else np.array(box, copy=True)
    out[2] = out[2] - out[0]
    out[3] = out[3] - out[1]
    return out


def uncrop_boxes_xyxy(boxes: Tensor, crop_box: Box) -> Tensor:
    """Boxes ``…×4`` in a crop's frame → the image frame."""
    x0, y0 = crop_box[0], crop_box[1]
    return boxes + torch.tensor([x0, y0, x0, y0], device=boxes.device)


def uncrop_points(points: Tensor, crop_box: Box) -> Tensor:
    """Points ``…×2`` in a crop's frame → the image frame."""
    return points + torch.tensor([crop_box[0], crop_box[1]], device=points.device)


def uncrop_masks(masks: Tensor, crop_box: Box, orig_h: int, orig_w: int) -> Tensor:
    """Masks ``…×h×w`` of a crop → ``…×H×W`` of the image, zero outside the crop."""
    x0, y0, x1, y1 = crop_box
    if x0 == 0 and y0 == 0 and x1 == orig_w and y1 == orig_h:
        return masks
    pad = (x0, orig_w - x1, y0, orig_h - y1)
    return F.pad(masks, pad, value=0)


def is_box_near_crop_edge(boxes: Tensor, crop_box: Box, orig_box: Box, atol: float = 20.0) -> Tensor:
    """``N`` flags: the box (in the crop's frame) lies within ``atol`` pixels of an inner crop boundary —
    a crop edge that is not also an image edge (§B "We removed masks that touch the inner boundaries of
    the crops")."""
    crop = torch.as_tensor(crop_box, dtype=torch.float, device=boxes.device)
    orig = torch.as_tensor(orig_box, dtype=torch.float, device=boxes.device)
    boxes = uncrop_boxes_xyxy(boxes, crop_box).float()
    near_crop = (boxes - crop[None, :]).abs() <= atol
    near_image = (boxes - orig[None, :]).abs() <= atol
    return (near_crop & ~near_image).any(dim=1)


# ---------------------------------------------------------------------------------------------------
# Stability (§B "Filtering").


def stability_score_from_counts(intersections: Tensor, unions: Tensor) -> Tensor:
    """IoU of the masks thresholded at ``t + offset`` (⊂) and ``t - offset`` (⊃): ``#high / #low``.

    Integer counts divided in float32, as the reference (an empty low mask gives NaN, as there)."""
    return intersections.to(torch.int64) / unions.to(torch.int64)


def calculate_stability_score(logits: Tensor, mask_threshold: float, threshold_offset: float) -> Tensor:
    """Stability score of ``…×H×W`` logits: the two binary masks obtained by thresholding at
    ``mask_threshold ± threshold_offset`` (§B: ±1 around 0), compared by IoU. One mask always contains
    the other, so IoU = #pixels above the high threshold / #pixels above the low one — exact integer
    counts (int64, no overflow at any image size)."""
    high = (logits > (mask_threshold + threshold_offset)).flatten(-2).sum(-1, dtype=torch.int64)
    low = (logits > (mask_threshold - threshold_offset)).flatten(-2).sum(-1, dtype=torch.int64)
    return stability_score_from_counts(high, low)


# ---------------------------------------------------------------------------------------------------
# Boxes and NMS (§B: "standard greedy box-based NMS").


def box_area(boxes: Tensor) -> Tensor:
    """Areas ``(x1 - x0)·(y1 - y0)`` of ``N×4`` XYXY boxes (dtype kept)."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _iou_rows(rows: Tensor, row_areas: Tensor, boxes: Tensor, areas: Tensor) -> Tensor:
    """``len(rows)×len(boxes)`` IoU in float32 with the operation order of torchvision's CPU kernel
    (``inter / (area_i + area_j - inter)``; zero-area pairs give NaN, which never exceeds a threshold)."""
    xx1 = torch.maximum(rows[:, None, 0], boxes[None, :, 0])
    yy1 = torch.maximum(rows[:, None, 1], boxes[None, :, 1])
    xx2 = torch.minimum(rows[:, None, 2], boxes[None, :, 2])
    yy2 = torch.minimum(rows[:, None, 3], boxes[None, :, 3])
    inter = (xx2 - xx1).clamp(min=0) * (yy2 - yy1).clamp(min=0)
    return inter / (row_areas[:, None] + areas[None, :] - inter)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, block: int = 256) -> Tensor:
    """Greedy NMS: indices of the kept boxes, by decreasing score (ties: lower index first).

    Boxes are visited by score (stable order); a box is kept unless a kept box overlaps it with
    IoU > ``iou_threshold`` (compared in float64, like the C++ kernel). Blocked: each block of
    ``block`` candidates is resolved against itself in a short loop, then suppresses all later boxes
    in one vectorised step — O(N·kept) work, O(block·N) memory.
    """
    n = boxes.shape[0]
    if n == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    if iou_threshold >= 1.0:
        # IoU ≤ 1 always (also in float32: inter ≤ each area, union ≥ inter), so nothing is suppressed.
        return order
    b = boxes[order].float()
    areas = box_area(b)
    suppressed = torch.zeros(n, dtype=torch.bool, device=boxes.device)
    kept: List[Tensor] = []
    for start in range(0, n, block):
        stop = min(n, start + block)
        over = (_iou_rows(b[start:stop], areas[start:stop], b[start:stop], areas[start:stop]).double() > iou_threshold)
        over_rows = over.cpu().numpy()
        sup = suppressed[start:stop].cpu().numpy().copy()
        local = []
        for i in range(stop - start):
            if sup[i]:
                continue
            local.append(i)
            sup[i + 1 :] |= over_rows[i, i + 1 :]
        if not local:
            continue
        idx = torch.as_tensor(local, dtype=torch.int64, device=boxes.device) + start
        kept.append(idx)
        if stop < n:
            later = _iou_rows(b[idx], areas[idx], b[stop:], areas[stop:]).double() > iou_threshold
            suppressed[stop:] |= later.any(dim=0)
    return order[torch.cat(kept)]


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each category ``idxs``; a drop-in for ``torchvision.ops.batched_nms`` on CPU.

    The kept set is greedy NMS per category. The order of the result is torchvision's as well, which
    matters downstream where scores tie (crop NMS ranks by crop area, the small-region pass by 0/1):
    up to 1000 boxes torchvision returns the greedy order (stable by index among equal scores); above
    that it re-sorts the kept indices with torch's default (unstable) sort — reproduced here with the
    same call, so equal scores come out in the same order as in the reference.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    cats = torch.unique(idxs)
    if cats.numel() == 1 and boxes.numel() <= 4000:
        return nms(boxes, scores, iou_threshold)
    keep_mask = torch.zeros(scores.shape[0], dtype=torch.bool, device=boxes.device)
    for cat in cats:
        members = torch.where(idxs == cat)[0]
        keep_mask[members[nms(boxes[members], scores[members], iou_threshold)]] = True
    if boxes.numel() <= 4000:  # torchvision: one NMS on category-offset boxes → greedy order over all
        keep = torch.where(keep_mask)[0]
        return keep[torch.sort(scores[keep], descending=True, stable=True).indices]
    keep = torch.where(keep_mask)[0]
    return keep[scores[keep].sort(descending=True)[1]]


def batched_mask_to_box(masks: Tensor) -> Tensor:
    """XYXY boxes (inclusive pixel coordinates, int64) of boolean masks ``…×H×W``; ``[0, 0, 0, 0]`` for
    an empty mask."""
    if masks.numel() == 0:
        return torch.zeros(*masks.shape[:-2], 4, dtype=torch.int64, device=masks.device)
    h, w = masks.shape[-2:]
    rows = masks.any(dim=-1)
    cols = masks.any(dim=-2)
    return _boxes_from_profiles(rows, cols, h, w)


def _boxes_from_profiles(rows: Tensor, cols: Tensor, h: int, w: int) -> Tensor:
    ys = torch.arange(h, device=rows.device)
    xs = torch.arange(w, device=cols.device)
    top = torch.where(rows, ys, h).amin(dim=-1)
    bottom = torch.where(rows, ys, -1).amax(dim=-1)
    left = torch.where(cols, xs, w).amin(dim=-1)
    right = torch.where(cols, xs, -1).amax(dim=-1)
    out = torch.stack([left, top, right, bottom], dim=-1)
    empty = (bottom < top) | (right < left)
    return torch.where(empty[..., None], torch.zeros_like(out), out)


# ---------------------------------------------------------------------------------------------------
# Run-length encoding (COCO layout: column-major runs, starting with a run of zeros).


def _column_major(mask: np.ndarray) -> np.ndarray:
    """The pixels of a bool ``h×w`` mask in column-major order (torch's blocked transpose: 1.7× numpy's)."""
    return torch.from_numpy(np.ascontiguousarray(mask)).t().contiguous().numpy().ravel()


def mask_to_rle(mask: np.ndarray) -> Dict[str, Any]:
    """Uncompressed RLE ``{"size": [h, w], "counts": [...]}`` of one boolean ``h×w`` mask."""
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    flat = _column_major(mask)
    if flat.size == 0:
        return {"size": [h, w], "counts": []}
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0] + counts
    return {"size": [h, w], "counts": counts}


def mask_to_rle_pytorch(tensor: Tensor) -> List[Dict[str, Any]]:
    """Uncompressed RLEs of boolean masks ``B×H×W`` (one dict per mask)."""
    return [mask_to_rle(m) for m in tensor.detach().cpu().numpy().astype(bool, copy=False)]


def rle_from_box_bits(bits: np.ndarray, at: Tuple[int, int], size: Tuple[int, int]) -> Dict[str, Any]:
    """Uncompressed RLE of an ``H×W`` mask that is zero outside a box: ``bits`` (``h×w`` bool) placed
    with its top-left corner at ``at = (x0, y0)`` — equal to ``mask_to_rle`` of the full mask, in time
    proportional to the box."""
    big_h, big_w = size
    x0, y0 = at
    bh, bw = bits.shape
    if (bh, bw) == (big_h, big_w):
        return mask_to_rle(bits)
    padded = np.zeros((bh + 2, bw), dtype=bool)  # a zero above and below every column of the box
    padded[1:-1] = bits
    flat = _column_major(padded)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1  # where a new run starts (never at a padded top)
    pos = (x0 + change // (bh + 2)) * big_h + (y0 - 1 + change % (bh + 2))
    # Positions increase, except that a run ending at the bottom of one column and another starting at
    # the top of the next meet at the same position of the column-major order: the two changes cancel.
    # A run ending at the last pixel just ends there.
    keep = pos < big_h * big_w
    dup = pos[1:] == pos[:-1]
    keep[1:] &= ~dup
    keep[:-1] &= ~dup
    pos = pos[keep]
    bounds = np.concatenate(([0], pos, [big_h * big_w]))
    return {"size": [big_h, big_w], "counts": np.diff(bounds).tolist()}


def rle_to_mask(rle: Dict[str, Any]) -> np.ndarray:
    """Boolean ``h×w`` mask of an uncompressed RLE."""
    h, w = rle["size"]
    counts = np.asarray(rle["counts"], dtype=np.int64)
    values = np.arange(counts.size) % 2 == 1
    flat = np.repeat(values, counts)
    if flat.size != h * w:
        raise ValueError(f"RLE counts sum to {flat.size}, expected {h}×{w} = {h * w}")
    return flat.reshape(w, h).T


def area_from_rle(rle: Dict[str, Any]) -> int:
    """Foreground pixels of an uncompressed RLE (the odd runs)."""
    return int(sum(rle["counts"][1::2]))


def pycocotools_mask() -> Any:
    """``pycocotools.mask``, imported on first use, with an install hint when it is missing."""
    from promptseg.io import optional_import

    return optional_import("pycocotools.mask", "output_mode 'coco_rle'", "pycocotools", "coco")


def opencv() -> Any:
    """``cv2``, imported on first use, with an install hint when it is missing."""
    from promptseg.io import import_cv2

    return import_cv2("min_mask_region_area > 0")


def coco_encode_rle(uncompressed_rle: Dict[str, Any]) -> Dict[str, Any]:
    """Compressed COCO RLE (``counts`` as a str, ready for JSON) of an uncompressed RLE."""
    mask_utils = pycocotools_mask()
    h, w = uncompressed_rle["size"]
    rle = mask_utils.frPyObjects(uncompressed_rle, h, w)
    rle["counts"] = rle["counts"].decode("utf-8")
    return rle


def coco_encode_mask(mask: np.ndarray) -> Dict[str, Any]:
    """Compressed COCO RLE of a boolean ``h×w`` mask — the same dict as
    ``coco_encode_rle(mask_to_rle(mask))``, encoded in C."""
    mask_utils = pycocotools_mask()
    # any nonzero value is foreground, as in mask_to_rle (a cast to uint8 alone zeroed 0.5 and 256)
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=bool), dtype=np.uint8))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("utf-8")}


# ---------------------------------------------------------------------------------------------------
# Postprocessing (§B "Postprocessing": components and holes under 100 px).


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> Tuple[np.ndarray, bool]:
    """Remove connected components (``mode="islands"``) or fill holes (``mode="holes"``) with fewer
    than ``area_thresh`` pixels (8-connectivity). Islands: if every component is small, the largest is
    kept. Holes are components of the inverted mask (the background counts as one). Returns the mask
    and whether it changed."""
    cv2 = opencv()
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    holes = mode == "holes"
    mask = np.asarray(mask, dtype=bool)
    working = (holes ^ mask).astype(np.uint8)
    n_labels, regions, stats, _ = cv2.connectedComponentsWithStats(working, 8)
    sizes = stats[1:, -1]  # label 0 is the background of ``working``
    small = [i + 1 for i, s in enumerate(sizes) if s < area_thresh]
    if not small:
        return mask, False
    fill = [0] + small
    if not holes:
        fill = [i for i in range(n_labels) if i not in fill]
        if not fill:  # every component is small: keep the largest
            fill = [int(np.argmax(sizes)) + 1]
    return np.isin(regions, fill), True


# ---------------------------------------------------------------------------------------------------
# Low-resolution geometry: the two bilinear resizes as per-axis operators.


@dataclass(frozen=True)
class AxisResampling:
    """One axis of ``low-res logits → output logits`` (bilinear to ``img_size``, keep ``input_len``,
    bilinear to ``output_len``), as a banded operator.

    Output index ``y`` reads low-res samples ``first[y] .. first[y] + K - 1`` with ``weights[y]``
    (zeros pad rows with fewer samples). Consecutive outputs reading the same samples form a *group*:
    ``group_start/group_len`` (outputs), ``group_first/group_last`` (low-res samples, inclusive).
    """

    weights: Tensor  # output_len × K, float32
    first: Tensor  # output_len, int64
    group_start: Tensor
    group_len: Tensor
    group_first: Tensor
    group_last: Tensor
    n_low: int  # low-res samples read at all (a prefix: padding is never read)

    @property
    def taps(self) -> int:
        return self.weights.shape[1]

    @property
    def output_len(self) -> int:
        return self.weights.shape[0]

    @property
    def max_group_len(self) -> int:
        return int(self.group_len.max())


def axis_resampling(low_len: int, img_size: int, input_len: int, output_len: int) -> AxisResampling:
    """The :class:`AxisResampling` of one axis, computed by running torch's own linear interpolation
    (the kernel of the 2-D bilinear resize, same source indices and weights) on the identity."""
    with torch.no_grad():
        eye = torch.eye(low_len, dtype=torch.float32)[None]  # channels = low-res samples
        resp = F.interpolate(eye, size=img_size, mode="linear", align_corners=False)[..., :input_len]
        if input_len != output_len:
            resp = F.interpolate(resp.contiguous(), size=output_len, mode="linear", align_corners=False)
        dense = resp[0].T.contiguous()  # output_len × low_len
    nonzero = dense != 0
    first = nonzero.to(torch.int8).argmax(dim=1)
    last = low_len - 1 - nonzero.flip(1).to(torch.int8).argmax(dim=1)
    taps = int((last - first + 1).max())
    offsets = torch.arange(taps)
    idx = (first[:, None] + offsets).clamp(max=low_len - 1)
    weights = torch.gather(dense, 1, idx) * ((first[:, None] + offsets) <= last[:, None])
    change = torch.ones(output_len, dtype=torch.bool)
    change[1:] = (first[1:] != first[:-1]) | (last[1:] != last[:-1])
    starts = torch.nonzero(change).flatten()
    lens = torch.diff(torch.cat([starts, torch.tensor([output_len])]))
    return AxisResampling(
        weights=weights.contiguous(),
        first=first.to(torch.int64),
        group_start=starts,
        group_len=lens,
        group_first=first[starts].to(torch.int64),
        group_last=last[starts].to(torch.int64),
        n_low=int(last.max()) + 1,
    )


@dataclass(frozen=True)
class LowResGeometry:
    """Both axes of the resampling for one image (or crop) of size ``output_size``."""

    rows: AxisResampling
    cols: AxisResampling
    input_size: Tuple[int, int]
    output_size: Tuple[int, int]
    img_size: int

    @classmethod
    def build(
        cls, low_size: Tuple[int, int], img_size: int, input_size: Tuple[int, int], output_size: Tuple[int, int]
    ) -> "LowResGeometry":
        return cls(
            rows=axis_resampling(low_size[0], img_size, input_size[0], output_size[0]),
            cols=axis_resampling(low_size[1], img_size, input_size[1], output_size[1]),
            input_size=tuple(input_size),
            output_size=tuple(output_size),
            img_size=img_size,
        )

    @cached_property
    def operators(self) -> Tuple[Tensor, Tensor]:
        """:meth:`dense`, computed once."""
        return self.dense()

    def dense(self) -> Tuple[Tensor, Tensor]:
        """Dense operators ``A`` (H×n_low_rows), ``B`` (W×n_low_cols): logits = ``A @ low @ Bᵀ``."""
        out = []
        for axis in (self.rows, self.cols):
            mat = torch.zeros(axis.output_len, axis.n_low + axis.taps)
            idx = axis.first[:, None] + torch.arange(axis.taps)
            mat.scatter_(1, idx, axis.weights)
            out.append(mat[:, : axis.n_low])
        return out[0], out[1]


def _support_reduce(x: Tensor, axis: AxisResampling, dim: int) -> Tuple[Tensor, Tensor]:
    """Min and max of ``x`` over each group's low-res support along ``dim`` (→ length ``G`` there)."""
    lo = hi = None
    for k in range(axis.taps):
        idx = torch.minimum(axis.group_first + k, axis.group_last)
        v = x.index_select(dim, idx)
        lo = v if lo is None else torch.minimum(lo, v)
        hi = v if hi is None else torch.maximum(hi, v)
    return lo, hi


def _margin(bound: Tensor) -> Tensor:
    """Safety margin of a certain cell: far above the rounding error of any bilinear evaluation."""
    return 1e-5 * (1.0 + bound.abs())


def low_res_count_bounds(low: Tensor, geometry: LowResGeometry, thresholds: Sequence[float]) -> Tuple[Tensor, Tensor]:
    """Bounds on the number of full-resolution pixels above each threshold, from low-res logits alone.

    Each full-resolution logit is a convex combination of the low-res logits of its cell's support, so
    a cell whose support minimum exceeds ``t`` (by a margin larger than any rounding) has all its pixels
    above ``t``, and one whose maximum is below ``t`` none. For ``M×h×w`` logits returns ``(certain,
    uncertain)``, both ``M×T`` int64: the exact count above ``thresholds[t]`` lies in
    ``[certain, certain + uncertain]``.
    """
    rows, cols = geometry.rows, geometry.cols
    low = low[:, : rows.n_low, : cols.n_low].float()
    lo_r, hi_r = _support_reduce(low, rows, 1)
    lo, _ = _support_reduce(lo_r, cols, 2)
    _, hi = _support_reduce(hi_r, cols, 2)  # M × Gr × Gc
    cell_px = (rows.group_len[:, None] * cols.group_len[None, :]).to(torch.float64)
    certain, uncertain = [], []
    for t in torch.tensor(list(thresholds), dtype=torch.float32):  # python floats → float32, as the reference
        above = lo > t + _margin(lo)
        below = hi <= t - _margin(hi)
        # Σ of integer cell sizes in float64: exact below 2^53 pixels
        certain.append(torch.einsum("mgh,gh->m", above.to(torch.float64), cell_px))
        uncertain.append(torch.einsum("mgh,gh->m", (~(above | below)).to(torch.float64), cell_px))
    return (
        torch.stack(certain, 1).round().to(torch.int64),
        torch.stack(uncertain, 1).round().to(torch.int64),
    )


def stability_upper_bound(
    low: Tensor, geometry: LowResGeometry, mask_threshold: float, threshold_offset: float
) -> Tensor:
    """An upper bound (float64, ``M``) of :func:`calculate_stability_score` of the upsampled logits,
    from :func:`low_res_count_bounds`: ``(#high certain + #high uncertain) / #low certain``; ``inf``
    where no low pixel is certain. Masks whose bound is below the stability threshold can be dropped
    without upsampling them."""
    certain, uncertain = low_res_count_bounds(
        low, geometry, [mask_threshold + threshold_offset, mask_threshold - threshold_offset]
    )
    high = (certain[:, 0] + uncertain[:, 0]).to(torch.float64)
    low_count = certain[:, 1].to(torch.float64)
    return torch.where(low_count > 0, high / low_count.clamp(min=1), torch.full_like(high, math.inf))


def support_windows(boxes: Tensor, empty: Tensor, geometry: LowResGeometry) -> Tensor:
    """``M×4`` low-res windows ``[r0, r1, c0, c1)`` holding the support of every pixel of each XYXY box
    (inclusive, output pixels); all zeros where ``empty`` (``M`` bool: the mask has no pixel).

    Low-res logits outside the window may be replaced by any value ≤ the mask's minimum logit without
    changing the thresholded mask: pixels inside the box keep their exact inputs, and pixels outside it
    (all ≤ the threshold) can only decrease.
    """
    rows, cols = geometry.rows, geometry.cols
    x0, y0, x1, y1 = boxes.unbind(1)
    r0 = rows.first[y0]
    r1 = torch.minimum(rows.first[y1] + rows.taps, torch.tensor(rows.n_low))
    c0 = cols.first[x0]
    c1 = torch.minimum(cols.first[x1] + cols.taps, torch.tensor(cols.n_low))
    out = torch.stack([r0, r1, c0, c1], dim=1)
    return torch.where(empty[:, None], torch.zeros_like(out), out)


def render_logit_rows(low: Tensor, geometry: LowResGeometry, start: int, stop: int) -> Tensor:
    """Rows ``start:stop`` of :func:`render_logits` (``M×(stop-start)×W``), for outputs too large to
    upsample whole: two matrix products with the separable operators (same weights as the resizes;
    the sums are ordered differently, so values differ from :func:`render_logits` by float32
    rounding, ~1e-7 relative)."""
    a, b = geometry.operators
    rows, cols = geometry.rows.n_low, geometry.cols.n_low
    return (a[start:stop] @ low[:, :rows, :cols].float()) @ b.T


def render_logits(low: Tensor, geometry: LowResGeometry) -> Tensor:
    """Full-resolution logits ``M×H×W`` of low-res logits ``M×h×w`` (the decoder's full low-res size) —
    the reference's resizes, in the same arithmetic (``promptseg.transforms.postprocess_masks``)."""
    from promptseg.transforms import postprocess_masks

    return postprocess_masks(low[:, None], geometry.input_size, geometry.output_size, geometry.img_size)[:, 0]
