"""Builders: a :class:`SegGptConfig` (or preset name) in, a :class:`SegGpt` out."""

from __future__ import annotations

from functools import partial
from typing import Callable, Optional, Union

from promptseg.checkpoint import PathLike
from promptseg.models.seggpt.config import SEGGPT_PRESETS, SegGptConfig
from promptseg.models.seggpt.model import SegGpt, SegGptDecoder, SegGptEmbeddings, SegGptEncoder, init_seggpt_weights_


def resolve_seggpt_config(config: Union[SegGptConfig, str]) -> SegGptConfig:
    """A preset name or a config → the config (ValueError for an unknown preset, TypeError otherwise)."""
    if isinstance(config, str):
        if config not in SEGGPT_PRESETS:
            raise ValueError(f"unknown SegGPT preset {config!r}; choose one of {sorted(SEGGPT_PRESETS)}")
        return SEGGPT_PRESETS[config]
    if not isinstance(config, SegGptConfig):
        raise TypeError(f"config must be a SegGptConfig or a preset name, got {type(config).__name__}")
    return config


def build_seggpt(config: Union[SegGptConfig, str] = "vit_l", checkpoint: Optional[PathLike] = None) -> SegGpt:
    """Build a SegGPT (eval mode) from a config or preset name, optionally loading ``checkpoint``.

    ``checkpoint`` may be any layout :func:`promptseg.models.seggpt.weights.load_seggpt_state` reads
    (promptseg safetensors, a transformers directory or file, the official Painter ``.pth``).
    """
    config = resolve_seggpt_config(config)
    model = SegGpt(SegGptEmbeddings(config), SegGptEncoder(config), SegGptDecoder(config), config=config).eval()
    if checkpoint is None:
        init_seggpt_weights_(model)  # a checkpoint replaces every weight: no need to draw them
    else:
        from promptseg.models.seggpt.weights import load_seggpt_state

        load_seggpt_state(model, checkpoint)
    return model


def build_seggpt_vit_l(checkpoint: Optional[PathLike] = None) -> SegGpt:
    """Build the released SegGPT ViT-L architecture, optionally loading ``checkpoint``."""
    return build_seggpt("vit_l", checkpoint)


#: Preset name → builder taking an optional ``checkpoint``, in the style of ``sam_model_registry``.
seggpt_model_registry: dict[str, Callable[..., SegGpt]] = {
    "default": build_seggpt_vit_l,
    "vit_l": build_seggpt_vit_l,
    "tiny": partial(build_seggpt, "tiny"),
}
