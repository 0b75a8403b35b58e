"""Full-size parity: the official ViT-B architecture (1024 px input, 64×64 embedding) with random weights.

Reference ``segment_anything`` and promptseg share identical perturbed random weights (``tests/conftest.py``).
Tolerances as in ``test_sam_parity.py``: max |Δ| ≤ 1e-4 (float32) on embeddings, logits and IoU
predictions; masks identical except where |reference logit| < 1e-3.

The default run encodes ONE portrait image once per implementation and attention backend (on 2 CPU
cores: reference ≈ 10–25 s, promptseg ≈ 5–10 s per backend, depending on load) and runs several prompt
types on those embeddings. The ``slow`` test adds a landscape image with every prompt combination for
both backends, and the official ``.pth`` loaders at full size.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import segment_anything
from promptseg import SamPredictor, load_sam, sam_model_registry, use_attention_backend
from promptseg.models.sam.config import SAM_PRESETS
from promptseg.models.sam.weights import infer_sam_config

BACKENDS = ["eager", "sdpa"]
DEFAULT_BACKENDS = BACKENDS


def _encoder(vit_b_pair, helpers, image):
    """``get(backend) -> (reference predictor, promptseg predictor)``; each encode happens at most once."""
    ref, ours = vit_b_pair
    state: dict = {}

    def get(backend: str):
        if "ref" not in state:
            rp = segment_anything.SamPredictor(ref)
            with helpers.all_threads():
                rp.set_image(image)
            state["ref"] = rp
        if backend not in state:
            op = SamPredictor(ours)
            with helpers.all_threads(), use_attention_backend(backend):
                op.set_image(image)
            state[backend] = op
        return state["ref"], state[backend]

    return get


@pytest.fixture(scope="module")
def portrait(vit_b_pair, helpers):
    return _encoder(vit_b_pair, helpers, helpers.make_image(600, 450, seed=11))


def _cases(h, w, rp):
    """(name, prompt kwargs) covering points, negatives, boxes, mask prompts and their combinations."""
    pts = np.array([[0.4 * w, 0.45 * h], [0.75 * w, 0.2 * h], [0.3 * w, 0.85 * h]])
    labels = np.array([1, 0, 1])
    box = np.array([0.1 * w, 0.15 * h, 0.8 * w, 0.9 * h])
    _, scores, low = rp.predict(point_coords=pts[:1], point_labels=labels[:1])
    mask = low[np.argmax(scores)][None]
    return [
        ("point", dict(point_coords=pts[:1], point_labels=labels[:1])),
        ("points_neg", dict(point_coords=pts, point_labels=labels)),
        ("box", dict(box=box)),
        ("box_points", dict(box=box, point_coords=pts[:2], point_labels=labels[:2])),
        ("mask", dict(mask_input=mask)),
        ("points_mask", dict(point_coords=pts, point_labels=labels, mask_input=mask)),
        ("points_box_mask", dict(point_coords=pts[:2], point_labels=labels[:2], box=box, mask_input=mask)),
    ]


@pytest.mark.parametrize("backend", DEFAULT_BACKENDS)
def test_vit_b_embedding(portrait, helpers, backend):
    rp, op = portrait(backend)
    assert op.features.shape == rp.features.shape == (1, 256, 64, 64)
    assert op.input_size == tuple(rp.input_size) == (1024, 768)
    helpers.assert_close(op.features, rp.features, "ViT-B image embedding")


@pytest.mark.parametrize("backend", DEFAULT_BACKENDS)
def test_vit_b_prompts(portrait, helpers, backend):
    rp, op = portrait(backend)
    cases = dict(_cases(600, 450, rp))
    helpers.compare_predict(rp, op, backend, multimask_output=True, **cases["point"])
    helpers.compare_predict(rp, op, backend, multimask_output=False, **cases["box_points"])
    helpers.compare_predict(rp, op, backend, multimask_output=True, **cases["points_neg"])
    helpers.compare_predict(rp, op, backend, multimask_output=False, **cases["points_box_mask"])
    helpers.compare_predict(rp, op, backend, multimask_output=True, return_logits=True, **cases["mask"])


def test_vit_b_predict_torch_batched(portrait, helpers):
    rp, op = portrait("sdpa")
    boxes = rp.transform.apply_boxes_torch(torch.tensor([[20.0, 30, 300, 400], [100, 200, 440, 590]]), (600, 450))
    expected = rp.predict_torch(None, None, boxes=boxes, multimask_output=False)
    got = op.predict_torch(None, None, boxes=boxes, multimask_output=False)
    helpers.assert_close(got[2], expected[2], "low-res logits")
    helpers.assert_close(got[1], expected[1], "IoU predictions")
    full = rp.model.postprocess_masks(expected[2], rp.input_size, rp.original_size)
    helpers.assert_masks_match(got[0].numpy(), expected[0].numpy(), full.numpy())


def test_vit_b_state_dict_and_inferred_config(vit_b_pair):
    ref, ours = vit_b_pair
    ref_state, our_state = ref.state_dict(), ours.state_dict()
    assert list(our_state) == list(ref_state)
    assert all(our_state[k].shape == v.shape for k, v in ref_state.items())
    assert infer_sam_config(ref_state) == SAM_PRESETS["vit_b"]
    assert ours.config == SAM_PRESETS["vit_b"]


@pytest.mark.slow
def test_vit_b_landscape_all_prompts_and_pth(vit_b_pair, helpers, tmp_path):
    image = helpers.make_image(450, 600, seed=12)
    get = _encoder(vit_b_pair, helpers, image)
    for backend in BACKENDS:
        rp, op = get(backend)
        helpers.assert_close(op.features, rp.features, f"ViT-B embedding ({backend})")
        for name, prompt in _cases(450, 600, rp):
            for multimask in (True, False):
                helpers.compare_predict(rp, op, backend, multimask_output=multimask, **prompt)
            helpers.compare_predict(rp, op, backend, return_logits=True, **prompt)

    # The official checkpoint layout, through the registry and through load_sam (config inferred).
    ref, ours = vit_b_pair
    path = tmp_path / "sam_vit_b_random.pth"
    torch.save(ref.state_dict(), path)
    from_registry = sam_model_registry["vit_b"](checkpoint=path)
    inferred = load_sam(path)
    assert inferred.config == from_registry.config == SAM_PRESETS["vit_b"]
    for key, value in ours.state_dict().items():
        assert torch.equal(from_registry.state_dict()[key], value) and torch.equal(inferred.state_dict()[key], value)
    rp, _ = get("sdpa")
    op = SamPredictor(inferred)
    with helpers.all_threads():
        op.set_image(image)
    helpers.assert_close(op.features, rp.features, "ViT-B embedding (loaded from .pth)")
    for _, prompt in _cases(450, 600, rp)[:4]:
        helpers.compare_predict(rp, op, **prompt)
