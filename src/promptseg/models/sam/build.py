"""Builders: a config in, a model out. ``sam_model_registry`` keeps the reference's names."""

from __future__ import annotations

import os
from typing import Callable, Optional, Union

import torch.nn as nn

from promptseg.models.sam.config import SAM_PRESETS, SamConfig
from promptseg.models.sam.image_encoder import ImageEncoderViT
from promptseg.models.sam.mask_decoder import MaskDecoder, TwoWayTransformer
from promptseg.models.sam.prompt_encoder import PromptEncoder
from promptseg.models.sam.sam import Sam

PathLike = Union[str, "os.PathLike[str]"]


def build_sam(config: Union[SamConfig, str] = "vit_h", checkpoint: Optional[PathLike] = None) -> Sam:
    """Build a SAM from a :class:`SamConfig` or a preset name, optionally loading ``checkpoint``.

    The model is returned in eval mode. ``checkpoint`` may be an official ``.pth`` file or a promptseg
    ``.safetensors`` file; loading is strict and never unpickles arbitrary objects.
    """
    if isinstance(config, str):
        if config not in SAM_PRESETS:
            raise ValueError(f"unknown SAM preset {config!r}; choose one of {sorted(SAM_PRESETS)}")
        config = SAM_PRESETS[config]
    enc, dec = config.image_encoder, config.mask_decoder
    grid = enc.grid_size
    model = Sam(
        image_encoder=ImageEncoderViT(enc),
        prompt_encoder=PromptEncoder(
            embed_dim=config.prompt_encoder.embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(enc.img_size, enc.img_size),
            mask_in_chans=config.prompt_encoder.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            transformer_dim=dec.transformer_dim,
            transformer=TwoWayTransformer(
                depth=dec.transformer_depth,
                embedding_dim=dec.transformer_dim,
                num_heads=dec.num_heads,
                mlp_dim=dec.mlp_dim,
                attention_downsample_rate=dec.attention_downsample_rate,
            ),
            num_multimask_outputs=dec.num_multimask_outputs,
            iou_head_depth=dec.iou_head_depth,
            iou_head_hidden_dim=dec.iou_head_hidden_dim,
        ),
        pixel_mean=config.pixel_mean,
        pixel_std=config.pixel_std,
    )
    model.config = config
    model.image_format = config.image_format
    model.mask_threshold = config.mask_threshold
    model.eval()
    if checkpoint is not None:
        from promptseg.checkpoint import load_into

        load_into(model, checkpoint)
    return model


def _preset_builder(name: str) -> Callable[..., Sam]:
    def builder(checkpoint: Optional[PathLike] = None) -> Sam:
        return build_sam(name, checkpoint)

    builder.__name__ = f"build_sam_{name}"
    builder.__doc__ = f"Build the official SAM {name.upper()} architecture, optionally loading ``checkpoint``."
    return builder


build_sam_vit_h = _preset_builder("vit_h")
build_sam_vit_l = _preset_builder("vit_l")
build_sam_vit_b = _preset_builder("vit_b")

#: Same keys as ``segment_anything.sam_model_registry``.
sam_model_registry: dict[str, Callable[..., nn.Module]] = {
    "default": build_sam_vit_h,
    "vit_h": build_sam_vit_h,
    "vit_l": build_sam_vit_l,
    "vit_b": build_sam_vit_b,
}
