"""ViT image encoder of SAM (segment-anything.txt §3 "Image encoder", §A).

An MAE-pretrained ViT (Li et al. "ViTDet" layout): 16×16 patches, windowed attention (14×14) with a few
global blocks, decomposed relative positional encoding, and a 1×1 + 3×3 conv neck with LayerNorm2d to
256 channels, i.e. a ``B×256×(S/16)×(S/16)`` embedding for an ``S×S`` input.

Parameter names follow the official checkpoints so their state dicts load without renaming.
"""

from __future__ import annotations

from typing import Iterator, List, Optional, Tuple, Type

import torch
from torch import Tensor, nn

from promptseg.layers import DecomposedBias, DropPath, LayerNorm2d, MLPBlock, residual_add
from promptseg.layers.attention import attention
from promptseg.layers.linear import linear
from promptseg.layers.positions import resize_rel_pos
from promptseg.models.sam.config import ImageEncoderConfig


class PatchEmbed(nn.Module):
    """``B×C×H×W`` image → ``B×(H/p)×(W/p)×D`` patch tokens (contiguous: every later op reads them token-major)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).permute(0, 2, 3, 1).contiguous()


def get_rel_pos(q_size: int, k_size: int, rel_pos: Tensor) -> Tensor:
    """Relative position embeddings for every (query, key) offset along one axis: ``q_size×k_size×D``.

    ``rel_pos`` (``L×D``) is linearly resized when ``L != 2·max(q_size, k_size) − 1``.
    """
    rel_pos = resize_rel_pos(rel_pos, int(2 * max(q_size, k_size) - 1))
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative.long()]


def rel_pos_bias(q: Tensor, rel_pos_h: Tensor, rel_pos_w: Tensor, size: Tuple[int, int]) -> DecomposedBias:
    """Decomposed relative-position bias (MViTv2) of queries ``q: B×heads×(H·W)×D`` over the same grid."""
    h, w = size
    r_q = q.reshape(-1, h, w, q.shape[-1])
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, get_rel_pos(h, h, rel_pos_h).to(q.dtype))
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, get_rel_pos(w, w, rel_pos_w).to(q.dtype))
    lead = q.shape[:-2]
    return DecomposedBias(rel_h.reshape(*lead, h * w, h), rel_w.reshape(*lead, h * w, w))


class Attention(nn.Module):
    """Multi-head self-attention over a ``B×H×W×C`` grid, with optional decomposed relative positions."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        input_size: Optional[Tuple[int, int]] = None,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if input_size is None:
                raise ValueError("input_size is required when use_rel_pos=True")
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    def split_heads(self, qkv: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """``qkv: B×H×W×3C`` → contiguous ``q, k, v: B×heads×(H·W)×D`` (one copy)."""
        b, h, w, _ = qkv.shape
        qkv = qkv.reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).contiguous()
        q, k, v = qkv.unbind(0)
        return q, k, v

    def attend_heads(self, q: Tensor, k: Tensor, v: Tensor, size: Tuple[int, int]) -> Tensor:
        """Attention of ``q, k, v: B×heads×N×D`` over an ``h×w = N`` grid (relative positions) → ``B×heads×N×D``."""
        bias = rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, size) if self.use_rel_pos else None
        return attention(q, k, v, bias, self.scale)

    def attend(self, qkv: Tensor) -> Tensor:
        """``qkv: B×H×W×3C`` (already projected) → ``B×H×W×C`` attention output, before ``proj``."""
        b, h, w, _ = qkv.shape
        x = self.attend_heads(*self.split_heads(qkv), (h, w))
        return x.transpose(1, 2).reshape(b, h, w, -1)

    def forward(self, x: Tensor) -> Tensor:
        return linear(self.attend(linear(x, self.qkv)), self.proj)


def _axis_parts(n: int, window_size: int) -> List[Tuple[slice, int, int, slice, slice]]:
    """How an axis of ``n`` cells falls into windows: ``(cells, windows, cells per window, window
    index, index inside the window)`` for the run of full windows and for the last, partial one."""
    full, rest = divmod(n, window_size)
    parts = []
    if full:
        parts.append((slice(0, full * window_size), full, window_size, slice(0, full), slice(0, window_size)))
    if rest:
        parts.append((slice(full * window_size, n), 1, rest, slice(full, full + 1), slice(0, rest)))
    return parts


def _window_views(grid: Tensor, windows: Tensor, window_size: int) -> Iterator[Tuple[Tensor, Tensor]]:
    """Matching views of ``grid: B×H×W×…`` and of ``windows: B×nH×ws×nW×ws×…`` (the padded window
    layout) that together cover the grid: at most four pairs (full / partial windows on each axis)."""
    h, w = grid.shape[1:3]
    for cells_h, n_h, len_h, win_h, in_h in _axis_parts(h, window_size):
        for cells_w, n_w, len_w, win_w, in_w in _axis_parts(w, window_size):
            cells = grid[:, cells_h, cells_w].unflatten(2, (n_w, len_w)).unflatten(1, (n_h, len_h))
            yield cells, windows[:, win_h, in_h, win_w, in_w]


def window_heads(
    qkv: Tensor, window_size: int, num_heads: int, pad_value: Optional[Tensor] = None
) -> Tuple[Tensor, Tensor, Tensor]:
    """``qkv: B×H×W×3C`` → contiguous ``q, k, v: (B·nW)×heads×ws²×D`` of the ``ws×ws`` windows.

    The grid is padded bottom/right to whole windows with ``pad_value`` (``3C``; zeros by default).
    Window partition, padding and the split into heads are one copy into the final layout.
    """
    b, h, w, c3 = qkv.shape
    n_h, n_w = -(-h // window_size), -(-w // window_size)
    d = c3 // 3 // num_heads
    out = qkv.new_empty(3, b, n_h, n_w, num_heads, window_size, window_size, d)
    windows = out.permute(1, 2, 5, 3, 6, 0, 4, 7)  # B×nH×ws×nW×ws×3×heads×D
    for cells, win in _window_views(qkv.unflatten(-1, (3, num_heads, d)), windows, window_size):
        win.copy_(cells)
    if h % window_size or w % window_size:
        pad = (qkv.new_zeros(c3) if pad_value is None else pad_value.to(qkv.dtype)).view(3, num_heads, d)
        if h % window_size:
            windows[:, -1, h % window_size :] = pad
        if w % window_size:
            windows[:, :, :, -1, w % window_size :] = pad
    q, k, v = out.view(3, b * n_h * n_w, num_heads, window_size * window_size, d).unbind(0)
    return q, k, v


def window_merge(x: Tensor, window_size: int, hw: Tuple[int, int]) -> Tensor:
    """Inverse of :func:`window_heads` for the attention output: ``(B·nW)×heads×ws²×D`` → ``B×H×W×(heads·D)``,
    padding cropped, in one copy."""
    h, w = hw
    n_h, n_w = -(-h // window_size), -(-w // window_size)
    _, heads, _, d = x.shape
    windows = x.view(-1, n_h, n_w, heads, window_size, window_size, d).permute(0, 1, 4, 2, 5, 3, 6)
    out = x.new_empty(windows.shape[0], h, w, heads, d)
    for cells, win in _window_views(out, windows, window_size):
        cells.copy_(win)
    return out.flatten(-2)


class Block(nn.Module):
    """Pre-norm transformer block with windowed (``window_size > 0``) or global attention."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        act_layer: Type[nn.Module] = nn.GELU,
        use_rel_pos: bool = False,
        window_size: int = 0,
        input_size: Optional[Tuple[int, int]] = None,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            use_rel_pos=use_rel_pos,
            input_size=input_size if window_size == 0 else (window_size, window_size),
        )
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), act_layer)
        self.window_size = window_size
        self.drop_path = DropPath(drop_path)

    def _attention(self, x: Tensor) -> Tensor:
        # The reference pads the *normalised* tokens with zeros before the qkv projection, so padded
        # tokens carry exactly the qkv bias. Projecting first and padding the projection with that bias
        # is the same computation with ~20 % fewer rows through the qkv and output projections.
        attn = self.attn
        qkv = linear(x, attn.qkv)
        if self.window_size == 0:
            return linear(attn.attend(qkv), attn.proj)
        ws = self.window_size
        q, k, v = window_heads(qkv, ws, attn.num_heads, attn.qkv.bias)
        return linear(window_merge(attn.attend_heads(q, k, v, (ws, ws)), ws, x.shape[1:3]), attn.proj)

    def forward(self, x: Tensor) -> Tensor:
        """``B×H×W×C`` → same. The residual stream keeps the dtype of ``x`` (float32 in the bf16 mode,
        so rounding does not accumulate over blocks); the branches run in the weights' dtype."""
        dtype = self.norm1.weight.dtype
        x = residual_add(x, self.drop_path(self._attention(self.norm1(x.to(dtype)))))
        return residual_add(x, self.drop_path(self.mlp(self.norm2(x.to(dtype)))))


class ImageEncoderViT(nn.Module):
    """``B×3×S×S`` normalised image → ``B×out_chans×(S/p)×(S/p)`` embedding."""

    def __init__(self, config: ImageEncoderConfig = ImageEncoderConfig()) -> None:
        super().__init__()
        c = config
        self.config = config
        self.img_size = c.img_size
        self.patch_embed = PatchEmbed(c.patch_size, c.in_chans, c.embed_dim)
        self.pos_embed: Optional[nn.Parameter] = None
        if c.use_abs_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, c.grid_size, c.grid_size, c.embed_dim))
        rates = [c.drop_path_rate * i / max(c.depth - 1, 1) for i in range(c.depth)]  # stochastic depth ramp
        self.blocks = nn.ModuleList(
            Block(
                dim=c.embed_dim,
                num_heads=c.num_heads,
                mlp_ratio=c.mlp_ratio,
                qkv_bias=c.qkv_bias,
                use_rel_pos=c.use_rel_pos,
                window_size=0 if i in c.global_attn_indexes else c.window_size,
                input_size=(c.grid_size, c.grid_size),
                drop_path=rates[i],
            )
            for i in range(c.depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(c.embed_dim, c.out_chans, kernel_size=1, bias=False),
            LayerNorm2d(c.out_chans),
            nn.Conv2d(c.out_chans, c.out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(c.out_chans),
        )

    def forward(self, x: Tensor) -> Tensor:
        """``B×3×S×S`` → ``B×out_chans×S/p×S/p``; the residual stream is float32 whatever the weights' dtype."""
        dtype = self.patch_embed.proj.weight.dtype
        x = self.patch_embed(x.to(dtype)).float()
        if self.pos_embed is not None:
            x = x + self.pos_embed.float()
        for blk in self.blocks:
            x = blk(x)
        return self.neck(x.to(dtype).permute(0, 3, 1, 2))
