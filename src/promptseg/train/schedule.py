"""Optimiser parameter groups and the learning-rate schedule (segment-anything.txt §A "Training recipe").

* AdamW (β₁ 0.9, β₂ 0.999), weight decay 0.1 — not applied to biases, normalisation weights,
  absolute/relative position embeddings and learned embeddings (tokens), the usual ViT/MAE practice.
* Layer-wise lr decay ``ld`` (0.8 for ViT-H/L, 0.6 for ViT-B) on the image encoder, as in BEiT/MAE
  fine-tuning: with ``depth`` blocks, block ``i`` gets ``ld ** (depth − i)``, the patch embedding and
  absolute position embedding ``ld ** (depth + 1)``; the neck, prompt encoder and mask decoder 1.0.
* Linear warmup (250 iterations) then step decay ×0.1 at two milestones (60k and 86 666 of 90k).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

#: Parameter-name suffixes that never get weight decay (besides 1-d tensors and nn.Embedding weights).
NO_DECAY_SUFFIXES = ("pos_embed", "rel_pos_h", "rel_pos_w")


def encoder_depth(model: nn.Module) -> int:
    """Number of ViT blocks of ``model.image_encoder``."""
    return len(model.image_encoder.blocks)  # type: ignore[union-attr, arg-type]


def layer_id(name: str, depth: int) -> int:
    """Layer index of parameter ``name`` for layer-wise lr decay: 0 for the patch/position embedding,
    ``i + 1`` for image-encoder block ``i``, ``depth + 1`` for everything after the blocks."""
    if name.startswith("image_encoder.patch_embed.") or name == "image_encoder.pos_embed":
        return 0
    if name.startswith("image_encoder.blocks."):
        return int(name.split(".")[2]) + 1
    return depth + 1


def _embedding_parameter_names(model: nn.Module) -> set:
    return {
        f"{mod_name}.{p_name}" if mod_name else p_name
        for mod_name, module in model.named_modules()
        if isinstance(module, nn.Embedding)
        for p_name, _ in module.named_parameters(recurse=False)
    }


def no_weight_decay(name: str, param: torch.Tensor, embeddings: set, suffixes: Tuple[str, ...] = ()) -> bool:
    """Biases and norm weights (every tensor with ≤ 1 dimension), position embeddings, token embeddings
    (and names ending with one of the extra ``suffixes``)."""
    return param.ndim <= 1 or name.endswith(NO_DECAY_SUFFIXES + tuple(suffixes)) or name in embeddings


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    layer_decay: float = 1.0,
    *,
    depth: Optional[int] = None,
    layer_of: Callable[[str, int], int] = layer_id,
    no_decay_suffixes: Sequence[str] = (),
) -> List[Dict[str, Any]]:
    """AdamW parameter groups (only parameters with ``requires_grad``); by default those of a SAM.

    One group per (layer, decay) pair, each with ``lr = lr · lr_scale``, its ``weight_decay`` (0 for the
    no-decay set), and the informative keys ``lr_scale`` and ``name`` (kept in the optimiser state).
    Another ViT plugs in its ``depth`` (default: :func:`encoder_depth`), its ``layer_of(name, depth)``
    (default: :func:`layer_id`) and extra ``no_decay_suffixes`` (e.g. its learned tokens).
    """
    if not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    depth = encoder_depth(model) if depth is None else int(depth)
    embeddings = _embedding_parameter_names(model)
    suffixes = tuple(no_decay_suffixes)
    groups: Dict[Tuple[int, bool], Dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lid = layer_of(name, depth)
        decay = not no_weight_decay(name, param, embeddings, suffixes)
        key = (lid, decay)
        if key not in groups:
            scale = layer_decay ** (depth + 1 - lid)
            groups[key] = {
                "name": f"layer{lid:03d}_{'decay' if decay else 'no_decay'}",
                "params": [],
                "param_names": [],
                "lr": lr * scale,
                "lr_scale": scale,
                "weight_decay": weight_decay if decay else 0.0,
            }
        groups[key]["params"].append(param)
        groups[key]["param_names"].append(name)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(
    model: nn.Module,
    lr: float = 8e-4,
    weight_decay: float = 0.1,
    layer_decay: float = 0.8,
    betas: Sequence[float] = (0.9, 0.999),
    **group_options: Any,
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` (``group_options``: its keyword-only arguments)."""
    groups = param_groups(model, lr, weight_decay, layer_decay, **group_options)
    if not groups:
        raise ValueError("no trainable parameters (every parameter is frozen)")
    return torch.optim.AdamW(groups, lr=lr, betas=(float(betas[0]), float(betas[1])), weight_decay=weight_decay)


class WarmupStepDecay:
    """LR multiplier: linear warmup over ``warmup`` steps, then ×``gamma`` at each milestone.

    ``factor(s) = (s + 1) / warmup`` for ``s < warmup`` (so the first step already moves, and step
    ``warmup − 1`` reaches the full lr), then ``gamma ** #{m ∈ milestones : s ≥ m}``. ``s`` is the
    0-based index of the optimiser step about to be taken. A callable object (not a lambda) so that
    ``LambdaLR.state_dict`` stores it as plain numbers.
    """

    def __init__(self, warmup: int = 250, milestones: Sequence[int] = (60000, 86666), gamma: float = 0.1) -> None:
        if warmup < 0:
            raise ValueError(f"warmup must be ≥ 0, got {warmup}")
        if list(milestones) != sorted(milestones):
            raise ValueError(f"milestones must be increasing, got {list(milestones)}")
        self.warmup = int(warmup)
        self.milestones = [int(m) for m in milestones]
        self.gamma = float(gamma)

    def __call__(self, step: int) -> float:
        factor = self.gamma ** sum(step >= m for m in self.milestones)
        if step < self.warmup:
            factor *= (step + 1) / self.warmup
        return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, warmup: int, milestones: Sequence[int], gamma: float = 0.1
) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` with one :class:`WarmupStepDecay` for every group (their base lrs carry the layer decay)."""
    fn = WarmupStepDecay(warmup, milestones, gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, [fn] * len(optimizer.param_groups))
