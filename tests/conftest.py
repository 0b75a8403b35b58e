"""Shared fixtures: the reference SAM (``segment_anything``) and promptseg's SAM with identical random weights.

The reference is built from its own modules (``segment_anything.modeling``) with the arguments of a
:class:`~promptseg.models.sam.config.SamConfig`; every parameter is then perturbed with Gaussian noise —
including those the reference initialises to zero (``pos_embed``, ``rel_pos_h/w``) or to constants
(LayerNorm weights and biases) — so that no computation is trivially zero or the identity. promptseg's
model is built from the same config and loads the reference's state dict.

Tests marked ``slow`` are skipped unless selected with ``-m slow``.
"""

from __future__ import annotations

import contextlib
import runpy
import sys
import types
from pathlib import Path
from typing import Tuple

import numpy as np
import pytest
import torch
from torch import nn

from promptseg.models.sam.config import (
    SAM_PRESETS,
    ImageEncoderConfig,
    MaskDecoderConfig,
    PromptEncoderConfig,
    SamConfig,
)

# ---------------------------------------------------------------------------------------------------
# Tolerances shared by every parity test (float32 on CPU).

#: Largest |Δ| allowed between promptseg and the reference for embeddings, logits and IoU predictions.
LOGIT_ATOL = 1e-4
#: Thresholded masks must agree wherever the reference logit is at least this far from the threshold.
MASK_MARGIN = 1e-3

# ---------------------------------------------------------------------------------------------------
# Configs.

#: A tiny SAM that runs in milliseconds: 128 px input, 16 px patches → an 8×8 grid. Window 3 does not
#: divide 8, so windowed blocks pad the grid to 9×9 (the padding path of the reference); block 1 is
#: global. The decoder uses 4 heads (not the official 8) so a head-count mix-up shows.
TINY_CONFIG = SamConfig(
    image_encoder=ImageEncoderConfig(
        img_size=128,
        patch_size=16,
        embed_dim=48,
        depth=3,
        num_heads=3,
        mlp_ratio=4.0,
        out_chans=32,
        qkv_bias=True,
        use_abs_pos=True,
        use_rel_pos=True,
        window_size=3,
        global_attn_indexes=(1,),
    ),
    prompt_encoder=PromptEncoderConfig(embed_dim=32, mask_in_chans=16),
    mask_decoder=MaskDecoderConfig(
        transformer_dim=32,
        transformer_depth=2,
        num_heads=4,
        mlp_dim=64,
        attention_downsample_rate=2,
        num_multimask_outputs=3,
        iou_head_depth=3,
        iou_head_hidden_dim=32,
    ),
)

TINY_SEED = 1234
#: Noise added to every reference parameter (relative to typical init scales this keeps activations sane).
TINY_NOISE_STD = 0.05
VIT_B_NOISE_STD = 0.02


# ---------------------------------------------------------------------------------------------------
# Builders.


from promptseg.models.sam.reference import build_reference_sam  # noqa: E402  (re-exported for the tests)


@torch.no_grad()
def perturb_(model: nn.Module, seed: int, std: float) -> nn.Module:
    """Add N(0, std²) noise to every parameter of ``model`` in place (zero-initialised ones included)."""
    gen = torch.Generator().manual_seed(seed)
    for _, param in sorted(model.named_parameters()):
        param.add_(torch.randn(param.shape, generator=gen, dtype=param.dtype) * std)
    return model


def make_pair(config: SamConfig = TINY_CONFIG, seed: int = TINY_SEED, std: float = TINY_NOISE_STD):
    """``(reference, promptseg)`` SAMs of architecture ``config`` sharing the same random weights."""
    from promptseg import build_sam

    torch.manual_seed(seed)
    ref = perturb_(build_reference_sam(config), seed + 1, std)
    ours = build_sam(config)
    ours.load_state_dict(ref.state_dict())
    return ref.eval(), ours.eval()


def make_vit_b_pair(seed: int = 0):
    """The official ViT-B architecture, reference and promptseg, with identical perturbed random weights."""
    import segment_anything

    from promptseg import sam_model_registry

    torch.manual_seed(seed)
    ref = perturb_(segment_anything.sam_model_registry["vit_b"](), seed + 1, VIT_B_NOISE_STD).eval()
    ours = sam_model_registry["vit_b"]()
    ours.load_state_dict(ref.state_dict())
    return ref, ours.eval()


def make_image(h: int, w: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    """A deterministic ``h×w×channels`` uint8 test image: smooth gradients, a few blocks and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.empty((h, w, channels), np.float32)
    for c in range(channels):
        fy, fx = rng.uniform(1, 4, size=2)
        img[..., c] = 127 + 80 * np.sin(2 * np.pi * (fy * yy / h + fx * xx / w + rng.uniform()))
    for _ in range(3):  # a few flat rectangles ("objects")
        y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
        img[y0 : y0 + h // 3, x0 : x0 + w // 3] = rng.uniform(0, 255, size=channels)
    img += rng.normal(0, 12, size=img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------
# Comparison helpers.


def max_abs_diff(a, b) -> float:
    a = a.detach().float().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a, np.float64)
    b = b.detach().float().cpu().numpy() if isinstance(b, torch.Tensor) else np.asarray(b, np.float64)
    assert a.shape == b.shape, f"shapes differ: {a.shape} vs {b.shape}"
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0


def assert_close(ours, ref, what: str, atol: float = LOGIT_ATOL) -> None:
    diff = max_abs_diff(ours, ref)
    assert diff <= atol, f"{what}: max |Δ| = {diff:.3g} > {atol:g}"


def assert_masks_match(ours: np.ndarray, ref: np.ndarray, ref_logits: np.ndarray, what: str = "masks") -> None:
    """Boolean masks equal except where the reference logit is within ``MASK_MARGIN`` of the threshold."""
    ours, ref, ref_logits = (np.asarray(x) for x in (ours, ref, ref_logits))
    assert ours.dtype == np.bool_ and ref.dtype == np.bool_, (ours.dtype, ref.dtype)
    assert ours.shape == ref.shape == ref_logits.shape, (ours.shape, ref.shape, ref_logits.shape)
    bad = (ours != ref) & (np.abs(ref_logits) >= MASK_MARGIN)
    assert not bad.any(), f"{what}: {int(bad.sum())} pixels differ away from the threshold"


def reference_full_logits(ref_predictor, low_res: np.ndarray) -> np.ndarray:
    """The reference's original-size logits for its own ``low_res`` output (``C×h×w`` → ``C×H×W``)."""
    with torch.no_grad():
        up = ref_predictor.model.postprocess_masks(
            torch.from_numpy(np.ascontiguousarray(low_res))[None], ref_predictor.input_size, ref_predictor.original_size
        )
    return up[0].numpy()


def compare_predict(ref_predictor, our_predictor, backend: str = "sdpa", **prompt) -> Tuple[tuple, tuple]:
    """Run ``predict(**prompt)`` on both predictors and assert parity; returns (ours, reference) outputs."""
    from promptseg import use_attention_backend

    ref_out = ref_predictor.predict(**prompt)
    with use_attention_backend(backend):
        our_out = our_predictor.predict(**prompt)
    (rm, rs, rl), (om, os_, ol) = ref_out, our_out
    assert om.shape == rm.shape and os_.shape == rs.shape and ol.shape == rl.shape
    assert om.dtype == rm.dtype and os_.dtype == rs.dtype and ol.dtype == rl.dtype
    assert_close(ol, rl, "low-res logits")
    assert_close(os_, rs, "IoU predictions")
    if prompt.get("return_logits", False):
        assert_close(om, rm, "full-size logits")
    else:
        assert_masks_match(om, rm, reference_full_logits(ref_predictor, rl))
    return our_out, ref_out


# ---------------------------------------------------------------------------------------------------
# Threads. The tiny model's ops take microseconds: with several intra-op threads they mostly wait on each
# other (10× slower on a busy 2-core machine), so tests run single-threaded; full-size encodes use all
# the threads torch would use by default.

DEFAULT_THREADS = torch.get_num_threads()


@contextlib.contextmanager
def all_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(DEFAULT_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="session", autouse=True)
def _single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ---------------------------------------------------------------------------------------------------
# Fixtures.


@pytest.fixture
def disk_square_scenes():
    """``write(root, masks_of)``: two 80×64 SA-1B-layout scenes in ``root`` (``sa_0``, ``sa_1``), each a red
    disk and a green square on grey; ``masks_of(disk, square, xx)`` gives each scene's ``(masks, extra)``."""
    from PIL import Image

    from promptseg.data.sa1b import write_sa1b_json

    def write(root: Path, masks_of) -> None:
        root.mkdir(parents=True, exist_ok=True)
        yy, xx = np.mgrid[:64, :80]
        for i in range(2):
            disk = (yy - 30) ** 2 + (xx - 25 - 20 * i) ** 2 < 15**2
            square = (yy > 5) & (yy < 20) & (xx > 55) & (xx < 75)
            image = np.full((64, 80, 3), 40, np.uint8)
            image[disk], image[square] = (220, 60, 30), (30, 200, 90)
            Image.fromarray(image).save(root / f"sa_{i}.jpg", quality=95)
            masks, extra = masks_of(disk, square, xx)
            write_sa1b_json(root / f"sa_{i}.json", i, f"sa_{i}.jpg", masks, extra=extra)

    return write


@pytest.fixture
def run_benchmark(monkeypatch, capsys):
    """``run_benchmark(script, *argv)`` runs ``benchmarks/<script>`` as ``__main__`` and returns its stdout."""
    root = Path(__file__).resolve().parents[1]

    def run(script: str, *argv: str) -> str:
        monkeypatch.setattr(sys, "argv", [script, *argv])
        try:
            runpy.run_path(str(root / "benchmarks" / script), run_name="__main__")
        except SystemExit as exit_:
            assert exit_.code == 0
        return capsys.readouterr().out

    return run


@pytest.fixture(scope="session")
def tiny_config() -> SamConfig:
    return TINY_CONFIG


@pytest.fixture(scope="session")
def tiny_pair():
    """``(reference, promptseg)`` tiny SAMs with identical random weights. Do not mutate them."""
    return make_pair(TINY_CONFIG)


@pytest.fixture(scope="session")
def tiny_ref(tiny_pair):
    return tiny_pair[0]


@pytest.fixture(scope="session")
def tiny_sam(tiny_pair):
    return tiny_pair[1]


@pytest.fixture(scope="session")
def vit_b_pair():
    """ViT-B (reference, promptseg) with identical perturbed random weights — built once per session."""
    return make_vit_b_pair()


@pytest.fixture(scope="session")
def helpers():
    """The helper functions of this conftest, for test modules (``helpers.compare_predict(...)``)."""
    return types.SimpleNamespace(
        LOGIT_ATOL=LOGIT_ATOL,
        MASK_MARGIN=MASK_MARGIN,
        TINY_CONFIG=TINY_CONFIG,
        SAM_PRESETS=SAM_PRESETS,
        build_reference_sam=build_reference_sam,
        perturb_=perturb_,
        make_pair=make_pair,
        make_vit_b_pair=make_vit_b_pair,
        make_image=make_image,
        max_abs_diff=max_abs_diff,
        assert_close=assert_close,
        assert_masks_match=assert_masks_match,
        reference_full_logits=reference_full_logits,
        compare_predict=compare_predict,
        all_threads=all_threads,
    )


# ---------------------------------------------------------------------------------------------------
# ``slow`` tests run only when selected with ``-m slow`` (or any -m expression naming "slow").


def pytest_collection_modifyitems(config, items):
    markexpr = config.getoption("-m", default="") or ""
    if "slow" in markexpr:
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
