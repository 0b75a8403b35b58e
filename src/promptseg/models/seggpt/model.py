"""SegGPT: in-context segmentation as in-context colouring with a plain ViT (seggpt.txt §3).

A prompt image and the query image are stacked vertically into one ``2H×W`` picture; so are the prompt's
coloured mask and the (unknown, masked) query mask. Both pictures are patch-embedded, and the two token
grids run through the ViT as two batch entries until layer ``merge_index``, where they are averaged into
one stream. Features of a few layers, layer-normed and concatenated, are decoded to a ``3×2H×W`` image
whose bottom half is the predicted mask of the query (the top half reconstructs the prompt mask).

With several examples (prompt pairs as batch entries) and ``feature_ensemble=True`` the query half of the
tokens is averaged over the examples after every attention layer (§3.2, "Feature Ensemble").

The transformer layers reuse promptseg's shared blocks: SAM's :class:`~promptseg.models.sam.image_encoder.Attention`
(its decomposed relative-position bias, run through the attention-backend registry) and
:class:`~promptseg.layers.MLPBlock`; at inference they take faster routes (oneDNN projections with the
GELU fused, a dense bias in a reused buffer, residuals added in place) with the same results. Parameter names are those of ``transformers``'
``SegGptForImageSegmentation`` without its ``model.`` prefix (and ``patch_embeddings.proj`` for
``patch_embeddings.projection``); :mod:`promptseg.models.seggpt.weights` converts both that layout and
the official Painter one.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from promptseg.layers import DecomposedBias, DropPath, LayerNorm2d, MLPBlock, residual_add
from promptseg.layers.attention import attention
from promptseg.layers.linear import linear
from promptseg.layers.positions import resize_pos_grid
from promptseg.models.sam.image_encoder import Attention, PatchEmbed, rel_pos_bias
from promptseg.models.seggpt.config import EMBEDDING_TYPES, SegGptConfig


class SegGptOutput(NamedTuple):
    """``pred_masks``: ``B×3×2H×W`` coloured prediction of the stacked pair; ``loss``: scalar or ``None``."""

    pred_masks: Tensor
    loss: Optional[Tensor] = None


def _inference(t: Tensor) -> bool:
    """True when ``t`` may be updated in place (no autograd graph is being recorded through it)."""
    return not (torch.is_grad_enabled() and t.requires_grad)


# ---------------------------------------------------------------------------------------------------
# Embeddings.


class SegGptEmbeddings(nn.Module):
    """Stacked images and stacked masks → ``2B×h×w×D`` tokens (images first, then masks).

    Each stream gets a learned segment token (``segment_token_input`` for the images,
    ``segment_token_prompt`` for the masks), the absolute position embedding (pretrained on a square
    grid, bicubically resized) and the type token of the task (``instance`` or ``semantic``). Masked
    mask-patches (``bool_masked_pos``) are replaced by ``mask_token``.
    """

    def __init__(self, config: SegGptConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.patch_size = config.patch_size
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 1, d))
        self.segment_token_input = nn.Parameter(torch.zeros(1, 1, 1, d))
        self.segment_token_prompt = nn.Parameter(torch.zeros(1, 1, 1, d))
        self.type_token_semantic = nn.Parameter(torch.zeros(1, 1, 1, d))
        self.type_token_instance = nn.Parameter(torch.zeros(1, 1, 1, d))
        self.patch_embeddings = PatchEmbed(config.patch_size, config.num_channels, d)
        pretrain_grid = config.pretrain_image_size // config.patch_size
        self.position_embeddings = nn.Parameter(torch.zeros(1, pretrain_grid * pretrain_grid + 1, d))  # [CLS] slot unused

    def position_grid(self, height: int, width: int) -> Tensor:
        """Absolute position embedding for an ``height×width`` patch grid: ``1×height×width×D``."""
        pos = self.position_embeddings[:, 1:]
        side = int(round(pos.shape[1] ** 0.5))
        return resize_pos_grid(pos.reshape(1, side, side, -1), (height, width))

    def type_token(self, embedding_type: str) -> Tensor:
        if embedding_type == "instance":
            return self.type_token_instance
        if embedding_type == "semantic":
            return self.type_token_semantic
        raise ValueError(f"embedding_type must be one of {EMBEDDING_TYPES}, got {embedding_type!r}")

    def forward(self, images: Tensor, masks: Tensor, bool_masked_pos: Tensor, embedding_type: str = "instance") -> Tensor:
        """``images, masks: B×3×2H×W``, ``bool_masked_pos: B'×(h·w)`` (``B'`` 1 or B) → ``2B×h×w×D``."""
        b = images.shape[0]
        tokens = self.patch_embeddings(torch.cat((images, masks), dim=0))  # 2B×h×w×D
        h, w = tokens.shape[1:3]
        img, msk = tokens[:b], tokens[b:]
        hide = bool_masked_pos.reshape(-1, h, w, 1)
        if hide.dtype == torch.bool:
            msk = torch.where(hide, self.mask_token, msk)
        else:  # soft masking: the same blend as the reference
            hide = hide.to(msk.dtype)
            msk = msk * (1 - hide) + self.mask_token * hide
        shared = self.position_grid(h, w) + self.type_token(embedding_type)
        img = img + (self.segment_token_input + shared)
        msk = msk + (self.segment_token_prompt + shared)
        return torch.cat((img, msk), dim=0)


# ---------------------------------------------------------------------------------------------------
# Encoder.


def average_query_half(x: Tensor, groups: int) -> Tensor:
    """Feature ensemble (seggpt.txt §3.2): average the bottom (query) half of ``x: B×h×w×C`` over the batch.

    The batch is split into ``groups`` consecutive groups (``2``: the image and mask streams before the
    merge) and the query half is averaged within each group; the top (prompt) half is left untouched.
    """
    b, h = x.shape[:2]
    if b % groups:
        raise ValueError(f"batch {b} is not divisible into {groups} ensemble groups")
    top, bottom = x[:, : h // 2], x[:, h // 2 :]
    mean = bottom.reshape(groups, b // groups, -1).mean(dim=1, keepdim=True)
    bottom = mean.expand(groups, b // groups, mean.shape[-1]).reshape(bottom.shape)
    return torch.cat((top, bottom), dim=1)


class Scratch:
    """A reusable buffer for the dense attention bias of one forward pass at inference.

    A fresh ``heads×N×N`` bias (157 MB for ViT-L) per layer costs more in page faults than the attention
    itself; one buffer reused by every layer pays them once. Never used while autograd records.
    """

    def __init__(self) -> None:
        self._buffer: Optional[Tensor] = None

    def dense(self, bias: DecomposedBias) -> Tensor:
        """``bias`` (rows ``…×Nq×Kh``, cols ``…×Nq×Kw``) materialised as ``…×Nq×(Kh·Kw)`` in the buffer."""
        rows, cols = bias
        shape = (*rows.shape, cols.shape[-1])
        numel = rows.numel() * cols.shape[-1]
        buf = self._buffer
        if buf is None or buf.numel() < numel or buf.dtype != rows.dtype or buf.device != rows.device:
            buf = self._buffer = torch.empty(numel, dtype=rows.dtype, device=rows.device)
        out = buf[:numel].view(shape)
        torch.add(rows[..., :, None], cols[..., None, :], out=out)
        return out.flatten(-2)


def self_attention(attn: Attention, qkv: Tensor, scratch: Optional[Scratch] = None) -> Tensor:
    """Global attention of SAM's :class:`Attention` module over projected ``qkv: B×h×w×3C`` → ``B×h×w×C``.

    Unlike ``Attention.attend`` (blocked attention over a factorised bias), the relative-position bias
    is materialised densely — one example at a time, into ``scratch`` at inference — and handed to the
    attention backend in one call: a few large ops keep both cores busy even when other processes
    compete for them, where many small blocked ops stall on every thread barrier.
    """
    b, h, w, _ = qkv.shape
    q, k, v = attn.split_heads(qkv)  # B×heads×N×D
    if not attn.use_rel_pos:
        out = attention(q, k, v, None, attn.scale)
    else:
        bias = rel_pos_bias(q, attn.rel_pos_h, attn.rel_pos_w, (h, w))
        parts = []
        for i in range(b):
            one = DecomposedBias(bias.rows[i : i + 1], bias.cols[i : i + 1])
            dense = scratch.dense(one) if scratch is not None else one.dense()
            parts.append(attention(q[i : i + 1], k[i : i + 1], v[i : i + 1], dense, attn.scale))
        out = torch.cat(parts) if b > 1 else parts[0]
    return out.transpose(1, 2).reshape(b, h, w, -1)


class SegGptLayer(nn.Module):
    """Pre-norm ViT block over the full ``h×w`` grid, with the feature ensemble after attention.

    Built from SAM's :class:`Attention` and the shared :class:`MLPBlock`; at inference the projections
    run through :func:`promptseg.layers.linear.linear` (oneDNN, GELU fused) and the residual adds in place.
    """

    def __init__(self, config: SegGptConfig, drop_path: float = 0.0) -> None:
        super().__init__()
        d = config.hidden_size
        self.layernorm_before = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.attention = Attention(
            d,
            num_heads=config.num_attention_heads,
            qkv_bias=config.qkv_bias,
            use_rel_pos=config.use_relative_position_embeddings,
            input_size=config.grid_size,
        )
        self.layernorm_after = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.mlp = MLPBlock(d, config.hidden_mlp_dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, ensemble_groups: int = 0, scratch: Optional[Scratch] = None) -> Tensor:
        """``x: B×h×w×D`` → same; ``ensemble_groups > 0`` applies :func:`average_query_half`."""
        attn = self.attention
        y = linear(self_attention(attn, linear(self.layernorm_before(x), attn.qkv), scratch), attn.proj)
        if ensemble_groups:
            y = average_query_half(y, ensemble_groups)
        x = residual_add(x, self.drop_path(y))
        return residual_add(x, self.drop_path(self.mlp(self.layernorm_after(x))))


class SegGptEncoder(nn.Module):
    """``2B×h×w×D`` tokens (two streams) → ``B×h×w×(k·D)``: the layer-normed features of ``k`` layers.

    The streams are averaged after layer ``merge_index``. With ``feature_ensemble`` the query half is
    averaged over the examples after each attention — within each stream before the merge (when there are
    at least two examples), and over the whole batch from layer ``merge_index`` on — exactly as the
    reference implementations do.
    """

    def __init__(self, config: SegGptConfig) -> None:
        super().__init__()
        n = config.num_hidden_layers
        rates = [config.drop_path_rate * i / max(n - 1, 1) for i in range(n)]  # stochastic depth ramp
        self.layers = nn.ModuleList(SegGptLayer(config, rates[i]) for i in range(n))
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.merge_index = config.merge_index
        self.feature_indices: Tuple[int, ...] = tuple(config.intermediate_hidden_state_indices)

    def ensemble_groups(self, index: int, batch: int) -> int:
        """Groups of the feature ensemble at layer ``index`` for a current batch of ``batch`` (0: none)."""
        if index < self.merge_index:
            return 2 if batch >= 4 else 0
        return 1 if batch >= 2 else 0

    def forward(self, x: Tensor, feature_ensemble: bool = False) -> Tensor:
        features: List[Tensor] = []
        scratch = None if torch.is_grad_enabled() else Scratch()
        for i, layer in enumerate(self.layers):
            groups = self.ensemble_groups(i, x.shape[0]) if feature_ensemble else 0
            x = layer(x, groups, scratch)
            if i == self.merge_index:
                half = x.shape[0] // 2
                x = (x[:half] + x[half:]) * 0.5
            if i in self.feature_indices:
                features.append(self.layernorm(x))
            if i >= max(self.feature_indices):
                break  # later layers feed nothing
        return torch.cat(features, dim=-1)


# ---------------------------------------------------------------------------------------------------
# Decoder.


class SegGptDecoderHead(nn.Module):
    """``B×C×H×W`` → ``B×3×H×W``: 3×3 conv, channel LayerNorm, GELU, 1×1 conv."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.layernorm = LayerNorm2d(channels, eps=eps)
        self.head = nn.Conv2d(channels, 3, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if x.is_contiguous(memory_format=torch.channels_last):
            # Channels-last: the channel axis is innermost, so a fused layer norm runs in one pass.
            x = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.layernorm.weight, self.layernorm.bias, self.layernorm.eps)
            x = x.permute(0, 3, 1, 2)
        else:
            x = self.layernorm(x)
        x = F.gelu(x) if not _inference(x) else torch.ops.aten.gelu_(x)
        return self.head(x)


class SegGptDecoder(nn.Module):
    """Concatenated features ``B×h×w×(k·D)`` → coloured image ``B×3×(h·p)×(w·p)`` (seggpt.txt §3)."""

    def __init__(self, config: SegGptConfig) -> None:
        super().__init__()
        self.patch_size = config.patch_size
        self.decoder_hidden_size = config.decoder_hidden_size
        in_dim = config.hidden_size * len(config.intermediate_hidden_state_indices)
        self.decoder_embed = nn.Linear(in_dim, config.patch_size**2 * config.decoder_hidden_size)
        self.decoder_pred = SegGptDecoderHead(config.decoder_hidden_size, eps=config.layer_norm_eps)

    def unpatchify(self, x: Tensor) -> Tensor:
        """``B×h×w×(p·p·C)`` → ``B×C×(h·p)×(w·p)`` in channels-last memory (a view of one copy)."""
        b, h, w, _ = x.shape
        p, c = self.patch_size, self.decoder_hidden_size
        x = x.reshape(b, h, w, p, p, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h * p, w * p, c)
        return x.permute(0, 3, 1, 2)

    def forward(self, features: Tensor) -> Tensor:
        return self.decoder_pred(self.unpatchify(linear(features, self.decoder_embed)))


# ---------------------------------------------------------------------------------------------------
# Loss.


def seggpt_loss(
    pred_masks: Tensor,
    prompt_masks: Tensor,
    labels: Tensor,
    bool_masked_pos: Tensor,
    patch_size: int,
    beta: float,
    pixel_weight: Optional[Tensor] = None,
) -> Tensor:
    """Smooth-ℓ1 (``beta``) between ``pred_masks: B×3×2H×W`` and the stacked ``[prompt_masks; labels]``,
    averaged over the masked patches (``bool_masked_pos: B'×(h·w)``) — as in Painter and transformers.

    As in the reference, the normaliser counts the masked pixels of ``bool_masked_pos`` itself, so a single
    shared ``B'=1`` mask with a batch of ``B`` sums ``B`` images over one image's count. ``pixel_weight``
    (``B×1×2H×W``, optional; not in the paper) weights each pixel, and the normaliser becomes the weight of
    the masked pixels: the training option ``fg_weight`` uses it to up-weight coloured pixels. A float16 or
    bfloat16 prediction is scored in float32 (float16's pixel count overflows beyond 65,504 pixels: NaN).
    """
    dtype = torch.promote_types(pred_masks.dtype, torch.float32)
    pred_masks = pred_masks.to(dtype)
    target = torch.cat((prompt_masks, labels), dim=2).to(dtype)
    h, w = target.shape[2] // patch_size, target.shape[3] // patch_size
    hide = bool_masked_pos.reshape(-1, h, 1, w, 1).to(dtype)
    hide = hide.expand(-1, h, patch_size, w, patch_size).reshape(-1, 1, h * patch_size, w * patch_size)
    if pixel_weight is not None:
        hide = hide * pixel_weight.to(dtype)
    loss = F.smooth_l1_loss(pred_masks, target, reduction="none", beta=beta)
    return (loss * hide).sum() / (hide.sum() * target.shape[1])


def init_seggpt_weights_(model: nn.Module, std: float = 0.02) -> nn.Module:
    """Initialise a SegGPT for training from scratch, in place, as transformers' ``SegGptPreTrainedModel``
    (Painter's scale): linear and conv weights truncated-normal (``std``, cut at ±2 as theirs), biases 0, norms 1/0, the learned
    tokens normal (``std``) and the position embedding truncated-normal (``std``). The relative
    positions stay 0. Without this the tokens and position embedding start at 0 — the two halves of a pair
    and the patches' positions indistinguishable — and a model trained from scratch learns very slowly."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.trunc_normal_(module.weight, std=std)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, (nn.LayerNorm, LayerNorm2d)):
                module.weight.fill_(1.0)
                module.bias.zero_()
            elif isinstance(module, SegGptEmbeddings):
                for name in ("mask_token", "segment_token_input", "segment_token_prompt", "type_token_semantic",
                             "type_token_instance"):
                    nn.init.normal_(getattr(module, name), std=std)
                nn.init.trunc_normal_(module.position_embeddings, std=std)
    return model


# ---------------------------------------------------------------------------------------------------
# The model.


def _check_image(t: Tensor, name: str, channels: int) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.ndim != 4 or t.shape[1] != channels:
        raise ValueError(f"{name} must be B×{channels}×H×W, got shape {tuple(t.shape)}")


class SegGpt(nn.Module):
    """SegGPT composed of ``embeddings``, ``encoder`` and ``decoder`` (see the module docstring)."""

    def __init__(
        self,
        embeddings: SegGptEmbeddings,
        encoder: SegGptEncoder,
        decoder: SegGptDecoder,
        config: Optional[SegGptConfig] = None,
    ) -> None:
        super().__init__()
        self.embeddings = embeddings
        self.encoder = encoder
        self.decoder = decoder
        self.config = config

    @property
    def patch_size(self) -> int:
        return self.embeddings.patch_size

    @property
    def image_size(self) -> Tuple[int, int]:
        """``(H, W)`` of one image of the pair expected by :meth:`forward`."""
        if self.config is None:
            raise ValueError("model has no config; build it with build_seggpt")
        return self.config.single_image_size

    def default_bool_masked_pos(self, grid: Tuple[int, int], device: Optional[torch.device] = None) -> Tensor:
        """Inference masking: every patch of the bottom (query-mask) half hidden → ``1×(h·w)`` bool."""
        h, w = grid
        n = h * w
        hide = torch.zeros(1, n, dtype=torch.bool, device=device)
        hide[:, n // 2 :] = True
        return hide

    def _validate(
        self,
        pixel_values: Tensor,
        prompt_pixel_values: Tensor,
        prompt_masks: Tensor,
        labels: Optional[Tensor],
        bool_masked_pos: Optional[Tensor],
    ) -> None:
        c = self.embeddings.patch_embeddings.proj.in_channels
        named = [("pixel_values", pixel_values), ("prompt_pixel_values", prompt_pixel_values), ("prompt_masks", prompt_masks)]
        if labels is not None:
            named.append(("labels", labels))
        for name, t in named:
            _check_image(t, name, c)
        shape = tuple(pixel_values.shape)
        for name, t in named[1:]:
            if tuple(t.shape) != shape:
                raise ValueError(f"{name} must have the shape of pixel_values {shape}, got {tuple(t.shape)}")
        h, w = shape[2:]
        p = self.patch_size
        if (2 * h) % p or w % p or h % p:
            raise ValueError(f"pixel_values height and width must be multiples of the patch size {p}, got {h}×{w}")
        if bool_masked_pos is not None:
            n = (2 * h // p) * (w // p)
            if not isinstance(bool_masked_pos, Tensor):
                raise TypeError(f"bool_masked_pos must be a torch.Tensor, got {type(bool_masked_pos).__name__}")
            if bool_masked_pos.ndim != 2 or bool_masked_pos.shape[1] != n or bool_masked_pos.shape[0] not in (1, shape[0]):
                raise ValueError(
                    f"bool_masked_pos must be 1×{n} or {shape[0]}×{n} (one flag per patch of the stacked pair), "
                    f"got shape {tuple(bool_masked_pos.shape)}"
                )

    def forward(
        self,
        pixel_values: Tensor,
        prompt_pixel_values: Tensor,
        prompt_masks: Tensor,
        bool_masked_pos: Optional[Tensor] = None,
        feature_ensemble: Optional[bool] = None,
        embedding_type: Optional[str] = None,
        labels: Optional[Tensor] = None,
    ) -> SegGptOutput:
        """Predict the query's mask from ``B`` examples (normalised tensors, all ``B×3×H×W``).

        ``pixel_values``: query image(s); ``prompt_pixel_values`` / ``prompt_masks``: example images and
        their coloured masks; ``labels``: the query's ground-truth mask (training; enables ``loss``).
        ``bool_masked_pos: 1×N`` or ``B×N`` over the ``N`` patches of the stacked pair (default: hide the
        query half). ``feature_ensemble`` averages the query features over the ``B`` examples; the output
        batch is then still ``B`` (identical rows). Returns ``pred_masks: B×3×2H×W`` (top: prompt, bottom:
        query) and ``loss`` when ``labels`` is given.
        """
        self._validate(pixel_values, prompt_pixel_values, prompt_masks, labels, bool_masked_pos)
        dtype = self.embeddings.patch_embeddings.proj.weight.dtype
        embedding_type = "instance" if embedding_type is None else embedding_type
        if embedding_type not in EMBEDDING_TYPES:
            raise ValueError(f"embedding_type must be one of {EMBEDDING_TYPES}, got {embedding_type!r}")
        grid = ((2 * pixel_values.shape[2]) // self.patch_size, pixel_values.shape[3] // self.patch_size)
        if bool_masked_pos is None:
            bool_masked_pos = self.default_bool_masked_pos(grid, pixel_values.device)
        images = torch.cat((prompt_pixel_values, pixel_values), dim=2).to(dtype)
        masks = torch.cat((prompt_masks, prompt_masks if labels is None else labels), dim=2).to(dtype)
        tokens = self.embeddings(images, masks, bool_masked_pos, embedding_type)
        features = self.encoder(tokens, feature_ensemble=bool(feature_ensemble))
        pred_masks = self.decoder(features).contiguous()
        loss = None if labels is None else self.loss(pred_masks, prompt_masks, labels, bool_masked_pos)
        return SegGptOutput(pred_masks=pred_masks, loss=loss)

    def loss(self, pred_masks: Tensor, prompt_masks: Tensor, labels: Tensor, bool_masked_pos: Tensor,
             pixel_weight: Optional[Tensor] = None) -> Tensor:
        """:func:`seggpt_loss` with this model's patch size and smooth-ℓ1 β (``config.beta``, 0.01 without a
        config); ``prompt_masks``/``labels`` are cast to the prediction's dtype (float32 for a half-precision one)."""
        beta = self.config.beta if self.config is not None else 0.01
        return seggpt_loss(pred_masks, prompt_masks.to(pred_masks.dtype), labels.to(pred_masks.dtype), bool_masked_pos,
                           self.patch_size, beta, pixel_weight=pixel_weight)
