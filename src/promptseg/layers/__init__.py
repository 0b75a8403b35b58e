"""Building blocks shared by every promptseg model (SAM, SEEM, SegGPT)."""

from promptseg.layers.attention import (
    DecomposedBias,
    available_attention_backends,
    get_attention_backend,
    register_attention_backend,
    set_attention_backend,
    use_attention_backend,
)
from promptseg.layers.common import MLP, LayerNorm2d, MLPBlock, DropPath, residual_add

__all__ = [
    "DecomposedBias",
    "available_attention_backends",
    "get_attention_backend",
    "register_attention_backend",
    "set_attention_backend",
    "use_attention_backend",
    "MLP",
    "MLPBlock",
    "LayerNorm2d",
    "DropPath",
    "residual_add",
]
