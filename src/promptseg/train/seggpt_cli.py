"""``promptseg train-seggpt CONFIG.json [--out DIR] [--max-steps N] [--resume [CKPT]] [--no-progress]``.

:func:`register` adds the command to the main CLI's subparsers; :func:`main` runs it on its own
(``python -m promptseg.train.seggpt_cli CONFIG.json``), which is also the entry point for ``torchrun``::

    torchrun --nproc_per_node 8 -m promptseg.train.seggpt_cli configs/default_seggpt_synth.json

The options and their handling are those of ``promptseg train`` (:mod:`promptseg.train.cli`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Optional, Sequence

from promptseg.train.cli import add_arguments, run_main, run_training

DESCRIPTION = (
    "Train SegGPT by in-context colouring from a JSON config (see docs/seggpt_training.md). Writes "
    "OUT/metrics.csv, OUT/checkpoints/step_*.pt and, at the end, OUT/model.safetensors (loadable with "
    "promptseg.models.seggpt.load_seggpt). Launch with torchrun for multi-process (DDP) training."
)


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``train-seggpt`` command to an ``argparse`` subparsers object (sets ``func``)."""
    parser = subparsers.add_parser("train-seggpt", help="train SegGPT (in-context colouring) from a JSON config",
                                   description=DESCRIPTION)
    add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Execute ``train-seggpt`` for parsed arguments; returns the exit status."""
    from promptseg.train.seggpt.config import SegGptTrainConfig
    from promptseg.train.seggpt.trainer import train_seggpt

    return run_training(SegGptTrainConfig.from_json(args.config), args, train_seggpt)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_main("promptseg train-seggpt", DESCRIPTION, run, argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
