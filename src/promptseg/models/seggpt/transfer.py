"""Start a SegGPT from a SAM image encoder: both are plain ViTs built from the same ``promptseg.layers``
blocks (patch embedding, pre-norm attention with decomposed relative positions, MLP), so a trained SAM
encoder gives SegGPT an encoder whose attention already tells objects apart.

What is copied (SAM → SegGPT): the patch embedding (used by SegGPT for images and masks alike); per block
``norm1/norm2 → layernorm_before/layernorm_after``, ``attn.qkv``, ``attn.proj``, ``mlp``; the relative
position tables, centred (offset ``d`` keeps its value, offsets SAM never saw — beyond its window — stay
0); the absolute position embedding, resized bicubically to SegGPT's pre-training grid. What SAM does not
have stays as initialised: SegGPT's tokens, its final layer norm and the decoder. SAM's neck is not used.
"""

from __future__ import annotations

from typing import Dict, List

import torch
from torch import Tensor, nn

from promptseg.layers.positions import resize_pos_grid
from promptseg.models.seggpt.model import SegGpt


def _centred(table: Tensor, size: int) -> Tensor:
    """A ``L×C`` relative-position table (offset ``d`` at row ``d + (L-1)/2``) placed in a ``size×C`` one."""
    out = table.new_zeros(size, table.shape[1])
    half_in, half_out = (table.shape[0] - 1) // 2, (size - 1) // 2
    reach = min(half_in, half_out)
    out[half_out - reach : half_out + reach + 1] = table[half_in - reach : half_in + reach + 1]
    return out


def _check_compatible(model: SegGpt, encoder: nn.Module) -> None:
    layers, blocks = model.encoder.layers, encoder.blocks
    problems: List[str] = []
    if len(layers) != len(blocks):
        problems.append(f"depth {len(layers)} vs {len(blocks)}")
    seg_attn, sam_attn = layers[0].attention, blocks[0].attn
    if seg_attn.qkv.weight.shape != sam_attn.qkv.weight.shape:
        problems.append(f"width {tuple(seg_attn.qkv.weight.shape)} vs {tuple(sam_attn.qkv.weight.shape)} (qkv)")
    if (seg_attn.qkv.bias is None) != (sam_attn.qkv.bias is None):
        problems.append(f"qkv bias {seg_attn.qkv.bias is not None} vs {sam_attn.qkv.bias is not None}")
    if seg_attn.num_heads != sam_attn.num_heads:
        problems.append(f"heads {seg_attn.num_heads} vs {sam_attn.num_heads}")
    if layers[0].mlp.lin1.weight.shape != blocks[0].mlp.lin1.weight.shape:
        problems.append(f"MLP {tuple(layers[0].mlp.lin1.weight.shape)} vs {tuple(blocks[0].mlp.lin1.weight.shape)}")
    seg_patch, sam_patch = model.embeddings.patch_embeddings.proj.weight, encoder.patch_embed.proj.weight
    if seg_patch.shape != sam_patch.shape:
        problems.append(f"patch embedding {tuple(seg_patch.shape)} vs {tuple(sam_patch.shape)}")
    if problems:
        raise ValueError("the SAM image encoder does not match this SegGPT: " + "; ".join(problems))


def init_encoder_from_sam(model: SegGpt, sam_image_encoder: nn.Module) -> SegGpt:
    """Copy a SAM image encoder's weights into ``model``'s embeddings and encoder, in place (see the module
    docstring). Depth, width, qkv bias, heads, MLP width and patch size must match (ValueError naming each mismatch)."""
    enc = sam_image_encoder
    _check_compatible(model, enc)
    with torch.no_grad():
        emb = model.embeddings
        emb.patch_embeddings.proj.weight.copy_(enc.patch_embed.proj.weight)
        emb.patch_embeddings.proj.bias.copy_(enc.patch_embed.proj.bias)
        if getattr(enc, "pos_embed", None) is not None:
            side = int(round((emb.position_embeddings.shape[1] - 1) ** 0.5))
            emb.position_embeddings[:, 1:] = resize_pos_grid(enc.pos_embed, (side, side)).flatten(1, 2)
        for layer, block in zip(model.encoder.layers, enc.blocks):
            pairs: Dict[nn.Module, nn.Module] = {
                layer.layernorm_before: block.norm1, layer.layernorm_after: block.norm2,
                layer.attention.qkv: block.attn.qkv, layer.attention.proj: block.attn.proj,
                layer.mlp.lin1: block.mlp.lin1, layer.mlp.lin2: block.mlp.lin2,
            }
            for dst, src in pairs.items():
                dst.weight.copy_(src.weight)
                dst.bias.copy_(src.bias)
            if layer.attention.use_rel_pos and block.attn.use_rel_pos:
                for name in ("rel_pos_h", "rel_pos_w"):
                    dst = getattr(layer.attention, name)
                    dst.copy_(_centred(getattr(block.attn, name), dst.shape[0]))
    return model
