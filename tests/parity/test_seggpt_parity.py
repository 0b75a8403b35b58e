"""SegGPT parity: promptseg's :class:`SegGpt` against ``transformers.SegGptForImageSegmentation``.

Both get identical random weights (every reference tensor perturbed, LayerNorms and zero-initialised
tokens included) and the same normalised inputs; ``pred_masks`` and ``loss`` must agree to 1e-4 in
float32 with one example, several examples with and without the feature ensemble, both embedding types,
custom masking, labels, and both attention backends. The full ViT-L check is marked ``slow``.
"""

from __future__ import annotations

from typing import Optional, Tuple

import pytest
import torch

from promptseg.layers.attention import use_attention_backend
from promptseg.models.seggpt import SEGGPT_PRESETS, SegGpt, SegGptConfig, SegGptOutput, build_seggpt
from promptseg.models.seggpt.weights import config_to_hf, from_hf_state_dict

transformers = pytest.importorskip("transformers")

ATOL = 1e-4
TINY = SEGGPT_PRESETS["tiny"]
SEEDS = (0, 1, 2)
BACKENDS = ("eager", "sdpa")


def make_pair(helpers, config: SegGptConfig, seed: int, std: float = 0.05) -> Tuple[torch.nn.Module, SegGpt]:
    """``(transformers reference, promptseg)`` of architecture ``config`` with identical perturbed weights."""
    torch.manual_seed(seed)
    ref = transformers.SegGptForImageSegmentation(transformers.SegGptConfig.from_dict(config_to_hf(config)))
    helpers.perturb_(ref, seed + 1, std)
    ours = build_seggpt(config)
    ours.load_state_dict(from_hf_state_dict(ref.state_dict()))
    return ref.eval(), ours


def make_inputs(config: SegGptConfig, batch: int, seed: int, labels: bool = False) -> dict:
    gen = torch.Generator().manual_seed(1000 + seed)
    h, w = config.single_image_size
    names = ["pixel_values", "prompt_pixel_values", "prompt_masks"] + (["labels"] if labels else [])
    return {name: torch.randn(batch, 3, h, w, generator=gen) for name in names}


def run_both(ref, ours, backend: str, **kwargs) -> Tuple[SegGptOutput, object]:
    with torch.no_grad():
        expected = ref(**kwargs)
        with use_attention_backend(backend):
            got = ours(**kwargs)
    return got, expected


def assert_parity(got: SegGptOutput, expected, atol: float = ATOL) -> float:
    assert isinstance(got, SegGptOutput)
    assert got.pred_masks.shape == expected.pred_masks.shape
    diff = (got.pred_masks - expected.pred_masks).abs().max().item()
    assert diff <= atol, f"pred_masks: max |Δ| = {diff:.3g}"
    if expected.loss is None:
        assert got.loss is None
    else:
        loss_diff = abs(got.loss.item() - expected.loss.item())
        assert loss_diff <= atol, f"loss: |Δ| = {loss_diff:.3g}"
    return diff


@pytest.fixture(scope="module", params=SEEDS)
def tiny_pair(request, helpers):
    return make_pair(helpers, TINY, request.param)


@pytest.fixture(scope="module")
def tiny_pair0(helpers):
    return make_pair(helpers, TINY, 0)


# ---------------------------------------------------------------------------------------------------
# Tiny config.


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("embedding_type", [None, "instance", "semantic"])
def test_one_example(tiny_pair, backend: str, embedding_type: Optional[str]):
    ref, ours = tiny_pair
    inputs = make_inputs(TINY, 1, seed=3)
    got, expected = run_both(ref, ours, backend, embedding_type=embedding_type, **inputs)
    h, w = TINY.single_image_size
    assert got.pred_masks.shape == (1, 3, 2 * h, w)
    assert got.pred_masks.abs().max() > 1e-2  # the comparison is not trivially between zeros
    assert_parity(got, expected)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("embedding_type", ["instance", "semantic"])
@pytest.mark.parametrize("feature_ensemble", [False, True])
def test_three_examples(tiny_pair, backend: str, embedding_type: str, feature_ensemble: bool):
    ref, ours = tiny_pair
    inputs = make_inputs(TINY, 3, seed=4)
    got, expected = run_both(
        ref, ours, backend, feature_ensemble=feature_ensemble, embedding_type=embedding_type, **inputs
    )
    assert got.pred_masks.shape[0] == 3
    assert_parity(got, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_feature_ensemble_with_one_example(tiny_pair0, backend: str):
    """One example with ``feature_ensemble=True`` still averages the two streams at the merge layer."""
    ref, ours = tiny_pair0
    inputs = make_inputs(TINY, 1, seed=5)
    got, expected = run_both(ref, ours, backend, feature_ensemble=True, **inputs)
    assert_parity(got, expected)
    plain, _ = run_both(ref, ours, backend, feature_ensemble=False, **inputs)
    assert (plain.pred_masks - got.pred_masks).abs().max() > 1e-6


def test_feature_ensemble_changes_the_query_only_jointly(tiny_pair0):
    """One query, three examples: with the ensemble every example gets the same query prediction (bottom
    half of ``pred_masks``); without it each example gives its own."""
    _, ours = tiny_pair0
    inputs = make_inputs(TINY, 3, seed=6)
    inputs["pixel_values"] = inputs["pixel_values"][:1].expand(3, -1, -1, -1)
    with torch.no_grad():
        joint = ours(feature_ensemble=True, **inputs).pred_masks
        alone = ours(feature_ensemble=False, **inputs).pred_masks
    below = joint.shape[2] // 2 + 1  # the decoder's 3×3 conv lets the seam row see the prompt half
    assert torch.allclose(joint[0, :, below:], joint[1, :, below:], atol=1e-6)
    assert torch.allclose(joint[0, :, below:], joint[2, :, below:], atol=1e-6)
    assert not torch.allclose(alone[0, :, below:], alone[1, :, below:], atol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch", [1, 2])
def test_loss_with_labels(tiny_pair, backend: str, batch: int):
    ref, ours = tiny_pair
    inputs = make_inputs(TINY, batch, seed=7, labels=True)
    got, expected = run_both(ref, ours, backend, **inputs)
    assert got.loss is not None and got.loss.ndim == 0
    assert_parity(got, expected)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shared", [True, False])
def test_loss_with_random_masking(tiny_pair0, backend: str, shared: bool):
    """Training-style masking: random patches of the stacked masks hidden, one mask or one per example."""
    ref, ours = tiny_pair0
    inputs = make_inputs(TINY, 2, seed=8, labels=True)
    gh, gw = TINY.grid_size
    gen = torch.Generator().manual_seed(9)
    bool_masked_pos = torch.rand(1 if shared else 2, gh * gw, generator=gen) < 0.5
    got, expected = run_both(ref, ours, backend, bool_masked_pos=bool_masked_pos, **inputs)
    assert_parity(got, expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_loss_is_finite(tiny_pair0, dtype: torch.dtype):
    """A 256×256 pair hides 65,536 query pixels: more than float16 counts (65,504), so its loss was NaN. Half
    models are scored in float32 and match the float32 model's loss to their own precision."""
    _, ours = tiny_pair0
    model = build_seggpt(TINY)
    model.load_state_dict(ours.state_dict())
    gen = torch.Generator().manual_seed(15)
    names = ("pixel_values", "prompt_pixel_values", "prompt_masks", "labels")
    inputs = {k: torch.rand(1, 3, 256, 256, generator=gen) for k in names}
    with torch.no_grad():
        full = model(**inputs).loss
        half = model.to(dtype)(**inputs)
    assert torch.isfinite(half.pred_masks).all()
    assert torch.isfinite(half.loss) and half.loss.dtype == torch.float32
    assert abs(half.loss.item() - full.item()) <= 0.02 * full.item()


def test_loss_backpropagates(tiny_pair0):
    _, ours = tiny_pair0
    model = build_seggpt(TINY)
    model.load_state_dict(ours.state_dict())
    model.train()
    inputs = make_inputs(TINY, 2, seed=10, labels=True)
    out = model(**inputs)
    out.loss.backward()
    unused = {"embeddings.type_token_semantic"}  # instance embedding by default
    missing = [n for n, p in model.named_parameters() if p.grad is None and n not in unused]
    assert not missing
    assert model.encoder.layers[0].attention.rel_pos_h.grad.abs().sum() > 0


def test_sdpa_matches_eager(tiny_pair0):
    _, ours = tiny_pair0
    inputs = make_inputs(TINY, 3, seed=11)
    with torch.no_grad():
        with use_attention_backend("eager"):
            eager = ours(feature_ensemble=True, **inputs).pred_masks
        with use_attention_backend("sdpa"):
            fast = ours(feature_ensemble=True, **inputs).pred_masks
    assert (eager - fast).abs().max().item() <= 1e-5


def test_inference_mode_matches_grad_mode(tiny_pair0):
    """The in-place inference path and the autograd path compute the same thing."""
    _, ours = tiny_pair0
    inputs = make_inputs(TINY, 2, seed=12)
    with torch.inference_mode():
        fast = ours(**inputs).pred_masks
    slow = ours(**inputs).pred_masks
    assert slow.requires_grad
    assert (fast - slow.detach()).abs().max().item() <= 1e-5


def test_batched_equals_single(tiny_pair0):
    _, ours = tiny_pair0
    inputs = make_inputs(TINY, 3, seed=13)
    with torch.no_grad():
        batched = ours(**inputs).pred_masks
        single = torch.cat([ours(**{k: v[i : i + 1] for k, v in inputs.items()}).pred_masks for i in range(3)])
    assert (batched - single).abs().max().item() <= 1e-5


# ---------------------------------------------------------------------------------------------------
# Input validation.


def test_bad_inputs_name_the_argument(tiny_pair0):
    _, ours = tiny_pair0
    good = make_inputs(TINY, 1, seed=14)
    bad_shape = dict(good, prompt_masks=good["prompt_masks"][:, :, :-8])
    with pytest.raises(ValueError, match="prompt_masks"):
        ours(**bad_shape)
    with pytest.raises(ValueError, match="pixel_values"):
        ours(**dict(good, pixel_values=good["pixel_values"][:, :2]))
    with pytest.raises(TypeError, match="prompt_pixel_values"):
        ours(**dict(good, prompt_pixel_values=good["prompt_pixel_values"].numpy()))
    with pytest.raises(ValueError, match="labels"):
        ours(**good, labels=torch.zeros(2, 3, *TINY.single_image_size))
    with pytest.raises(ValueError, match="bool_masked_pos"):
        ours(**good, bool_masked_pos=torch.zeros(1, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="embedding_type"):
        ours(**good, embedding_type="panoptic")
    with pytest.raises(ValueError, match="multiples of the patch size"):
        ours(**{k: v[:, :, :-3, :-3] for k, v in good.items()})


# ---------------------------------------------------------------------------------------------------
# The released architecture.


@pytest.mark.slow
def test_vit_l_parity(helpers):
    """ViT-L (the released config), one pair, random weights: promptseg and transformers agree to 1e-4."""
    with helpers.all_threads():
        ref, ours = make_pair(helpers, SEGGPT_PRESETS["vit_l"], seed=0, std=0.02)
        inputs = make_inputs(SEGGPT_PRESETS["vit_l"], 1, seed=0)
        for backend in BACKENDS:
            got, expected = run_both(ref, ours, backend, **inputs)
            assert_parity(got, expected)
