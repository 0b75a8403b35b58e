"""Attention backends: ``eager`` (reference formulation) and ``sdpa`` (fused) agree; the switch works.

Tolerance: max |Δ| ≤ 1e-4 in float32.
"""

from __future__ import annotations

import importlib
import threading

import numpy as np
import pytest
import torch

from promptseg import SamPredictor, set_attention_backend, use_attention_backend
from promptseg.layers.attention import (
    DecomposedBias,
    attention,
    available_attention_backends,
    get_attention_backend,
)
from promptseg.models.sam.image_encoder import Block, rel_pos_bias

# ``promptseg.layers.attention`` the attribute is the function (re-exported by ``promptseg.layers``);
# the module itself:
attention_module = importlib.import_module("promptseg.layers.attention")

ATOL = 1e-4


def _randn(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


# ---------------------------------------------------------------------------------------------------
# DecomposedBias


def test_decomposed_bias_dense_is_broadcast_sum():
    b, h, nq, kh, kw = 2, 3, 5, 4, 6
    rows, cols = _randn(b, h, nq, kh, seed=1), _randn(b, h, nq, kw, seed=2)
    bias = DecomposedBias(rows, cols)
    expected = (rows[..., :, None] + cols[..., None, :]).reshape(b * h, nq, kh * kw)
    assert torch.equal(bias.dense(), expected)
    # dense()[n, i, a * kw + c] == rows[n, i, a] + cols[n, i, c]
    flat_rows, flat_cols = bias.flat()
    assert flat_rows.shape == (b * h, nq, kh) and flat_cols.shape == (b * h, nq, kw)
    assert torch.equal(bias.dense()[4, 3, 2 * kw + 5], flat_rows[4, 3, 2] + flat_cols[4, 3, 5])
    assert torch.equal(bias.dense(slice(2, 5)), expected[2:5])


def test_rel_pos_bias_matches_reference_add_decomposed_rel_pos():
    from segment_anything.modeling.image_encoder import add_decomposed_rel_pos

    b, heads, size, d = 1, 2, (5, 7), 8
    q = _randn(b, heads, size[0] * size[1], d, seed=3)
    rel_h, rel_w = _randn(2 * size[0] - 1, d, seed=4), _randn(2 * size[1] - 1, d, seed=5)
    bias = rel_pos_bias(q, rel_h, rel_w, size)
    attn = _randn(b * heads, size[0] * size[1], size[0] * size[1], seed=6)
    expected = add_decomposed_rel_pos(attn.clone(), q.reshape(b * heads, -1, d), rel_h, rel_w, size, size)
    got = attn + bias.dense().reshape(attn.shape)
    assert torch.allclose(got, expected, atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# Backends agree


@pytest.mark.parametrize("bias_kind", ["none", "dense", "broadcast", "decomposed"])
def test_backends_agree_on_random_inputs(bias_kind):
    b, h, nq, nk, d = 2, 3, 12, 20, 16
    q, k, v = _randn(b, h, nq, d, seed=1), _randn(b, h, nk, d, seed=2), _randn(b, h, nk, d, seed=3)
    bias = {
        "none": None,
        "dense": _randn(b, h, nq, nk, seed=4),
        "broadcast": _randn(1, 1, nq, nk, seed=5),
        "decomposed": DecomposedBias(_randn(b, h, nq, 4, seed=6), _randn(b, h, nq, 5, seed=7)),
    }[bias_kind]
    outs = {}
    for name in ("eager", "sdpa"):
        with use_attention_backend(name):
            outs[name] = attention(q, k, v, bias, 0.3)
    assert outs["eager"].shape == (b, h, nq, d)
    assert (outs["eager"] - outs["sdpa"]).abs().max() <= ATOL
    # and both equal the textbook formula
    dense = bias.dense().view(b, h, nq, nk) if isinstance(bias, DecomposedBias) else bias
    logits = 0.3 * q @ k.transpose(-1, -2) + (0 if dense is None else dense)
    assert (outs["sdpa"] - logits.softmax(-1) @ v).abs().max() <= ATOL


@pytest.mark.parametrize("bias_kind", ["dense", "decomposed"])
def test_backends_accept_a_float32_bias_with_bfloat16_inputs(bias_kind):
    """A bias in another dtype than q/k/v is cast to theirs by every backend (sdpa did; eager raised)."""
    b, h, n, d = 1, 2, 12, 8
    q, k, v = (_randn(b, h, n, d, seed=s).bfloat16() for s in (1, 2, 3))
    bias = _randn(b, h, n, n, seed=4)
    if bias_kind == "decomposed":  # 3 × 4 = n keys
        bias = DecomposedBias(_randn(b, h, n, 3, seed=5), _randn(b, h, n, 4, seed=6))
    outs = {}
    for name in ("eager", "sdpa"):
        with use_attention_backend(name):
            outs[name] = attention(q, k, v, bias)
        assert outs[name].dtype == torch.bfloat16 and outs[name].shape == (b, h, n, d)
    assert (outs["eager"].float() - outs["sdpa"].float()).abs().max() <= 0.05


def test_default_scale_is_inverse_sqrt_head_dim():
    q, k, v = _randn(1, 2, 4, 9, seed=1), _randn(1, 2, 6, 9, seed=2), _randn(1, 2, 6, 9, seed=3)
    for name in ("eager", "sdpa"):
        with use_attention_backend(name):
            assert torch.allclose(attention(q, k, v), attention(q, k, v, None, 1 / 3), atol=1e-6)


# The sdpa backend computes a decomposed bias in blocks whose size is a private module constant; the
# tests below shrink it to force many blocks (heads and query rows split, uneven tails).
_BLOCK_CONSTANTS = ("_BLOCK_ELEMENTS", "_BIAS_CHUNK_ELEMENTS")


def _set_block_size(monkeypatch, elements):
    names = [name for name in _BLOCK_CONSTANTS if hasattr(attention_module, name)]
    if not names:
        pytest.skip("no known block-size constant in promptseg.layers.attention")
    for name in names:
        monkeypatch.setattr(attention_module, name, elements)


@pytest.mark.parametrize("elements", [1, 3 * 16, 64, 16 * 16, 2 * 16 * 16, 4 * 16 * 16, 1 << 30])
def test_sdpa_decomposed_bias_in_blocks(monkeypatch, elements):
    """Splitting the decomposed-bias attention into blocks must not change the result."""
    b, h, n, d = 2, 3, 16, 8
    q, k, v = _randn(b, h, n, d, seed=1), _randn(b, h, n, d, seed=2), _randn(b, h, n, d, seed=3)
    bias = DecomposedBias(_randn(b, h, n, 4, seed=4), _randn(b, h, n, 4, seed=5))
    with use_attention_backend("eager"):
        expected = attention(q, k, v, bias)
    _set_block_size(monkeypatch, elements)
    with use_attention_backend("sdpa"):
        got = attention(q, k, v, bias)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= ATOL


@pytest.mark.parametrize("elements", [None, 2 * 10 * 10, 30])
def test_backends_agree_on_gradients(monkeypatch, elements):
    if elements is not None:
        _set_block_size(monkeypatch, elements)  # several blocks
    grads = {}
    for name in ("eager", "sdpa"):
        q = _randn(1, 3, 10, 8, seed=1).requires_grad_()
        rows = _randn(1, 3, 10, 2, seed=2).requires_grad_()
        cols = _randn(1, 3, 10, 5, seed=3).requires_grad_()
        k, v = _randn(1, 3, 10, 8, seed=4), _randn(1, 3, 10, 8, seed=5)
        with use_attention_backend(name):
            out = attention(q, k, v, DecomposedBias(rows, cols))
        (out * _randn(*out.shape, seed=6)).sum().backward()
        grads[name] = (q.grad, rows.grad, cols.grad)
    for a, b in zip(grads["eager"], grads["sdpa"]):
        assert (a - b).abs().max() <= ATOL


def test_backends_agree_on_tiny_sam(tiny_sam, helpers):
    image = helpers.make_image(100, 160, seed=2)
    prompt = dict(point_coords=np.array([[40, 50], [120, 70]]), point_labels=np.array([1, 0]), box=np.array([10, 10, 150, 90]))
    results = {}
    for name in ("eager", "sdpa"):
        predictor = SamPredictor(tiny_sam)
        with use_attention_backend(name):
            predictor.set_image(image)
            results[name] = (predictor.features,) + tuple(torch.from_numpy(x) for x in predictor.predict(**prompt, return_logits=True))
    for a, b in zip(results["eager"], results["sdpa"]):
        helpers.assert_close(a, b, "eager vs sdpa")


def _vit_b_block(window_size):
    """A ViT-B-size block (768 wide, 12 heads, rel-pos, 64×64 grid) with random weights."""
    kwargs = dict(dim=768, num_heads=12, mlp_ratio=4.0, qkv_bias=True, use_rel_pos=True, window_size=window_size, input_size=(64, 64))
    torch.manual_seed(window_size)
    block = Block(**kwargs).eval()
    gen = torch.Generator().manual_seed(100 + window_size)
    with torch.no_grad():
        for _, p in sorted(block.named_parameters()):
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)  # rel_pos_h/w are zero-initialised
    return block


def test_vit_b_size_global_block_backends_agree(helpers):
    """One ViT-B global block on the 64×64 grid (12×4096×4096 decomposed rel-pos bias): eager == sdpa.
    (Windowed blocks and parity with the reference at this size: tests/parity/test_vit_b_parity.py.)"""
    block = _vit_b_block(0)
    x = _randn(1, 64, 64, 768, seed=7)
    outs = {}
    with torch.no_grad(), helpers.all_threads():
        for name in ("eager", "sdpa"):
            with use_attention_backend(name):
                outs[name] = block(x)
    helpers.assert_close(outs["eager"], outs["sdpa"], "eager vs sdpa")
    assert (outs["eager"] - x).abs().max() > 1e-2  # the block does something


def test_windowed_block_matches_reference_with_padding(helpers):
    """A windowed block (window 5 on a 12×12 grid → padded to 15×15) equals the reference's, both backends."""
    from functools import partial

    from segment_anything.modeling.image_encoder import Block as RefBlock

    kwargs = dict(dim=64, num_heads=4, mlp_ratio=4.0, qkv_bias=True, use_rel_pos=True, window_size=5, input_size=(12, 12))
    torch.manual_seed(0)
    ref = RefBlock(norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), **kwargs).eval()
    helpers.perturb_(ref, 1, 0.05)
    ours = Block(**kwargs).eval()
    ours.load_state_dict(ref.state_dict())
    x = _randn(2, 12, 12, 64, seed=8)
    with torch.no_grad():
        expected = ref(x)
        for name in ("eager", "sdpa"):
            with use_attention_backend(name):
                helpers.assert_close(ours(x), expected, f"windowed block ({name})")


# ---------------------------------------------------------------------------------------------------
# Backend selection


def test_default_backend_is_sdpa_and_both_are_available():
    assert get_attention_backend() == "sdpa"
    assert {"eager", "sdpa"} <= set(available_attention_backends())


def test_use_attention_backend_restores_previous_even_on_error():
    with use_attention_backend("eager"):
        assert get_attention_backend() == "eager"
        with use_attention_backend("sdpa"):
            assert get_attention_backend() == "sdpa"
        assert get_attention_backend() == "eager"
    assert get_attention_backend() == "sdpa"
    with pytest.raises(KeyError):
        with use_attention_backend("eager"):
            raise KeyError("boom")
    assert get_attention_backend() == "sdpa"


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="flash9"):
        set_attention_backend("flash9")
    with pytest.raises(ValueError, match="backend"):
        with use_attention_backend("nope"):
            pass
    assert get_attention_backend() == "sdpa"


def test_register_attention_backend_checks_name_and_function():
    """A non-string name (e.g. the function itself, from a bare ``@register_attention_backend``) entered the
    registry and made ``available_attention_backends()`` and every unknown-name error raise a TypeError."""
    before = dict(attention_module._BACKENDS)
    try:
        with pytest.raises(TypeError, match="name"):
            attention_module.register_attention_backend(attention_module.eager_attention)
        with pytest.raises(TypeError, match="name"):
            attention_module.register_attention_backend(3)(attention_module.eager_attention)
        with pytest.raises(ValueError, match="name"):
            attention_module.register_attention_backend("")
        with pytest.raises(TypeError, match="callable"):
            attention_module.register_attention_backend("broken")(None)
        assert attention_module._BACKENDS == before
        assert {"eager", "sdpa"} <= set(available_attention_backends())
        with pytest.raises(ValueError, match="flash9"):
            set_attention_backend("flash9")
        registered = attention_module.register_attention_backend("custom")(attention_module.eager_attention)
        assert registered is attention_module.eager_attention and "custom" in available_attention_backends()
    finally:
        attention_module._BACKENDS.clear()
        attention_module._BACKENDS.update(before)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # inside torch.func
def test_decomposed_bias_attention_under_forward_mode_ad():
    """``torch.func.jvp`` without an autograd graph: the blocked path's in-place ``out=`` kernels have no
    forward derivative (it raised); it takes its out-of-place route there and matches eager."""
    from torch.func import jvp

    q, k, v = _randn(1, 2, 10, 4, seed=1), _randn(1, 2, 10, 4, seed=2), _randn(1, 2, 10, 4, seed=3)
    bias = DecomposedBias(_randn(1, 2, 10, 2, seed=4), _randn(1, 2, 10, 5, seed=5))
    tangent = _randn(1, 2, 10, 4, seed=6)
    outs = {}
    with torch.no_grad():
        for name in ("eager", "sdpa"):
            with use_attention_backend(name):
                outs[name] = jvp(lambda q: attention(q, k, v, bias, 0.5), (q,), (tangent,))
    for a, b in zip(outs["eager"], outs["sdpa"]):
        assert (a - b).abs().max() <= ATOL
    assert outs["eager"][1].abs().max() > 0.1


def test_backend_is_thread_local():
    seen = []
    with use_attention_backend("eager"):
        thread = threading.Thread(target=lambda: seen.append(get_attention_backend()))
        thread.start()
        thread.join()
        assert get_attention_backend() == "eager"
    assert seen == ["sdpa"]


def test_every_sam_attention_goes_through_the_selected_backend(tiny_sam, helpers, monkeypatch):
    """A spy backend sees the image encoder's and the mask decoder's attentions."""
    calls = []

    def spy(q, k, v, bias, scale):
        calls.append((tuple(q.shape), isinstance(bias, DecomposedBias)))
        return attention_module.eager_attention(q, k, v, bias, scale)

    monkeypatch.setitem(attention_module._BACKENDS, "spy", spy)
    predictor = SamPredictor(tiny_sam)
    image = helpers.make_image(64, 64, seed=1)
    with use_attention_backend("spy"):
        predictor.set_image(image)
        n_encoder = len(calls)
        predictor.predict(point_coords=np.array([[10, 10]]), point_labels=np.array([1]))
    cfg = helpers.TINY_CONFIG
    assert n_encoder >= cfg.image_encoder.depth  # every block's (windowed or global) attention
    assert all(rel for _, rel in calls[:n_encoder])  # with the relative-position bias
    # decoder: 3 attentions per two-way layer + the final token→image attention
    assert len(calls) - n_encoder == 3 * cfg.mask_decoder.transformer_depth + 1
    # the spy was equivalent to the default backend
    default = SamPredictor(tiny_sam)
    default.set_image(image)
    helpers.assert_close(default.features, predictor.features, "spy vs sdpa")


def test_registered_backend_sees_the_decoder_cross_attentions_at_official_head_width(monkeypatch):
    """With few prompt tokens per head (the official decoder: 7 tokens, 16 dims per head) the ``sdpa``
    backend re-associates the cross-attentions; a registered backend must still receive every one."""
    from promptseg.models.sam.mask_decoder import TwoWayTransformer

    calls = []

    def spy(q, k, v, bias, scale):
        calls.append(tuple(q.shape))
        return attention_module.eager_attention(q, k, v, bias, scale)

    monkeypatch.setitem(attention_module._BACKENDS, "spy", spy)
    torch.manual_seed(0)
    transformer = TwoWayTransformer(depth=2, embedding_dim=64, num_heads=2, mlp_dim=32).eval()
    image, pe, tokens = _randn(1, 64, 6, 6, seed=1), _randn(1, 64, 6, 6, seed=2), _randn(3, 7, 64, seed=3)
    assert tokens.shape[1] < transformer.layers[0].cross_attn_token_to_image.internal_dim // 2  # few tokens per head
    outs = {}
    with torch.no_grad():
        for name in ("spy", "eager", "sdpa"):
            with use_attention_backend(name):
                outs[name] = transformer(image, pe, tokens)
    assert len(calls) == 3 * 2 + 1  # self, token→image, image→token per layer + the final token→image
    for name in ("eager", "sdpa"):
        for a, b in zip(outs["spy"], outs[name]):
            assert (a - b).abs().max() <= ATOL


def test_dense_bias_path_for_accelerators_matches_eager_with_gradients():
    """Off the CPU the factorised bias is materialised for the fused kernel; same values and gradients."""
    grads = {}
    outs = {}
    for name, fn in (("eager", attention_module.eager_attention), ("dense", attention_module._sdpa_dense_bias)):
        q = _randn(2, 3, 12, 8, seed=1).requires_grad_()
        rows = _randn(2, 3, 12, 3, seed=2).requires_grad_()
        cols = _randn(2, 3, 12, 4, seed=3).requires_grad_()
        k, v = _randn(2, 3, 12, 8, seed=4), _randn(2, 3, 12, 8, seed=5)
        out = fn(q, k, v, DecomposedBias(rows, cols), 8**-0.5)
        (out * _randn(*out.shape, seed=6)).sum().backward()
        outs[name], grads[name] = out.detach(), (q.grad, rows.grad, cols.grad)
    assert (outs["eager"] - outs["dense"]).abs().max() <= ATOL
    for a, b in zip(grads["eager"], grads["dense"]):
        assert (a - b).abs().max() <= ATOL
