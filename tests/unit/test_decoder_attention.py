"""The mask decoder's re-associated cross-attentions (``Attention.cross``) against the eager reference."""

from __future__ import annotations

import pytest
import torch

from promptseg.layers.attention import use_attention_backend
from promptseg.models.sam.mask_decoder import Attention


def _attention(seed: int = 0) -> Attention:
    torch.manual_seed(seed)
    attn = Attention(embedding_dim=32, num_heads=4, downsample_rate=2)
    for p in attn.parameters():  # non-zero biases, so the folded biases are exercised
        torch.nn.init.normal_(p, std=0.3)
    return attn


def _both(attn: Attention, *args, **kwargs):
    with use_attention_backend("eager"):
        ref = attn.cross(*args, **kwargs)
    with use_attention_backend("sdpa"):
        fast = attn.cross(*args, **kwargs)
    return ref, fast


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("image_batch", [1, 3])
def test_few_keys_equals_eager(residual: bool, image_batch: int) -> None:
    """Image tokens (many queries) attend to a few prompt tokens; shared (batch-1) or per-prompt image."""
    attn = _attention()
    image = torch.randn(image_batch, 64, 32)
    tokens = torch.randn(3, 3, 32)  # 3 prompts × 3 tokens: fewer than 16 / 4 = 4 tokens per head
    res = torch.randn(image_batch, 64, 32) if residual else None
    ref, fast = _both(attn, image, tokens, tokens, residual=res)
    assert fast.shape == ref.shape == (3, 64, 32)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)


def test_few_keys_with_precomputed_queries_equals_eager() -> None:
    attn = _attention(1)
    image = torch.randn(1, 64, 32)
    tokens = torch.randn(2, 3, 32)
    q = attn.heads(attn.q_proj(image))
    res = torch.randn(1, 64, 32)
    ref, fast = _both(attn, image, tokens, tokens, q=q, residual=res)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("residual", [False, True])
def test_few_queries_equals_eager(residual: bool) -> None:
    attn = _attention(2)
    tokens = torch.randn(2, 3, 32)
    image = torch.randn(1, 64, 32)
    res = torch.randn(2, 3, 32) if residual else None
    ref, fast = _both(attn, tokens, image, image, residual=res)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)


def test_residual_fold_backpropagates_like_eager() -> None:
    """Training runs the fast path under autograd: gradients of inputs, residual and weights agree."""
    attn = _attention(3)
    image = torch.randn(2, 64, 32, requires_grad=True)
    tokens = torch.randn(2, 3, 32, requires_grad=True)
    res = torch.randn(2, 64, 32, requires_grad=True)
    grads = []
    for backend in ("eager", "sdpa"):
        attn.zero_grad()
        for t in (image, tokens, res):
            t.grad = None
        with use_attention_backend(backend):
            out = attn.cross(image, tokens, tokens, residual=res)
        (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
        grads.append([t.grad.clone() for t in (image, tokens, res)] + [p.grad.clone() for p in attn.parameters()])
    for g_ref, g_fast in zip(*grads):
        torch.testing.assert_close(g_fast, g_ref, atol=1e-4, rtol=1e-4)
