"""``SamAutomaticMaskGenerator``: masks for a whole image from a grid of point prompts.

The fully automatic stage of the data engine (segment-anything.txt §4 "Fully automatic stage", details
in §B): prompt SAM with a regular grid of foreground points, keep the *confident* masks (predicted
IoU) and the *stable* ones (stability score: IoU of the masks thresholded at ±1 around 0), drop masks
touching inner crop boundaries, remove duplicates by greedy box NMS within each crop and across crops,
optionally remove small islands and holes. Drop-in for ``segment_anything.SamAutomaticMaskGenerator``:
same constructor arguments and defaults, same records, same masks (``tests/parity/test_amg_parity.py``).

How it is fast without changing the result (see ``benchmarks/bench_amg.py``):

* The decoder runs on ``points_per_batch`` prompts at once and returns only its low-resolution
  (256×256) logits; the image-side decoder work is computed once per crop and shared by every prompt.
* Filters are decided as early and as cheaply as possible. The predicted-IoU filter needs no mask.
  The stability filter is first decided at low resolution where that is certain
  (:func:`~promptseg.amg.helpers.stability_upper_bound`: a cell of output pixels whose low-res
  support lies wholly above or below a threshold needs no upsampling), and only the remaining masks are
  upsampled — with the reference's own resize arithmetic, so counts, boxes and masks are those of the
  reference — a few at a time (bounded memory), never as a batch of full-size float masks.
* Each upsampled mask is measured (exact integer pixel counts at ``t``, ``t ± offset``, its box) and
  kept only as its box's bits — or, beyond a memory budget, as the small window of low-res logits that
  determines it (:func:`~promptseg.amg.helpers.support_windows`), upsampled again only if it survives.
  NMS works on boxes alone; no full-size mask is ever copied per record until the output is written.
* Box NMS is torch code (:func:`~promptseg.amg.helpers.batched_nms`), no torchvision.

Beyond the reference: :meth:`SamAutomaticMaskGenerator.from_preset` (``"default"``, ``"edges"`` §D.2,
``"proposals"`` §D.3, ``"sa1b"`` §B), ``max_masks`` (rank by the mean of predicted IoU and stability,
keep the best, §D.3), a ``progress`` bar, and any image :func:`~promptseg.transforms.to_rgb_uint8`
accepts (grayscale, RGBA, 16-bit, float).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from promptseg.amg.helpers import (
    LowResGeometry,
    batched_nms,
    box_area,
    build_all_layer_point_grids,
    coco_encode_rle,
    generate_crop_boxes,
    is_box_near_crop_edge,
    opencv,
    pycocotools_mask,
    render_logit_rows,
    render_logits,
    remove_small_regions,
    rle_from_box_bits,
    stability_score_from_counts,
    stability_upper_bound,
    support_windows,
    uncrop_boxes_xyxy,
    uncrop_points,
)
from promptseg.config_utils import is_integer
from promptseg.predictor import SamPredictor
from promptseg.transforms import to_rgb_uint8

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")

#: Generator settings of the presets of :meth:`SamAutomaticMaskGenerator.from_preset`.
PRESETS: Dict[str, Dict[str, Any]] = {
    # The reference's defaults: 32×32 points, predicted IoU > 0.88, stability ≥ 0.95, NMS 0.7, no crops.
    "default": {},
    # §D.2 zero-shot edge detection: a 16×16 grid (768 masks), no IoU or stability filter, NMS only.
    "edges": {"points_per_side": 16, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "crop_n_layers": 0},
    # §D.3 object proposals: a 64×64 grid, no crops, no IoU or stability filter, NMS 0.9; beyond 1000
    # masks, rank by the mean of confidence and stability and keep the top 1000.
    "proposals": {
        "points_per_side": 64,
        "pred_iou_thresh": 0.0,
        "stability_score_thresh": 0.0,
        "box_nms_thresh": 0.9,
        "crop_n_layers": 0,
        "max_masks": 1000,
    },
    # §B, the SA-1B data engine: 32×32 points on the image plus 2×2 and 4×4 crops with 16×16 and 8×8
    # grids, IoU 0.88, stability 0.95, NMS 0.7 within and across crops, components and holes < 100 px.
    "sa1b": {"points_per_side": 32, "crop_n_layers": 2, "crop_n_points_downscale_factor": 2, "min_mask_region_area": 100},
}

#: Upsampled float logits held at once while measuring masks (bytes). Below glibc's largest mmap threshold
#: (32 MiB) the buffers are recycled instead of being page-faulted in anew for every chunk (2.5× faster).
_RENDER_CHUNK_BYTES = 24 << 20
#: Size of the largest decoder temporaries per call on CPU (see ``_PointDecoder``).
_CPU_DECODER_BYTES = 24 << 20
#: Packed bits of measured masks kept for the output (bytes); beyond, masks are kept as low-res windows.
_BITS_BUDGET_BYTES = 1 << 30


@dataclass
class _Mask:
    """A measured mask: its bits inside its box (image frame, packed 8 per byte), or — beyond the memory
    budget — the window of low-res logits that determines it, upsampled again when written out."""

    packed: Optional[np.ndarray]  # np.packbits of the box's bits (C order); None when empty or a window
    shape: Tuple[int, int]  # of the box's bits
    window: Optional[Tensor] = None  # low-res logits [r0:r1, c0:c1] of the crop
    window_at: Tuple[int, int] = (0, 0)  # (r0, c0)
    fill: float = 0.0  # value for low-res samples outside the window (≤ every logit of the mask)
    crop: int = 0  # index into the generator's per-image crop list

    @classmethod
    def of_bits(cls, bits: Optional[np.ndarray], crop: int) -> "_Mask":
        if bits is None:
            return cls(None, (0, 0), crop=crop)
        return cls(np.packbits(bits), bits.shape, crop=crop)

    def bits(self) -> Optional[np.ndarray]:
        if self.packed is None:
            return None
        count = self.shape[0] * self.shape[1]
        return np.unpackbits(self.packed, count=count).reshape(self.shape).view(bool)

    @property
    def nbytes(self) -> int:
        return 0 if self.packed is None else self.packed.nbytes


class _MaskSet:
    """Columns of per-mask data (tensors) and the masks themselves; filtered and joined together."""

    def __init__(self) -> None:
        self.iou = torch.zeros(0, dtype=torch.float32)
        self.stability = torch.zeros(0, dtype=torch.float32)
        self.boxes = torch.zeros(0, 4, dtype=torch.int64)
        self.points = torch.zeros(0, 2, dtype=torch.float64)
        self.crop_boxes = torch.zeros(0, 4, dtype=torch.int64)
        self.masks: List[_Mask] = []

    def __len__(self) -> int:
        return len(self.masks)

    def cat(self, other: "_MaskSet") -> None:
        self.iou = torch.cat([self.iou, other.iou])
        self.stability = torch.cat([self.stability, other.stability])
        self.boxes = torch.cat([self.boxes, other.boxes])
        self.points = torch.cat([self.points, other.points])
        self.crop_boxes = torch.cat([self.crop_boxes, other.crop_boxes])
        self.masks.extend(other.masks)

    def filter(self, keep: Tensor) -> None:
        """Keep ``keep`` (bool flags or indices, in the given order)."""
        if keep.dtype == torch.bool:
            keep = torch.nonzero(keep).flatten()
        self.iou, self.stability = self.iou[keep], self.stability[keep]
        self.boxes, self.points, self.crop_boxes = self.boxes[keep], self.points[keep], self.crop_boxes[keep]
        self.masks = [self.masks[i] for i in keep.tolist()]

    @property
    def nbytes(self) -> int:
        return sum(m.nbytes for m in self.masks)


@dataclass(frozen=True)
class _Crop:
    box: Tuple[int, int, int, int]  # XYXY in the image
    geometry: LowResGeometry


class _PointDecoder:
    """Point prompts → low-res logits and IoU predictions for the image set in ``predictor``.

    Uses only public pieces (the predictor's embedding, the prompt encoder, the decoder and its
    ``image_keys``, computed once here and shared by every batch). It exists because
    ``SamPredictor.predict_torch`` always upsamples its masks to the image size, which the generator
    must not do for every mask.
    """

    def __init__(self, predictor: SamPredictor) -> None:
        model = predictor.model
        self.model = model
        self.embedding = predictor.get_image_embedding()[:1]
        self.dense_pe = model.prompt_encoder.get_dense_pe()
        _, no_mask = model.prompt_encoder(None, None, None)
        self.keys = model.mask_decoder.image_keys(self.embedding, self.dense_pe, no_mask)
        # the largest per-prompt temporary: the upscaled embedding, (4h·4w) × C/8 values
        low_h, low_w = model.prompt_encoder.mask_input_size
        per_prompt = low_h * low_w * (model.mask_decoder.transformer_dim // 8) * self.embedding.element_size()
        self.cpu_batch = max(1, _CPU_DECODER_BYTES // per_prompt)

    def __call__(self, coords: Tensor) -> Tuple[Tensor, Tensor]:
        """``coords``: ``B×2`` in the model-input frame → low-res logits ``B×3×h×w``, IoU ``B×3`` (float32).

        On CPU the prompts go through the decoder a few at a time, so that its largest temporaries stay
        under ``_CPU_DECODER_BYTES`` (2 prompts for the official models, 8 MiB each): below glibc's
        mmap threshold they are recycled instead of being page-faulted in anew for every call —
        measured 1.7× faster per prompt than batches of 64 on a 2-core CPU. Results equal up to float
        rounding.
        """
        step = self.cpu_batch if coords.device.type == "cpu" else max(1, coords.shape[0])
        lows, ious = [], []
        for start in range(0, coords.shape[0], step):
            part = coords[start : start + step]
            labels = torch.ones(part.shape[0], 1, dtype=torch.int, device=part.device)
            sparse, dense = self.model.prompt_encoder((part[:, None, :], labels), None, None)
            low, iou = self.model.mask_decoder(self.embedding, self.dense_pe, sparse, dense, True, image_keys=self.keys)
            lows.append(low.float())
            ious.append(iou.float())
        return torch.cat(lows), torch.cat(ious)


def _upsampled(low: Tensor, geometry: LowResGeometry, thresholds: Sequence[np.float32]) -> Iterator[Tuple[List[int], np.ndarray]]:
    """For each of ``M×h×w`` low-res logits: pixel counts above each threshold at full resolution and
    the full-resolution mask above the last one (``H×W`` bool).

    A few masks are upsampled at a time (at most ``_RENDER_CHUNK_BYTES`` of float logits); a crop too
    large for even one mask is upsampled in bands of rows, so float logits never exceed that budget.
    """
    h, w = geometry.output_size
    per_mask = 4 * h * w
    if per_mask <= _RENDER_CHUNK_BYTES:
        chunk = _RENDER_CHUNK_BYTES // per_mask
        for s in range(0, low.shape[0], chunk):
            for logits in render_logits(low[s : s + chunk], geometry).numpy():
                yield [np.count_nonzero(logits > t) for t in thresholds[:-1]] + [0], logits > thresholds[-1]
        return
    band = max(1, _RENDER_CHUNK_BYTES // (4 * w))
    for i in range(low.shape[0]):
        counts = [0] * len(thresholds)
        mask = np.empty((h, w), dtype=bool)
        for y0 in range(0, h, band):
            logits = render_logit_rows(low[i : i + 1], geometry, y0, min(h, y0 + band))[0].numpy()
            for j, t in enumerate(thresholds[:-1]):
                counts[j] += np.count_nonzero(logits > t)
            np.greater(logits, thresholds[-1], out=mask[y0 : y0 + logits.shape[0]])
        yield counts, mask


def _box_and_bits(mask: np.ndarray) -> Tuple[Tuple[int, int, int, int], Optional[np.ndarray]]:
    """XYXY box (inclusive; zeros when empty) and a copy of the mask inside it (None when empty)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not rows.size:
        return (0, 0, 0, 0), None
    box = (int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1]))
    if box[0] == 0 and box[1] == 0 and box[2] == mask.shape[1] - 1 and box[3] == mask.shape[0] - 1:
        return box, mask  # spans the whole crop: the (freshly computed) mask itself
    return box, mask[box[1] : box[3] + 1, box[0] : box[2] + 1].copy()


class SamAutomaticMaskGenerator:
    """Generate masks for an entire image (segment-anything.txt §4 "Fully automatic stage", §B).

    Arguments (the reference's, same defaults, chosen there for ViT-H):
        model: the SAM model.
        points_per_side: points sampled along one side of the image (``points_per_side²`` prompts); None
            when ``point_grids`` gives the points.
        points_per_batch: prompts run through the decoder at once (speed/memory only).
        pred_iou_thresh: keep masks whose predicted IoU is above this (0 disables the filter).
        stability_score_thresh: keep masks whose stability score is at least this (0 disables).
        stability_score_offset: the ``±`` shift of the threshold for the stability score.
        box_nms_thresh: box IoU above which a mask is a duplicate within a crop (NMS ranked by predicted
            IoU); 1.0 disables it.
        crop_n_layers: crop layers beyond the whole image; layer ``i`` has ``2^i × 2^i`` crops.
        crop_nms_thresh: box IoU for duplicates across crops (ranked from the most zoomed-in crop).
        crop_overlap_ratio: overlap of the first layer's crops as a fraction of the image's short side.
        crop_n_points_downscale_factor: points per side in layer ``i`` are divided by this ``** i``.
        point_grids: explicit grids (``N×2`` in [0, 1]), one per crop layer, instead of points_per_side.
        min_mask_region_area: if > 0, remove islands and fill holes smaller than this (OpenCV), then
            rerun box NMS.
        output_mode: ``"binary_mask"`` (``H×W`` bool), ``"uncompressed_rle"`` or ``"coco_rle"``
            (pycocotools).
    Keyword-only, beyond the reference:
        max_masks: return at most this many masks, the best by the mean of predicted IoU and stability
            score (§D.3), in that order; None returns all in the reference's order.
        progress: show a tqdm progress bar over the decoder batches.
    """

    PRESETS = PRESETS

    def __init__(
        self,
        model: Any,
        points_per_side: Optional[int] = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: Optional[List[np.ndarray]] = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        *,
        max_masks: Optional[int] = None,
        progress: bool = False,
    ) -> None:
        if (points_per_side is None) == (point_grids is None):
            raise ValueError("exactly one of points_per_side or point_grids must be given")
        if not is_integer(crop_n_layers) or crop_n_layers < 0:
            raise ValueError(f"crop_n_layers must be an integer ≥ 0, got {crop_n_layers!r}")
        crop_n_layers = int(crop_n_layers)
        if points_per_side is not None:
            if not is_integer(points_per_side) or points_per_side < 1:
                raise ValueError(f"points_per_side must be a positive integer, got {points_per_side!r}")
            if crop_n_points_downscale_factor < 1:
                raise ValueError(f"crop_n_points_downscale_factor must be ≥ 1, got {crop_n_points_downscale_factor!r}")
            if int(points_per_side / crop_n_points_downscale_factor**crop_n_layers) < 1:
                raise ValueError(
                    f"points_per_side={points_per_side} leaves no point in crop layer {crop_n_layers} "
                    f"(downscale factor {crop_n_points_downscale_factor})"
                )
            self.point_grids = build_all_layer_point_grids(int(points_per_side), crop_n_layers, crop_n_points_downscale_factor)
        else:
            grids = [np.asarray(g, dtype=np.float64) for g in point_grids]
            if len(grids) < crop_n_layers + 1:
                raise ValueError(f"point_grids has {len(grids)} grids; crop_n_layers={crop_n_layers} needs {crop_n_layers + 1}")
            for i, g in enumerate(grids):
                if g.ndim != 2 or g.shape[1] != 2 or g.shape[0] == 0:
                    raise ValueError(f"point_grids[{i}] must be a non-empty N×2 array, got shape {g.shape}")
            self.point_grids = grids
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"unknown output_mode {output_mode!r}; use one of {', '.join(OUTPUT_MODES)}")
        # fail now, with a clear message, if what these options need is missing
        if output_mode == "coco_rle":
            pycocotools_mask()
        if min_mask_region_area > 0:
            opencv()
        for name, value, low, high in (
            ("pred_iou_thresh", pred_iou_thresh, -math.inf, math.inf),
            ("stability_score_thresh", stability_score_thresh, -math.inf, math.inf),
            ("stability_score_offset", stability_score_offset, 0.0, math.inf),
            ("box_nms_thresh", box_nms_thresh, 0.0, 1.0),
            ("crop_nms_thresh", crop_nms_thresh, 0.0, 1.0),
            ("crop_overlap_ratio", crop_overlap_ratio, 0.0, 1.0),
        ):  # a NaN threshold would silently keep no mask
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            if not low <= value <= high:
                raise ValueError(f"{name} must be in [{low:g}, {high:g}], got {value!r}")
        if not is_integer(points_per_batch) or points_per_batch < 1:
            raise ValueError(f"points_per_batch must be a positive integer, got {points_per_batch!r}")
        if max_masks is not None and (not is_integer(max_masks) or max_masks < 1):
            raise ValueError(f"max_masks must be a positive integer or None, got {max_masks!r}")

        self.predictor = SamPredictor(model)
        self.points_per_batch = int(points_per_batch)
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.crop_n_points_downscale_factor = crop_n_points_downscale_factor
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode
        self.max_masks = None if max_masks is None else int(max_masks)
        self.progress = progress

    @classmethod
    def from_preset(cls, model: Any, preset: str = "default", **overrides: Any) -> "SamAutomaticMaskGenerator":
        """A generator with the settings of ``preset`` (see :data:`PRESETS`); ``overrides`` win."""
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
        return cls(model, **{**PRESETS[preset], **overrides})

    # ------------------------------------------------------------------ generation
    @torch.inference_mode()
    def generate(self, image: np.ndarray, predictor: Optional[SamPredictor] = None) -> List[Dict[str, Any]]:
        """Masks of ``image`` (``H×W×3`` uint8 RGB; see :func:`~promptseg.transforms.to_rgb_uint8` for
        other inputs) as records: ``segmentation`` (``H×W`` bool, or an RLE dict), ``area`` (pixels),
        ``bbox`` (XYWH from the top-left corner, with ``W = x_max - x_min`` of the inclusive pixel box,
        as the reference), ``predicted_iou``, ``point_coords`` (``[[x, y]]``), ``stability_score``,
        ``crop_box`` (XYWH).

        ``predictor`` (promptseg only): a predictor of the same model on which ``set_image(image)`` was
        called — an interactive session's, or this generator's own :attr:`predictor` — whose embedding is
        used for the whole-image crop instead of encoding the image again; it is left set. Its image must
        be this one (checked: one image, of this size); sub-image crops are encoded as usual."""
        image = to_rgb_uint8(image)
        orig_size = image.shape[:2]
        if predictor is not None:
            self._check_predictor(predictor, orig_size)
        crop_boxes, layer_idxs = generate_crop_boxes(orig_size, self.crop_n_layers, self.crop_overlap_ratio)
        # On an image a few pixels wide, a crop of a deep layer can start past the image's edge: it holds no
        # pixel and so no mask (encoding it failed on an empty image).
        nonempty = [i for i, (x0, y0, x1, y1) in enumerate(crop_boxes) if x1 > x0 and y1 > y0]
        crop_boxes, layer_idxs = [crop_boxes[i] for i in nonempty], [layer_idxs[i] for i in nonempty]
        bar = self._progress_bar(crop_boxes, layer_idxs)
        crops: List[_Crop] = []
        data = _MaskSet()
        try:
            for crop_box, layer in zip(crop_boxes, layer_idxs):
                data.cat(self._process_crop(image, crop_box, layer, orig_size, crops, bar, data.nbytes, predictor))
        finally:
            if bar is not None:
                bar.close()

        if len(crop_boxes) > 1:  # §B: duplicates across crops, preferring the most zoomed-in crop
            scores = 1 / box_area(data.crop_boxes)
            keep = batched_nms(data.boxes.float(), scores, torch.zeros(len(data)), self.crop_nms_thresh)
            data.filter(keep)

        if self.min_mask_region_area > 0:
            self._remove_small_regions(data, crops, orig_size)
        if self.max_masks is not None and len(data) > self.max_masks:
            rank = (data.iou.double() + data.stability.double()) / 2  # §D.3
            rank = torch.nan_to_num(rank, nan=-math.inf)  # NaN stability (an empty mask) ranks last, not first
            data.filter(torch.sort(rank, descending=True, stable=True).indices[: self.max_masks])
        return self._records(data, crops, orig_size)

    def _check_predictor(self, predictor: Any, orig_size: Tuple[int, int]) -> None:
        if not isinstance(predictor, SamPredictor):
            raise TypeError(f"predictor must be a promptseg SamPredictor, got {type(predictor).__name__}")
        if predictor.model is not self.predictor.model:
            raise ValueError("predictor must hold this generator's model")
        if not predictor.is_image_set or len(predictor.original_sizes) != 1:
            raise ValueError("predictor must have exactly one image set (call predictor.set_image(image) first)")
        if tuple(predictor.original_sizes[0]) != tuple(orig_size):
            raise ValueError(f"predictor holds an image of size {tuple(predictor.original_sizes[0])}, but the image "
                             f"given is {tuple(orig_size)}: set the same image on it first")

    def _crop_predictor(self, crop_box: List[int], orig_size: Tuple[int, int],
                        given: Optional[SamPredictor]) -> Tuple[SamPredictor, bool]:
        """The predictor for a crop and whether it is set here (then it is reset after the crop)."""
        if given is not None and list(crop_box) == [0, 0, orig_size[1], orig_size[0]]:
            return given, False
        if given is self.predictor:  # keep the caller's session intact: encode sub-crops elsewhere
            return SamPredictor(self.predictor.model), True
        return self.predictor, True

    def _progress_bar(self, crop_boxes: List[List[int]], layer_idxs: List[int]) -> Any:
        if not self.progress:
            return None
        from tqdm.auto import tqdm

        total = sum(-(-len(self.point_grids[layer]) // self.points_per_batch) for layer in layer_idxs)
        return tqdm(total=total, desc="masks", unit="batch")

    def _process_crop(
        self,
        image: np.ndarray,
        crop_box: List[int],
        layer: int,
        orig_size: Tuple[int, int],
        crops: List[_Crop],
        bar: Any,
        held_bytes: int,
        given: Optional[SamPredictor] = None,
    ) -> _MaskSet:
        x0, y0, x1, y1 = crop_box
        crop_image = image[y0:y1, x0:x1]
        crop_size = crop_image.shape[:2]
        predictor, own = self._crop_predictor(crop_box, orig_size, given)
        if own:
            predictor.set_image(crop_image)
        model = predictor.model
        low_len = model.prompt_encoder.mask_input_size
        geometry = LowResGeometry.build(tuple(low_len), model.image_encoder.img_size, predictor.input_sizes[0], crop_size)
        crop_index = len(crops)
        crops.append(_Crop(tuple(crop_box), geometry))

        # Points of this crop's layer, in the crop's pixels (x, y), then in the model-input frame.
        points = self.point_grids[layer] * np.array(crop_size)[None, ::-1]
        model_points = torch.as_tensor(predictor.transform.apply_coords(points, crop_size), device=predictor.device)
        decode = _PointDecoder(predictor)
        data = _MaskSet()
        for start in range(0, len(points), self.points_per_batch):
            stop = start + self.points_per_batch
            low, iou = decode(model_points[start:stop])
            data.cat(self._process_batch(low, iou, points[start:stop], crop_index, crops, orig_size, held_bytes + data.nbytes))
            if bar is not None:
                bar.update(1)
        if own:
            predictor.reset_image()

        # §B: duplicates within the crop, ranked by predicted IoU.
        keep = batched_nms(data.boxes.float(), data.iou, torch.zeros(len(data)), self.box_nms_thresh)
        data.filter(keep)
        data.boxes = uncrop_boxes_xyxy(data.boxes, crop_box)
        data.points = uncrop_points(data.points, crop_box)
        return data

    def _process_batch(
        self,
        low: Tensor,
        iou: Tensor,
        points: np.ndarray,
        crop_index: int,
        crops: List[_Crop],
        orig_size: Tuple[int, int],
        held_bytes: int,
    ) -> _MaskSet:
        crop = crops[crop_index]
        geometry = crop.geometry
        threshold = float(self.predictor.model.mask_threshold)
        offset = self.stability_score_offset
        n_out = low.shape[1]
        low = low.flatten(0, 1).cpu()
        iou = iou.flatten(0, 1).cpu()
        pts = torch.as_tensor(points.repeat(n_out, axis=0))

        # Confident masks (§B): predicted IoU, no mask needed.
        idx = torch.arange(low.shape[0])
        if self.pred_iou_thresh > 0.0:
            idx = idx[iou > self.pred_iou_thresh]
        # Stable masks (§B), first where the low-res logits decide it: a mask whose stability is
        # certainly below the threshold is dropped without being upsampled.
        if self.stability_score_thresh > 0.0 and idx.numel():
            bound = stability_upper_bound(low[idx], geometry, threshold, offset)
            cutoff = float(np.float32(self.stability_score_thresh)) * (1 - 2.0**-20)  # below any float32 rounding
            idx = idx[~(bound < cutoff)]

        # Upsample the rest a few at a time; measure exact counts and boxes; keep the bits.
        thresholds = (np.float32(threshold + offset), np.float32(threshold - offset), np.float32(threshold))
        high_counts, low_counts, boxes, bits = [], [], [], []
        for counts, mask in _upsampled(low[idx], geometry, thresholds):
            high_counts.append(counts[0])
            low_counts.append(counts[1])
            box, mask_bits = _box_and_bits(mask)
            boxes.append(box)
            bits.append(mask_bits)
        stability = stability_score_from_counts(
            torch.tensor(high_counts, dtype=torch.int64), torch.tensor(low_counts, dtype=torch.int64)
        )
        boxes_t = torch.tensor(boxes, dtype=torch.int64).reshape(-1, 4)
        keep = torch.ones(idx.numel(), dtype=torch.bool)
        if self.stability_score_thresh > 0.0:
            keep &= stability >= self.stability_score_thresh
        # §B: drop masks touching an inner crop boundary.
        keep &= ~is_box_near_crop_edge(boxes_t, list(crop.box), [0, 0, orig_size[1], orig_size[0]])

        out = _MaskSet()
        sel = torch.nonzero(keep).flatten()
        src = idx[sel]
        out.iou, out.stability, out.boxes, out.points = iou[src], stability[sel], boxes_t[sel], pts[src]
        out.crop_boxes = torch.tensor([list(crop.box)] * len(src), dtype=torch.int64).reshape(-1, 4)
        empty = torch.tensor([bits[i] is None for i in sel.tolist()], dtype=torch.bool)
        windows = support_windows(out.boxes, empty, geometry)
        for j, i in enumerate(sel.tolist()):
            b = bits[i]
            if b is None or held_bytes + b.size // 8 <= _BITS_BUDGET_BYTES:
                out.masks.append(_Mask.of_bits(b, crop_index))
                held_bytes += out.masks[-1].nbytes
            else:  # over the memory budget: keep the low-res window that determines the mask instead
                r0, r1, c0, c1 = windows[j].tolist()
                logits = low[src[j]]
                window = logits[r0:r1, c0:c1].clone()
                out.masks.append(_Mask(None, b.shape, window, (r0, c0), float(logits.min()) - 1.0, crop_index))
        return out

    # ------------------------------------------------------------------ masks at full size
    def _masks_bits(
        self, data: _MaskSet, crops: List[_Crop], block: int = 64
    ) -> Iterator[Tuple[int, Optional[np.ndarray], Tuple[int, int]]]:
        """``(index, bits, top-left corner)`` of every mask of ``data`` in order (image frame; bits None
        when the mask is empty). Masks kept as low-res windows are upsampled again, a block at a time
        and batched per crop."""
        low_h, low_w = self.predictor.model.prompt_encoder.mask_input_size
        threshold = np.float32(self.predictor.model.mask_threshold)
        for start in range(0, len(data), block):
            stop = min(len(data), start + block)
            rendered: Dict[int, np.ndarray] = {}
            by_crop: Dict[int, List[int]] = {}
            for i in range(start, stop):
                if data.masks[i].window is not None:
                    by_crop.setdefault(data.masks[i].crop, []).append(i)
            for crop_index, members in by_crop.items():
                crop = crops[crop_index]
                canvas = torch.empty(len(members), low_h, low_w, dtype=torch.float32)
                for k, i in enumerate(members):
                    mask = data.masks[i]
                    r0, c0 = mask.window_at
                    canvas[k].fill_(mask.fill)
                    canvas[k, r0 : r0 + mask.window.shape[0], c0 : c0 + mask.window.shape[1]] = mask.window
                for i, (_, full) in zip(members, _upsampled(canvas, crop.geometry, (threshold,))):
                    x0, y0, x1, y1 = (int(v) for v in data.boxes[i].tolist())
                    ox, oy = crop.box[0], crop.box[1]
                    rendered[i] = full[y0 - oy : y1 - oy + 1, x0 - ox : x1 - ox + 1].copy()
            for i in range(start, stop):
                bits = rendered.pop(i) if i in rendered else data.masks[i].bits()
                corner = (int(data.boxes[i, 0]), int(data.boxes[i, 1]))
                yield i, bits, corner if bits is not None else (0, 0)

    @staticmethod
    def _full_mask(bits: Optional[np.ndarray], at: Tuple[int, int], orig_size: Tuple[int, int]) -> np.ndarray:
        """The ``H×W`` mask of ``bits`` placed at ``at`` (``bits`` itself when it spans the image)."""
        if bits is not None and bits.shape == tuple(orig_size):
            return bits
        full = np.zeros(orig_size, dtype=bool)
        if bits is not None:
            full[at[1] : at[1] + bits.shape[0], at[0] : at[0] + bits.shape[1]] = bits
        return full

    def _remove_small_regions(self, data: _MaskSet, crops: List[_Crop], orig_size: Tuple[int, int]) -> None:
        """§B "Postprocessing": remove islands and fill holes below ``min_mask_region_area``, then rerun
        box NMS preferring masks that did not change."""
        if len(data) == 0:
            return
        new_masks, new_boxes, scores = [], [], []
        for i, bits, at in self._masks_bits(data, crops):
            mask = data.masks[i]
            full = self._full_mask(bits, at, orig_size)
            full, changed_holes = remove_small_regions(full, self.min_mask_region_area, mode="holes")
            full, changed_islands = remove_small_regions(full, self.min_mask_region_area, mode="islands")
            unchanged = not (changed_holes or changed_islands)
            nb, new_bits = _box_and_bits(full)
            new_boxes.append(nb)
            new_masks.append(_Mask.of_bits(new_bits, mask.crop))
            scores.append(float(unchanged))
        boxes = torch.tensor(new_boxes, dtype=torch.int64)
        keep = batched_nms(
            boxes.float(), torch.as_tensor(scores), torch.zeros(len(boxes)), max(self.box_nms_thresh, self.crop_nms_thresh)
        )
        data.masks = new_masks
        # As the reference, only a changed mask gets its new box: an unchanged one keeps its own, the same
        # box unless the mask is empty, whose box is its crop's corner (zeros here).
        unchanged = torch.as_tensor(scores, dtype=torch.bool)
        data.boxes = torch.where(unchanged[:, None], data.boxes, boxes)
        data.filter(keep)

    def _records(self, data: _MaskSet, crops: List[_Crop], orig_size: Tuple[int, int]) -> List[Dict[str, Any]]:
        h, w = orig_size
        records = []
        for i, bits, at in self._masks_bits(data, crops):
            box = data.boxes[i]
            if self.output_mode == "binary_mask":
                segmentation: Any = self._full_mask(bits, at, orig_size)
            else:
                rle = rle_from_box_bits(bits, at, orig_size) if bits is not None else {"size": [h, w], "counts": [h * w]}
                segmentation = coco_encode_rle(rle) if self.output_mode == "coco_rle" else rle
            x0, y0, x1, y1 = (int(v) for v in box.tolist())
            cx0, cy0, cx1, cy1 = (int(v) for v in data.crop_boxes[i].tolist())
            records.append(
                {
                    "segmentation": segmentation,
                    "area": 0 if bits is None else int(np.count_nonzero(bits)),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "predicted_iou": data.iou[i].item(),
                    "point_coords": [data.points[i].tolist()],
                    "stability_score": data.stability[i].item(),
                    "crop_box": [cx0, cy0, cx1 - cx0, cy1 - cy0],
                }
            )
            data.masks[i] = None  # written out: release it
        return records
