"""``promptseg incontext eval`` — committed evaluations of a SegGPT (:mod:`promptseg.incontext.evaluate`).

Usage::

    promptseg incontext eval oneshot DATASET [--examples 4] [--episodes 300] [--seed 0] [--min-area 16]
                                     [--checkpoint CKPT] [-o REPORT.json]
    promptseg incontext eval video [--sequences 20] [--frames 16] [--size 256] [--objects 3] [--seed 0]
                                   [--fifo 7] [--ensemble feature|spatial] [--checkpoint CKPT] [-o REPORT.json]

``oneshot`` prints mIoU of one example, of the feature ensemble and of the spatial ensemble of ``k``
examples on the same episodes; ``video`` prints J, F and J&F of first-frame propagation on synthetic
sequences. Both print a fixed-order table and, with ``-o``, write the full report as JSON (atomically).
Without ``--checkpoint`` the bundled default SegGPT is evaluated; when this build has none: exit status 2.
The parsers are built here and dispatched by ``promptseg incontext`` (:mod:`promptseg.incontext.cli`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict

EMBEDDING_TYPES = ("semantic", "instance")


def eval_parser(parser_class: Any) -> argparse.ArgumentParser:
    """The parser of ``promptseg incontext eval`` (tasks ``oneshot`` and ``video``)."""
    from promptseg.cli import number_type
    from promptseg.incontext.evaluate import DEFAULT_EPISODES, DEFAULT_EXAMPLES, DEFAULT_MIN_AREA

    parser = parser_class(
        prog="promptseg incontext eval",
        description="Evaluate a SegGPT: `oneshot` (mIoU on the categories of a synthetic scene folder; 1 example vs "
                    "feature vs spatial ensemble) or `video` (J&F on synthetic videos of moving, occluding objects).",
    )
    sub = parser.add_subparsers(dest="task", metavar="TASK", parser_class=parser_class)

    one = sub.add_parser(
        "oneshot",
        help="one-shot semantic segmentation mIoU, 1 example vs k examples (feature / spatial ensemble)",
        description="Episodes of a category: a target scene and k example scenes holding it (all its top-level "
                    "masks are the mask). Scores the first example alone, then all k with the feature and with "
                    "the spatial ensemble, on the same episodes (seggpt.txt §3.2, §4.4). Make held-out scenes with "
                    "`promptseg data synth DIR --split heldout`.",
    )
    one.add_argument("dataset", metavar="DATASET", help="folder of scenes in the SA-1B layout with per-mask names "
                                                        "(`promptseg data synth`)")
    one.add_argument("--examples", type=number_type(int, 1), default=DEFAULT_EXAMPLES, metavar="K",
                     help=f"examples per episode for the ensembles (default {DEFAULT_EXAMPLES})")
    one.add_argument("--episodes", type=number_type(int, 1), default=DEFAULT_EPISODES, metavar="N",
                     help=f"number of episodes; categories take turns (default {DEFAULT_EPISODES})")
    one.add_argument("--seed", type=number_type(int, 0), default=0, help="seed of the episodes (default 0)")
    one.add_argument("--min-area", type=number_type(int, 0), default=DEFAULT_MIN_AREA, metavar="PIXELS",
                     help=f"a scene holds a category when one of its masks has this many pixels (default {DEFAULT_MIN_AREA})")
    one.add_argument("--embedding-type", choices=EMBEDDING_TYPES, default="semantic",
                     help="the model's type token (default semantic: categories)")
    _common(one)
    one.set_defaults(func=cmd_oneshot)

    video = sub.add_parser(
        "video",
        help="J&F of first-frame propagation on synthetic videos",
        description="Synthetic sequences (moving emoji or shapes over a panning texture, crossing and hiding each "
                    "other, exact label maps) are segmented from their first frame's labels with the FIFO of "
                    "previous predictions (seggpt.txt §4.4); J, F and J&F as DAVIS 2017.",
    )
    video.add_argument("--sequences", type=number_type(int, 1), default=20, metavar="N", help="number of sequences (default 20)")
    video.add_argument("--frames", type=number_type(int, 2), default=16, metavar="T", help="frames per sequence (default 16)")
    video.add_argument("--size", type=number_type(int, 16), default=256, metavar="PIXELS", help="frame side (default 256)")
    video.add_argument("--objects", type=number_type(int, 1), default=3, metavar="K", help="objects per sequence (default 3)")
    video.add_argument("--seed", type=number_type(int, 0), default=0, help="seed of the first sequence (default 0)")
    video.add_argument("--fifo", type=number_type(int, 0), default=None, metavar="K",
                       help="previous frames used as extra examples (default 7)")
    video.add_argument("--ensemble", choices=("feature", "spatial"), default="feature",
                       help="how the frames combine (default feature)")
    video.add_argument("--embedding-type", choices=EMBEDDING_TYPES, default="instance",
                       help="the model's type token (default instance: objects)")
    _common(video)
    video.set_defaults(func=cmd_video)

    parser.set_defaults(func=lambda args: _no_task(parser))
    return parser


def _common(p: argparse.ArgumentParser) -> None:
    from promptseg.incontext.cli import _model_options

    p.add_argument("-o", "--output", metavar="REPORT.json", help="write the full report here (JSON)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _model_options(p, semantic=False)


def _no_task(parser: argparse.ArgumentParser) -> int:
    """``promptseg incontext eval`` without a task: the help on stderr, usage-error status."""
    import sys

    from promptseg.cli import EXIT_USAGE

    parser.print_help(sys.stderr)
    return EXIT_USAGE


def _predictor(args: argparse.Namespace) -> Any:
    from promptseg.incontext.cli import _predictor as load

    args.semantic = args.embedding_type == "semantic"
    return load(args)


def _checkpoint_name(args: argparse.Namespace) -> str:
    from promptseg.incontext.predictor import default_seggpt_path

    if args.checkpoint:
        return str(args.checkpoint)
    path = default_seggpt_path()
    return f"default ({path.name if path is not None else 'none bundled'})"  # no machine-specific path in reports


def _dataset_split(folder: Path) -> Any:
    """The emoji split of a ``promptseg data synth`` folder (from its metadata file), or None."""
    from promptseg.data.synth import META_FILE

    try:
        return json.loads((folder / META_FILE).read_text(encoding="utf-8"))["config"]["split"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write(report: Dict[str, Any], path: str) -> None:
    from promptseg.fileio import atomic_write
    from promptseg.incontext.evaluate import json_ready

    text = json.dumps(json_ready(report), indent=1, ensure_ascii=False, allow_nan=False) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    print(f"report written to {path}")


def cmd_oneshot(args: argparse.Namespace) -> int:
    from promptseg.incontext.evaluate import compare_ensembles, format_oneshot, oneshot_episodes

    folder = Path(args.dataset)
    if not folder.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {folder}")
    episodes = oneshot_episodes(folder, args.examples, seed=args.seed, num_episodes=args.episodes,
                                min_area=args.min_area)
    predictor = _predictor(args)
    result = compare_ensembles(predictor, episodes, args.embedding_type, progress=not args.quiet)
    split = _dataset_split(folder)
    print(f"dataset: {folder}" + (f" (emoji split {split})" if split else "") + f"; checkpoint: {_checkpoint_name(args)}")
    print(format_oneshot(result))
    if args.output:
        _write({"task": "oneshot", "checkpoint": _checkpoint_name(args), "dataset": str(folder), "split": split,
                "seed": args.seed, "min_area": args.min_area, **result}, args.output)
    return 0


def cmd_video(args: argparse.Namespace) -> int:
    from promptseg.incontext.evaluate import evaluate_video, format_video

    predictor = _predictor(args)
    result = evaluate_video(predictor, count=args.sequences, seed=args.seed, num_frames=args.frames,
                            size=(args.size, args.size), num_objects=args.objects, fifo=args.fifo,
                            ensemble=args.ensemble, progress=not args.quiet)
    print(f"checkpoint: {_checkpoint_name(args)}")
    print(format_video(result))
    if args.output:
        _write({"task": "video", "checkpoint": _checkpoint_name(args), **result}, args.output)
    return 0
