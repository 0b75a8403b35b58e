"""Training and fine-tuning of SAM (segment-anything.txt §3 "Losses and training", §A).

* :mod:`~promptseg.train.prompts` — the simulated interactive prompts of §A (pure functions);
* :mod:`~promptseg.train.losses` — focal, dice, IoU and the aggregating :class:`SamLoss`;
* :mod:`~promptseg.train.schedule` — AdamW groups with layer-wise lr decay, warmup + step decay;
* :mod:`~promptseg.train.config` — :class:`TrainConfig` (JSON, unknown keys rejected);
* :mod:`~promptseg.train.datasets` — dataset registry and a synthetic dataset;
* :mod:`~promptseg.train.trainer` — the loop (:func:`train`), checkpoints, exact resume, DDP;
* :mod:`~promptseg.train.cli` — ``promptseg train``.

Nothing heavy is imported here.
"""

from __future__ import annotations

from promptseg._lazy import lazy_exports

_EXPORTS = {
    "TrainConfig": "promptseg.train.config",
    "SamLoss": "promptseg.train.losses",
    "sigmoid_focal_loss": "promptseg.train.losses",
    "dice_loss": "promptseg.train.losses",
    "iou_of": "promptseg.train.losses",
    "param_groups": "promptseg.train.schedule",
    "WarmupStepDecay": "promptseg.train.schedule",
    "register_dataset": "promptseg.train.datasets",
    "SyntheticShapes": "promptseg.train.datasets",
    "Trainer": "promptseg.train.trainer",
    "SamTrainingModel": "promptseg.train.trainer",
    "train": "promptseg.train.trainer",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)