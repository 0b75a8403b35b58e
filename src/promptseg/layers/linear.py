"""A faster ``nn.Linear`` forward for CPU inference.

On x86 CPUs oneDNN's fp32 GEMM is often faster than the BLAS behind :func:`torch.nn.functional.linear`
(≈ 13 % single-threaded, up to 25 % with two threads on an AVX-512 EPYC), and it can fuse the GELU of a
transformer MLP (and the bias, so no bias-filled output is written first). :func:`linear` uses it where it
is safe — float32 or bfloat16 CPU tensors (bfloat16 where the CPU has native bf16 dot products) with no
autograd graph being recorded, no forward-mode tangent and no CPU autocast — and falls back to ``F.linear``
everywhere else, so training and other devices see the plain op. In float32 results differ from
``F.linear`` only by summation order (~1e-6 relative); in bfloat16 the fused GELU is applied before the one
rounding to bfloat16.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import Tensor, nn

_onednn: Optional[bool] = None
_onednn_bf16: Optional[bool] = None


def onednn_linear_available() -> bool:
    """Whether this PyTorch build has oneDNN's fused linear op (checked once)."""
    global _onednn
    if _onednn is None:
        try:
            _onednn = bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")
        except (AttributeError, RuntimeError):
            _onednn = False
    return _onednn


def _onednn_bf16_available() -> bool:
    """Whether oneDNN runs bfloat16 natively on this CPU (AVX-512 BF16 / AMX), checked once."""
    global _onednn_bf16
    if _onednn_bf16 is None:
        try:
            _onednn_bf16 = onednn_linear_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            _onednn_bf16 = False
    return _onednn_bf16


def has_forward_tangent(*tensors: Optional[Tensor]) -> bool:
    """Whether a tensor carries a forward-mode AD tangent (inside ``torch.func.jvp`` / ``forward_ad.dual_level``)."""
    if getattr(fwAD, "_current_level", 0) < 0:  # no dual level entered: nothing to check
        return False
    return any(t is not None and fwAD.unpack_dual(t).tangent is not None for t in tensors)


def _use_onednn(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> bool:
    if x.device.type != "cpu" or weight.device.type != "cpu" or x.dtype != weight.dtype:
        return False
    if bias is not None and bias.dtype != weight.dtype:
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)):
        return False
    if has_forward_tangent(x, weight, bias):  # forward-mode AD: the oneDNN op has no derivative (tangent dropped)
        return False
    if torch.is_autocast_enabled("cpu"):  # F.linear follows autocast (e.g. bf16 training of a frozen encoder)
        return False
    if x.dtype == torch.bfloat16:
        return _onednn_bf16_available()
    return x.dtype == torch.float32 and onednn_linear_available()


def fused_activation(act: Optional[nn.Module]) -> Optional[str]:
    """The ``activation`` name :func:`linear` can fuse for module ``act`` (``"gelu"`` for exact GELU), else None."""
    return "gelu" if isinstance(act, nn.GELU) and act.approximate == "none" else None


def linear(x: Tensor, layer: nn.Linear, activation: Optional[str] = None) -> Tensor:
    """``layer(x)``, followed by exact (erf) GELU if ``activation == "gelu"``: ``…×in`` → ``…×out``."""
    return linear_weights(x, layer.weight, layer.bias, activation)


def linear_weights(x: Tensor, weight: Tensor, bias: Optional[Tensor], activation: Optional[str] = None) -> Tensor:
    """:func:`linear` with the weight ``out×in`` and bias ``out`` given as tensors."""
    if activation not in (None, "gelu"):
        raise ValueError(f"activation must be None or 'gelu', got {activation!r}")
    if _use_onednn(x, weight, bias):
        # oneDNN reads the bias as dense memory: a strided or expanded view gave wrong sums
        bias = bias if bias is None else bias.contiguous()
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, activation or "none", [], "none" if activation else "")
    y = F.linear(x, weight, bias)
    if not activation:
        return y
    if torch.is_grad_enabled() and y.requires_grad:
        return F.gelu(y)
    return torch.ops.aten.gelu_(y)  # inference: no second buffer
