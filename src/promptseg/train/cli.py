"""``promptseg train CONFIG.json [--resume [CKPT]] [--out DIR] [--device DEV] [--max-steps N] [--time-limit MIN]``.

:func:`register` adds the ``train`` command to the main CLI's subparsers; :func:`main` runs it on its
own (``python -m promptseg.train.cli CONFIG.json``), which is also the entry point for ``torchrun``::

    torchrun --nproc_per_node 8 -m promptseg.train.cli configs/sam_vit_b.json
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Optional, Sequence

EXIT_USAGE = 2

DESCRIPTION = (
    "Train or fine-tune SAM from a JSON config (see docs/training.md). Writes OUT/metrics.csv, "
    "OUT/checkpoints/step_*.pt and, at the end, OUT/model.safetensors (loadable with promptseg.load_sam). "
    "Launch with torchrun for multi-process (DistributedDataParallel) training."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG", help="training config (.json)")
    parser.add_argument(
        "--resume", nargs="?", const="auto", default=None, metavar="CKPT",
        help="continue a run: from CKPT, or (no value) from the checkpoint written last in the output directory",
    )
    parser.add_argument("--out", metavar="DIR", help="output directory (overrides out_dir)")
    parser.add_argument("--device", metavar="DEV", help="torch device: auto, cpu, cuda, cuda:1 … (overrides device)")
    parser.add_argument("--max-steps", type=int, metavar="N", help="stop after N optimiser steps (overrides max_steps)")
    parser.add_argument(
        "--time-limit", type=float, metavar="MIN",
        help="stop cleanly after MIN minutes of training (checkpoint + model written; --resume continues)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``train`` command to an ``argparse`` subparsers object (sets ``func``)."""
    parser = subparsers.add_parser("train", help="train or fine-tune SAM from a JSON config", description=DESCRIPTION)
    add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def config_overrides(args: argparse.Namespace) -> dict:
    """The config fields that ``--out``, ``--device``, ``--max-steps`` and ``--no-progress`` replace."""
    changes: dict = {}
    if args.out is not None:
        changes["out_dir"] = args.out
    if args.device is not None:
        changes["device"] = args.device
    if args.max_steps is not None:
        if args.max_steps < 1:
            raise ValueError("--max-steps must be ≥ 1")
        changes["max_steps"] = args.max_steps
    if getattr(args, "no_progress", False):
        changes["progress"] = False
    return changes


def run_training(config: Any, args: argparse.Namespace, train_fn: Any) -> int:
    """Apply the command-line overrides to ``config``, run ``train_fn(config, resume=…)`` and print a summary."""
    changes = config_overrides(args)
    if changes:
        config = config.replace(**changes)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    limit = args.time_limit
    if limit is not None and not limit > 0:
        raise ValueError(f"--time-limit must be a positive number of minutes, got {limit}")
    result = train_fn(config, resume=args.resume, time_limit=None if limit is None else limit * 60.0)
    if result.model_path is not None:
        last = result.history[-1] if result.history else None
        summary = f"loss {last['loss']:.4f}, mIoU {last['miou']:.3f}, " if last else ""
        stopped = "; time limit reached: continue with --resume" if getattr(result, "time_limited", False) else ""
        raw = getattr(result, "raw_model_path", None)
        averaged = f" (weight average; last weights: {raw})" if raw is not None else ""
        print(
            f"trained to step {result.steps} ({summary}{result.steps_per_second:.2f} steps/s); "
            f"model: {result.model_path}{averaged}{stopped}"
        )
    return 0


def run(args: argparse.Namespace) -> int:
    """Execute ``train`` for parsed arguments; returns the exit status."""
    from promptseg.train.config import TrainConfig
    from promptseg.train.trainer import train

    return run_training(TrainConfig.from_json(args.config), args, train)


def run_main(prog: str, description: str, run_fn: Any, argv: Optional[Sequence[str]] = None) -> int:
    """A stand-alone entry point: parse :func:`add_arguments`, call ``run_fn(args)``; errors → one line, 2."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_arguments(parser)
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
        return run_fn(args)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except (ValueError, OSError) as err:
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return EXIT_USAGE


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_main("promptseg train", DESCRIPTION, run, argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
