"""The evaluation loop: one-point (top-1 and oracle), box, and interactive clicks (NoC) per mask.

Protocol (segment-anything.txt §7.1, §D.1):
* 1 point at the mask centre, multimask output; top-1 = the mask SAM ranks first by predicted IoU,
  oracle = the best of the three against ground truth;
* box = the ground-truth box, single-mask output; baselines on the same box: the filled box itself
  (``box_fill``) and OpenCV's GrabCut; the box mask's area over the ground truth's (``box_area_ratio``:
  below 1 when it under-segments);
* interactive: clicks added one at a time at the point farthest from the error region's boundary,
  the previous low-res logits passed as mask prompt, single-mask output after the first click (§A);
  IoU after N clicks and NoC@τ = clicks needed to reach IoU τ (``max_clicks`` when never reached);
* a reference level for mask precision (``token_grid``): the ground truth drawn at the encoder's token
  grid and brought back as SAM's logits are (:func:`promptseg.eval.protocols.grid_reference`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from promptseg.config_utils import is_integer
from promptseg.eval.grabcut import grabcut_from_box
from promptseg.eval.protocols import box_fill, center_point, grid_reference, mask_box, mask_iou, next_click


@dataclass(frozen=True)
class EvalConfig:
    max_clicks: int = 20
    noc_thresholds: Sequence[float] = (0.85, 0.90)
    report_clicks: Sequence[int] = (1, 2, 3, 5, 9)
    mask_prompt: bool = True  # pass the previous prediction's logits to the next click (§A)
    grabcut: bool = True
    token_grid: bool = True  # record the ground truth's IoU at the encoder's token grid (a SAM predictor)
    min_area: int = 16  # masks smaller than this (pixels) are skipped
    min_area_fraction: float = 0.0  # ... and masks covering less than this fraction of their image

    def __post_init__(self) -> None:
        if not is_integer(self.max_clicks) or self.max_clicks < 1:  # 0 would score NoC 0, the best, for any mask
            raise ValueError(f"max_clicks must be an integer ≥ 1, got {self.max_clicks!r}")
        if not all(0.0 < float(t) <= 1.0 for t in self.noc_thresholds):
            raise ValueError(f"noc_thresholds must be IoUs in (0, 1], got {tuple(self.noc_thresholds)}")
        if not all(is_integer(n) and n >= 1 for n in self.report_clicks):
            raise ValueError(f"report_clicks must be click counts ≥ 1, got {tuple(self.report_clicks)}")
        if not 0.0 <= self.min_area_fraction < 1.0:
            raise ValueError(f"min_area_fraction must be in [0, 1), got {self.min_area_fraction}")


def token_grid(predictor: Any) -> Optional[Tuple[int, int]]:
    """``(img_size, tokens per side)`` of the SAM ViT behind ``predictor``; ``None`` for other predictors."""
    from promptseg.models.sam.config import ImageEncoderConfig

    config = getattr(getattr(getattr(predictor, "model", None), "image_encoder", None), "config", None)
    if not isinstance(config, ImageEncoderConfig):
        return None
    return config.img_size, config.grid_size


def evaluate_mask(
    predictor: Any, image: np.ndarray, gt: np.ndarray, config: EvalConfig = EvalConfig(),
    grid: Optional[Tuple[int, int]] = None,
) -> Dict[str, Any]:
    """Evaluate one ground-truth mask on the image already set in ``predictor``; with ``grid``
    (``(img_size, tokens per side)``, :func:`token_grid`) the record also holds ``token_grid``."""
    gt = np.asarray(gt, dtype=bool)  # a 0/255 mask would scale box_area_ratio and token_grid
    record: Dict[str, Any] = {}
    if grid is not None:
        record["token_grid"] = grid_reference(gt, *grid)
    x, y = center_point(gt)
    masks, scores, logits = predictor.predict(np.array([[x, y]]), np.array([1]), multimask_output=True)
    ious = [mask_iou(m, gt) for m in masks]
    best = int(np.argmax(scores))
    record["point_top1"] = ious[best]
    record["point_oracle"] = max(ious)

    box = mask_box(gt)
    box_mask = predictor.predict(box=box, multimask_output=False)[0][0]
    record["box"] = mask_iou(box_mask, gt)
    record["box_area_ratio"] = float(box_mask.sum()) / float(gt.sum())  # < 1: under-segmented, > 1: over
    record["box_fill"] = mask_iou(box_fill(box, gt.shape), gt)
    if config.grabcut:
        record["grabcut_box"] = mask_iou(grabcut_from_box(image, box), gt)

    # the interactive run starts from the 1-point prediction above: its top-ranked mask and logits
    points, labels = [[x, y]], [1]
    pred, prev_logits = masks[best], logits[best : best + 1]
    clicks_iou = [ious[best]]
    while len(clicks_iou) < config.max_clicks:
        click = next_click(pred, gt)
        if click is None:  # perfect: every later click keeps IoU 1
            clicks_iou += [1.0] * (config.max_clicks - len(clicks_iou))
            break
        points.append([click[0], click[1]])
        labels.append(click[2])
        masks, _, logits = predictor.predict(
            np.array(points),
            np.array(labels),
            mask_input=prev_logits if config.mask_prompt else None,
            multimask_output=False,
        )
        pred, prev_logits = masks[0], logits[0:1]
        clicks_iou.append(mask_iou(pred, gt))
    record["clicks_iou"] = clicks_iou
    for tau in config.noc_thresholds:
        reached = [i + 1 for i, v in enumerate(clicks_iou) if v >= tau]
        record[f"noc@{int(round(tau * 100))}"] = reached[0] if reached else config.max_clicks
    return record


def summarize(records: Sequence[Dict[str, Any]], config: EvalConfig = EvalConfig()) -> Dict[str, float]:
    """Mean of every metric over masks: mIoU (1 point top-1/oracle, box, filled box, GrabCut box, after N
    clicks, the best over the clicks, the token-grid reference), NoC; the median box-mask area ratio."""
    if not records:
        raise ValueError("no masks were evaluated")
    out: Dict[str, float] = {"masks": float(len(records))}
    for key in ("point_top1", "point_oracle", "box", "box_fill", "grabcut_box"):
        if key in records[0]:
            out[f"miou/{key}"] = float(np.mean([r[key] for r in records]))
    for n in config.report_clicks:
        if n <= config.max_clicks:
            out[f"miou/clicks@{n}"] = float(np.mean([r["clicks_iou"][n - 1] for r in records]))
    out["miou/clicks_best"] = float(np.mean([max(r["clicks_iou"]) for r in records]))
    if all("box_area_ratio" in r for r in records):
        out["box/area_ratio_median"] = float(np.median([r["box_area_ratio"] for r in records]))
    if all("token_grid" in r for r in records):
        out["miou/token_grid"] = float(np.mean([r["token_grid"] for r in records]))
    for tau in config.noc_thresholds:
        key = f"noc@{int(round(tau * 100))}"
        out[key] = float(np.mean([r[key] for r in records]))
    return out


def evaluate(
    predictor: Any,
    items: Iterable[Dict[str, Any]],
    config: EvalConfig = EvalConfig(),
    max_masks: Optional[int] = None,
    progress: bool = True,
) -> tuple[Dict[str, float], List[Dict[str, Any]]]:
    """Evaluate every mask of every item (``{"image": H×W×3 uint8, "masks": K×H×W bool, ...}``).

    Returns ``(summary, per-mask records)``; each image is encoded once. Besides the metrics, a record
    names its mask (``image_id``, ``mask_index``, ``area_fraction``; ``part`` and ``name`` when the item
    has ``parents`` / ``names``), so reports can be compared mask by mask (:mod:`promptseg.eval.compare`).
    """
    if max_masks is not None and (not is_integer(max_masks) or max_masks < 1):  # 0 evaluated one mask
        raise ValueError(f"max_masks must be None or an integer ≥ 1, got {max_masks!r}")
    records: List[Dict[str, Any]] = []
    grid = token_grid(predictor) if config.token_grid else None
    bar = tqdm(total=max_masks, desc="eval masks", unit="mask", disable=not progress)
    for item in items:
        image, gts = item["image"], np.asarray(item["masks"], dtype=bool)
        pixels = gts.shape[-2] * gts.shape[-1]
        areas = gts.reshape(len(gts), pixels).sum(axis=1)  # an item may have no masks (K = 0)
        least = max(config.min_area, config.min_area_fraction * pixels)
        keep = [k for k in range(len(gts)) if areas[k] > 0 and areas[k] >= least]  # an empty mask has no centre
        if not keep:
            continue
        predictor.set_image(image)
        names, parents = item.get("names"), item.get("parents")
        for k in keep:
            rec = evaluate_mask(predictor, image, gts[k], config, grid)
            rec["image_id"] = item.get("image_id")
            rec["mask_index"] = k  # the mask's index in its item (before the area filter)
            rec["area_fraction"] = float(areas[k]) / pixels
            if parents is not None:  # an object part (Fig. 3's nesting) or a whole object
                rec["part"] = bool(parents[k] >= 0)
            if names is not None:
                rec["name"] = names[k]
            records.append(rec)
            bar.update(1)
            if max_masks is not None and len(records) >= max_masks:
                bar.close()
                return summarize(records, config), records
    bar.close()
    return summarize(records, config), records
