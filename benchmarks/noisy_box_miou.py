"""Box mIoU with loose boxes: each evaluated mask's box jittered with §A's noise, several draws per mask.

    python benchmarks/noisy_box_miou.py BASELINE.safetensors CANDIDATE.safetensors [...]

Not a speed benchmark: a quality check for a choice that `promptseg eval` cannot make alone. The eval
prompts every mask with its exact box, so a model trained on tighter boxes could gain there by relying on
tight boxes and lose with the boxes people draw. This prompts the same masks (those of a report written by
`promptseg eval`, by `image_id` and `mask_index`) with boxes jittered as in training (segment-anything.txt
§A: std 10 % of the side, at most 20 px; `promptseg.train.prompts.noisy_boxes`), the same draws for every
checkpoint, and prints each checkpoint's mean IoU of the single-output mask and its paired difference
(mean ± standard error over masks) from the first checkpoint.
"""

from __future__ import annotations

import argparse
import json
from typing import List, Optional

import numpy as np


def noisy_box_ious(checkpoint: str, dataset: str, records: list, draws: int, seed: int) -> np.ndarray:
    """Per record: the mean IoU over ``draws`` jittered boxes of the single-output mask."""
    import torch

    from promptseg import SamPredictor, load_model
    from promptseg.eval.cli import open_dataset
    from promptseg.eval.protocols import mask_box, mask_iou
    from promptseg.train.prompts import noisy_boxes

    data = open_dataset(dataset, "sa1b")
    by_image: dict = {}
    for i, r in enumerate(records):
        by_image.setdefault(r["image_id"], []).append(i)
    predictor = SamPredictor(load_model(checkpoint))
    generator = torch.Generator().manual_seed(seed)
    out = np.full(len(records), np.nan)
    for index in range(len(data)):
        item = data[index]
        if item["image_id"] not in by_image:
            continue
        predictor.set_image(item["image"])
        for i in by_image.pop(item["image_id"]):
            gt = np.asarray(item["masks"][records[i]["mask_index"]], dtype=bool)
            exact = torch.as_tensor(mask_box(gt), dtype=torch.float32)[None].repeat(draws, 1)
            boxes = noisy_boxes(exact, generator, 0.1, 20.0, torch.tensor([gt.shape] * draws))
            out[i] = np.mean([mask_iou(predictor.predict(box=b.numpy(), multimask_output=False)[0][0], gt)
                              for b in boxes])
        if not by_image:
            break
    if np.isnan(out).any():
        raise ValueError(f"{dataset} lacks images the report names ({int(np.isnan(out).sum())} masks unmatched)")
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="checkpoints; the first is the baseline of the pairs")
    parser.add_argument("--dataset", default="data/synth256_heldout", help="SA-1B-layout dataset of the report")
    parser.add_argument("--report", default="docs/records/default_model_eval.json",
                        help="a `promptseg eval -o` report on that dataset: which masks to prompt")
    parser.add_argument("--draws", type=int, default=3, help="jittered boxes per mask")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from promptseg.eval.compare import pair_values

    with open(args.report, encoding="utf-8") as f:
        records = json.load(f)["records"]
    results = [noisy_box_ious(c, args.dataset, records, args.draws, args.seed) for c in args.checkpoints]
    for checkpoint, ious in zip(args.checkpoints, results):
        line = f"{checkpoint}: box mIoU with §A-jittered boxes {ious.mean():.4f} ({len(ious)} masks × {args.draws})"
        if ious is not results[0]:
            p = pair_values(results[0].tolist(), ious.tolist())
            line += f"; paired vs the first {p.diff:+.4f} ± {p.stderr:.4f} (better on {p.better}, worse on {p.worse})"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
