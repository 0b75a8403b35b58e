"""The reference ``segment_anything`` SAM for a promptseg config: the other side of every parity check.

``segment-anything`` is a dev dependency (``pip install -e ".[dev]"``); it is imported only when called.

    ref = reference_sam(promptseg.load_model())   # same architecture and weights, reference code
"""

from __future__ import annotations

from functools import partial

from torch import nn

from promptseg.models.sam.config import SamConfig


def _segment_anything_modeling():
    from promptseg.io import optional_import

    return optional_import("segment_anything.modeling", "the reference SAM", "segment-anything", "dev")


def build_reference_sam(config: SamConfig) -> nn.Module:
    """The reference ``segment_anything.modeling.Sam`` with the architecture of ``config`` (eval mode)."""
    m = _segment_anything_modeling()
    ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer = (
        m.ImageEncoderViT, m.MaskDecoder, m.PromptEncoder, m.Sam, m.TwoWayTransformer
    )

    enc, pe, dec = config.image_encoder, config.prompt_encoder, config.mask_decoder
    grid = enc.img_size // enc.patch_size
    model = Sam(
        image_encoder=ImageEncoderViT(
            img_size=enc.img_size,
            patch_size=enc.patch_size,
            in_chans=enc.in_chans,
            embed_dim=enc.embed_dim,
            depth=enc.depth,
            num_heads=enc.num_heads,
            mlp_ratio=enc.mlp_ratio,
            out_chans=enc.out_chans,
            qkv_bias=enc.qkv_bias,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            use_abs_pos=enc.use_abs_pos,
            use_rel_pos=enc.use_rel_pos,
            window_size=enc.window_size,
            global_attn_indexes=tuple(enc.global_attn_indexes),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=pe.embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(enc.img_size, enc.img_size),
            mask_in_chans=pe.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=dec.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=dec.transformer_depth,
                embedding_dim=dec.transformer_dim,
                num_heads=dec.num_heads,
                mlp_dim=dec.mlp_dim,
                attention_downsample_rate=dec.attention_downsample_rate,
            ),
            transformer_dim=dec.transformer_dim,
            iou_head_depth=dec.iou_head_depth,
            iou_head_hidden_dim=dec.iou_head_hidden_dim,
        ),
        pixel_mean=list(config.pixel_mean),
        pixel_std=list(config.pixel_std),
    )
    return model.eval()


def reference_sam(model: nn.Module) -> nn.Module:
    """A reference ``segment_anything`` ``Sam`` with ``model``'s config and a copy of its weights (eval mode)."""
    ref = build_reference_sam(model.config)
    ref.load_state_dict({k: v.detach().float().clone() for k, v in model.state_dict().items()})
    return ref.eval()
