"""SAM prompt encoder (segment-anything.txt §3 "Prompt encoder").

Sparse prompts (points, boxes as two corner points, extra tokens such as text embeddings) become
``B×N×D`` tokens: random-Fourier positional encodings plus learned per-label embeddings. Dense prompts
(mask logits at 4× the embedding resolution) go through two 2×2 stride-2 convolutions (4→16 channels
by default) and a 1×1 convolution to ``D``, with LayerNorm2d + GELU; without a mask, a learned
"no mask" embedding is broadcast over the grid.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple, Type

import torch
from torch import Tensor, nn

from promptseg.layers import LayerNorm2d
from promptseg.prompts import PAD_LABEL, sparse_prompt


class PositionEmbeddingRandom(nn.Module):
    """Positional encoding with random spatial frequencies (Tancik et al.)."""

    def __init__(self, num_pos_feats: int = 64, scale: Optional[float] = None) -> None:
        super().__init__()
        scale = 1.0 if scale is None or scale <= 0.0 else scale
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats)))

    def _pe_encoding(self, coords: Tensor) -> Tensor:
        """``…×2`` coordinates normalised to [0, 1] → ``…×2F`` encodings.

        Computed in float32 whatever the module dtype (a bfloat16 coordinate is off by pixels), then
        cast to the dtype of the frequency matrix.
        """
        matrix = self.positional_encoding_gaussian_matrix
        coords = 2 * coords.float() - 1
        coords = coords @ matrix.float()
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1).to(matrix.dtype)

    def forward(self, size: Tuple[int, int]) -> Tensor:
        """Encoding of every cell centre of an ``h×w`` grid: ``2F×h×w``."""
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        y = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        x = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        grid = torch.stack([x[None, :].expand(h, w), y[:, None].expand(h, w)], dim=-1)
        return self._pe_encoding(grid).permute(2, 0, 1)

    def forward_with_coords(self, coords_input: Tensor, image_size: Tuple[int, int]) -> Tensor:
        """``B×N×2`` pixel coordinates (x, y) in an ``H×W`` frame → ``B×N×2F``."""
        size = torch.tensor([image_size[1], image_size[0]], device=coords_input.device, dtype=torch.float32)
        return self._pe_encoding(coords_input.float() / size)


class PromptEncoder(nn.Module):
    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: Tuple[int, int],
        input_image_size: Tuple[int, int],
        mask_in_chans: int,
        activation: Type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = input_image_size
        self.image_embedding_size = image_embedding_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        # Label order of the protocol: 0 negative, 1 positive, 2 box top-left, 3 box bottom-right.
        self.num_point_embeddings = 4
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(self.num_point_embeddings))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            activation(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> Tensor:
        """Positional encoding of the image embedding grid: ``1×D×h×w``."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def embed_sparse(self, coords: Tensor, labels: Tensor) -> Tensor:
        """Protocol points (``B×N×2`` input-frame pixels, ``B×N`` labels) → ``B×N×D`` tokens."""
        pe = self.pe_layer.forward_with_coords(coords + 0.5, self.input_image_size)  # +0.5: pixel centre
        table = torch.cat([self.not_a_point_embed.weight] + [e.weight for e in self.point_embeddings])
        pad = (labels == PAD_LABEL).unsqueeze(-1)
        return torch.where(pad, torch.zeros_like(pe), pe) + table[(labels + 1).clamp(min=0)]

    def embed_masks(self, masks: Tensor) -> Tensor:
        """``B×1×4h×4w`` mask logits → ``B×D×h×w``."""
        return self.mask_downscaling(masks)

    def forward(
        self,
        points: Optional[Tuple[Tensor, Tensor]],
        boxes: Optional[Tensor],
        masks: Optional[Tensor],
        extra_embeddings: Optional[Tensor] = None,
    ) -> Tuple[Tensor, Tensor]:
        """Embed prompts.

        Args:
            points: ``(coords B×N×2, labels B×N)`` in the padded model-input frame, or None.
            boxes: ``B×4`` XYXY boxes in that frame, or None.
            masks: ``B×1×4h×4w`` mask logits, or None.
            extra_embeddings: ``B×K×D`` tokens appended to the sparse prompt (e.g. text), or None.
        Returns:
            sparse ``B×N'×D`` and dense ``B×D×h×w`` embeddings.
        """
        bs = self._batch_size(points, boxes, masks, extra_embeddings)
        weight = self.no_mask_embed.weight
        sparse = weight.new_empty((bs, 0, self.embed_dim))
        joined = sparse_prompt(points, boxes)
        if joined is not None:
            sparse = self.embed_sparse(*joined)
        if extra_embeddings is not None:
            sparse = torch.cat([sparse, extra_embeddings.to(sparse.dtype)], dim=1)
        if masks is not None:
            dense = self.embed_masks(masks.to(weight.dtype))
        else:
            h, w = self.image_embedding_size
            dense = weight.reshape(1, -1, 1, 1).expand(bs, -1, h, w)
        return sparse, dense

    @staticmethod
    def _batch_size(*prompts: object) -> int:
        for p in prompts:
            if isinstance(p, tuple):
                return p[0].shape[0]
            if isinstance(p, Tensor):
                return p.shape[0]
        return 1
