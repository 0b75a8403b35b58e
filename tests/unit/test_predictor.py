"""``SamPredictor`` beyond the reference: batched prompts and images, image conversion, mask prompts,
and input validation (exception type + the offending argument named in the message).

Numeric comparisons use the tolerance of the parity tests: max |Δ| ≤ 1e-4 on logits and IoU
predictions (float32); masks identical except where |logit| < 1e-3.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import segment_anything
from promptseg import SamPredictor, build_sam
from promptseg.transforms import mask_to_logits

H, W = 100, 160  # the landscape test image


@pytest.fixture(scope="module")
def image(helpers):
    return helpers.make_image(H, W, seed=5)


@pytest.fixture(scope="module")
def predictor(tiny_sam, image):
    p = SamPredictor(tiny_sam)
    p.set_image(image)
    return p


@pytest.fixture(scope="module")
def ref_predictor(tiny_ref, image):
    p = segment_anything.SamPredictor(tiny_ref)
    p.set_image(image)
    return p


def _full_logits(predictor, low, index=0):
    with torch.no_grad():
        return predictor.model.postprocess_masks(
            torch.from_numpy(low), predictor.input_sizes[index], predictor.original_sizes[index]
        ).numpy()


def _assert_same_result(helpers, got, expected, expected_full_logits):
    """``got``/``expected``: (masks, scores, low) with the same leading shape."""
    helpers.assert_close(got[2], expected[2], "low-res logits")
    helpers.assert_close(got[1], expected[1], "IoU predictions")
    helpers.assert_masks_match(got[0], expected[0], expected_full_logits)


# ---------------------------------------------------------------------------------------------------
# Basic contract


def test_outputs_shapes_and_dtypes(predictor):
    masks, scores, low = predictor.predict(np.array([[30, 40]]), np.array([1]))
    assert masks.shape == (3, H, W) and masks.dtype == np.bool_
    assert scores.shape == (3,) and scores.dtype == np.float32
    assert low.shape == (3, 32, 32) and low.dtype == np.float32
    masks, scores, low = predictor.predict(np.array([[30, 40]]), np.array([1]), multimask_output=False, return_logits=True)
    assert masks.shape == (1, H, W) and masks.dtype == np.float32
    assert predictor.get_image_embedding().shape == (1, 32, 8, 8)
    assert predictor.original_size == (H, W) and predictor.input_size == (80, 128)


def test_predict_requires_an_image(tiny_sam, image):
    p = SamPredictor(tiny_sam)
    with pytest.raises(RuntimeError, match="set_image"):
        p.predict(np.array([[1, 1]]), np.array([1]))
    with pytest.raises(RuntimeError):
        p.get_image_embedding()
    p.set_image(image)
    assert p.is_image_set
    p.reset_image()
    assert not p.is_image_set
    with pytest.raises(RuntimeError):
        p.predict_many(boxes=np.array([[0, 0, 10, 10]]))


def test_set_torch_image_matches_set_image(tiny_sam, image, predictor):
    p = SamPredictor(tiny_sam)
    transformed = torch.as_tensor(p.transform.apply_image(image)).permute(2, 0, 1)[None]
    p.set_torch_image(transformed, image.shape[:2])
    assert torch.equal(p.features, predictor.features)
    assert p.original_size == (H, W) and p.input_size == (80, 128)
    for size in ([H, W], np.array([H, W]), torch.tensor([H, W]), (float(H), float(W))):  # any (H, W) pair of ints
        p.set_torch_image(transformed, size)
        assert p.original_size == (H, W)


@pytest.mark.parametrize("parts", ["model", "encoder", "encoder+transformer"])
def test_bfloat16_model_returns_float32_close_to_float32(tiny_sam, image, predictor, parts):
    """bfloat16 weights (the whole model, or only the image encoder and the decoder's transformer, the
    rest float32): outputs are float32/bool and close to the float32 model (loose bf16 tolerances:
    low-res logits |Δ| ≤ 0.05, IoU |Δ| ≤ 0.02, ≥ 98 % of mask pixels equal)."""
    model = build_sam(tiny_sam.config)
    model.load_state_dict(tiny_sam.state_dict())
    if parts == "model":
        model = model.to(torch.bfloat16)
    else:
        model.image_encoder.to(torch.bfloat16)
        if "transformer" in parts:
            model.mask_decoder.transformer.to(torch.bfloat16)
    p = SamPredictor(model)
    p.set_image(image)
    assert p.features.dtype == model.dtype  # the decoder's dtype
    prompt = dict(point_coords=np.array([[30, 40]]), point_labels=np.array([1]), box=np.array([10, 10, 100, 90]))
    masks, scores, low = p.predict(**prompt)
    assert masks.dtype == np.bool_ and scores.dtype == np.float32 and low.dtype == np.float32
    ref_masks, ref_scores, ref_low = predictor.predict(**prompt)
    assert np.abs(low - ref_low).max() <= 0.05
    assert np.abs(scores - ref_scores).max() <= 0.02
    assert (masks == ref_masks).mean() >= 0.98
    many = p.predict_many(boxes=BOXES)
    assert many[0].dtype == np.bool_ and many[1].dtype == np.float32 and many[2].dtype == np.float32
    again = p.predict(point_coords=prompt["point_coords"], point_labels=np.array([1]), mask_input=low[:1])
    expected = predictor.predict(point_coords=prompt["point_coords"], point_labels=np.array([1]), mask_input=ref_low[:1])
    assert (again[0] == expected[0]).mean() >= 0.98  # the mask-prompt path (no cached image keys)


def test_bfloat16_sam_forward_returns_float32(tiny_sam, image, predictor):
    """``Sam.forward`` (the reference's batched call) of an all-bfloat16 model returns float32 logits and
    IoU predictions, and its masks threshold those float32 logits — as ``SamPredictor`` does."""
    model = build_sam(tiny_sam.config)
    model.load_state_dict(tiny_sam.state_dict())
    model = model.to(torch.bfloat16)
    transformed = predictor.transform.apply_image(image)
    coords = predictor.transform.apply_coords(np.array([[30.0, 40.0]]), image.shape[:2])
    record = {
        "image": torch.as_tensor(transformed).permute(2, 0, 1).float(),
        "original_size": image.shape[:2],
        "point_coords": torch.as_tensor(coords, dtype=torch.float32)[None],
        "point_labels": torch.tensor([[1]]),
    }
    with torch.no_grad():
        (out,) = model([record], multimask_output=True)
        (expected,) = tiny_sam([record], multimask_output=True)
        full = model.postprocess_masks(out["low_res_logits"], record["image"].shape[-2:], record["original_size"])
    assert out["low_res_logits"].dtype == out["iou_predictions"].dtype == torch.float32
    assert out["masks"].dtype == torch.bool and torch.equal(out["masks"], full > model.mask_threshold)
    assert (out["low_res_logits"] - expected["low_res_logits"]).abs().max() <= 0.05
    assert (out["iou_predictions"] - expected["iou_predictions"]).abs().max() <= 0.02


def test_sam_forward_records_no_autograd_graph(tiny_sam, image, predictor):
    """``Sam.forward`` is inference, as the reference's (``@torch.no_grad``): its outputs need no ``detach``
    and no activations are kept for a backward pass."""
    record = {
        "image": torch.as_tensor(predictor.transform.apply_image(image)).permute(2, 0, 1).float(),
        "original_size": image.shape[:2],
        "boxes": torch.as_tensor(predictor.transform.apply_boxes(np.array([[10, 10, 90, 70]]), image.shape[:2])),
    }
    with torch.enable_grad():
        (out,) = tiny_sam([record], multimask_output=False)
    assert not any(value.requires_grad for value in out.values())
    assert out["iou_predictions"].numpy().shape == (1, 1)


def test_sam_forward_rejects_an_image_larger_than_img_size(tiny_sam):
    """An image not resized to the model's input would be cropped by the padding (the reference) or fail
    deep in the mask upsampling: a ValueError naming the size instead."""
    size = tiny_sam.img_size
    for shape in ((3, size + 72, size - 28), (3, size, size + 1)):
        record = {"image": torch.zeros(shape), "original_size": shape[1:], "boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]])}
        with pytest.raises(ValueError, match=f"img_size {size}"):
            tiny_sam([record], multimask_output=False)


# ---------------------------------------------------------------------------------------------------
# predict_many == B × predict (and == the reference, one prompt at a time)

BOXES = np.array([[10, 10, 70, 60], [50, 20, 150, 95], [0, 0, W, H]], dtype=np.float64)
POINTS = np.array([[[30, 30], [65, 55]], [[100, 50], [55, 25]], [[80, 50], [10, 90]]], dtype=np.float64)
LABELS = np.array([[1, 0], [1, 1], [0, 1]])


@pytest.mark.parametrize("multimask", [True, False])
def test_predict_many_boxes_with_points_equals_separate_calls(predictor, ref_predictor, helpers, multimask):
    many = predictor.predict_many(POINTS, LABELS, BOXES, multimask_output=multimask)
    c = 3 if multimask else 1
    assert many[0].shape == (3, c, H, W) and many[1].shape == (3, c) and many[2].shape == (3, c, 32, 32)
    for i in range(3):
        single = predictor.predict(POINTS[i], LABELS[i], box=BOXES[i], multimask_output=multimask)
        _assert_same_result(helpers, [x[i] for x in many], single, _full_logits(predictor, single[2][None])[0])
        ref = ref_predictor.predict(POINTS[i], LABELS[i], box=BOXES[i], multimask_output=multimask)
        _assert_same_result(helpers, [x[i] for x in many], ref, helpers.reference_full_logits(ref_predictor, ref[2]))


def test_predict_many_boxes_only_and_points_only(predictor, helpers):
    for kwargs, per_item in (
        (dict(boxes=BOXES), lambda i: dict(box=BOXES[i])),
        (dict(point_coords=POINTS, point_labels=LABELS), lambda i: dict(point_coords=POINTS[i], point_labels=LABELS[i])),
    ):
        many = predictor.predict_many(**kwargs)
        for i in range(3):
            single = predictor.predict(**per_item(i))
            _assert_same_result(helpers, [x[i] for x in many], single, _full_logits(predictor, single[2][None])[0])


def test_predict_many_with_mask_logits(predictor, helpers):
    low = predictor.predict_many(boxes=BOXES, multimask_output=False)[2]  # B×1×32×32
    many = predictor.predict_many(POINTS, LABELS, BOXES, mask_input=low, multimask_output=False)
    for i in range(3):
        single = predictor.predict(POINTS[i], LABELS[i], box=BOXES[i], mask_input=low[i], multimask_output=False)
        _assert_same_result(helpers, [x[i] for x in many], single, _full_logits(predictor, single[2][None])[0])


def test_predict_many_with_binary_masks(predictor, helpers):
    masks = np.zeros((2, H, W), bool)
    masks[0, 10:60, 20:90] = True
    masks[1, 50:, 100:] = True
    many = predictor.predict_many(mask_input=masks, multimask_output=False)
    for i in range(2):
        single = predictor.predict(mask_input=masks[i], multimask_output=False)
        _assert_same_result(helpers, [x[i] for x in many], single, _full_logits(predictor, single[2][None])[0])


def test_predict_many_multimask_auto(predictor):
    one_click = predictor.predict_many(POINTS[:, :1], LABELS[:, :1], multimask_output="auto")
    assert one_click[1].shape == (3, 3)
    two_clicks = predictor.predict_many(POINTS, LABELS, multimask_output="auto")
    assert two_clicks[1].shape == (3, 1)
    with_box = predictor.predict_many(POINTS[:, :1], LABELS[:, :1], BOXES, multimask_output="auto")
    assert with_box[1].shape == (3, 1)
    # "auto" picks the same masks as the explicit choice
    assert np.array_equal(one_click[2], predictor.predict_many(POINTS[:, :1], LABELS[:, :1], multimask_output=True)[2])
    assert np.array_equal(two_clicks[2], predictor.predict_many(POINTS, LABELS, multimask_output=False)[2])


def test_predict_many_return_logits(predictor):
    masks, _, low = predictor.predict_many(boxes=BOXES, return_logits=True)
    assert masks.dtype == np.float32 and masks.shape == (3, 3, H, W)
    assert np.array_equal(masks > 0, predictor.predict_many(boxes=BOXES)[0])


# ---------------------------------------------------------------------------------------------------
# set_images / image_index


@pytest.fixture(scope="module")
def two_images(helpers):
    return helpers.make_image(100, 160, seed=31), helpers.make_image(150, 90, seed=32), helpers.make_image(64, 64, seed=33)


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_set_images_equals_separate_set_image(tiny_sam, helpers, two_images, batch_size):
    many = SamPredictor(tiny_sam)
    many.set_images(list(two_images), batch_size=batch_size)
    assert many.get_image_embedding().shape == (3, 32, 8, 8)
    assert many.original_sizes == [im.shape[:2] for im in two_images]
    for i, im in enumerate(two_images):
        single = SamPredictor(tiny_sam)
        single.set_image(im)
        helpers.assert_close(many.features[i : i + 1], single.features, f"embedding of image {i}")
        assert many.input_sizes[i] == single.input_size
        h, w = im.shape[:2]
        prompt = dict(point_coords=np.array([[w / 3, h / 2]]), point_labels=np.array([1]), box=np.array([2, 3, w - 5, h - 1]))
        got = many.predict(**prompt, image_index=i)
        expected = single.predict(**prompt)
        assert got[0].shape == (3, h, w)
        _assert_same_result(helpers, got, expected, _full_logits(single, expected[2][None])[0])
        got_many = many.predict_many(boxes=np.array([[0, 0, w / 2, h / 2], [w / 4, h / 4, w, h]]), image_index=i)
        expected_many = single.predict_many(boxes=np.array([[0, 0, w / 2, h / 2], [w / 4, h / 4, w, h]]))
        helpers.assert_close(got_many[2], expected_many[2], "predict_many on image_index")


def test_image_index_selects_the_image(tiny_sam, two_images):
    p = SamPredictor(tiny_sam)
    p.set_images(list(two_images[:2]), batch_size=2)
    prompt = dict(point_coords=np.array([[40, 40]]), point_labels=np.array([1]))
    a, b = p.predict(**prompt, image_index=0), p.predict(**prompt, image_index=1)
    assert a[0].shape == (3, 100, 160) and b[0].shape == (3, 150, 90)
    assert np.abs(a[2] - b[2]).max() > 1e-3
    # validation uses the selected image's size: x = 120 is inside image 0 (W=160), outside image 1 (W=90)
    p.predict(np.array([[120, 10]]), np.array([1]), image_index=0)
    with pytest.raises(ValueError, match="point_coords"):
        p.predict(np.array([[120, 10]]), np.array([1]), image_index=1)
    for bad in (2, -1):
        with pytest.raises(ValueError, match="image_index"):
            p.predict(**prompt, image_index=bad)
    with pytest.raises(ValueError, match="image_index"):
        p.predict_torch(torch.zeros(1, 1, 2), torch.ones(1, 1), image_index=5)


def test_set_images_resets_previous_images(tiny_sam, two_images):
    p = SamPredictor(tiny_sam)
    p.set_images(list(two_images))
    p.set_image(two_images[0])
    assert p.features.shape[0] == 1 and len(p.original_sizes) == 1
    with pytest.raises(ValueError, match="image_index"):
        p.predict(np.array([[1, 1]]), np.array([1]), image_index=1)


# ---------------------------------------------------------------------------------------------------
# Image conversion


def _embedding_of(tiny_sam, image, **kwargs):
    p = SamPredictor(tiny_sam)
    p.set_image(image, **kwargs)
    return p


@pytest.mark.parametrize(
    "convert",
    [
        lambda rgb: rgb[..., 0],  # grayscale H×W (compared with the replicated channel)
        lambda rgb: rgb[..., :1],  # H×W×1
        lambda rgb: np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 77, np.uint8)], axis=2),  # RGBA
        lambda rgb: rgb.astype(np.uint16) * 257,  # uint16 full range
        lambda rgb: rgb.astype(np.float32) / 255.0,  # float32 in [0, 1]
        lambda rgb: rgb.astype(np.float64) / 255.0,  # float64 in [0, 1]
        lambda rgb: rgb[..., 0] > 128,  # bool
    ],
    ids=["gray", "hw1", "rgba", "uint16", "float32", "float64", "bool"],
)
def test_image_conversions_equal_the_uint8_rgb_result(tiny_sam, helpers, convert):
    rgb = helpers.make_image(70, 90, seed=8)
    converted = convert(rgb)
    if converted.dtype == np.bool_:
        expected_rgb = np.repeat(np.where(converted, 255, 0).astype(np.uint8)[..., None], 3, axis=2)
    elif converted.ndim == 2 or converted.shape[2] == 1:
        expected_rgb = np.repeat(rgb[..., :1], 3, axis=2)
    else:
        expected_rgb = rgb
    got, expected = _embedding_of(tiny_sam, converted), _embedding_of(tiny_sam, expected_rgb)
    assert torch.equal(got.features, expected.features)
    prompt = dict(point_coords=np.array([[20, 30]]), point_labels=np.array([1]))
    for a, b in zip(got.predict(**prompt), expected.predict(**prompt)):
        assert np.array_equal(a, b)


def test_bgr_input(tiny_sam, helpers):
    rgb = helpers.make_image(70, 90, seed=8)
    got = _embedding_of(tiny_sam, rgb[..., ::-1], image_format="BGR")
    expected = _embedding_of(tiny_sam, rgb)
    assert torch.equal(got.features, expected.features)


@pytest.mark.parametrize(
    "bad, exc",
    [
        (np.zeros((0, 10, 3), np.uint8), ValueError),
        (np.zeros((10, 0, 3), np.uint8), ValueError),
        (np.zeros((0, 0), np.uint8), ValueError),
        (np.full((10, 10, 3), 1.01, np.float32), ValueError),
        (np.full((10, 10, 3), -0.5, np.float32), ValueError),
        (np.full((10, 10, 3), np.nan, np.float32), ValueError),
        (np.zeros((10, 10, 3), object), TypeError),
        (np.zeros((10, 10, 3), np.int32), TypeError),
        (np.zeros((10, 10, 3), np.complex64), TypeError),
        (np.zeros((10, 10, 5), np.uint8), ValueError),
        (np.zeros((2, 10, 10, 3), np.uint8), ValueError),
        ([[1, 2], [3, 4]], TypeError),
        (None, TypeError),
    ],
    ids=["0xN", "Nx0", "0x0", "float>1", "float<0", "nan", "object", "int32", "complex", "5ch", "4d", "list", "None"],
)
def test_bad_images_are_rejected(tiny_sam, bad, exc):
    p = SamPredictor(tiny_sam)
    with pytest.raises(exc, match="image"):
        p.set_image(bad)
    assert not p.is_image_set


def test_bad_image_in_a_batch_is_named(tiny_sam, helpers):
    p = SamPredictor(tiny_sam)
    with pytest.raises(ValueError, match=r"images\[1\]"):
        p.set_images([helpers.make_image(10, 10), np.zeros((0, 4, 3), np.uint8)])


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda p, im: p.set_image(im, image_format="bgr"), ValueError, "image_format"),
        (lambda p, im: p.set_images([], batch_size=1), ValueError, "images"),
        (lambda p, im: p.set_images(np.stack([im, im])), ValueError, "images"),
        (lambda p, im: p.set_images([im], batch_size=0), ValueError, "batch_size"),
        (lambda p, im: p.set_torch_image(im, im.shape[:2]), TypeError, "transformed_image"),
        (lambda p, im: p.set_torch_image(torch.zeros(1, 3, 64, 64), (64, 64)), ValueError, "transformed_image"),
        (lambda p, im: p.set_torch_image(torch.zeros(3, 128, 128), (64, 64)), ValueError, "transformed_image"),
        (lambda p, im: p.set_torch_image(torch.zeros(2, 3, 128, 128), (64, 64)), ValueError, "transformed_image"),
        (lambda p, im: p.set_torch_image(torch.zeros(1, 3, 80, 128), (100, 160, 3)), ValueError, "original_image_size"),
        (lambda p, im: p.set_torch_image(torch.zeros(1, 3, 80, 128), (0, 0)), ValueError, "original_image_size"),
        (lambda p, im: p.set_torch_image(torch.zeros(1, 3, 80, 128), (100.5, 160)), ValueError, "original_image_size"),
        (lambda p, im: p.set_torch_image(torch.zeros(1, 3, 80, 128), (160, 100)), ValueError, "original_image_size"),
    ],
    ids=["format", "empty_list", "ndarray_batch", "batch_size0", "numpy_torch_image", "torch_small", "torch_3d", "torch_b2",
         "original_hwc", "original_0", "original_float", "original_swapped"],
)
def test_bad_image_calls(tiny_sam, helpers, call, exc, match):
    with pytest.raises(exc, match=match):
        call(SamPredictor(tiny_sam), helpers.make_image(20, 30))


def test_extreme_aspect_ratio_image(tiny_sam):
    p = SamPredictor(tiny_sam)
    image = np.zeros((1, 300, 3), np.uint8)  # 1×300 → 0×128 in the 128 px frame (1×3000 for 1024 px)
    try:
        p.set_image(image)
    except ValueError as err:
        assert "image" in str(err), str(err)
    else:
        assert p.predict(box=np.array([0, 0, 300, 1]))[0].shape == (3, 1, 300)


# ---------------------------------------------------------------------------------------------------
# Mask prompts


def test_binary_mask_prompt_equals_its_logits(predictor):
    mask = np.zeros((H, W), bool)
    mask[20:70, 30:120] = True
    logits = mask_to_logits(mask, 128)
    assert logits.shape == (1, 32, 32)
    for binary in (mask, mask.astype(np.uint8), mask.astype(np.uint8) * 255):
        got = predictor.predict(mask_input=binary, point_coords=np.array([[60, 40]]), point_labels=np.array([1]))
        expected = predictor.predict(mask_input=logits, point_coords=np.array([[60, 40]]), point_labels=np.array([1]))
        for a, b in zip(got, expected):
            assert np.array_equal(a, b)


def test_binary_mask_prompt_with_8px_patches(tiny_config, image):
    """The low-res mask grid is 4 × the token grid, not img_size / 4, when patches are not 16 px
    (the bundled default model: 256 px input, 8-px patches → 128×128 mask prompts)."""
    import dataclasses

    config = dataclasses.replace(tiny_config, image_encoder=dataclasses.replace(tiny_config.image_encoder, patch_size=8))
    p = SamPredictor(build_sam(config).eval())
    p.set_image(image)
    mask = np.zeros((H, W), bool)
    mask[20:70, 30:120] = True
    got = p.predict(mask_input=mask, point_coords=np.array([[60, 40]]), point_labels=np.array([1]))
    assert got[2].shape[-2:] == (64, 64)
    expected = p.predict(mask_input=mask_to_logits(mask, 128, grid=64), point_coords=np.array([[60, 40]]),
                         point_labels=np.array([1]))
    for a, b in zip(got, expected):
        assert np.array_equal(a, b)


def test_binary_mask_prompt_changes_the_result(predictor):
    mask = np.zeros((H, W), bool)
    mask[20:70, 30:120] = True
    with_mask = predictor.predict(np.array([[60, 40]]), np.array([1]), mask_input=mask)
    without = predictor.predict(np.array([[60, 40]]), np.array([1]))
    assert np.abs(with_mask[2] - without[2]).max() > 1e-3


def test_box_corner_labels_are_accepted_as_the_reference_onnx_model_embeds_them(predictor, ref_predictor, helpers):
    """Labels 2 / 3 (a box's corners given as clicks, as in SAM's ONNX example) are accepted and embedded
    as box corners, like the reference's ``SamOnnxModel`` (its ``SamPredictor`` gives them no label
    embedding at all), with the padding point the predictor appends when there is no box."""
    from segment_anything.utils.onnx import SamOnnxModel

    onnx = SamOnnxModel(ref_predictor.model, return_single_mask=False)
    coords, labels = np.array([[30.0, 30.0], [10.0, 10.0], [70.0, 60.0]]), np.array([1, 2, 3])
    for n in (2, 3):  # the corners alone, then a click and the corners
        pts, lbl = coords[-n:], labels[-n:]
        onnx_coords = np.concatenate([ref_predictor.transform.apply_coords(pts, (H, W)), [[0.0, 0.0]]])[None]
        with torch.no_grad():
            _, scores, low = onnx(
                ref_predictor.features, torch.as_tensor(onnx_coords, dtype=torch.float),
                torch.as_tensor(np.append(lbl, -1)[None], dtype=torch.float), torch.zeros(1, 1, 32, 32),
                torch.zeros(1), torch.tensor([H, W], dtype=torch.float),
            )
        for multimask, tokens in ((True, slice(1, None)), (False, slice(0, 1))):
            _, got_scores, got_low = predictor.predict(pts, lbl, multimask_output=multimask)
            helpers.assert_close(got_low, low[0, tokens], "low-res logits")
            helpers.assert_close(got_scores, scores[0, tokens], "IoU predictions")
    many = predictor.predict_many(coords[None, 1:], labels[None, 1:], multimask_output=False)
    helpers.assert_close(many[2][0], predictor.predict(coords[1:], labels[1:], multimask_output=False)[2], "predict_many")


def test_bool_point_labels_read_as_foreground_background(predictor, ref_predictor, helpers):
    """``labels = gt_mask[ys, xs]`` is bool: True / False are 1 / 0, as the reference reads them."""
    coords = np.array([[30, 40], [100, 60]])
    got, _ = helpers.compare_predict(ref_predictor, predictor, point_coords=coords, point_labels=np.array([True, False]))
    expected = predictor.predict(coords, np.array([1, 0]))
    for a, b in zip(got, expected):
        assert np.array_equal(a, b)


def test_mask_logits_from_a_previous_call(predictor, ref_predictor, helpers):
    _, scores, low = predictor.predict(np.array([[60, 40]]), np.array([1]))
    best = low[np.argmax(scores)][None]
    helpers.compare_predict(
        ref_predictor, predictor, point_coords=np.array([[60, 40], [10, 80]]), point_labels=np.array([1, 0]), mask_input=best
    )


# ---------------------------------------------------------------------------------------------------
# Prompt validation: exception type and the argument named in the message

P1 = np.array([[30.0, 40.0]])
L1 = np.array([1])

BAD_PREDICT = [
    # point_coords
    (dict(point_coords=np.array([[1.0, 2.0, 3.0]]), point_labels=L1), ValueError, "point_coords"),
    (dict(point_coords=np.array([10.0, 10.0]), point_labels=L1), ValueError, "point_coords"),
    (dict(point_coords=np.zeros((0, 2)), point_labels=np.zeros(0)), ValueError, "point_coords"),
    (dict(point_coords=np.array([[W + 1.0, 10.0]]), point_labels=L1), ValueError, "point_coords"),
    (dict(point_coords=np.array([[10.0, H + 0.5]]), point_labels=L1), ValueError, "point_coords"),
    (dict(point_coords=np.array([[-1.0, 10.0]]), point_labels=L1), ValueError, "point_coords"),
    (dict(point_coords=np.array([[np.nan, 10.0]]), point_labels=L1), ValueError, "point_coords"),
    (dict(point_coords=np.array([[np.inf, 10.0]]), point_labels=L1), ValueError, "point_coords"),
    (dict(point_coords=np.array([["a", "b"]]), point_labels=L1), TypeError, "point_coords"),
    (dict(point_coords=np.array([[True, False]]), point_labels=L1), TypeError, "point_coords"),
    (dict(point_coords=np.array([[object(), 1]], dtype=object), point_labels=L1), TypeError, "point_coords"),
    (dict(point_coords=[[1.0, 2.0], [3.0]], point_labels=[1, 1]), ValueError, "point_coords"),  # ragged list
    # point_labels
    (dict(point_coords=P1), ValueError, "point_labels"),
    (dict(point_labels=L1), ValueError, "point_labels"),
    (dict(point_coords=P1, point_labels=np.array([1, 0])), ValueError, "point_labels"),
    (dict(point_coords=P1, point_labels=np.array([[1]])), ValueError, "point_labels"),
    (dict(point_coords=P1, point_labels=np.array([4])), ValueError, "point_labels"),
    (dict(point_coords=P1, point_labels=np.array([-2])), ValueError, "point_labels"),
    (dict(point_coords=P1, point_labels=np.array([0.5])), ValueError, "point_labels"),
    (dict(point_coords=P1, point_labels=np.array([np.nan])), ValueError, "point_labels"),
    (dict(point_coords=P1, point_labels=np.array(["1"])), TypeError, "point_labels"),
    # box
    (dict(box=np.array([1.0, 2.0, 3.0])), ValueError, "box"),
    (dict(box=np.array([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]])), ValueError, "box"),
    (dict(box=np.array([50.0, 10.0, 40.0, 20.0])), ValueError, "box"),  # x0 > x1
    (dict(box=np.array([10.0, 50.0, 40.0, 20.0])), ValueError, "box"),  # y0 > y1
    (dict(box=np.array([10.0, 10.0, W + 1.0, 20.0])), ValueError, "box"),
    (dict(box=np.array([-1.0, 10.0, 20.0, 20.0])), ValueError, "box"),
    (dict(box=np.array([10.0, 10.0, 20.0, H + 1.0])), ValueError, "box"),
    (dict(box=np.array([np.nan, 10.0, 20.0, 20.0])), ValueError, "box"),
    (dict(box=np.array(["a", "b", "c", "d"])), TypeError, "box"),
    (dict(box=np.zeros(4, dtype=object)), TypeError, "box"),
    (dict(box=[[1.0, 2.0, 3.0, 4.0], [1.0]]), ValueError, "box"),
    # mask_input
    (dict(mask_input=np.zeros((1, 64, 64), np.float32)), ValueError, "mask_input"),
    (dict(mask_input=np.zeros((32, 32), np.float32)), ValueError, "mask_input"),
    (dict(mask_input=np.zeros((2, 32, 32), np.float32)), ValueError, "mask_input"),
    (dict(mask_input=np.full((1, 32, 32), np.nan, np.float32)), ValueError, "mask_input"),
    (dict(mask_input=np.zeros((H, W + 1), bool)), ValueError, "mask_input"),
    (dict(mask_input=np.zeros((W, H), bool)), ValueError, "mask_input"),
    (dict(mask_input=np.zeros((1, H, W), bool)), ValueError, "mask_input"),
    (dict(mask_input=np.zeros((H, W), np.int32)), TypeError, "mask_input"),
    (dict(mask_input=np.zeros((1, 32, 32), object)), TypeError, "mask_input"),
    (dict(mask_input=[[[0.0] * 32] * 31 + [[0.0] * 31]]), ValueError, "mask_input"),
    # the prompt as a whole
    (dict(), ValueError, "empty prompt"),
    (dict(point_coords=P1, point_labels=L1, multimask_output="yes"), TypeError, "multimask_output"),
    (dict(point_coords=P1, point_labels=L1, multimask_output=None), TypeError, "multimask_output"),
    (dict(point_coords=P1, point_labels=L1, image_index=0.0), TypeError, "image_index"),
    (dict(point_coords=P1, point_labels=L1, image_index=True), TypeError, "image_index"),
]


@pytest.mark.parametrize("kwargs, exc, match", BAD_PREDICT, ids=[f"{i}-{m}" for i, (_, _, m) in enumerate(BAD_PREDICT)])
def test_bad_predict_arguments(predictor, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        predictor.predict(**kwargs)


BAD_MANY = [
    (dict(point_coords=np.array([[10.0, 10.0]]), point_labels=np.array([1])), ValueError, "point_coords"),
    (dict(point_coords=np.zeros((2, 0, 2)), point_labels=np.zeros((2, 0))), ValueError, "point_coords"),
    (dict(point_coords=np.zeros((2, 1, 2)), point_labels=np.ones((2, 2))), ValueError, "point_labels"),
    (dict(point_coords=np.zeros((2, 1, 2)), point_labels=np.ones((2, 1)), boxes=BOXES), ValueError, "disagree"),
    (dict(boxes=np.array([1.0, 2.0, 3.0, 4.0])), ValueError, "boxes"),
    (dict(boxes=np.zeros((0, 4))), ValueError, "boxes"),
    (dict(boxes=np.array([[10.0, 10.0, 5.0, 20.0]])), ValueError, "boxes"),
    (dict(boxes=np.array([[10.0, 10.0, 20.0, H + 3.0]])), ValueError, "boxes"),
    (dict(boxes=BOXES, mask_input=np.zeros((2, 1, 32, 32), np.float32)), ValueError, "disagree"),
    (dict(mask_input=np.zeros((H, W), bool)), ValueError, "mask_input"),
    (dict(mask_input=np.zeros((32, 32), np.float32)), ValueError, "mask_input"),
    (dict(mask_input=np.zeros((2, 2, 32, 32), np.float32)), ValueError, "mask_input"),
    (dict(boxes=BOXES, multimask_output="maybe"), TypeError, "multimask_output"),
    (dict(), ValueError, "empty prompt"),
]


@pytest.mark.parametrize("kwargs, exc, match", BAD_MANY, ids=[f"{i}-{m}" for i, (_, _, m) in enumerate(BAD_MANY)])
def test_bad_predict_many_arguments(predictor, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        predictor.predict_many(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(point_coords=np.zeros((0, 1, 2)), point_labels=np.zeros((0, 1))), "point_coords"),
        (dict(mask_input=np.zeros((0, 1, 32, 32), np.float32)), "mask_input"),
        (dict(mask_input=np.zeros((0, H, W), bool)), "mask_input"),
    ],
    ids=["points", "mask_logits", "binary_masks"],
)
def test_predict_many_empty_batch_is_a_value_error(predictor, kwargs, match):
    with pytest.raises(ValueError, match=match):
        predictor.predict_many(**kwargs)


def test_valid_edge_prompts_are_accepted(predictor):
    """Borders are inside the image; degenerate boxes, padding clicks and lists are fine."""
    predictor.predict(np.array([[0, 0], [W, H]]), np.array([1, 0]))
    predictor.predict(box=np.array([0, 0, W, H]))
    predictor.predict(box=np.array([[5, 5, 5, 5]]))
    predictor.predict(box=[1, 2, 30, 40])
    predictor.predict(np.array([[10, 10], [-50, 999]]), np.array([1, -1]))  # padding may lie anywhere
    predictor.predict(np.array([[10, 10]], np.int64), np.array([1.0]))  # integral float labels
    predictor.predict(np.array([[10, 10]], np.int64), np.array([1.0]), image_index=np.int64(0))  # numpy int index
    predictor.predict(mask_input=np.zeros((1, 32, 32), np.float64))


def test_weights_changed_after_set_image_are_used_as_the_reference_uses_them(helpers, image):
    """A fine-tuning loop that prompts one image between optimiser steps: the positional encoding and
    decoder keys the predictor caches per image are recomputed once the decoder or prompt encoder changed
    (in place or by ``load_state_dict``), as the reference recomputes them on every call."""
    ref, ours = helpers.make_pair()
    ref_p, our_p = segment_anything.SamPredictor(ref), SamPredictor(ours)
    ref_p.set_image(image)
    our_p.set_image(image)
    prompt = dict(point_coords=np.array([[60.0, 40.0]]), point_labels=np.array([1]), multimask_output=True)
    before = our_p.predict(**prompt)[2]  # fills the caches
    params = list(ours.mask_decoder.parameters())
    torch.manual_seed(0)
    for p in params:
        p.grad = torch.randn_like(p)
    torch.optim.SGD(params, lr=0.05).step()
    with torch.no_grad():
        ours.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.mul_(1.5)
    ref.load_state_dict(ours.state_dict())
    _, our_iou, our_low = our_p.predict(**prompt)
    _, ref_iou, ref_low = ref_p.predict(**prompt)
    assert np.abs(our_low - before).max() > 1e-2  # the change matters
    np.testing.assert_allclose(our_low, ref_low, atol=1e-4)
    np.testing.assert_allclose(our_iou, ref_iou, atol=1e-4)


def test_weights_written_through_data_are_used_from_the_next_image(helpers, image):
    """``param.data`` writes (older EMA or weight-loading code) bump no tensor version, so the decoder's stacked
    hypernetwork weights — kept on the model — outlived them, even into a new predictor: every new image
    (``set_image``, a new predictor, ``reset_image``) now rebuilds them."""
    ref, ours = helpers.make_pair()
    prompt = dict(point_coords=np.array([[60.0, 40.0]]), point_labels=np.array([1]), multimask_output=True)
    first = SamPredictor(ours)
    first.set_image(image)
    before = first.predict(**prompt)[2]  # fills the caches
    for mlp in ours.mask_decoder.output_hypernetworks_mlps:
        mlp.layers[-1].weight.data.mul_(-2.0)
    ref.load_state_dict(ours.state_dict())
    ref_p = segment_anything.SamPredictor(ref)
    ref_p.set_image(image)
    _, ref_iou, ref_low = ref_p.predict(**prompt)
    assert np.abs(ref_low - before).max() > 1e-2  # the change matters
    for predictor in (SamPredictor(ours), first):
        predictor.set_image(image)
        _, our_iou, our_low = predictor.predict(**prompt)
        np.testing.assert_allclose(our_low, ref_low, atol=1e-4)
        np.testing.assert_allclose(our_iou, ref_iou, atol=1e-4)


# ---------------------------------------------------------------------------------------------------
# Audit round 2 (predictor2): batch_size as a numpy integer, "auto" with padding points and through
# predict_torch, predict_torch's mask_input shape


def test_set_images_accepts_a_numpy_integer_batch_size(tiny_sam, two_images):
    """``batch_size=np.int64(2)`` (e.g. from ``np.clip``) is an integer ≥ 1, as ``image_index`` accepts one:
    it was refused as "must be an integer ≥ 1, got np.int64(2)"."""
    p = SamPredictor(tiny_sam)
    p.set_images(list(two_images), batch_size=np.int64(2))
    expected = SamPredictor(tiny_sam)
    expected.set_images(list(two_images), batch_size=2)
    assert torch.equal(p.features, expected.features)
    with pytest.raises(ValueError, match="batch_size"):
        p.set_images(list(two_images), batch_size=np.int64(0))


def test_multimask_auto_counts_clicks_not_padding_points(predictor):
    """``"auto"`` gives 3 masks for a single click: a padding point (label -1, which SAM's ONNX examples append
    and ``predict_many`` uses to even out clicks) is no click. It counted points, so a click with its padding
    point got the single mask."""
    one = predictor.predict(np.array([[30, 40]]), np.array([1]), multimask_output="auto")
    padded = predictor.predict(np.array([[30, 40], [0, 0]]), np.array([1, -1]), multimask_output="auto")
    assert one[1].shape == padded[1].shape == (3,)
    explicit = predictor.predict(np.array([[30, 40], [0, 0]]), np.array([1, -1]), multimask_output=True)
    assert np.array_equal(padded[2], explicit[2])
    many = predictor.predict_many(np.array([[[30, 40], [0, 0]], [[90, 60], [80, 50]]]), np.array([[1, -1], [0, -1]]),
                                  multimask_output="auto")
    assert many[1].shape == (2, 3)
    mixed = predictor.predict_many(np.array([[[30, 40], [0, 0]], [[90, 60], [80, 50]]]), np.array([[1, -1], [1, 0]]),
                                   multimask_output="auto")
    assert mixed[1].shape == (2, 1)  # one prompt has two clicks: one decoder pass, the single-mask token
    corners = predictor.predict(np.array([[10, 10], [70, 60]]), np.array([2, 3]), multimask_output="auto")
    assert corners[1].shape == (1,)  # a box given as its corners is a box


def test_predict_torch_multimask_auto(predictor):
    """``predict_torch(multimask_output="auto")`` follows the rule of the numpy methods; it ran the string as
    a true value, 3 masks for any prompt (a box included), and any other string did the same."""
    box = torch.as_tensor(predictor.transform.apply_boxes(BOXES[:2], (H, W)), dtype=torch.float)
    click = torch.as_tensor(predictor.transform.apply_coords(POINTS[:2, :1], (H, W)), dtype=torch.float)
    assert predictor.predict_torch(None, None, box, multimask_output="auto")[1].shape == (2, 1)
    assert predictor.predict_torch(click, torch.ones(2, 1), multimask_output="auto")[1].shape == (2, 3)
    for bad in ("no", "False", None):
        with pytest.raises(TypeError, match="multimask_output"):
            predictor.predict_torch(None, None, box, multimask_output=bad)


def test_predict_torch_mask_input_needs_its_channel_axis(predictor):
    """A ``1×h×w`` mask_input (``low_res_logits[:, best]`` instead of ``[:, best:best + 1]``) ran through the
    mask convolutions as an unbatched image, its LayerNorms normalising over rows: a different mask, no error.
    It is a ValueError naming the expected ``B×1×h×w``."""
    _, _, low = predictor.predict_torch(None, None, torch.tensor([[10.0, 10.0, 90.0, 70.0]]))
    best = low[:, :1]
    predictor.predict_torch(None, None, mask_input=best)
    for bad in (best[:, 0], best[0, 0], low, torch.zeros(1, 1, 64, 64)):
        with pytest.raises(ValueError, match=r"mask_input must have shape B×1×32×32"):
            predictor.predict_torch(None, None, mask_input=bad)


def test_a_replaced_decoder_or_prompt_encoder_is_used_on_the_set_image(helpers, image):
    """``sam.mask_decoder = other`` (or the prompt encoder) between two predictions on one image: the
    predictor watched the tensors of the modules it first saw, so it kept the old decoder's image keys and
    the old positional encoding — a stale mask, no error. The reference recomputes them on every call."""
    import copy

    _, ours = helpers.make_pair()
    prompt = dict(point_coords=np.array([[60.0, 40.0]]), point_labels=np.array([1]), multimask_output=True)
    predictor = SamPredictor(ours)
    predictor.set_image(image)
    before = predictor.predict(**prompt)[2]  # fills the caches
    decoder, prompt_encoder = copy.deepcopy(ours.mask_decoder), copy.deepcopy(ours.prompt_encoder)
    with torch.no_grad():
        for p in itertools.chain(decoder.parameters(), prompt_encoder.parameters()):
            p.mul_(1.3)
    for name, part in (("mask_decoder", decoder), ("prompt_encoder", prompt_encoder)):
        setattr(ours, name, part)
        fresh = SamPredictor(ours)
        fresh.set_image(image)
        _, expected_iou, expected = fresh.predict(**prompt)
        _, got_iou, got = predictor.predict(**prompt)
        assert np.abs(expected - before).max() > 1e-2  # the change matters
        np.testing.assert_allclose(got, expected, atol=1e-5)
        np.testing.assert_allclose(got_iou, expected_iou, atol=1e-5)


def test_a_float32_encoder_under_a_bfloat16_decoder_sees_float32_pixels(tiny_sam, image):
    """The predictor cast the normalised pixels to the decoder's dtype before the encoder: with
    ``dtype=bfloat16, encoder_dtype=float32`` the float32 encoder saw bf16-rounded pixels."""
    import copy

    mixed = copy.deepcopy(tiny_sam).to(torch.bfloat16)
    mixed.image_encoder.to(torch.float32)
    predictor = SamPredictor(mixed)
    predictor.set_image(image)
    pixels = torch.as_tensor(predictor.transform.apply_image(image)).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        expected = mixed.image_encoder(mixed.preprocess(pixels)).to(torch.bfloat16)  # float32 all the way in
    torch.testing.assert_close(predictor.features, expected, atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------------
# Audit round 3 (degenerate inputs)


def test_predict_torch_with_no_prompt_is_a_value_error(predictor):
    """``predict_torch`` with ``B = 0`` prompts (a detector that found no box, as in Grounded-SAM pipelines)
    failed deep in the decoder's attention ("cannot reshape tensor of 0 elements"); it is a ValueError naming
    the argument, as ``predict_many`` gives for ``B = 0``."""
    with pytest.raises(ValueError, match=r"boxes must hold B ≥ 1 prompts, got shape \(0, 4\)"):
        predictor.predict_torch(None, None, torch.zeros(0, 4))
    with pytest.raises(ValueError, match="point_coords must hold B ≥ 1"):
        predictor.predict_torch(torch.zeros(0, 1, 2), torch.zeros(0, 1))
    with pytest.raises(ValueError, match="mask_input must hold B ≥ 1"):
        predictor.predict_torch(None, None, mask_input=torch.zeros(0, 1, 32, 32))
