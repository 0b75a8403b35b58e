"""Segment Anything (segment-anything.txt)."""

from promptseg.models.sam.build import (
    build_sam,
    build_sam_vit_b,
    build_sam_vit_h,
    build_sam_vit_l,
    sam_model_registry,
)
from promptseg.models.sam.config import (
    SAM_PRESETS,
    ImageEncoderConfig,
    MaskDecoderConfig,
    PromptEncoderConfig,
    SamConfig,
)
from promptseg.models.sam.image_encoder import ImageEncoderViT
from promptseg.models.sam.mask_decoder import MaskDecoder, TwoWayTransformer
from promptseg.models.sam.prompt_encoder import PromptEncoder
from promptseg.models.sam.sam import Sam

__all__ = [
    "Sam",
    "SamConfig",
    "ImageEncoderConfig",
    "PromptEncoderConfig",
    "MaskDecoderConfig",
    "SAM_PRESETS",
    "ImageEncoderViT",
    "PromptEncoder",
    "MaskDecoder",
    "TwoWayTransformer",
    "build_sam",
    "build_sam_vit_b",
    "build_sam_vit_h",
    "build_sam_vit_l",
    "sam_model_registry",
]
