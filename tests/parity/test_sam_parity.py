"""Parity of promptseg's SAM with the reference ``segment_anything`` 1.0 on a tiny random model.

Both models share identical random weights (see ``tests/conftest.py``). Tolerances, float32 on CPU:

* image embeddings, low-res logits, full-size logits and IoU predictions: max |Δ| ≤ 1e-4;
* thresholded masks: identical, except at pixels where |reference logit| < 1e-3.

Every case runs with both attention backends (``eager`` and ``sdpa``) and on landscape, portrait and
square images whose sizes are not multiples of the patch or window size.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import segment_anything
from promptseg import SamPredictor, build_sam, load_sam, save_sam, use_attention_backend
from promptseg.models.sam.config import ImageEncoderConfig
from promptseg.models.sam.weights import infer_sam_config

BACKENDS = ["eager", "sdpa"]
SHAPES = {"landscape": (100, 160), "portrait": (160, 100), "square": (128, 128)}


@pytest.fixture(scope="module")
def encoded(tiny_pair, helpers):
    """``encoded(backend, shape) -> (image, reference predictor, promptseg predictor)``, cached."""
    ref, ours = tiny_pair
    refs, cache = {}, {}

    def get(backend: str, shape: str):
        if shape not in refs:
            image = helpers.make_image(*SHAPES[shape], seed=len(refs))
            rp = segment_anything.SamPredictor(ref)
            rp.set_image(image)
            refs[shape] = (image, rp)
        if (backend, shape) not in cache:
            image, rp = refs[shape]
            op = SamPredictor(ours)
            with use_attention_backend(backend):
                op.set_image(image)
            cache[backend, shape] = (image, rp, op)
        return cache[backend, shape]

    return get


def _points(h, w):
    return np.array([[0.35 * w, 0.45 * h], [0.7 * w, 0.3 * h], [0.55 * w, 0.8 * h]]), np.array([1, 0, 1])


def _box(h, w):
    return np.array([0.15 * w, 0.2 * h, 0.75 * w, 0.85 * h])


def _prompt(case: str, h: int, w: int, rp) -> dict:
    """Prompt kwargs for ``case``; mask prompts are the best low-res logits of a previous reference call."""
    pts, labels = _points(h, w)
    prompt: dict = {}
    if case == "point":
        prompt.update(point_coords=pts[:1], point_labels=labels[:1])
    if case in ("points_neg", "points_mask"):
        prompt.update(point_coords=pts, point_labels=labels)
    if case in ("box", "box_points", "points_box_mask"):
        prompt.update(box=_box(h, w))
    if case in ("box_points", "points_box_mask"):
        prompt.update(point_coords=pts[:2], point_labels=labels[:2])
    if case == "edges":  # clicks exactly on the image border and a box covering the whole image
        prompt.update(point_coords=np.array([[0.0, 0.0], [w, h], [w, 0]]), point_labels=np.array([1, 0, 1]))
        prompt.update(box=np.array([0, 0, w, h]))
    if case in ("mask", "points_mask", "points_box_mask"):
        _, scores, low = rp.predict(point_coords=pts[:1], point_labels=labels[:1], multimask_output=True)
        prompt.update(mask_input=low[np.argmax(scores)][None])
    return prompt


CASES = ["point", "points_neg", "box", "box_points", "mask", "points_mask", "points_box_mask", "edges"]


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_image_embedding(encoded, helpers, backend, shape):
    image, rp, op = encoded(backend, shape)
    ours, ref = op.get_image_embedding(), rp.get_image_embedding()
    assert ours.shape == ref.shape == (1, 32, 8, 8)
    helpers.assert_close(ours, ref, "image embedding")
    assert op.original_size == rp.original_size == image.shape[:2]
    assert tuple(op.input_size) == tuple(rp.input_size)


@pytest.mark.parametrize("multimask", [True, False], ids=["multi", "single"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_predict(encoded, helpers, backend, shape, case, multimask):
    image, rp, op = encoded(backend, shape)
    h, w = image.shape[:2]
    prompt = _prompt(case, h, w, rp)
    (masks, scores, low), _ = helpers.compare_predict(rp, op, backend, multimask_output=multimask, **prompt)
    c = 3 if multimask else 1
    assert masks.shape == (c, h, w) and masks.dtype == np.bool_
    assert scores.shape == (c,) and low.shape == (c, 32, 32)


@pytest.mark.parametrize("case", ["point", "box_points", "points_box_mask"])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_predict_return_logits(encoded, helpers, backend, shape, case):
    image, rp, op = encoded(backend, shape)
    h, w = image.shape[:2]
    (masks, _, _), _ = helpers.compare_predict(
        rp, op, backend, return_logits=True, **_prompt(case, h, w, rp)
    )
    assert masks.dtype == np.float32 and masks.shape == (3, h, w)


def test_prompts_change_the_output(encoded):
    """Guard against vacuous parity: different prompts give clearly different outputs on the random model."""
    image, rp, op = encoded("sdpa", "landscape")
    h, w = image.shape[:2]
    a = op.predict(**_prompt("point", h, w, rp))
    b = op.predict(**_prompt("box", h, w, rp))
    assert np.abs(a[2] - b[2]).max() > 1e-2
    assert 0.02 < a[0].mean() < 0.98  # masks are neither empty nor full


@pytest.mark.parametrize("backend", BACKENDS)
def test_bgr_image_format(tiny_pair, helpers, backend):
    ref, ours = tiny_pair
    image = helpers.make_image(90, 70, seed=7)[..., ::-1].copy()
    rp, op = segment_anything.SamPredictor(ref), SamPredictor(ours)
    rp.set_image(image, image_format="BGR")
    with use_attention_backend(backend):
        op.set_image(image, image_format="BGR")
    helpers.assert_close(op.features, rp.features, "embedding (BGR)")
    helpers.compare_predict(rp, op, backend, point_coords=np.array([[30, 40]]), point_labels=np.array([1]))


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
def test_predict_torch_batched(encoded, helpers, backend, multimask):
    image, rp, op = encoded(backend, "landscape")
    h, w = image.shape[:2]
    boxes = torch.tensor([[10, 10, 60, 50], [40, 20, 150, 90], [0, 0, w, h]], dtype=torch.float)
    coords = torch.tensor([[[30, 30], [55, 45]], [[100, 50], [45, 25]], [[80, 50], [10, 90]]], dtype=torch.float)
    labels = torch.tensor([[1, 0], [1, 1], [0, 1]])
    boxes_t = rp.transform.apply_boxes_torch(boxes, (h, w))
    coords_t = rp.transform.apply_coords_torch(coords, (h, w))
    for kwargs in (
        dict(point_coords=None, point_labels=None, boxes=boxes_t),
        dict(point_coords=coords_t, point_labels=labels, boxes=boxes_t),
        dict(point_coords=coords_t, point_labels=labels),
    ):
        rm, rs, rl = rp.predict_torch(multimask_output=multimask, **kwargs)
        with use_attention_backend(backend):
            om, os_, ol = op.predict_torch(multimask_output=multimask, **kwargs)
        c = 3 if multimask else 1
        assert om.shape == rm.shape == (3, c, h, w) and om.dtype == rm.dtype == torch.bool
        helpers.assert_close(ol, rl, "low-res logits")
        helpers.assert_close(os_, rs, "IoU predictions")
        full = rp.model.postprocess_masks(rl, rp.input_size, rp.original_size)
        helpers.assert_masks_match(om.numpy(), rm.numpy(), full.numpy())
        # mask input in the torch API: B×1×32×32 logits
        mask_in = rl[:, :1]
        rm, rs, rl2 = rp.predict_torch(mask_input=mask_in, multimask_output=multimask, **kwargs)
        with use_attention_backend(backend):
            om, os_, ol2 = op.predict_torch(mask_input=mask_in, multimask_output=multimask, **kwargs)
        helpers.assert_close(ol2, rl2, "low-res logits with mask input")
        helpers.assert_close(os_, rs, "IoU predictions with mask input")


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
def test_sam_forward(tiny_pair, helpers, backend, multimask):
    ref, ours = tiny_pair
    transform = segment_anything.utils.transforms.ResizeLongestSide(128)
    records = []
    for i, (h, w) in enumerate([(100, 160), (160, 100)]):
        image = helpers.make_image(h, w, seed=10 + i)
        tensor = torch.as_tensor(transform.apply_image(image)).permute(2, 0, 1).float().contiguous()
        record = {"image": tensor, "original_size": (h, w)}
        if i == 0:
            record["point_coords"] = transform.apply_coords_torch(
                torch.tensor([[[20.0, 30.0], [90.0, 60.0]], [[140.0, 10.0], [5.0, 95.0]]]), (h, w)
            )
            record["point_labels"] = torch.tensor([[1, 0], [1, 1]])
            record["boxes"] = transform.apply_boxes_torch(torch.tensor([[10.0, 10, 100, 90], [0, 0, w, h]]), (h, w))
        else:
            record["boxes"] = transform.apply_boxes_torch(torch.tensor([[5.0, 20, 90, 150]]), (h, w))
            record["mask_inputs"] = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(3))
        records.append(record)
    with torch.no_grad():
        expected = ref(records, multimask_output=multimask)
        with use_attention_backend(backend):
            got = ours(records, multimask_output=multimask)
    assert len(got) == len(expected) == 2
    for g, e in zip(got, expected):
        assert set(g) == set(e) == {"masks", "iou_predictions", "low_res_logits"}
        assert g["masks"].shape == e["masks"].shape and g["masks"].dtype == torch.bool
        helpers.assert_close(g["low_res_logits"], e["low_res_logits"], "low-res logits")
        helpers.assert_close(g["iou_predictions"], e["iou_predictions"], "IoU predictions")
    for record, g, e in zip(records, got, expected):
        full = ref.postprocess_masks(e["low_res_logits"], record["image"].shape[-2:], record["original_size"])
        helpers.assert_masks_match(g["masks"].numpy(), e["masks"].numpy(), full.numpy())


@pytest.mark.parametrize(
    "variant",
    [
        dict(use_rel_pos=False),
        dict(use_abs_pos=False),
        dict(window_size=4, global_attn_indexes=(2,)),  # windows tile the 8×8 grid exactly: no padding
        dict(window_size=5, global_attn_indexes=()),  # every block windowed, padded to 10×10
        dict(window_size=0, global_attn_indexes=()),  # every block global
        dict(qkv_bias=False),  # padded windows then carry zeros, not the qkv bias
        dict(mlp_ratio=2.0, num_heads=2),
    ],
    ids=["no_rel_pos", "no_abs_pos", "window4", "window5_all", "all_global", "no_qkv_bias", "mlp2_heads2"],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_image_encoder_variants(helpers, backend, variant):
    import dataclasses

    base = helpers.TINY_CONFIG
    config = dataclasses.replace(base, image_encoder=dataclasses.replace(base.image_encoder, **variant))
    ref, ours = helpers.make_pair(config, seed=99)
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = ref.image_encoder(x)
        with use_attention_backend(backend):
            got = ours.image_encoder(x)
    helpers.assert_close(got, expected, f"image encoder {variant}")


# ---------------------------------------------------------------------------------------------------
# Weights on disk.


@pytest.mark.parametrize("backend", BACKENDS)
def test_safetensors_round_trip_is_bit_exact(tiny_sam, helpers, tmp_path, backend):
    path = tmp_path / "tiny.safetensors"
    save_sam(tiny_sam, path)
    loaded = load_sam(path)
    assert loaded.config == tiny_sam.config
    image = helpers.make_image(100, 160, seed=21)
    before, after = SamPredictor(tiny_sam), SamPredictor(loaded)
    with use_attention_backend(backend):
        before.set_image(image)
        after.set_image(image)
        assert torch.equal(before.features, after.features)
        prompt = dict(point_coords=np.array([[40, 50], [120, 20]]), point_labels=np.array([1, 0]), box=_box(100, 160))
        for a, b in zip(before.predict(**prompt), after.predict(**prompt)):
            assert a.dtype == b.dtype and np.array_equal(a, b)


def test_official_pth_layout_inferred_config(helpers, tmp_path):
    """``torch.save(reference.state_dict())`` (the official layout) → ``load_sam`` infers the config → parity.

    The decoder head count is not visible in the weights; inference assumes the official 8, so this
    model uses 8 decoder heads.
    """
    import dataclasses

    base = helpers.TINY_CONFIG
    config = dataclasses.replace(base, mask_decoder=dataclasses.replace(base.mask_decoder, num_heads=8))
    ref, _ = helpers.make_pair(config, seed=7)
    path = tmp_path / "sam_tiny.pth"
    torch.save(ref.state_dict(), path)
    assert infer_sam_config(ref.state_dict()) == config
    loaded = load_sam(path)
    assert loaded.config == config
    image = helpers.make_image(160, 100, seed=3)
    rp, op = segment_anything.SamPredictor(ref), SamPredictor(loaded)
    rp.set_image(image)
    op.set_image(image)
    helpers.assert_close(op.features, rp.features, "image embedding")
    helpers.compare_predict(rp, op, point_coords=np.array([[50, 60]]), point_labels=np.array([1]), box=_box(160, 100))


def test_official_pth_with_explicit_config(tiny_pair, helpers, tmp_path):
    """The tiny model has 4 decoder heads: an explicit config (``build_sam``/``load_sam``) loads it exactly."""
    ref, ours = tiny_pair
    path = tmp_path / "sam_tiny.pth"
    torch.save(ref.state_dict(), path)
    for model in (build_sam(helpers.TINY_CONFIG, checkpoint=path), load_sam(path, config=helpers.TINY_CONFIG)):
        assert model.config == helpers.TINY_CONFIG
        for key, value in ours.state_dict().items():
            assert torch.equal(model.state_dict()[key], value), key
    image = helpers.make_image(128, 128, seed=4)
    rp, op = segment_anything.SamPredictor(ref), SamPredictor(model)
    rp.set_image(image)
    op.set_image(image)
    helpers.compare_predict(rp, op, point_coords=np.array([[50, 60], [10, 100]]), point_labels=np.array([1, 0]))


def test_inferred_config_differs_only_in_decoder_heads(tiny_pair, helpers):
    ref, _ = tiny_pair
    inferred = infer_sam_config(ref.state_dict())
    assert inferred.image_encoder == helpers.TINY_CONFIG.image_encoder
    assert inferred.prompt_encoder == helpers.TINY_CONFIG.prompt_encoder
    assert inferred.mask_decoder.num_heads == 8  # documented: not recoverable from the weights
    assert isinstance(inferred.image_encoder, ImageEncoderConfig)


def test_inference_refuses_what_the_weights_do_not_tell(helpers):
    """Without pos_embed the input size comes from a global block's relative-position table: with every block
    windowed it was taken from the window (a 128-px model inferred as 48 px, loading without a word); a ViT
    narrower than the assumed 64-dim heads was a bare ZeroDivisionError."""
    import dataclasses

    from promptseg.checkpoint import CheckpointError

    base = helpers.TINY_CONFIG
    enc = dataclasses.replace(base.image_encoder, use_abs_pos=False, global_attn_indexes=())
    ref, _ = helpers.make_pair(dataclasses.replace(base, image_encoder=enc))
    with pytest.raises(CheckpointError, match="cannot infer the input size"):
        infer_sam_config(ref.state_dict())
    state = dict(ref.state_dict())
    state = {k: v for k, v in state.items() if ".rel_pos_" not in k}
    state["image_encoder.pos_embed"] = torch.zeros(1, 8, 8, 32)
    state["image_encoder.patch_embed.proj.weight"] = torch.zeros(32, 3, 16, 16)
    with pytest.raises(CheckpointError, match="cannot infer a SAM config"):
        infer_sam_config(state)
