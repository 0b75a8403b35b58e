"""Small modules shared by the models. Parameter names follow the official SAM checkpoints."""

from __future__ import annotations

from typing import Type

import torch
from torch import Tensor, nn

from promptseg.layers.linear import fused_activation, linear


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a ``B×C×H×W`` tensor."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class MLPBlock(nn.Module):
    """Transformer feed-forward block: ``lin2(act(lin1(x)))``."""

    def __init__(self, embedding_dim: int, mlp_dim: int, act: Type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: Tensor) -> Tensor:
        """``…×embedding_dim`` → same; the projections go through :func:`promptseg.layers.linear.linear`."""
        fused = fused_activation(self.act)
        if fused:
            return linear(linear(x, self.lin1, fused), self.lin2)
        return linear(self.act(linear(x, self.lin1)), self.lin2)


def residual_add(x: Tensor, branch: Tensor) -> Tensor:
    """``x + branch``; when no autograd graph is recorded the sum is written into ``branch`` (a block's
    fresh branch output, never the caller's ``x``) if it has the dtype and shape of ``x``, saving a
    buffer per residual."""
    recording = torch.is_grad_enabled() and (x.requires_grad or branch.requires_grad)
    if recording or branch.dtype != x.dtype or branch.shape != x.shape:
        return x + branch
    return branch.add_(x)


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (the heads of the mask decoder)."""

    def __init__(
        self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int, sigmoid_output: bool = False
    ) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        outs = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, outs))
        self.sigmoid_output = sigmoid_output

    def forward(self, x: Tensor) -> Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = torch.relu(x)
        return torch.sigmoid(x) if self.sigmoid_output else x


class DropPath(nn.Module):
    """Stochastic depth per sample (used in training, §A: drop path); identity at eval time."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop path probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * x.new_empty(shape).bernoulli_(keep) / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"
