"""A SegGPT started from a SAM image encoder (promptseg.models.seggpt.transfer): same blocks, copied weights."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from promptseg.models.sam.config import ImageEncoderConfig
from promptseg.models.sam.image_encoder import ImageEncoderViT
from promptseg.models.seggpt import SEGGPT_PRESETS, build_seggpt
from promptseg.models.seggpt.transfer import _centred, init_encoder_from_sam


def sam_encoder(heads: int, seed: int = 0, qkv_bias: bool = True) -> ImageEncoderViT:
    torch.manual_seed(seed)
    enc = ImageEncoderViT(ImageEncoderConfig(img_size=64, patch_size=8, embed_dim=32, depth=4, num_heads=heads,
                                             mlp_ratio=4.0, out_chans=16, qkv_bias=qkv_bias, window_size=3,
                                             global_attn_indexes=(1, 3)))
    for p in enc.parameters():  # every weight distinct from SegGPT's initialisation
        p.data.normal_(0, 0.1)
    return enc


def seggpt(heads: int, qkv_bias: bool = True):
    torch.manual_seed(1)
    cfg = dataclasses.replace(SEGGPT_PRESETS["tiny"], hidden_size=32, num_hidden_layers=4, num_attention_heads=heads,
                              qkv_bias=qkv_bias, mlp_dim=128, patch_size=8, pretrain_image_size=24,
                              intermediate_hidden_state_indices=(1, 3))
    return build_seggpt(cfg)


def test_weights_are_copied_block_by_block():
    enc, model = sam_encoder(2), seggpt(2)
    tokens = model.embeddings.mask_token.clone()
    init_encoder_from_sam(model, enc)
    assert torch.equal(model.embeddings.patch_embeddings.proj.weight, enc.patch_embed.proj.weight)
    for layer, block in zip(model.encoder.layers, enc.blocks):
        assert torch.equal(layer.attention.qkv.weight, block.attn.qkv.weight)
        assert torch.equal(layer.attention.proj.bias, block.attn.proj.bias)
        assert torch.equal(layer.mlp.lin2.weight, block.mlp.lin2.weight)
        assert torch.equal(layer.layernorm_before.weight, block.norm1.weight)
        assert torch.equal(layer.layernorm_after.bias, block.norm2.bias)
        # relative positions: offset d keeps its value
        src, dst = block.attn.rel_pos_h, layer.attention.rel_pos_h
        s0, d0 = (src.shape[0] - 1) // 2, (dst.shape[0] - 1) // 2
        reach = min(s0, d0)
        assert torch.equal(dst[d0 - reach : d0 + reach + 1], src[s0 - reach : s0 + reach + 1])
    assert model.embeddings.position_embeddings.shape[1] == 3 * 3 + 1
    assert torch.equal(model.embeddings.mask_token, tokens)  # SegGPT's own parts are kept
    h, w = model.image_size
    x = torch.randn(1, 3, h, w)
    with torch.no_grad():
        assert torch.isfinite(model(x, x, x).pred_masks).all()


def test_centred_table_keeps_offsets():
    table = torch.arange(5.0)[:, None]  # offsets -2..2
    assert _centred(table, 9)[:, 0].tolist() == [0, 0, 0, 1, 2, 3, 4, 0, 0]
    assert _centred(table, 3)[:, 0].tolist() == [1, 2, 3]


def test_a_mismatched_encoder_is_refused():
    with pytest.raises(ValueError, match="heads 4 vs 2"):
        init_encoder_from_sam(seggpt(4), sam_encoder(2))


@pytest.mark.parametrize("sam_bias", [True, False])
def test_a_qkv_bias_mismatch_is_refused_before_copying(sam_bias: bool):
    """One side with a qkv bias, the other without: a ValueError naming it, and nothing copied (it failed
    half-way with ``'NoneType' object has no attribute 'copy_'``)."""
    model = seggpt(2, qkv_bias=not sam_bias)
    before = model.embeddings.patch_embeddings.proj.weight.clone()
    with pytest.raises(ValueError, match=f"qkv bias {not sam_bias} vs {sam_bias}"):
        init_encoder_from_sam(model, sam_encoder(2, qkv_bias=sam_bias))
    assert torch.equal(model.embeddings.patch_embeddings.proj.weight, before)


def test_train_config_starts_the_encoder_from_the_bundled_sam():
    from promptseg import hub
    from promptseg.train.seggpt import SegGptTrainConfig
    from promptseg.train.seggpt.trainer import build_model

    if hub.default_model_path() is None:
        pytest.skip("this build bundles no default SAM")
    sam = hub.load_model().image_encoder
    arch = {"hidden_size": sam.config.embed_dim, "num_hidden_layers": sam.config.depth,
            "num_attention_heads": sam.config.num_heads, "mlp_dim": int(sam.config.embed_dim * sam.config.mlp_ratio),
            "patch_size": sam.config.patch_size, "image_size": [64, 32], "pretrain_image_size": 32,
            "intermediate_hidden_state_indices": [1, sam.config.depth - 1], "merge_index": 1,
            "decoder_hidden_size": 8}
    cfg = SegGptTrainConfig.from_dict({"model": {"config": arch, "init_encoder_from_sam": "default"},
                                       "dataset": {"type": "synth-scenes", "num_scenes": 2, "size": 64}})
    model = build_model(cfg)
    assert torch.equal(model.encoder.layers[-1].mlp.lin1.weight, sam.blocks[-1].mlp.lin1.weight)
    with pytest.raises(ValueError, match="init_encoder_from_sam"):
        SegGptTrainConfig.from_dict({"model": {"config": arch, "init_encoder_from_sam": ""},
                                     "dataset": {"type": "synth-scenes"}})
