"""Evaluation protocols of segment-anything.txt §7.1 and §D.1 (points, boxes, interactive clicks), and the
mask-by-mask comparison of their reports."""

from promptseg.eval.compare import baseline_pairs, load_report, paired
from promptseg.eval.protocols import center_point, mask_iou, next_click
from promptseg.eval.interactive import EvalConfig, evaluate, evaluate_mask, summarize

__all__ = ["center_point", "mask_iou", "next_click", "EvalConfig", "evaluate", "evaluate_mask", "summarize",
           "load_report", "paired", "baseline_pairs"]
