"""Typed training configuration, read from JSON (``promptseg train CONFIG.json``).

Every level rejects unknown keys: a typo is an error, never a silently ignored option. The defaults
are the paper's recipe for ViT-H (segment-anything.txt §A "Training recipe"): AdamW β (0.9, 0.999),
lr 8e-4, weight decay 0.1, drop path 0.4, layer decay 0.8, 250 warmup iterations, ×0.1 at 60k and
86 666 of 90k iterations; 11 prompt rounds per mask (§3, §A "Training algorithm"); up to 64 masks per
GPU, masks covering more than 90 % of the image discarded. For ViT-B the paper uses lr 8e-4, ld 0.6,
dp 0.6 and 180k iterations at batch 128; for ViT-L lr 4e-4, ld 0.8, dp 0.4.

The global batch is ``batch_size × grad_accum × world_size`` images (the paper: 256 = 1 × 1 × 256).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from promptseg.config_utils import check_unknown_keys, check_value_types

MODES = ("full", "decoder", "decoder+prompt")
LOSS_RESOLUTIONS = ("input", "low_res")
AVERAGES = ("ema", "uniform")


def check_average(kind: Optional[str], decay: float, start: int) -> None:
    """Raise ``ValueError`` for an unknown ``kind``, a ``decay`` outside (0, 1) or a negative ``start``."""
    if kind is not None and kind not in AVERAGES:
        raise ValueError(f"average must be one of {AVERAGES} (or null for none), got {kind!r}")
    if not 0.0 < decay < 1.0:
        raise ValueError(f"average_decay must be in (0, 1), got {decay}")
    if int(start) < 0:
        raise ValueError(f"average_start must be ≥ 0, got {start}")


def _check_keys(cls: type, data: Mapping[str, Any], where: str) -> None:
    if not isinstance(data, Mapping):
        raise ValueError(f"{where} must be a JSON object, got {type(data).__name__}")
    check_unknown_keys(cls, data, where)


def check_model_spec(spec: Any) -> None:
    """A model section names either ``preset`` or ``config`` (not both), or at least a ``checkpoint``."""
    if spec.preset is not None and spec.config is not None:
        raise ValueError("model: give either 'preset' or 'config', not both")
    if spec.preset is None and spec.config is None and spec.checkpoint is None:
        raise ValueError("model: give a 'preset', a 'config' or a 'checkpoint'")


@dataclass(frozen=True)
class ModelSpec:
    """Which SAM to train: a ``preset`` (``vit_b``/``vit_l``/``vit_h``) or a full ``config`` (a
    :class:`~promptseg.models.sam.config.SamConfig` as a dict), and/or an initial ``checkpoint``
    (official ``.pth`` or promptseg ``.safetensors``, loaded with :func:`promptseg.load_sam`; its
    architecture is taken from the file when neither preset nor config is given)."""

    preset: Optional[str] = None
    config: Optional[Dict[str, Any]] = None
    checkpoint: Optional[str] = None

    def __post_init__(self) -> None:
        check_model_spec(self)
        if self.preset is not None:
            from promptseg.models.sam.config import SAM_PRESETS

            if self.preset not in SAM_PRESETS:
                raise ValueError(f"model.preset: unknown preset {self.preset!r}; choose one of {sorted(SAM_PRESETS)}")
        if self.config is not None:
            self.sam_config()  # validate now (unknown keys, inconsistent widths)

    def to_dict(self) -> Dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def sam_config(self) -> Any:
        """The :class:`SamConfig` named by ``preset``/``config`` (None: take it from the checkpoint)."""
        from promptseg.models.sam.config import SAM_PRESETS, SamConfig

        if self.preset is not None:
            return SAM_PRESETS[self.preset]
        if self.config is not None:
            return SamConfig.from_dict(self.config)
        return None


@dataclass(frozen=True)
class DatasetSpec:
    """``{"type": NAME, ...options}``: NAME is registered with
    :func:`promptseg.train.datasets.register_dataset`; the options are its factory's keyword arguments."""

    type: str
    options: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "dataset") -> "DatasetSpec":
        if not isinstance(data, Mapping) or "type" not in data:
            raise ValueError(f"{where} must be a JSON object with a 'type' key")
        from promptseg.train.datasets import check_dataset_options

        options = {k: v for k, v in data.items() if k != "type"}
        check_dataset_options(str(data["type"]), options, where)
        return cls(type=str(data["type"]), options=options)

    def to_dict(self) -> Dict[str, Any]:
        return {"type": self.type, **self.options}


def parse_sections(cls: type, data: Mapping[str, Any], where: str, model_cls: type) -> Dict[str, Any]:
    """Keyword arguments of a trainer config ``cls`` from JSON ``data``: unknown keys rejected, the required
    ``model`` (a ``model_cls``) and ``dataset`` (a :class:`DatasetSpec`) sections parsed, ``betas`` and
    ``milestones`` made tuples."""
    _check_keys(cls, data, where)
    check_value_types(typing.get_type_hints(cls), data, where)
    for key in ("model", "dataset"):
        if key not in data:
            raise ValueError(f"{where}: missing required key {key!r}")
    kwargs = dict(data)
    _check_keys(model_cls, kwargs["model"], "model")
    check_value_types(typing.get_type_hints(model_cls), kwargs["model"], "model")  # a number for a path: named now
    kwargs["model"] = model_cls(**kwargs["model"])
    kwargs["dataset"] = DatasetSpec.from_dict(kwargs["dataset"])
    for key in ("betas", "milestones"):
        if key in kwargs:
            kwargs[key] = tuple(kwargs[key])
    return kwargs


@dataclass(frozen=True, kw_only=True)
class LoopConfig:
    """What :class:`promptseg.train.trainer.Trainer` reads — output, device, seed, data loading, AdamW with
    layer decay, warm-up + step decay, gradient accumulation, bf16, bookkeeping — with its checks and the
    JSON plumbing. Every trainer's config derives from it; the fields are keyword-only, so a subclass lists
    its own fields freely and re-declares the defaults it changes. The defaults are SAM's (§A)."""

    out_dir: str = "runs/sam"
    #: "auto" (CUDA when available), "cpu", "cuda", "cuda:1", …
    device: str = "auto"
    seed: int = 0

    # data
    batch_size: int = 1  # samples (SAM: images) per process and micro-step
    shuffle: bool = True
    num_workers: int = 0

    # optimisation (§A "Training recipe")
    lr: float = 8e-4
    betas: Tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.1
    layer_decay: float = 0.8
    drop_path: Optional[float] = 0.4  # None: keep the model config's drop_path_rate
    warmup: int = 250
    milestones: Tuple[int, ...] = (60000, 86666)
    lr_gamma: float = 0.1
    max_steps: int = 90000
    grad_accum: int = 1
    clip_grad_norm: Optional[float] = None
    bf16: bool = False
    #: Weight averaging (promptseg.train.averaging): None, "ema" (exponential moving average, weight
    #: ``1 - average_decay`` per step) or "uniform" (the mean of the weights after every step from
    #: ``average_start`` on: stochastic weight averaging). The run's model.safetensors is then the
    #: average, model_raw.safetensors the optimiser's last weights.
    average: Optional[str] = None
    average_decay: float = 0.999
    average_start: int = 0

    # bookkeeping
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3  # 0 keeps all
    log_every: int = 10
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self) -> None:
        def need(cond: bool, message: str) -> None:
            if not cond:
                raise ValueError(message)

        for name in ("batch_size", "max_steps", "grad_accum", "checkpoint_every", "log_every"):
            need(int(getattr(self, name)) >= 1, f"{name} must be ≥ 1, got {getattr(self, name)}")
        for name in ("num_workers", "warmup", "keep_checkpoints"):
            need(int(getattr(self, name)) >= 0, f"{name} must be ≥ 0, got {getattr(self, name)}")
        need(0 <= self.seed < 2**64, f"seed must be in [0, 2**64) (a numpy / torch seed), got {self.seed}")
        need(self.lr > 0, "lr must be positive")
        need(self.weight_decay >= 0, f"weight_decay must be ≥ 0, got {self.weight_decay}")
        need(self.lr_gamma > 0, f"lr_gamma must be > 0 (a negative one makes the learning rate negative), got {self.lr_gamma}")
        need(len(self.betas) == 2, "betas must be two numbers")
        need(0.0 < self.layer_decay <= 1.0, "layer_decay must be in (0, 1]")
        need(self.drop_path is None or 0.0 <= self.drop_path < 1.0, "drop_path must be in [0, 1)")
        need(list(self.milestones) == sorted(self.milestones), "milestones must be increasing")
        need(self.clip_grad_norm is None or self.clip_grad_norm > 0, "clip_grad_norm must be positive (or null)")
        check_average(self.average, self.average_decay, self.average_start)
        need(self.average is None or self.average_start < self.max_steps,
             f"average_start ({self.average_start}) must be below max_steps ({self.max_steps}): nothing would be averaged")

    # ------------------------------------------------------------------------------------- (de)serialisation
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any:  # pragma: no cover - every config defines its own
        raise NotImplementedError

    @classmethod
    def from_json(cls, path: Union[str, Path]) -> Any:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: invalid JSON: {err}") from err
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: {err}") from err

    def to_dict(self) -> Dict[str, Any]:
        """The config as JSON-able data: the subclass's own fields (model, dataset, …) first, then the loop's."""
        loop = {f.name for f in dataclasses.fields(LoopConfig)}
        ordered = sorted(dataclasses.fields(self), key=lambda f: f.name in loop)  # stable: keeps declaration order
        out: Dict[str, Any] = {}
        for f in ordered:
            value = getattr(self, f.name)
            if hasattr(value, "to_dict"):  # the sections: model, dataset, …
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def replace(self, **changes: Any) -> Any:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class TrainConfig(LoopConfig):
    model: ModelSpec
    dataset: DatasetSpec
    #: "full" trains everything; "decoder" freezes image encoder + prompt encoder; "decoder+prompt"
    #: freezes the image encoder only. Frozen parts run in eval mode (no drop path).
    mode: str = "full"

    # data (and LoopConfig's batch_size, shuffle, num_workers)
    masks_per_image: int = 64  # at most this many GT masks, sampled at random, per image
    max_mask_area: float = 0.9  # discard masks covering more than this fraction of the image (§A)
    min_mask_area: float = 0.0  # discard masks covering less (e.g. parts below the decoder's resolution)

    # prompt simulation (§A "Training algorithm")
    rounds: int = 11
    points_per_round: int = 1
    box_probability: float = 0.5
    box_noise_std: float = 0.1
    box_noise_max: float = 20.0
    #: The first round's box gets the 3 ambiguity-aware outputs like a click (true, the default: §A's
    #: "single prompt"), or the single-output token (false: a box as two corner tokens, the way it is
    #: predicted at inference and SAM 2 trains it; see :func:`promptseg.train.prompts.multimask_rows`).
    multimask_box: bool = True
    detach_mask_prompt: bool = True
    loss_resolution: str = "input"  # "input": logits upsampled to img_size²; "low_res": GT downsampled
    recompute_loss: bool = True  # recompute the full-size loss maps in backward (memory ↓, same numbers)
    #: Focal + dice in one fused pass with a written-out gradient (losses.focal_and_dice); false: the
    #: plain autograd formulation it is tested against (the same numbers up to float rounding, 1.5× slower per round).
    fused_loss: bool = True
    #: Back-propagate each round as soon as its loss is known (memory: one round's decoder activations
    #: instead of all ``rounds``; same gradients up to float rounding). Needs ``detach_mask_prompt``; one process.
    round_backward: bool = False

    # losses (§A "Losses")
    focal_weight: float = 20.0
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    #: Weight of the first round's loss (the initial point or box) against each later round's weight of 1:
    #: the loss is ``Σ_r w_r·L_r / Σ_r w_r``. 1.0 is §A's plain mean over rounds; more puts the gradient
    #: on the one-prompt masks that the 1-point and box evaluations score.
    first_round_weight: float = 1.0

    def __post_init__(self) -> None:
        def need(cond: bool, message: str) -> None:
            if not cond:
                raise ValueError(message)

        need(self.mode in MODES, f"mode must be one of {MODES}, got {self.mode!r}")
        need(self.loss_resolution in LOSS_RESOLUTIONS, f"loss_resolution must be one of {LOSS_RESOLUTIONS}")
        for name in ("masks_per_image", "rounds", "points_per_round"):
            need(int(getattr(self, name)) >= 1, f"{name} must be ≥ 1, got {getattr(self, name)}")
        need(0.0 < self.max_mask_area <= 1.0, "max_mask_area must be in (0, 1]")
        need(0.0 <= self.min_mask_area < self.max_mask_area, "min_mask_area must be in [0, max_mask_area)")
        need(0.0 <= self.box_probability <= 1.0, "box_probability must be in [0, 1]")
        need(self.box_noise_std >= 0.0 and self.box_noise_max >= 0.0, "box_noise_std and box_noise_max must be ≥ 0")
        need(self.first_round_weight > 0.0, f"first_round_weight must be > 0, got {self.first_round_weight}")
        need(self.detach_mask_prompt or not self.round_backward,
             "round_backward needs detach_mask_prompt (a round's mask prompt must not carry gradients to the last)")
        super().__post_init__()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        return cls(**parse_sections(cls, data, "train config", ModelSpec))
