"""Typed configuration of a Segment Anything model (§3 of segment-anything.txt).

Configs are frozen dataclasses; :meth:`SamConfig.from_dict` rejects unknown keys so that a typo in a
JSON config is an error, not a silently ignored option.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Tuple

from promptseg.config_utils import config_from_dict


@dataclass(frozen=True)
class ImageEncoderConfig:
    """MAE-style ViT with windowed attention and a few global blocks (§3, "Image encoder")."""

    img_size: int = 1024
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    out_chans: int = 256
    qkv_bias: bool = True
    use_abs_pos: bool = True
    use_rel_pos: bool = True
    window_size: int = 14
    global_attn_indexes: Tuple[int, ...] = (2, 5, 8, 11)
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size ({self.img_size}) must be a multiple of patch_size ({self.patch_size})")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})")
        bad = [i for i in self.global_attn_indexes if not 0 <= i < self.depth]
        if bad:
            raise ValueError(f"global_attn_indexes {bad} out of range for depth {self.depth}")

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size


@dataclass(frozen=True)
class PromptEncoderConfig:
    """Sparse (points, boxes, extra tokens) and dense (mask) prompt embedding (§3, "Prompt encoder")."""

    embed_dim: int = 256
    mask_in_chans: int = 16


@dataclass(frozen=True)
class MaskDecoderConfig:
    """Two-way transformer decoder with 3 ambiguity-aware masks + 1 single mask and an IoU head (§3, §A)."""

    transformer_dim: int = 256
    transformer_depth: int = 2
    num_heads: int = 8
    mlp_dim: int = 2048
    attention_downsample_rate: int = 2
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256


@dataclass(frozen=True)
class SamConfig:
    image_encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    prompt_encoder: PromptEncoderConfig = field(default_factory=PromptEncoderConfig)
    mask_decoder: MaskDecoderConfig = field(default_factory=MaskDecoderConfig)
    pixel_mean: Tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: Tuple[float, float, float] = (58.395, 57.12, 57.375)
    image_format: str = "RGB"
    mask_threshold: float = 0.0

    def __post_init__(self) -> None:
        dims = {
            "image_encoder.out_chans": self.image_encoder.out_chans,
            "prompt_encoder.embed_dim": self.prompt_encoder.embed_dim,
            "mask_decoder.transformer_dim": self.mask_decoder.transformer_dim,
        }
        if len(set(dims.values())) != 1:
            raise ValueError(f"embedding widths must agree, got {dims}")
        if self.image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {self.image_format!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SamConfig":
        if not isinstance(data, Mapping):
            raise TypeError(f"SamConfig must be a mapping, got {type(data).__name__}")
        data = dict(data)
        subs = {
            "image_encoder": ImageEncoderConfig,
            "prompt_encoder": PromptEncoderConfig,
            "mask_decoder": MaskDecoderConfig,
        }
        for key, sub in subs.items():
            if key in data:
                data[key] = config_from_dict(sub, data[key], f"SamConfig.{key}")
        return config_from_dict(cls, data, "SamConfig")


def _vit(embed_dim: int, depth: int, num_heads: int, global_attn_indexes: Tuple[int, ...]) -> SamConfig:
    return SamConfig(
        image_encoder=ImageEncoderConfig(
            embed_dim=embed_dim, depth=depth, num_heads=num_heads, global_attn_indexes=global_attn_indexes
        )
    )


#: The official model sizes (segment-anything.txt §3 and the released checkpoints).
SAM_PRESETS: dict[str, SamConfig] = {
    "vit_h": _vit(1280, 32, 16, (7, 15, 23, 31)),
    "vit_l": _vit(1024, 24, 16, (5, 11, 17, 23)),
    "vit_b": _vit(768, 12, 12, (2, 5, 8, 11)),
}
