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


def test_shared_tokens_over_per_prompt_images_equal_eager() -> None:
    """The documented other way round: the token side has batch 1 and the image side batch 3. The ``sdpa``
    re-associations took their batch from the token side only and failed on a shape (eager broadcast it)."""
    attn = _attention(4)
    tokens = torch.randn(1, 3, 32)
    image = torch.randn(3, 64, 32)
    ref, fast = _both(attn, tokens, image, image)  # few queries
    assert fast.shape == ref.shape == (3, 3, 32)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    res = torch.randn(3, 64, 32)
    ref, fast = _both(attn, image, tokens, tokens, residual=res)  # few keys
    assert fast.shape == ref.shape == (3, 64, 32)
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


def _decoder(seed: int = 0):
    from promptseg.models.sam.mask_decoder import MaskDecoder, TwoWayTransformer

    torch.manual_seed(seed)
    transformer = TwoWayTransformer(depth=1, embedding_dim=32, num_heads=4, mlp_dim=64)
    decoder = MaskDecoder(transformer_dim=32, transformer=transformer, iou_head_hidden_dim=32).eval()
    for p in decoder.output_hypernetworks_mlps.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return decoder


def _one_by_one(decoder, tokens: torch.Tensor, mask_slice: slice) -> torch.Tensor:
    mlps = list(enumerate(decoder.output_hypernetworks_mlps))[mask_slice]
    return torch.stack([mlp(tokens[:, i]) for i, mlp in mlps], dim=1)


@pytest.mark.parametrize("mask_slice", [slice(1, None), slice(0, 1), slice(None)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_batched_hypernetworks_equal_one_mlp_per_token(mask_slice: slice, dtype: torch.dtype) -> None:
    decoder = _decoder().to(dtype)
    tokens = torch.randn(5, 4, 32, dtype=dtype)
    with torch.no_grad():
        got = decoder._hypernetworks(tokens, mask_slice)
        expected = _one_by_one(decoder, tokens, mask_slice)
    assert got.shape == expected.shape == (5, len(range(4)[mask_slice]), 4) and got.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(got, expected, atol=tol, rtol=tol)


def test_batched_hypernetworks_follow_weight_changes() -> None:
    """The stacked weights are rebuilt after an in-place update, a dtype change or a new state dict."""
    decoder = _decoder()
    tokens = torch.randn(2, 4, 32)
    with torch.no_grad():
        decoder._hypernetworks(tokens, slice(1, None))
        decoder.output_hypernetworks_mlps[2].layers[1].weight.mul_(-2.0)  # an optimizer step, in place
        torch.testing.assert_close(decoder._hypernetworks(tokens, slice(1, None)), _one_by_one(decoder, tokens, slice(1, None)))
        other = _decoder(seed=5)
        decoder.load_state_dict(other.state_dict())
        torch.testing.assert_close(decoder._hypernetworks(tokens, slice(1, None)), _one_by_one(other, tokens, slice(1, None)))
        decoder.to(torch.float64)
        got = decoder._hypernetworks(tokens.double(), slice(1, None))
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, _one_by_one(decoder, tokens.double(), slice(1, None)))


def test_hypernetworks_backpropagate_through_each_mlp() -> None:
    """Under autograd (training) each MLP runs on its own, and every one of them gets a gradient."""
    decoder = _decoder().train()
    tokens = torch.randn(2, 4, 32, requires_grad=True)
    decoder._hypernetworks(tokens, slice(None)).square().sum().backward()
    assert tokens.grad is not None and all(p.grad is not None for p in decoder.output_hypernetworks_mlps.parameters())


def test_hypernetworks_stacked_under_inference_mode_do_not_reach_a_backward() -> None:
    """Stacks made under ``torch.inference_mode`` (the automatic mask generator's) were reused by a training
    step with the MLPs frozen: 'Inference tensors cannot be saved for backward'. They are rebuilt there."""
    decoder = _decoder()
    tokens = torch.randn(2, 4, 32)
    with torch.inference_mode():
        decoder._hypernetworks(tokens, slice(1, None))
    decoder.output_hypernetworks_mlps.requires_grad_(False)
    trained = tokens.clone().requires_grad_(True)
    out = decoder._hypernetworks(trained, slice(1, None))
    out.square().sum().backward()
    torch.testing.assert_close(out.detach(), _one_by_one(decoder, tokens, slice(1, None)))
    assert trained.grad is not None
