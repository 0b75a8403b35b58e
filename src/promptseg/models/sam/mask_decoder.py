"""SAM mask decoder (segment-anything.txt §3 "Mask decoder", §A).

A two-way transformer (2 layers, 8 heads, width 256, MLP 2048; the cross-attentions project to 128)
updates prompt tokens and image embedding together. Four mask tokens and an IoU token are prepended to
the prompt tokens: token 0 predicts the single mask used when several prompts are given, tokens 1–3 the
three ambiguity-aware masks returned for a single prompt (§A "Making the model ambiguity-aware").
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple, Type

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from promptseg.layers import MLP, LayerNorm2d, MLPBlock
from promptseg.layers.attention import attention, get_attention_backend
from promptseg.layers.linear import fused_activation, has_forward_tangent, linear_weights


class Attention(nn.Module):
    """Multi-head attention whose q/k/v projections may downsample the width (``internal = dim / rate``)."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide the internal width ({self.internal_dim})")
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def heads(self, x: Tensor) -> Tensor:
        """``B×N×C`` → ``B×H×N×C/H``."""
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """``q: B×Nq×D``, ``k, v: B×Nk×D`` → ``B×Nq×D``."""
        return self.attend(self.heads(self.q_proj(q)), self.heads(self.k_proj(k)), self.heads(self.v_proj(v)))

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Attention over projected, head-split ``B×H×N×d`` tensors, then the output projection.

        ``k, v`` (or ``q``) may have batch 1 while the other side has batch ``B``: shared image keys are
        attended by all prompts without copying them (queries are stacked along their length instead).
        """
        b = max(q.shape[0], k.shape[0])
        scale = 1.0 / math.sqrt(q.shape[-1])
        if k.shape[0] == 1 and b > 1:
            h, n, d = q.shape[1:]
            stacked = q.transpose(0, 1).reshape(1, h, b * n, d)
            out = attention(stacked, k, v, None, scale).reshape(h, b, n, -1).transpose(0, 1)
        else:
            out = attention(q.expand(b, -1, -1, -1), k, v, None, scale)
        n = out.shape[2]
        return self.out_proj(out.transpose(1, 2).reshape(b, n, -1))

    def cross(
        self,
        q_in: Tensor,
        k_in: Tensor,
        v_in: Tensor,
        q: Optional[Tensor] = None,
        kv: Optional[Tuple[Tensor, Tensor]] = None,
        residual: Optional[Tensor] = None,
    ) -> Tensor:
        """Cross-attention between prompt tokens and image tokens, ``B×N×D`` inputs → ``B×Nq×D``.

        Either side may have batch 1 (shared by all prompts). ``q``/``kv`` are precomputed head-split
        projections of ``q_in``/``k_in, v_in``; ``residual`` (``B×Nq×D`` or batch 1), when given, is
        added to the output. The ``sdpa`` backend re-associates the products when one side has only a
        few tokens (exact algebra, see :meth:`_few_queries` and :meth:`_few_keys`); ``eager`` and any
        registered backend get the reference formulation through :func:`attention`.
        """
        few = self.internal_dim // self.num_heads  # fewer tokens per head than this: re-associate
        fast = get_attention_backend() == "sdpa"
        if fast and kv is None and q_in.shape[1] < few:
            out = self._few_queries(q_in, k_in, v_in)
        elif fast and k_in.shape[1] < few:
            return self._few_keys(q_in, k_in, v_in, q, residual)  # adds the residual inside its GEMM
        else:
            q = q if q is not None else self.heads(self.q_proj(q_in))
            k, v = kv if kv is not None else (self.heads(self.k_proj(k_in)), self.heads(self.v_proj(v_in)))
            out = self.attend(q, k, v)
        return out if residual is None else residual + out

    def _split_weight(self, linear: nn.Linear) -> Tensor:
        """``internal×D`` projection weight → per-head ``H×d×D``."""
        return linear.weight.view(self.num_heads, -1, self.embedding_dim)

    def _few_queries(self, q_in: Tensor, k_in: Tensor, v_in: Tensor) -> Tensor:
        """Few queries (prompt tokens) over many keys (image tokens), without projecting the keys.

        ``q·(W_k x + b_k) = (W_kᵀ q)·x + q·b_k``: each head's query is mapped into the input space and
        scored against the raw image tokens; ``q·b_k`` is constant over keys and cancels in the
        softmax. Likewise ``Σ p (W_v x + b_v) = W_v (Σ p x) + b_v`` since the weights sum to 1. For
        7 tokens × 8 heads this costs 2·56·D·Nk instead of 2·D·(D/2)·Nk multiply-adds.
        """
        h = self.num_heads
        if q_in.shape[0] < k_in.shape[0]:  # one set of tokens for per-prompt images: the batch is the images'
            q_in = q_in.expand(k_in.shape[0], -1, -1)
        qh = self.heads(self.q_proj(q_in)) * (1.0 / math.sqrt(self.internal_dim // h))
        b, _, nq, _ = qh.shape
        rows = torch.einsum("bhnd,hdc->bhnc", qh, self._split_weight(self.k_proj)).reshape(b, h * nq, -1)
        if k_in.shape[0] == 1 and b > 1:  # shared image tokens: stack all prompts' rows
            rows = rows.reshape(1, b * h * nq, -1)
        context = (_times_tokens_t(rows, k_in).softmax(dim=-1) @ v_in).view(b, h, nq, -1)
        out = torch.einsum("bhnc,hdc->bhnd", context, self._split_weight(self.v_proj))
        out = out + self.v_proj.bias.view(h, 1, -1)
        return self.out_proj(out.transpose(1, 2).reshape(b, nq, -1))

    def _few_keys(
        self, q_in: Tensor, k_in: Tensor, v_in: Tensor, q: Optional[Tensor] = None, residual: Optional[Tensor] = None
    ) -> Tensor:
        """Many queries (image tokens) over few keys (prompt tokens), without projecting the queries.

        Scores are ``x·(W_qᵀ k) + b_q·k`` per head (or from a precomputed ``q``), laid out keys × queries
        so the softmax runs over the short axis; the output projection is folded into the values
        (``W_o Σ p v = Σ p (W_o v)``), so no per-image-token projection is left. So is its bias, as
        ``b_o / H`` added to every value (each head's weights sum to 1), which leaves the product's
        ``input`` free for the ``residual``: one GEMM writes ``residual + attention`` for all image tokens.
        """
        h = self.num_heads
        batch = max(q_in.shape[0], 1 if q is None else q.shape[0])
        if k_in.shape[0] < batch:  # one set of tokens for per-prompt images: the batch is the images'
            k_in, v_in = k_in.expand(batch, -1, -1), v_in.expand(batch, -1, -1)
        scale = 1.0 / math.sqrt(self.internal_dim // h)
        kh = self.heads(self.k_proj(k_in)) * scale
        vh = self.heads(self.v_proj(v_in))
        b, _, nk, _ = kh.shape
        nq = q_in.shape[1]
        if q is not None:  # projected queries H×Nq×d: scores per head
            if q.shape[0] == 1 and b > 1:
                scores = (kh.transpose(0, 1).reshape(h, b * nk, -1) @ q[0].transpose(1, 2)).view(h, b, nk, nq).transpose(0, 1)
            else:
                scores = kh @ q.transpose(-2, -1)
        else:
            cols = torch.einsum("bhnd,hdc->bhnc", kh, self._split_weight(self.q_proj))
            col_bias = torch.einsum("bhnd,hd->bhn", kh, self.q_proj.bias.view(h, -1))
            if q_in.shape[0] == 1 and b > 1:
                scores = _times_tokens_t(cols.reshape(1, b * h * nk, -1), q_in).view(b, h, nk, nq)
            else:
                scores = _times_tokens_t(cols.reshape(b, h * nk, -1), q_in).view(b, h, nk, nq)
            scores = scores + col_bias[..., None]
        weights = scores.softmax(dim=2).reshape(b, h * nk, nq)
        wo = self.out_proj.weight.view(self.embedding_dim, h, -1)
        values = torch.einsum("bhkd,chd->bhkc", vh, wo).reshape(b, h * nk, -1)
        if residual is None:
            # bias as the product's input: ``weightsᵀ @ values + bias`` copied the transposed weights and
            # the product's output once more (≈ 0.4 ms per layer for 4096 image tokens in bfloat16)
            return torch.baddbmm(self.out_proj.bias, weights.transpose(1, 2), values)
        values = values + self.out_proj.bias / h
        return torch.baddbmm(residual, weights.transpose(1, 2), values)


def _times_tokens_t(rows: Tensor, tokens: Tensor) -> Tensor:
    """``rows · tokensᵀ``: ``rows: B×R×C`` (or ``1×R×C``), ``tokens: B×N×C`` (or ``1×N×C``) → ``B×R×N``.

    The tokens are passed as the *weight* of the linear kernel, whose ``N×C`` layout they already have:
    a matmul with ``tokens.transpose`` copies the transposed ``C×N`` operand first in bfloat16 (≈ 2.7×
    slower for 56 rows × 4096 image tokens) and is ≈ 20 % slower in float32.
    """
    if tokens.shape[0] == 1:
        return linear_weights(rows, tokens[0], None)
    if tokens.device.type != "cpu" or torch.is_grad_enabled():  # one batched GEMM off the CPU inference path
        return rows @ tokens.transpose(-2, -1)
    return torch.stack([linear_weights(r, t, None) for r, t in zip(rows.expand(tokens.shape[0], -1, -1), tokens)])


def _subpixels_to_image(masks: Tensor) -> Tensor:
    """``B×K×h×w×2×2×2×2`` (embedding cell, sub-pixel (i1, j1), sub-pixel (i2, j2)) → ``B×K×4h×4w``.

    Outside autograd the two horizontal neighbours ``j2 = 0, 1``, which stay side by side, move as one
    element of twice the width (int32 for 16-bit floats, int64 for float32): PyTorch's strided CPU copy
    is far slower per element for 2-byte types, and this halves the element count (3 masks of 256² in
    bfloat16: 1.1 → 0.1 ms on one thread; float32: 1.8 → 0.3 ms). The same bits are moved either way.
    """
    b, k, h, w = masks.shape[:4]
    order = (0, 1, 2, 4, 6, 3, 5, 7)  # b, k, h, i1, i2, w, j1, j2
    wide = {2: torch.int32, 4: torch.int64}.get(masks.element_size())
    if wide is None or (torch.is_grad_enabled() and masks.requires_grad) or has_forward_tangent(masks):
        return masks.permute(order).reshape(b, k, 4 * h, 4 * w)
    pairs = masks.contiguous().view(wide).permute(order).contiguous()
    return pairs.view(masks.dtype).view(b, k, 4 * h, 4 * w)


class ImageKeys(NamedTuple):
    """The image side of the decoder before any prompt is seen: flattened keys ``1×hw×D``, their
    positional encoding, and the first layer's key-side projections. Computed once per image."""

    keys: Tensor
    key_pe: Tensor
    keys_pe: Tensor
    t2i_k: Tensor
    t2i_v: Tensor
    i2t_q: Tensor


class TwoWayAttentionBlock(nn.Module):
    """Self-attention of tokens, token→image cross-attention, token MLP, image→token cross-attention."""

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        activation: Type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def image_keys(self, keys: Tensor, key_pe: Tensor) -> ImageKeys:
        """Everything this block computes from the image side alone (keys do not change until its end)."""
        keys_pe = keys + key_pe
        t2i, i2t = self.cross_attn_token_to_image, self.cross_attn_image_to_token
        return ImageKeys(
            keys,
            key_pe,
            keys_pe,
            t2i.heads(t2i.k_proj(keys_pe)),
            t2i.heads(t2i.v_proj(keys)),
            # stored head-dim-major (a ``1×H×N×d`` view of ``1×H×d×N`` memory): the fast path's scores
            # ``k · qᵀ`` then read it contiguously instead of copying the transpose on every prompt
            i2t.heads(i2t.q_proj(keys_pe)).transpose(-2, -1).contiguous().transpose(-2, -1),
        )

    def forward(
        self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor, image: Optional[ImageKeys] = None
    ) -> Tuple[Tensor, Tensor]:
        """``queries: B×N×D``, ``keys: B×hw×D`` (or batch 1, shared) → updated ``(queries, keys)``."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        t2i, i2t = self.cross_attn_token_to_image, self.cross_attn_image_to_token
        keys_pe = image.keys_pe if image is not None else keys + key_pe
        kv = (image.t2i_k, image.t2i_v) if image is not None else None
        queries = self.norm2(queries + t2i.cross(queries + query_pe, keys_pe, keys, kv=kv))
        queries = self.norm3(queries + self.mlp(queries))
        keys = i2t.cross(keys_pe, queries + query_pe, queries, q=image.i2t_q if image is not None else None, residual=keys)
        return queries, self.norm4(keys)


class TwoWayTransformer(nn.Module):
    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        activation: Type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim=embedding_dim,
                num_heads=num_heads,
                mlp_dim=mlp_dim,
                activation=activation,
                attention_downsample_rate=attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    @property
    def dtype(self) -> torch.dtype:
        return self.norm_final_attn.weight.dtype

    def image_keys(self, image_embedding: Tensor, image_pe: Tensor) -> ImageKeys:
        """Prompt-independent work of the first layer for ``image_embedding, image_pe: B×D×h×w``."""
        # token-major copies (sums like ``keys + update`` then come out contiguous for the LayerNorms),
        # in this transformer's dtype, which may differ from the rest of the decoder's
        keys = image_embedding.flatten(2).transpose(1, 2).to(self.dtype).contiguous()
        key_pe = image_pe.flatten(2).transpose(1, 2).to(self.dtype).contiguous()
        return self.layers[0].image_keys(keys, key_pe)

    def forward(
        self,
        image_embedding: Tensor,
        image_pe: Tensor,
        point_embedding: Tensor,
        image_keys: Optional[ImageKeys] = None,
    ) -> Tuple[Tensor, Tensor]:
        """Run the two-way transformer.

        Args:
            image_embedding: ``B×D×h×w`` (batch 1 when all prompts share it); image_pe: ``1×D×h×w``.
            point_embedding: ``B×N×D`` prompt tokens.
            image_keys: :meth:`image_keys` of ``image_embedding``, precomputed (then image_embedding
                is not read).
        Returns:
            tokens ``B×N×D`` and image features ``B×hw×D``.
        """
        if image_keys is None:
            image_keys = self.image_keys(image_embedding, image_pe)
        key_pe = image_keys.key_pe
        queries, keys = point_embedding, image_keys.keys
        for i, layer in enumerate(self.layers):
            queries, keys = layer(queries, keys, point_embedding, key_pe, image_keys if i == 0 else None)
        attn_out = self.final_attn_token_to_image.cross(queries + point_embedding, keys + key_pe, keys)
        return self.norm_final_attn(queries + attn_out), keys


class MaskDecoder(nn.Module):
    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: nn.Module,
        num_multimask_outputs: int = 3,
        activation: Type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            activation(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        multimask_output: bool,
        image_indices: Optional[Tensor] = None,
        image_keys: Optional[ImageKeys] = None,
    ) -> Tuple[Tensor, Tensor]:
        """Predict masks.

        Args:
            image_embeddings: ``I×D×h×w`` — one embedding per image.
            image_pe: ``1×D×h×w`` positional encoding of the embedding grid.
            sparse_prompt_embeddings: ``B×N×D`` prompt tokens.
            dense_prompt_embeddings: ``B×D×h×w`` (an expanded ``1×D×h×w`` when shared by all prompts).
            multimask_output: return the 3 ambiguity-aware masks (True) or the single mask (False).
            image_indices: ``B`` index of the image of each prompt; by default every prompt refers to
                the single image (``I == 1``) or prompt ``i`` to image ``i`` (``I == B``).
            image_keys: :meth:`image_keys` of the (single) image with this dense embedding, cached by
                callers that prompt one image many times.
        Returns:
            mask logits ``B×C×4h×4w`` and IoU predictions ``B×C`` with ``C = 3`` or ``1``.
        """
        selected = slice(1, None) if multimask_output else slice(0, 1)
        return self.predict_masks(
            image_embeddings,
            image_pe,
            sparse_prompt_embeddings,
            dense_prompt_embeddings,
            image_indices,
            selected,
            image_keys,
        )

    def image_keys(self, image_embedding: Tensor, image_pe: Tensor, dense_prompt_embedding: Tensor) -> ImageKeys:
        """Prompt-independent decoder work for one image (``1×D×h×w`` each) and a dense prompt."""
        return self.transformer.image_keys(image_embedding + dense_prompt_embedding[:1], image_pe)

    def predict_masks(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        image_indices: Optional[Tensor] = None,
        mask_slice: slice = slice(None),
        image_keys: Optional[ImageKeys] = None,
    ) -> Tuple[Tensor, Tensor]:
        """Masks ``B×K×4h×4w`` and IoU predictions ``B×K`` of the mask tokens in ``mask_slice`` (all 4 by default)."""
        b = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(b, -1, -1)
        tokens = torch.cat((output_tokens, sparse_prompt_embeddings.to(output_tokens.dtype)), dim=1)
        h, w = image_pe.shape[-2:]

        src = None
        if image_keys is None:
            dense = dense_prompt_embeddings
            shared = image_indices is None and image_embeddings.shape[0] == 1 and (dense.shape[0] == 1 or dense.stride(0) == 0)
            if shared:  # every prompt sees the same image and dense embedding: one copy of the keys
                src = image_embeddings + dense[:1]
            else:
                src = self._per_prompt(image_embeddings, b, image_indices) + dense
        dt = self.transformer.dtype  # the transformer may run in another dtype (the bf16 "transformer_dtype")
        hs, src = self.transformer(src, image_pe.to(dt), tokens.to(dt), image_keys)
        hs, src = hs.to(output_tokens.dtype), src.to(output_tokens.dtype)

        iou_pred = self.iou_prediction_head(hs[:, 0, :])[:, mask_slice]
        hyper_in = self._hypernetworks(hs[:, 1 : 1 + self.num_mask_tokens, :], mask_slice)
        return self._masks(src, hyper_in, h, w), iou_pred

    def clear_cache(self) -> None:
        """Forget the stacked hypernetwork weights (:meth:`_hypernetworks`): they are rebuilt on next use. The
        predictor calls this for every new image, since writes through ``param.data`` bump no version."""
        self.__dict__.pop("_stacked_hypernetworks", None)

    def _hypernetworks(self, mask_tokens: Tensor, mask_slice: slice) -> Tensor:
        """Mask tokens ``B×4×D`` → ``B×K×D/8``: each selected token through its own hypernetwork MLP.

        Outside autograd the ``K`` MLPs run as one batched product per layer from their weights stacked
        once (``K×in×out``, kept until a weight's storage, version or dtype changes, or :meth:`clear_cache`):
        three calls instead of ``3K`` one-row linears, whose fixed cost dominates (≈ 0.2 ms of a bf16 predict
        on the CPU).
        Each output is the same dot product either way.
        """
        mlps = list(self.output_hypernetworks_mlps)[mask_slice]
        tokens = mask_tokens[:, mask_slice]
        params = [p for mlp in mlps for p in mlp.parameters()]
        if len(mlps) < 2 or (torch.is_grad_enabled() and any(p.requires_grad for p in params)):
            return torch.stack([mlp(tokens[:, i]) for i, mlp in enumerate(mlps)], dim=1)
        key = (mask_slice.start, mask_slice.stop, mask_slice.step, torch.is_inference_mode_enabled()) + tuple(
            (p.data_ptr(), p._version, p.dtype) for p in params
        )  # stacks made under inference_mode cannot be saved for a later backward (frozen MLPs, trained inputs)
        cached = getattr(self, "_stacked_hypernetworks", None)
        if cached is None or cached[0] != key:
            layers = [
                (torch.stack([mlp.layers[i].bias for mlp in mlps])[:, None],
                 torch.stack([mlp.layers[i].weight for mlp in mlps]).transpose(1, 2).contiguous())
                for i in range(len(mlps[0].layers))
            ]
            cached = self._stacked_hypernetworks = (key, layers)
        x = tokens.transpose(0, 1)  # K×B×D
        for i, (bias, weight_t) in enumerate(cached[1]):
            x = torch.baddbmm(bias, x.to(weight_t.dtype), weight_t)
            if i < len(cached[1]) - 1:
                x = torch.relu_(x)
        return x.transpose(0, 1)

    def _masks(self, src: Tensor, hyper_in: Tensor, h: int, w: int) -> Tensor:
        """Upscale image tokens ``B×hw×D`` 4× and dot them with ``hyper_in`` ``B×K×D/8`` → ``B×K×4h×4w``.

        The two 2×2 stride-2 transposed convolutions of ``output_upscaling`` are per-pixel linear maps,
        so they run as matrix products on the channels-last tokens; the 16 sub-pixels of every
        embedding cell stay grouped until the final masks are reordered (only ``K`` channels move).
        """
        conv1, norm, act1, conv2, act2 = self.output_upscaling
        b = hyper_in.shape[0]

        def subpixel_linear(x: Tensor, conv: nn.ConvTranspose2d, act: Optional[nn.Module] = None) -> Tensor:
            cin, cout = conv.weight.shape[:2]
            weight = conv.weight.permute(2, 3, 1, 0).reshape(4 * cout, cin)  # rows ordered (i, j, cout)
            fused = fused_activation(act)
            y = linear_weights(x, weight, conv.bias.repeat(4), fused)
            y = y if fused or act is None else act(y)
            return y.view(*x.shape[:-1], 4, cout)

        x = subpixel_linear(src.expand(b, -1, -1), conv1)  # B×hw×4×C/4
        x = act1(F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, norm.eps))
        x = subpixel_linear(x, conv2, act2)  # B×hw×4×4×C/8 — sub-pixel (i1, j1), then (i2, j2)
        masks = _times_tokens_t(hyper_in, x.reshape(b, -1, x.shape[-1]))  # B×K×(hw·16)
        return _subpixels_to_image(masks.view(b, -1, h, w, 2, 2, 2, 2))

    @staticmethod
    def _per_prompt(image_embeddings: Tensor, b: int, image_indices: Optional[Tensor]) -> Tensor:
        """The image embedding of every prompt: ``B×D×h×w``."""
        if image_indices is not None:
            return image_embeddings[image_indices]
        if image_embeddings.shape[0] == 1:
            return image_embeddings.expand(b, -1, -1, -1)
        if image_embeddings.shape[0] != b:
            raise ValueError(
                f"image_embeddings has {image_embeddings.shape[0]} images for {b} prompts; "
                "pass image_indices to map prompts to images"
            )
        return image_embeddings
