"""``promptseg data`` — synthetic training scenes and dataset statistics.

Commands::

    promptseg data synth OUTDIR [--num N] [--seed S] [--size 512] [--start I] [--workers W]
                                [--split all|train|heldout] [--heldout-buckets 0,1] [--num-buckets 10]
                                [--categories-file FILE] [--no-emoji] [--no-parts] [--no-photos]
                                [--photos DIR] [--min-objects A] [--max-objects B]
                                [--object-scale LO,HI] [--crowd-prob P] [--overlays]
                                [--list-categories] [--quiet]
    promptseg data stats DATASET_DIR --format sa1b|coco|folder -o OUT [--annotations FILE]
                                [--images DIR] [--masks DIR] [--max-images N] [--quiet]

:func:`register` adds the ``data`` command to an existing ``argparse`` sub-parser set (the main
``promptseg`` command line); :func:`main` runs it on its own (``main(["synth", "out", "--num", "5"])``).
User errors (missing files, no emoji font, bad options) print one line and return 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

from promptseg.cli import _numbers, number_type

EXIT_USAGE = 2


def _int_list(text: str) -> List[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None




def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``data`` (with ``synth`` and ``stats``) to ``subparsers`` (from ``add_subparsers``).

    Each leaf parser sets ``func`` (called with the parsed namespace, returns the exit status) and the
    ``data`` parser alone sets ``func`` to print its help and return 2.
    """
    data = subparsers.add_parser(
        "data",
        help="synthetic training scenes and dataset statistics",
        description="Generate synthetic segmentation scenes (SA-1B layout) or plot dataset statistics.",
    )
    data.set_defaults(func=lambda args: _no_subcommand(data))
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    p = sub.add_parser(
        "synth",
        help="generate synthetic scenes with exact masks (SA-1B layout)",
        description=(
            "Write OUTDIR/sa_<i>.jpg + sa_<i>.json for i in [START, START+NUM): composited scenes of colour "
            "emoji (with nested part masks), polygons, blobs and strokes on photo or texture backgrounds. "
            "The same seed gives byte-identical files. Emoji need the Noto Color Emoji font "
            "(apt-get install fonts-noto-color-emoji) unless --no-emoji."
        ),
    )
    p.add_argument("outdir", metavar="OUTDIR", help="output folder (created if needed)")
    p.add_argument("--num", type=number_type(int, 0), default=100, help="number of images (default 100)")
    p.add_argument("--seed", type=number_type(int, 0), default=0, help="random seed (default 0)")
    p.add_argument("--size", type=number_type(int, 1), default=512, help="image side in pixels (default 512)")
    p.add_argument("--start", type=number_type(int, 0), default=0,
                   help="index of the first image (default 0); disjoint ranges give disjoint splits")
    p.add_argument("--workers", type=number_type(int, 1), default=1, help="worker processes (default 1)")
    p.add_argument("--split", choices=("all", "train", "heldout"), default="all",
                   help="emoji categories: all, train (held-out buckets excluded) or heldout only (default all)")
    p.add_argument("--heldout-buckets", type=_int_list, default=[0], metavar="B[,B...]",
                   help="hash buckets of held-out emoji names (default 0)")
    p.add_argument("--num-buckets", type=number_type(int, 1), default=10, help="number of name-hash buckets (default 10)")
    p.add_argument("--categories-file", metavar="FILE",
                   help="use only the emoji listed in FILE (one per line: the emoji, U+XXXX or its Unicode name)")
    p.add_argument("--no-emoji", action="store_true", help="only polygons, blobs and strokes (no emoji font needed)")
    p.add_argument("--no-parts", action="store_true", help="no nested part masks inside emoji")
    p.add_argument("--no-photos", action="store_true", help="procedural textures only (no photo crops)")
    p.add_argument("--photos", action="append", default=[], metavar="DIR",
                   help="extra folder of photos for backgrounds and textures (repeatable)")
    p.add_argument("--min-objects", type=number_type(int, 0), default=None, help="fewest objects per scene (default 4)")
    p.add_argument("--max-objects", type=number_type(int, 0), default=None, help="most objects per scene (default 20)")
    p.add_argument("--object-scale", type=_scale_pair, default=None, metavar="LO,HI",
                   help="object long side as a fraction of the image side, log-uniform in [LO, HI] (default 0.08,0.5)")
    p.add_argument("--crowd-prob", type=_probability, default=None, metavar="P",
                   help="probability of a crowd of small objects in a scene (default 0.3)")
    p.add_argument("--overlays", action="store_true", help="also write OUTDIR/overlays/sa_<i>.png for viewing")
    p.add_argument("--emoji-font", metavar="TTF", help="path of NotoColorEmoji.ttf (default: the system font)")
    p.add_argument("--list-categories", action="store_true",
                   help="print the emoji the options select (codepoint, split, name) and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser(
        "stats",
        help="dataset figures: mask centres, masks per image, mask size, concavity",
        description=(
            "Write OUT/mask_centers.png, masks_per_image.png, relative_mask_size.png, concavity.png and "
            "stats.json for a dataset (as in §5 of the Segment Anything paper). Needs matplotlib."
        ),
    )
    p.add_argument("dataset", metavar="DATASET_DIR", help="dataset folder")
    p.add_argument("--format", choices=("sa1b", "coco", "folder"), default="sa1b", help="layout (default sa1b)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder (created if needed)")
    p.add_argument("--annotations", metavar="FILE", help="coco: the instances JSON (default DATASET_DIR/annotations.json)")
    p.add_argument("--images", metavar="DIR", help="coco: image folder (default DATASET_DIR); folder: default DATASET_DIR/images")
    p.add_argument("--masks", metavar="DIR", help="folder: mask folder (default DATASET_DIR/masks)")
    p.add_argument("--max-images", type=number_type(int, 1), default=None, help="use only the first N images")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=cmd_stats)
    return data


def _no_subcommand(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def _probability(text: str) -> float:
    """A number in [0, 1] (argparse type)."""
    value = number_type(float, 0.0)(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1], got {text!r}")
    return value


def _scale_pair(text: str) -> Tuple[float, float]:
    """``"LO,HI"`` → ``(LO, HI)`` with ``0 < LO ≤ HI ≤ 1`` (argparse type)."""
    lo, hi = _numbers(text, (2,), "object scale", "LO,HI")
    if not 0 < lo <= hi <= 1:
        raise argparse.ArgumentTypeError(f"need 0 < LO ≤ HI ≤ 1, got {text!r}")
    return lo, hi


def _synth_config(args: argparse.Namespace) -> Any:
    from promptseg.data.synth import SynthConfig

    cfg = SynthConfig(
        size=args.size,
        emoji=not args.no_emoji,
        parts=not args.no_parts,
        split=args.split,
        heldout_buckets=tuple(args.heldout_buckets),
        num_buckets=args.num_buckets,
        emoji_font=args.emoji_font,
        use_photos=not args.no_photos,
        photo_dirs=tuple(args.photos),
    )
    if args.object_scale is not None:
        cfg.object_scale = args.object_scale
    if args.crowd_prob is not None:
        cfg.crowd_prob = args.crowd_prob
    if args.min_objects is not None:
        cfg.min_objects = args.min_objects
    if args.max_objects is not None:
        cfg.max_objects = args.max_objects
    if cfg.min_objects > cfg.max_objects:
        if args.max_objects is None:
            cfg.max_objects = cfg.min_objects
        elif args.min_objects is None:
            cfg.min_objects = cfg.max_objects
    if any(not 0 <= b < cfg.num_buckets for b in cfg.heldout_buckets):
        raise ValueError(f"--heldout-buckets must be in [0, {cfg.num_buckets})")
    if args.categories_file:
        if args.no_emoji:
            raise ValueError("--categories-file selects emoji; it cannot be combined with --no-emoji")
        from promptseg.data.synth import emoji_codepoints, find_emoji_font, read_categories_file

        cfg.categories = read_categories_file(args.categories_file, emoji_codepoints(str(find_emoji_font(args.emoji_font))))
    return cfg


def cmd_synth(args: argparse.Namespace) -> int:
    from promptseg.data.synth import emoji_name, emoji_pool, emoji_split, generate_dataset

    cfg = _synth_config(args)
    if args.list_categories:
        cps, _ = emoji_pool(cfg)
        for cp in cps:
            print(f"U+{cp:04X}\t{emoji_split(cp, cfg.heldout_buckets, cfg.num_buckets)}\t{emoji_name(cp)}")
        return 0
    out = Path(args.outdir)
    summary = generate_dataset(out, args.num, seed=args.seed, config=cfg, workers=args.workers, start=args.start,
                               progress=not args.quiet, overlays=args.overlays)
    if not args.quiet:
        print(f"wrote {summary['images']} images with {summary['masks']} masks to {out}")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from promptseg.data.stats import _matplotlib, compute_stats, open_dataset, write_report

    _matplotlib()  # fail before the (long) pass over the data
    dataset = open_dataset(args.dataset, args.format, args.annotations, args.images, args.masks)
    stats = compute_stats(dataset, max_images=args.max_images, progress=not args.quiet)
    summary = write_report(stats, args.output, title=Path(args.dataset).name)
    if not args.quiet:
        print(
            f"{summary['images']} images, {summary['masks']} masks "
            f"({summary['masks_per_image']['mean']:.1f} per image); figures and stats.json in {args.output}"
        )
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``promptseg data`` with ``argv`` (e.g. ``["synth", "out", "--num", "5"]``; a leading ``"data"`` is
    accepted too); returns the exit status (0 success, 2 user error)."""
    from promptseg.cli import main as cli_main

    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or args_list[0] != "data":
        args_list = ["data"] + args_list
    return cli_main(args_list)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
