"""The inference fast paths of the shared layers against their plain formulations.

* :func:`promptseg.layers.linear.linear` (oneDNN, bias and GELU fused) against ``F.linear``/``F.gelu``;
* :func:`window_heads` / :func:`window_merge` (window partition, padding and head split in one copy)
  against pad → partition → split written out with ``F.pad`` and ``view``/``permute``, forward and backward.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from promptseg.layers import MLPBlock
from promptseg.layers.linear import linear, linear_weights
from promptseg.models.sam.image_encoder import window_heads, window_merge


def _layer(n_in: int, n_out: int, dtype: torch.dtype, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(n_in, n_out).to(dtype)


@pytest.mark.parametrize("activation", [None, "gelu"])
@pytest.mark.parametrize("shape", [(5, 48), (2, 3, 7, 48)])
def test_linear_matches_f_linear_float32(activation, shape):
    layer = _layer(48, 40, torch.float32)
    x = torch.randn(*shape)
    with torch.no_grad():
        got = linear(x, layer, activation)
        expected = F.linear(x, layer.weight, layer.bias)
        expected = F.gelu(expected) if activation else expected
    assert got.shape == (*shape[:-1], 40)
    assert (got - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("activation", [None, "gelu"])
def test_linear_bfloat16_within_one_rounding(activation):
    layer = _layer(64, 96, torch.bfloat16)
    x = torch.randn(3, 11, 64).bfloat16()
    with torch.no_grad():
        got = linear(x, layer, activation).float()
        exact = x.float() @ layer.weight.float().t() + layer.bias.float()
        exact = F.gelu(exact) if activation else exact
    assert got.dtype == torch.float32 and got.shape == exact.shape
    # bfloat16 keeps 8 significant bits: ≤ 2 roundings of relative error 2^-8 (plus float32 sums)
    assert ((got - exact).abs() <= exact.abs() * 2**-7 + 1e-2).all()


def test_linear_records_gradients_through_the_plain_op():
    layer = _layer(16, 8, torch.float32)
    x = torch.randn(4, 16, requires_grad=True)
    y = linear(x, layer, "gelu")
    y.sum().backward()
    x2 = x.detach().clone().requires_grad_()
    layer2 = _layer(16, 8, torch.float32)
    F.gelu(layer2(x2)).sum().backward()
    assert torch.allclose(x.grad, x2.grad, atol=1e-6)
    assert torch.allclose(layer.weight.grad, layer2.weight.grad, atol=1e-6)


def test_linear_rejects_unknown_activation():
    with pytest.raises(ValueError, match="activation"):
        linear(torch.randn(2, 4), _layer(4, 4, torch.float32), "relu")


def test_mlp_block_fused_gelu_equals_the_module_chain():
    torch.manual_seed(1)
    mlp = MLPBlock(32, 64)
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        expected = mlp.lin2(mlp.act(mlp.lin1(x)))
        assert (mlp(x) - expected).abs().max() <= 1e-5
    tanh = MLPBlock(32, 64, act=lambda: nn.GELU(approximate="tanh"))
    with torch.no_grad():
        assert (tanh(x) - tanh.lin2(tanh.act(tanh.lin1(x)))).abs().max() <= 1e-5


def _windows_reference(qkv: torch.Tensor, ws: int, heads: int, pad_value: torch.Tensor):
    """Pad with ``pad_value``, partition into windows, split heads — the textbook way."""
    b, h, w, c3 = qkv.shape
    ph, pw = (-h) % ws, (-w) % ws
    padded = pad_value.expand(b, h + ph, w + pw, c3).clone()
    padded[:, :h, :w] = qkv
    x = padded.view(b, (h + ph) // ws, ws, (w + pw) // ws, ws, c3).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c3)
    q, k, v = x.reshape(x.shape[0], ws * ws, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    return q, k, v


@pytest.mark.parametrize("hw", [(8, 8), (9, 7), (3, 10), (4, 5)])
def test_window_heads_equals_pad_partition_split(hw):
    h, w = hw
    ws, heads, d = 4, 3, 5
    qkv = torch.randn(2, h, w, 3 * heads * d)
    pad = torch.randn(3 * heads * d)
    got = window_heads(qkv, ws, heads, pad)
    expected = _windows_reference(qkv, ws, heads, pad)
    for g, e in zip(got, expected):
        assert g.is_contiguous()
        assert torch.equal(g, e)
    zeros = window_heads(qkv, ws, heads)  # default padding: zeros
    for g, e in zip(zeros, _windows_reference(qkv, ws, heads, torch.zeros(3 * heads * d))):
        assert torch.equal(g, e)


@pytest.mark.parametrize("hw", [(8, 8), (9, 7), (3, 10)])
def test_window_merge_inverts_window_heads(hw):
    h, w = hw
    ws, heads, d = 4, 2, 3
    qkv = torch.randn(2, h, w, 3 * heads * d)
    q, k, v = window_heads(qkv, ws, heads, torch.randn(3 * heads * d))
    for i, part in enumerate((q, k, v)):
        merged = window_merge(part, ws, (h, w))
        assert merged.shape == (2, h, w, heads * d)
        assert torch.equal(merged, qkv[..., i * heads * d : (i + 1) * heads * d])


def test_window_heads_and_merge_backpropagate():
    ws, heads, d, h, w = 4, 2, 3, 6, 5
    qkv = torch.randn(1, h, w, 3 * heads * d, requires_grad=True)
    pad = torch.randn(3 * heads * d, requires_grad=True)
    weights = [torch.randn(4, heads, ws * ws, d) for _ in range(3)]  # 2×2 windows
    grads = []
    for fn in (lambda: window_heads(qkv, ws, heads, pad), lambda: _windows_reference(qkv, ws, heads, pad)):
        qkv.grad = pad.grad = None
        sum((t * wt).sum() for t, wt in zip(fn(), weights)).backward()
        grads.append((qkv.grad.clone(), pad.grad.clone()))
    assert torch.allclose(grads[0][0], grads[1][0]) and torch.allclose(grads[0][1], grads[1][1], atol=1e-5)
    x = torch.randn(4, heads, ws * ws, d, requires_grad=True)
    window_merge(x, ws, (h, w)).sum().backward()
    # every cell inside the image gets gradient 1 once; padded cells get none
    assert set(x.grad.unique().tolist()) == {0.0, 1.0}
    assert x.grad.sum().item() == h * w * heads * d


def test_rows_times_tokens_t_same_with_and_without_autograd():
    """The decoder's ``rows · tokensᵀ``: per-mask linear kernels at CPU inference, one batched GEMM when
    training (or off the CPU); both equal the plain matmul."""
    from promptseg.models.sam.mask_decoder import _times_tokens_t

    g = torch.Generator().manual_seed(0)
    rows, tokens = torch.randn(1, 5, 16, generator=g), torch.randn(3, 40, 16, generator=g)
    expected = rows @ tokens.transpose(-2, -1)
    with torch.no_grad():
        assert torch.allclose(_times_tokens_t(rows, tokens), expected, atol=1e-5)
    tokens.requires_grad_()
    got = _times_tokens_t(rows, tokens)
    assert got.requires_grad and torch.allclose(got, expected, atol=1e-5)
    got.sum().backward()
    assert torch.allclose(tokens.grad, rows.sum(1, keepdim=True).expand(3, 40, 16), atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_subpixels_to_image_moves_the_same_bits_as_the_permute(dtype):
    """The decoder's sub-pixel → image reordering: pairs moved as wider integers outside autograd."""
    from promptseg.models.sam.mask_decoder import _subpixels_to_image

    b, k, h, w = 2, 3, 5, 7
    masks = torch.randn(b, k, h, w, 2, 2, 2, 2, generator=torch.Generator().manual_seed(1)).to(dtype)
    expected = masks.permute(0, 1, 2, 4, 6, 3, 5, 7).reshape(b, k, 4 * h, 4 * w)
    with torch.no_grad():
        got = _subpixels_to_image(masks)
    assert got.dtype == dtype and got.is_contiguous()
    assert torch.equal(got, expected)
    # image pixel (4y + 2·i1 + i2, 4x + 2·j1 + j2) is cell (y, x), sub-pixels (i1, j1), (i2, j2)
    assert got[1, 2, 4 * 3 + 2 + 1, 4 * 6 + 0 + 1] == masks[1, 2, 3, 6, 1, 0, 1, 1]


def test_subpixels_to_image_backpropagates():
    from promptseg.models.sam.mask_decoder import _subpixels_to_image

    masks = torch.randn(1, 2, 3, 4, 2, 2, 2, 2, requires_grad=True)
    weight = torch.randn(1, 2, 12, 16)
    (_subpixels_to_image(masks) * weight).sum().backward()
    assert torch.equal(masks.grad, weight.view(1, 2, 3, 2, 2, 4, 2, 2).permute(0, 1, 2, 5, 3, 6, 4, 7))


@pytest.mark.parametrize("activation", [None, "gelu"])
def test_linear_with_a_strided_bias_equals_f_linear(activation):
    """oneDNN reads the bias as dense memory: a strided or expanded bias view summed the wrong elements."""
    layer = _layer(48, 40, torch.float32)
    x = torch.randn(5, 48)
    for bias in (torch.randn(80)[::2], torch.randn(1).expand(40)):
        with torch.no_grad():
            got = linear_weights(x, layer.weight, bias, activation)
            expected = F.linear(x, layer.weight, bias)
            expected = F.gelu(expected) if activation else expected
        assert (got - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("activation", [None, "gelu"])
def test_linear_forward_mode_tangent_equals_f_linear(activation):
    """``torch.func.jvp`` with no autograd graph (no_grad, frozen weights): the oneDNN op has no forward
    derivative and silently returned a zero tangent; the plain op is used whenever a tangent is present."""
    from torch.func import jvp

    layer = _layer(16, 8, torch.float32)
    x, t = torch.randn(2, 3, 16), torch.randn(2, 3, 16)
    plain = (lambda y: F.gelu(y)) if activation else (lambda y: y)
    with torch.no_grad():
        out, tangent = jvp(lambda x: linear(x, layer, activation), (x,), (t,))
        expected_out, expected = jvp(lambda x: plain(F.linear(x, layer.weight, layer.bias)), (x,), (t,))
    assert (out - expected_out).abs().max() <= 1e-5
    assert (tangent - expected).abs().max() <= 1e-5 and expected.abs().max() > 0.1


def test_subpixels_to_image_forward_mode_tangent():
    """The integer-pair move reinterprets the bits of the primal only: under forward-mode AD the plain permute."""
    from torch.func import jvp

    from promptseg.models.sam.mask_decoder import _subpixels_to_image

    masks, t = torch.randn(1, 2, 3, 4, 2, 2, 2, 2), torch.randn(1, 2, 3, 4, 2, 2, 2, 2)
    with torch.no_grad():
        _, tangent = jvp(_subpixels_to_image, (masks,), (t,))
    assert torch.equal(tangent, t.permute(0, 1, 2, 4, 6, 3, 5, 7).reshape(1, 2, 12, 16))


def test_linear_follows_cpu_autocast_as_f_linear_does():
    """Under ``torch.autocast("cpu", bfloat16)`` without an autograd graph (a frozen encoder in bf16 training)
    the oneDNN route ran float32; F.linear, like nn.Linear, computes in bfloat16 there."""
    from promptseg.layers.linear import linear

    torch.manual_seed(0)
    layer = torch.nn.Linear(32, 16)
    x = torch.randn(4, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got, expected = linear(x, layer), layer(x)
    assert got.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(got, expected)
