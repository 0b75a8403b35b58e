"""Typed SegGPT training configuration, read from JSON (``promptseg train-seggpt CONFIG.json``).

Every level rejects unknown keys (ValueError). Defaults follow seggpt.txt §4 where it says something:
AdamW (β 0.9, 0.999), base lr 1e-4, weight decay 0.05, warm-up 1.8k of 9k iterations, 448×448 images
(the model's ``image_size``), drop path 0.1 (Painter); the paper's cosine schedule is replaced by
promptseg's warm-up + step decay (:class:`promptseg.train.schedule.WarmupStepDecay`) and its batch of 2048
is ``batch_size × grad_accum × world_size``. The ``pairs`` section is :class:`~promptseg.train.seggpt.pairs.PairConfig`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

from promptseg.train.config import DatasetSpec, LoopConfig, check_model_spec, parse_sections
from promptseg.train.seggpt.pairs import PairConfig, register_datasets

register_datasets()  # "synth-scenes" must be known before a dataset section is checked


@dataclass(frozen=True)
class SegGptModelSpec:
    """Which SegGPT to train: a ``preset`` (``tiny``/``vit_l``) or a full ``config`` (a
    :class:`~promptseg.models.seggpt.SegGptConfig` as a dict), and/or an initial ``checkpoint`` (promptseg
    safetensors, transformers folder or Painter ``.pth``; its architecture is used when neither preset nor
    config is given)."""

    preset: Optional[str] = None
    config: Optional[Dict[str, Any]] = None
    checkpoint: Optional[str] = None
    #: Start the encoder from a SAM image encoder (``promptseg.models.seggpt.transfer``): a SAM checkpoint
    #: path, or ``"default"`` for the bundled default SAM. Applied after ``checkpoint``.
    init_encoder_from_sam: Optional[str] = None

    def __post_init__(self) -> None:
        check_model_spec(self)
        self.seggpt_config()  # unknown preset or config keys fail now
        if self.init_encoder_from_sam is not None and not str(self.init_encoder_from_sam):
            raise ValueError("model.init_encoder_from_sam must be a SAM checkpoint path or 'default'")

    def seggpt_config(self) -> Any:
        """The :class:`SegGptConfig` named by ``preset``/``config`` (None: the checkpoint's)."""
        from promptseg.models.seggpt.build import resolve_seggpt_config
        from promptseg.models.seggpt.config import SegGptConfig

        if self.config is not None:
            return SegGptConfig.from_dict(self.config)
        return None if self.preset is None else resolve_seggpt_config(self.preset)

    def to_dict(self) -> Dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True, kw_only=True)
class SegGptTrainConfig(LoopConfig):
    """A SegGPT training run: ``model``, ``dataset`` (scenes), ``pairs`` (how in-context pairs are drawn) and
    the loop fields of :class:`~promptseg.train.config.LoopConfig`, with SegGPT's defaults (§4)."""

    model: SegGptModelSpec
    dataset: DatasetSpec
    pairs: PairConfig = field(default_factory=PairConfig)

    # LoopConfig defaults that differ for SegGPT (§4; batch_size: pairs per process and micro-step)
    out_dir: str = "runs/seggpt"
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.05
    layer_decay: float = 1.0
    drop_path: Optional[float] = 0.1  # Painter's; None: keep the model config's drop_path_rate
    warmup: int = 1800
    milestones: Tuple[int, ...] = (6000, 8000)
    max_steps: int = 9000
    clip_grad_norm: Optional[float] = 3.0
    checkpoint_every: int = 500
    #: Weight of coloured (non-black) target pixels in the smooth-ℓ1 loss; 1.0 is the paper's loss. Above 1
    #: it counters the pull towards an all-black prediction when objects are small and compute is short
    #: (the bundled model's CPU recipe, docs/seggpt_training.md).
    fg_weight: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.fg_weight > 0:
            raise ValueError(f"fg_weight must be > 0, got {self.fg_weight}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SegGptTrainConfig":
        kwargs = parse_sections(cls, data, "SegGPT train config", SegGptModelSpec)
        kwargs["pairs"] = PairConfig.from_dict(kwargs.get("pairs", {}))
        return cls(**kwargs)
