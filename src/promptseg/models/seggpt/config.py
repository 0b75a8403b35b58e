"""Typed configuration of a SegGPT model (seggpt.txt §3, §4: a ViT-L over an image pair stacked vertically).

The fields mirror ``transformers.SegGptConfig`` so that a transformers ``config.json`` maps onto it one
to one (see :func:`promptseg.models.seggpt.weights.config_from_hf`). :meth:`SegGptConfig.from_dict`
rejects unknown keys so that a typo in a JSON config is an error, not a silently ignored option.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Tuple

from promptseg.config_utils import config_from_dict

#: Embedding types of the two learned type tokens (``type_token_instance`` / ``type_token_semantic``).
EMBEDDING_TYPES = ("instance", "semantic")


def _pair(value: Any, name: str) -> Tuple[int, int]:
    """``int`` or 2-sequence → ``(h, w)``; anything else is a TypeError naming ``name``."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return (int(value[0]), int(value[1]))
    raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")


@dataclass(frozen=True)
class SegGptConfig:
    """Architecture of SegGPT (defaults: the released ``seggpt_vit_large`` model).

    ``image_size`` is the ``(H, W)`` of the *stacked* pair (prompt on top, query below), i.e. twice the
    height of one image. ``mlp_dim=None`` means ``hidden_size * mlp_ratio``.
    """

    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    mlp_dim: Optional[int] = None
    mlp_ratio: float = 4.0
    patch_size: int = 16
    num_channels: int = 3
    image_size: Tuple[int, int] = (896, 448)
    pretrain_image_size: int = 224
    merge_index: int = 2
    intermediate_hidden_state_indices: Tuple[int, ...] = (5, 11, 17, 23)
    decoder_hidden_size: int = 64
    qkv_bias: bool = True
    layer_norm_eps: float = 1e-6
    use_relative_position_embeddings: bool = True
    drop_path_rate: float = 0.1
    beta: float = 0.01

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_size", _pair(self.image_size, "image_size"))
        object.__setattr__(
            self, "intermediate_hidden_state_indices", tuple(int(i) for i in self.intermediate_hidden_state_indices)
        )
        h, w = self.image_size
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size ({self.patch_size})")
        if (h // self.patch_size) % 2:
            raise ValueError(f"image_size height {h} must hold an even number of patches (two stacked images)")
        if self.pretrain_image_size % self.patch_size:
            raise ValueError(
                f"pretrain_image_size ({self.pretrain_image_size}) must be a multiple of patch_size ({self.patch_size})"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads ({self.num_attention_heads})"
            )
        if self.num_channels != 3:
            raise ValueError(f"num_channels must be 3 (RGB images and RGB-coloured masks), got {self.num_channels}")
        indices = self.intermediate_hidden_state_indices
        if not indices:
            raise ValueError("intermediate_hidden_state_indices must not be empty")
        bad = [i for i in indices if not 0 <= i < self.num_hidden_layers]
        if bad:
            raise ValueError(
                f"intermediate_hidden_state_indices {bad} out of range for num_hidden_layers {self.num_hidden_layers}"
            )
        if not 0 <= self.merge_index <= min(indices):
            raise ValueError(
                f"merge_index ({self.merge_index}) must lie in [0, min(intermediate_hidden_state_indices)={min(indices)}]"
            )
        if self.mlp_dim is not None and self.mlp_dim <= 0:
            raise ValueError(f"mlp_dim must be positive, got {self.mlp_dim}")

    # ------------------------------------------------------------------------------------------------
    @property
    def hidden_mlp_dim(self) -> int:
        """Width of the MLP hidden layer (``mlp_dim`` or ``hidden_size * mlp_ratio``)."""
        return self.mlp_dim if self.mlp_dim is not None else int(self.hidden_size * self.mlp_ratio)

    @property
    def grid_size(self) -> Tuple[int, int]:
        """Patch grid ``(h, w)`` of the stacked pair (56×28 for the official model)."""
        return (self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size)

    @property
    def single_image_size(self) -> Tuple[int, int]:
        """``(H, W)`` of one image of the pair (448×448 for the official model)."""
        return (self.image_size[0] // 2, self.image_size[1])

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["image_size"] = list(self.image_size)
        data["intermediate_hidden_state_indices"] = list(self.intermediate_hidden_state_indices)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SegGptConfig":
        """Build from a mapping; unknown keys raise ValueError naming them."""
        return config_from_dict(cls, data, "SegGptConfig")


#: Named architectures. ``vit_l`` is the released SegGPT (seggpt.txt §4: ViT-L, 448×448 per image);
#: ``tiny`` runs in milliseconds, for tests.
SEGGPT_PRESETS: dict[str, SegGptConfig] = {
    "vit_l": SegGptConfig(),
    # 2 stacked 32×32 images with 8 px patches → an 8×4 patch grid; a non-square grid catches H/W mix-ups.
    # 3 heads, merge after layer 1, features from layers 1 and 3, pretrain grid 3×3 (bicubic resize).
    "tiny": SegGptConfig(
        hidden_size=48,
        num_hidden_layers=4,
        num_attention_heads=3,
        mlp_dim=96,
        patch_size=8,
        image_size=(64, 32),
        pretrain_image_size=24,
        merge_index=1,
        intermediate_hidden_state_indices=(1, 3),
        decoder_hidden_size=8,
    ),
}
