"""``promptseg eval``: the §7.1 / §D.1 report for a SAM checkpoint on a dataset."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, Optional

from promptseg.cli import DTYPES, add_part_dtype_options, number_type

FORMATS = ("sa1b", "coco", "folder")


def open_dataset(path: str, fmt: str, annotations: Optional[str] = None, masks: Optional[str] = None) -> Any:
    """A dataset in one of :data:`FORMATS` (see :mod:`promptseg.data`)."""
    if fmt == "sa1b":
        from promptseg.data.sa1b import SA1BDataset

        return SA1BDataset(path)
    if fmt == "coco":
        if not annotations:
            raise ValueError("--format coco needs --annotations INSTANCES.json")
        from promptseg.data.coco import CocoInstancesDataset

        return CocoInstancesDataset(path, annotations)
    if fmt == "folder":
        if not masks:
            raise ValueError("--format folder needs --masks MASKS_DIR")
        from promptseg.data.folder import MaskFolderDataset

        return MaskFolderDataset(path, masks)
    raise ValueError(f"--format must be one of {FORMATS}, got {fmt!r}")


def format_report(summary: Dict[str, float]) -> str:
    """A fixed-order text table of the summary metrics."""
    order = [
        ("miou/point_top1", "1-point mIoU (top-1)"),
        ("miou/point_oracle", "1-point mIoU (oracle)"),
        ("miou/box", "box mIoU"),
        ("miou/box_fill", "box mIoU, filled-box baseline"),
        ("miou/grabcut_box", "box mIoU, GrabCut baseline"),
    ]
    order += [(k, f"mIoU after {k.split('@')[1]} clicks") for k in summary if k.startswith("miou/clicks@")]
    order += [("miou/clicks_best", "mIoU, best over the clicks"), ("miou/token_grid", "mIoU, GT at the token grid"),
              ("box/area_ratio_median", "box mask area / GT, median")]
    order += [(k, k.replace("noc@", "NoC@")) for k in summary if k.startswith("noc@")]
    lines = [f"masks evaluated: {int(summary['masks'])}"]
    lines += [f"{label:30s} {summary[key]:.4f}" for key, label in order if key in summary]
    return "\n".join(lines)


def check_output_file(path: Optional[str], option: str = "-o") -> None:
    """``ValueError`` now, not after the long work, when ``path`` cannot become a file (a folder is there)."""
    if path is None:
        return
    out = Path(path)
    if out.is_dir():
        raise ValueError(f"{option} {out} is a directory; give the path of a file")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{option} {out}: {parent} exists and is not a directory")
            break


def cmd_eval(args: argparse.Namespace) -> int:
    from promptseg.fileio import atomic_write
    from promptseg.cli import _load_model
    from promptseg.eval.interactive import EvalConfig, evaluate
    from promptseg.predictor import SamPredictor

    check_output_file(args.output)
    dataset = open_dataset(args.dataset, args.format, args.annotations, args.masks)
    model = _load_model(args)
    config = EvalConfig(max_clicks=args.max_clicks, grabcut=not args.no_grabcut, mask_prompt=not args.no_mask_prompt,
                        min_area=args.min_area, min_area_fraction=args.min_area_fraction)
    items = (dataset[i] for i in range(len(dataset)))
    summary, records = evaluate(SamPredictor(model), items, config, max_masks=args.max_masks)
    print(format_report(summary))
    if args.output:
        report = {
            "checkpoint": args.checkpoint or "default",
            "dataset": args.dataset,
            "format": args.format,
            "config": {"max_clicks": config.max_clicks, "grabcut": config.grabcut, "mask_prompt": config.mask_prompt},
            "summary": summary,
            "records": records,
        }
        text = json.dumps(report, indent=1, default=float)
        atomic_write(args.output, lambda tmp: Path(tmp).write_text(text))
        print(f"report written to {args.output}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from promptseg.eval.compare import baseline_pairs, format_pairs, groups, load_report, paired
    from promptseg.eval.interactive import EvalConfig, summarize
    from promptseg.fileio import atomic_write

    if len(args.reports) > 2:
        raise ValueError(f"eval-compare takes one or two reports (BASELINE [CANDIDATE]), got {len(args.reports)}")
    check_output_file(args.output)
    docs = [load_report(path) for path in args.reports]
    for path, doc in zip(args.reports, docs):
        print(f"{path}: checkpoint {doc.get('checkpoint', '?')}, dataset {doc.get('dataset', '?')}, "
              f"{len(doc['records'])} masks")
    base = docs[0]["records"]
    cand = docs[1]["records"] if len(docs) == 2 else None
    results = {}
    for name, idx in groups(base, cand, args.by).items():
        where = "" if name == "all" else f", {args.by} = {name}"
        sub = [base[i] for i in idx]
        print()
        if cand is not None:
            rows = paired(sub, [cand[i] for i in idx])
            print(format_pairs(rows, "paired" + where))
        else:  # one report: its summary over these masks, then the model against its baselines
            summary = summarize(sub, EvalConfig(max_clicks=min(len(r["clicks_iou"]) for r in sub)))
            print((f"{args.by} = {name}: " if where else "") + format_report(summary))
            rows = baseline_pairs(sub)
            print()
            print(format_pairs(rows, "the model against the baselines of its report" + where, ("baseline", "model")))
        results[name] = [r.as_dict() for r in rows]
    if args.output:
        text = json.dumps({"reports": [str(p) for p in args.reports], "by": args.by, "groups": results}, indent=1)
        atomic_write(args.output, lambda tmp: Path(tmp).write_text(text))
        print(f"\ncomparison written to {args.output}")
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    c = subparsers.add_parser(
        "eval-compare",
        help="compare eval reports mask by mask (paired differences ± standard error)",
        description="With two reports of `promptseg eval -o` on the same masks: the per-mask difference "
        "CANDIDATE − BASELINE of every metric (mean ± standard error, masks better / worse). With one: the "
        "model's box masks against the GrabCut and filled-box baselines of the same report, and its best "
        "mask over the clicks against the ground truth drawn at the encoder's token grid.",
    )
    c.add_argument("reports", nargs="+", metavar="REPORT", help="BASELINE.json [CANDIDATE.json]")
    c.add_argument("--by", metavar="FIELD", help="also compare within groups of a per-mask field "
                   "(part: emoji parts vs whole objects; size: the masks' area fraction in bins <1%%, 1-2%%, "
                   "2-4%%, ... ≥16%%)")
    c.add_argument("-o", "--output", help="write the comparison as JSON here")
    c.set_defaults(func=cmd_compare)

    p = subparsers.add_parser(
        "eval",
        help="evaluate a SAM checkpoint: 1-point, box and interactive (NoC) metrics",
        description="Evaluate with the protocol of segment-anything §7.1/§D.1: a click at each mask's centre "
        "(top-1 and oracle mIoU), its box (with a GrabCut baseline), and clicks at the point of the error region "
        "farthest from its boundary until IoU 0.85/0.90 (NoC, up to --max-clicks).",
    )
    p.add_argument("dataset", metavar="DATASET", help="dataset folder (SA-1B layout, COCO images, or image folder)")
    p.add_argument("--format", choices=FORMATS, default="sa1b", help="dataset layout (default: sa1b)")
    p.add_argument("--annotations", help="COCO instances JSON (with --format coco)")
    p.add_argument("--masks", help="mask folder (with --format folder)")
    p.add_argument("--checkpoint", help="SAM checkpoint (default: the bundled model)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="model precision (default: float32)")
    add_part_dtype_options(p)
    p.add_argument("--max-masks", type=number_type(int, 1), default=None, metavar="N",
                   help="stop after this many masks (default: all)")
    p.add_argument("--max-clicks", type=number_type(int, 1), default=20, metavar="N",
                   help="clicks per mask in the interactive run (default 20)")
    p.add_argument("--min-area", type=number_type(int, 0), default=16, metavar="PIXELS",
                   help="skip smaller masks (default 16)")
    p.add_argument("--min-area-fraction", type=number_type(float, 0.0), default=0.0, metavar="F",
                   help="skip masks covering less than this fraction of their image (default 0)")
    p.add_argument("--no-grabcut", action="store_true", help="skip the GrabCut baseline")
    p.add_argument("--no-mask-prompt", action="store_true", help="do not feed the previous logits back")
    p.add_argument("-o", "--output", help="write the full JSON report here")
    p.set_defaults(func=cmd_eval)
    return p
