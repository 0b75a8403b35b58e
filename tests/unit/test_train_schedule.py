"""Optimiser groups (weight decay, layer-wise lr decay) and the warmup + step-decay schedule."""

from __future__ import annotations

import io

import pytest
import torch

from promptseg.models.sam.config import ImageEncoderConfig, MaskDecoderConfig, PromptEncoderConfig, SamConfig
from promptseg.train.schedule import (
    WarmupStepDecay,
    build_optimizer,
    build_scheduler,
    layer_id,
    param_groups,
)

TINY = SamConfig(
    image_encoder=ImageEncoderConfig(img_size=64, patch_size=16, embed_dim=32, depth=3, num_heads=2,
                                     out_chans=32, window_size=2, global_attn_indexes=(1,)),
    prompt_encoder=PromptEncoderConfig(embed_dim=32),
    mask_decoder=MaskDecoderConfig(transformer_dim=32, num_heads=2, mlp_dim=64, iou_head_hidden_dim=32),
)


@pytest.fixture(scope="module")
def sam():
    from promptseg import build_sam

    return build_sam(TINY)


def lookup(groups):
    """parameter name → (lr, weight_decay)."""
    return {n: (g["lr"], g["weight_decay"]) for g in groups for n in g["param_names"]}


def test_warmup_then_step_decay():
    f = WarmupStepDecay(warmup=250, milestones=(60000, 86666), gamma=0.1)
    assert f(0) == pytest.approx(1 / 250)
    assert f(124) == pytest.approx(0.5)
    assert f(249) == pytest.approx(1.0) and f(250) == 1.0
    assert f(59999) == 1.0
    assert f(60000) == pytest.approx(0.1) and f(86665) == pytest.approx(0.1)
    assert f(86666) == pytest.approx(0.01) and f(89999) == pytest.approx(0.01)
    assert WarmupStepDecay(0, (3,))(0) == 1.0
    with pytest.raises(ValueError):
        WarmupStepDecay(10, (5, 2))


def test_scheduler_drives_every_group(sam):
    opt = build_optimizer(sam, lr=1e-3, weight_decay=0.1, layer_decay=0.5)
    sched = build_scheduler(opt, warmup=4, milestones=(6, 8))
    base = [g["initial_lr"] for g in opt.param_groups]  # lr · layer scale, before the schedule
    seen = []
    for _ in range(10):
        seen.append([g["lr"] / b for g, b in zip(opt.param_groups, base)])
        opt.step()
        sched.step()
    expected = [0.25, 0.5, 0.75, 1, 1, 1, 0.1, 0.1, 0.01, 0.01]
    for row, e in zip(seen, expected):
        assert row == pytest.approx([e] * len(base))


def test_layer_decay_group_lrs(sam):
    lr, ld, depth = 1e-3, 0.8, 3
    lrs = {n: v[0] for n, v in lookup(param_groups(sam, lr, 0.1, ld)).items()}
    for i in range(depth):
        assert lrs[f"image_encoder.blocks.{i}.attn.qkv.weight"] == pytest.approx(lr * ld ** (depth - i))
        assert lrs[f"image_encoder.blocks.{i}.norm1.weight"] == pytest.approx(lr * ld ** (depth - i))
    assert lrs["image_encoder.patch_embed.proj.weight"] == pytest.approx(lr * ld ** (depth + 1))
    assert lrs["image_encoder.pos_embed"] == pytest.approx(lr * ld ** (depth + 1))
    for name in ("image_encoder.neck.0.weight", "prompt_encoder.point_embeddings.0.weight",
                 "mask_decoder.transformer.layers.0.mlp.lin1.weight", "mask_decoder.iou_token.weight"):
        assert lrs[name] == pytest.approx(lr)
    assert layer_id("image_encoder.blocks.10.mlp.lin1.weight", 12) == 11
    assert len(lrs) == sum(1 for _ in sam.parameters())


def test_no_weight_decay_on_norms_biases_and_embeddings(sam):
    wd = {n: v[1] for n, v in lookup(param_groups(sam, 1e-3, 0.1, 0.8)).items()}
    no_decay = [
        "image_encoder.blocks.0.norm1.weight", "image_encoder.blocks.0.norm1.bias", "image_encoder.blocks.0.attn.qkv.bias",
        "image_encoder.neck.1.weight", "image_encoder.pos_embed", "image_encoder.blocks.0.attn.rel_pos_h",
        "image_encoder.blocks.1.attn.rel_pos_w", "prompt_encoder.no_mask_embed.weight",
        "prompt_encoder.not_a_point_embed.weight", "mask_decoder.mask_tokens.weight", "mask_decoder.iou_token.weight",
        "mask_decoder.transformer.layers.0.norm1.weight", "mask_decoder.output_upscaling.1.weight",
    ]
    decay = [
        "image_encoder.blocks.0.attn.qkv.weight", "image_encoder.patch_embed.proj.weight", "image_encoder.neck.0.weight",
        "prompt_encoder.mask_downscaling.0.weight", "mask_decoder.transformer.layers.0.self_attn.q_proj.weight",
        "mask_decoder.output_hypernetworks_mlps.0.layers.0.weight",
    ]
    assert all(wd[n] == 0.0 for n in no_decay), [n for n in no_decay if wd[n]]
    assert all(wd[n] == 0.1 for n in decay)


def test_frozen_parameters_are_left_out():
    from promptseg import build_sam

    model = build_sam(TINY)
    model.image_encoder.requires_grad_(False)
    names = set(lookup(param_groups(model, 1e-3, 0.1, 0.8)))
    assert names and not any(n.startswith("image_encoder.") for n in names)


def test_optimizer_and_scheduler_state_load_weights_only(sam):
    opt = build_optimizer(sam, lr=1e-3)
    sched = build_scheduler(opt, 5, (10,))
    sum(p.sum() for p in sam.parameters()).backward()
    opt.step()
    sched.step()
    buf = io.BytesIO()
    torch.save({"o": opt.state_dict(), "s": sched.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    opt2 = build_optimizer(sam, lr=1e-3)
    sched2 = build_scheduler(opt2, 5, (10,))
    opt2.load_state_dict(state["o"])
    sched2.load_state_dict(state["s"])
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]
    sam.zero_grad(set_to_none=True)
