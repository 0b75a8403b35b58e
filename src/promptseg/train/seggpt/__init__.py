"""SegGPT training (seggpt.txt §3.1 "In-Context Coloring", §4, App. A): in-context pairs, loop, CLI.

* :mod:`~promptseg.train.seggpt.pairs` — semantic / instance pairs with random colour mapping, mix-context
  stitching, augmentations, model inputs (:class:`PairDataset`, :class:`PairConfig`), and the
  ``synth-scenes`` dataset type;
* :mod:`~promptseg.train.seggpt.config` — :class:`SegGptTrainConfig` (JSON, unknown keys rejected);
* :mod:`~promptseg.train.seggpt.trainer` — :class:`SegGptTrainer` / :func:`train_seggpt` on the shared
  trainer of :mod:`promptseg.train.trainer` (imports torch: import it from there);
* :mod:`promptseg.train.seggpt_cli` — ``promptseg train-seggpt``.

Importing this package loads numpy only.
"""

from __future__ import annotations

from promptseg.train.seggpt.config import SegGptModelSpec, SegGptTrainConfig
from promptseg.train.seggpt.pairs import (
    PairConfig,
    PairDataset,
    PairSample,
    SceneIndex,
    SynthScenes,
    augment_view,
    collate_pairs,
)

__all__ = [
    "SegGptTrainConfig", "SegGptModelSpec",
    "PairConfig", "PairDataset", "PairSample", "SceneIndex", "SynthScenes", "augment_view", "collate_pairs",
]
