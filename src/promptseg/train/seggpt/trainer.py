"""The SegGPT training loop (seggpt.txt §3.1, §4, App. A) on promptseg's model-agnostic trainer.

One optimiser step = ``grad_accum`` micro-batches of ``batch_size`` in-context pairs on each process
(:class:`~promptseg.train.seggpt.pairs.PairDataset`). A micro-batch may mix instance and semantic pairs:
:class:`SegGptTrainingModel` runs the model once per embedding type present (the type token is one per
forward call) and weights each group's smooth-ℓ1 loss (:func:`promptseg.models.seggpt.model.seggpt_loss`,
averaged over the masked patches) by its share of the batch.

Everything else — AdamW with layer-wise lr decay and warm-up + step decay
(:mod:`promptseg.train.schedule`), gradient accumulation, bf16 autocast, checkpoints with exact resume,
``metrics.csv``/TensorBoard, tqdm, DDP under ``torchrun`` — is :class:`promptseg.train.trainer.Trainer`'s,
which :class:`SegGptTrainer` subclasses. The final model is written with
:func:`~promptseg.models.seggpt.save_seggpt` (``OUT/model.safetensors``, loadable with ``load_seggpt``).

Metrics per step: ``loss`` and ``miou`` — the mean IoU of the target half of the prediction, decoded
to labels by the nearest colour of the pair's palette (or black), against the target's labels.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
from torch import Tensor, nn

from promptseg.train.datasets import build_dataset
from promptseg.train.schedule import build_optimizer, build_scheduler
from promptseg.train.seggpt.config import SegGptTrainConfig
from promptseg.train.seggpt.pairs import EMBEDDING_TYPES, PairDataset, collate_pairs
from promptseg.train.trainer import PathLike, Trainer, TrainResult, seed_everything, train

#: Learned tokens of SegGPT's embeddings: no weight decay (Painter's ``no_weight_decay`` list), layer 0.
TOKEN_NAMES = ("mask_token", "segment_token_input", "segment_token_prompt", "type_token_semantic",
               "type_token_instance", "position_embeddings")


def seggpt_layer_id(name: str, depth: int) -> int:
    """Layer of parameter ``name`` for layer-wise lr decay: 0 for the embeddings (patch embedding,
    position embedding, tokens), ``i + 1`` for encoder layer ``i``, ``depth + 1`` for the rest (final
    norm, decoder)."""
    if name.startswith("embeddings."):
        return 0
    if name.startswith("encoder.layers."):
        return int(name.split(".")[2]) + 1
    return depth + 1


def build_optimizer_for(model: nn.Module, config: SegGptTrainConfig) -> torch.optim.AdamW:
    """AdamW with SegGPT's layer ids and no-decay tokens (:func:`promptseg.train.schedule.param_groups`)."""
    return build_optimizer(model, config.lr, config.weight_decay, config.layer_decay, config.betas,
                           depth=len(model.encoder.layers), layer_of=seggpt_layer_id, no_decay_suffixes=TOKEN_NAMES)


def build_model(config: SegGptTrainConfig) -> nn.Module:
    """The SegGPT to train: preset / config / initial checkpoint, with ``drop_path`` applied (train mode)."""
    from promptseg.checkpoint import load_state_dict_strict
    from promptseg.models.seggpt.build import build_seggpt
    from promptseg.models.seggpt.weights import infer_seggpt_config, read_seggpt_checkpoint

    spec = config.model
    arch = spec.seggpt_config()
    state = None
    if spec.checkpoint is not None:
        state, stored = read_seggpt_checkpoint(spec.checkpoint)
        arch = arch or stored or infer_seggpt_config(state)
    if config.drop_path is not None:
        arch = dataclasses.replace(arch, drop_path_rate=config.drop_path)
    model = build_seggpt(arch)
    if state is not None:
        load_state_dict_strict(model, state, source=f"SegGPT checkpoint {spec.checkpoint}")
    if spec.init_encoder_from_sam is not None:
        from promptseg.hub import load_model
        from promptseg.models.seggpt.transfer import init_encoder_from_sam

        source = spec.init_encoder_from_sam
        sam = load_model(None if source == "default" else source)
        init_encoder_from_sam(model, sam.image_encoder)
    return model.train()


def colour_miou(pred: Tensor, palettes: Tensor, target_labels: Tensor) -> Tensor:
    """Mean IoU of predicted colours decoded to labels (nearest of black + palette) against ``target_labels``.

    ``pred``: ``B×3×h×w`` normalised colours (the target half); ``palettes``: ``B×K×3`` 0–255 (rows past a
    sample's own colours hold :data:`~promptseg.train.seggpt.pairs.PALETTE_PAD`); ``target_labels``:
    ``B×h×w``. Labels absent from both prediction and target are skipped; 1.0 if nothing is left.
    """
    from promptseg.incontext.predictor import to_colors

    rgb = to_colors(pred.float())
    table = torch.cat([palettes.new_zeros(palettes.shape[0], 1, 3), palettes.float()], dim=1)  # B×(K+1)×3
    dist = ((rgb[:, None] - table[:, :, :, None, None]) ** 2).sum(dim=2)  # B×(K+1)×h×w
    labels = dist.argmin(dim=1)
    ks = torch.arange(1, table.shape[1], device=pred.device)[None, :, None, None]
    p, t = labels[:, None] == ks, target_labels[:, None] == ks
    inter, union = (p & t).sum(dim=(2, 3)), (p | t).sum(dim=(2, 3))
    valid = union > 0
    if not valid.any():
        return torch.ones((), device=pred.device)
    return (inter[valid].float() / union[valid].float()).mean()


class SegGptTrainingModel(nn.Module):
    """A SegGPT plus the per-embedding-type split of a batch; ``forward`` returns ``loss`` and ``miou``.
    It is what ``DistributedDataParallel`` wraps."""

    def __init__(self, seggpt: nn.Module, fg_weight: float = 1.0) -> None:
        super().__init__()
        self.seggpt = seggpt
        self.fg_weight = float(fg_weight)

    def _loss(self, out: Any, prompt_masks: Tensor, labels: Tensor, bool_masked_pos: Tensor) -> Tensor:
        """The model's smooth-ℓ1 loss, or with ``fg_weight ≠ 1`` the same loss with coloured pixels weighted."""
        if self.fg_weight == 1.0:
            return out.loss
        from promptseg.incontext.predictor import to_colors

        target = torch.cat((prompt_masks, labels), dim=2)
        coloured = to_colors(target.float()).amax(dim=1, keepdim=True) > 0.5  # B×1×2H×W
        weight = 1.0 + (self.fg_weight - 1.0) * coloured.float()
        return self.seggpt.loss(out.pred_masks, prompt_masks, labels, bool_masked_pos, pixel_weight=weight)

    def forward(
        self,
        pixel_values: Tensor,
        prompt_pixel_values: Tensor,
        prompt_masks: Tensor,
        labels: Tensor,
        bool_masked_pos: Tensor,
        semantic: Tensor,
        palettes: Tensor,
        target_labels: Tensor,
        generator: Optional[torch.Generator] = None,
    ) -> Dict[str, Tensor]:
        """Loss of one batch (the tensors of :func:`~promptseg.train.seggpt.pairs.collate_pairs`).
        ``generator`` is accepted for the trainer's call convention; every random draw was made by the data."""
        b = pixel_values.shape[0]
        h = pixel_values.shape[2]
        loss = pixel_values.new_zeros(())
        target_half = pixel_values.new_zeros(pixel_values.shape)
        for kind in EMBEDDING_TYPES:
            rows = torch.nonzero(semantic == (kind == "semantic")).flatten()
            if rows.numel() == 0:
                continue
            out = self.seggpt(pixel_values[rows], prompt_pixel_values[rows], prompt_masks[rows],
                              bool_masked_pos=bool_masked_pos[rows], embedding_type=kind, labels=labels[rows])
            group_loss = self._loss(out, prompt_masks[rows], labels[rows], bool_masked_pos[rows])
            loss = loss + group_loss * (rows.numel() / b)
            target_half[rows] = out.pred_masks[:, :, h:].detach().to(target_half.dtype)
        with torch.no_grad():
            miou = colour_miou(target_half, palettes, target_labels)
        return {"loss": loss, "miou": miou}


class SegGptTrainer(Trainer):
    """Build everything from a :class:`SegGptTrainConfig` and run :meth:`train` (``resume`` as for
    :class:`promptseg.train.trainer.Trainer`)."""

    metric_names = ("loss", "miou")

    def __init__(self, config: SegGptTrainConfig, resume: Union[None, bool, str, PathLike] = None) -> None:
        self._setup_run(config, resume)
        seed_everything(config.seed)  # same initial weights on every rank
        self.seggpt = build_model(config).to(self.device)
        self.module = SegGptTrainingModel(self.seggpt, config.fg_weight).to(self.device)
        self._wrap_module(find_unused_parameters=True)  # a batch of one embedding type leaves the other token unused
        self.optimizer = build_optimizer_for(self.seggpt, config)
        self.scheduler = build_scheduler(self.optimizer, config.warmup, config.milestones, config.lr_gamma)
        scenes = build_dataset(config.dataset.type, config.dataset.options)
        samples = PairDataset(scenes, config.pairs, self.seggpt.image_size, self.seggpt.patch_size, config.seed)
        self._setup_data(samples, collate_pairs, "scenes")
        self._start()

    @property
    def network(self) -> nn.Module:
        return self.seggpt

    def _to_device(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        nb = self.device.type == "cuda"
        return {k: v.to(self.device, non_blocking=nb) for k, v in batch.items()}

    def export_model(self, path: Path) -> None:
        from promptseg.models.seggpt import save_seggpt

        save_seggpt(self.seggpt, path)


def train_seggpt(
    config: SegGptTrainConfig, resume: Union[None, bool, str, PathLike] = None, max_steps: Optional[int] = None,
    time_limit: Optional[float] = None,
) -> TrainResult:
    """Build a :class:`SegGptTrainer` for ``config`` and run it (``resume`` and ``time_limit`` as for
    :func:`promptseg.train.trainer.train`)."""
    return train(config, resume, max_steps, trainer_class=SegGptTrainer, time_limit=time_limit)
