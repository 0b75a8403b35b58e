"""Resizing learned position tables to another token grid (one numeric path for SAM and SegGPT)."""

from __future__ import annotations

from typing import Tuple

import torch.nn.functional as F
from torch import Tensor


def resize_pos_grid(pos: Tensor, size: Tuple[int, int]) -> Tensor:
    """Absolute position table ``1×h×w×C`` (channels last) → ``1×H×W×C``, bicubic (``align_corners=False``);
    returned as is when it already has ``size``."""
    if tuple(pos.shape[1:3]) == tuple(size):
        return pos
    resized = F.interpolate(pos.permute(0, 3, 1, 2), size=tuple(size), mode="bicubic", align_corners=False)
    return resized.permute(0, 2, 3, 1)


def resize_rel_pos(rel_pos: Tensor, length: int) -> Tensor:
    """Relative position table ``L×D`` → ``length×D``, linearly (as SAM resizes it at run time)."""
    if rel_pos.shape[0] == length:
        return rel_pos
    return F.interpolate(rel_pos.t()[None], size=length, mode="linear")[0].t()
