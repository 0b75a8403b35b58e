"""Image/coordinate transforms: identical to the reference's, plus explicit image conversion."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything.utils.transforms import ResizeLongestSide as RefResize

from promptseg.transforms import (
    ResizeLongestSide,
    get_preprocess_shape,
    mask_to_logits,
    postprocess_masks,
    threshold_masks,
    to_rgb_uint8,
)

SIZES = [(100, 160), (160, 100), (128, 128), (1, 517), (333, 7), (1024, 768), (599, 450)]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("target", [128, 1024])
def test_preprocess_shape_matches_reference(size, target):
    assert get_preprocess_shape(*size, target) == RefResize.get_preprocess_shape(*size, target)
    assert max(get_preprocess_shape(*size, target)) == target
    # the reference's static method, called on the class and on an instance (``predictor.transform``)
    assert ResizeLongestSide.get_preprocess_shape(*size, target) == RefResize.get_preprocess_shape(*size, target)
    assert ResizeLongestSide(target).get_preprocess_shape(*size, target) == get_preprocess_shape(*size, target)


@pytest.mark.parametrize("size", [(100, 160), (160, 100), (37, 53), (128, 128)])
def test_apply_image_matches_reference(helpers, size):
    image = helpers.make_image(*size, seed=1)
    ours, ref = ResizeLongestSide(128).apply_image(image), RefResize(128).apply_image(image)
    assert ours.dtype == np.uint8 and ours.shape == ref.shape
    assert np.array_equal(ours, ref)


@pytest.mark.parametrize("size", [(100, 160), (160, 100), (37, 53)])
def test_coords_and_boxes_match_reference(size):
    rng = np.random.default_rng(0)
    coords = rng.uniform(0, 100, size=(3, 4, 2))
    boxes = rng.uniform(0, 100, size=(5, 4))
    ours, ref = ResizeLongestSide(1024), RefResize(1024)
    np.testing.assert_allclose(ours.apply_coords(coords, size), ref.apply_coords(coords, size), rtol=0, atol=1e-9)
    np.testing.assert_allclose(ours.apply_boxes(boxes, size), ref.apply_boxes(boxes, size), rtol=0, atol=1e-9)
    ct, bt = torch.from_numpy(coords).float(), torch.from_numpy(boxes).float()
    assert torch.allclose(ours.apply_coords_torch(ct, size), ref.apply_coords_torch(ct, size))
    assert torch.allclose(ours.apply_boxes_torch(bt, size), ref.apply_boxes_torch(bt, size))


def test_apply_coords_does_not_modify_its_input():
    coords = np.array([[10.0, 20.0]])
    ResizeLongestSide(1024).apply_coords(coords, (100, 200))
    assert coords.tolist() == [[10.0, 20.0]]
    t = torch.tensor([[10.0, 20.0]])
    ResizeLongestSide(1024).apply_coords_torch(t, (100, 200))
    assert t.tolist() == [[10.0, 20.0]]


def test_apply_image_torch_resizes_the_spatial_axes():
    """The reference computes the target size from ``shape[0], shape[1]`` (B, C) — promptseg uses H, W."""
    image = torch.rand(1, 3, 60, 90, generator=torch.Generator().manual_seed(0)) * 255
    out = ResizeLongestSide(128).apply_image_torch(image)
    assert out.shape == (1, 3, 85, 128)
    expected = torch.nn.functional.interpolate(image, (85, 128), mode="bilinear", align_corners=False, antialias=True)
    assert torch.allclose(out, expected)


@pytest.mark.parametrize("original", [(100, 160), (160, 100), (128, 128)])
def test_postprocess_masks_matches_reference(tiny_ref, original):
    low = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    input_size = get_preprocess_shape(*original, 128)
    with torch.no_grad():
        expected = tiny_ref.postprocess_masks(low, input_size, original)
    got = postprocess_masks(low, input_size, original, 128)
    assert got.shape == (2, 3) + original
    assert (got - expected).abs().max() <= 1e-6


# ---------------------------------------------------------------------------------------------------
# to_rgb_uint8


def test_rgb_uint8_is_returned_unchanged(helpers):
    image = helpers.make_image(5, 7)
    assert np.array_equal(to_rgb_uint8(image), image)


def test_grayscale_and_single_channel_are_replicated(helpers):
    gray = helpers.make_image(5, 7)[..., 0]
    expected = np.repeat(gray[..., None], 3, axis=2)
    assert np.array_equal(to_rgb_uint8(gray), expected)
    assert np.array_equal(to_rgb_uint8(gray[..., None]), expected)


def test_rgba_drops_alpha(helpers):
    rgba = helpers.make_image(5, 7, channels=4)
    out = to_rgb_uint8(rgba)
    assert out.shape == (5, 7, 3) and np.array_equal(out, rgba[..., :3]) and out.flags.c_contiguous


def test_uint16_float_and_bool_are_scaled(helpers):
    rgb = helpers.make_image(5, 7)
    assert np.array_equal(to_rgb_uint8(rgb.astype(np.uint16) * 257), rgb)
    for dtype in (np.float16, np.float32, np.float64):
        assert np.array_equal(to_rgb_uint8(rgb.astype(dtype) / dtype(255)), rgb), dtype
    mask = rgb[..., 0] > 128
    assert np.array_equal(to_rgb_uint8(mask), np.repeat(np.where(mask, 255, 0).astype(np.uint8)[..., None], 3, 2))
    assert to_rgb_uint8(np.full((2, 2), 65535, np.uint16)).max() == 255
    assert to_rgb_uint8(np.ones((2, 2), np.float32)).max() == 255


def test_big_endian_images_are_converted_like_native_ones(helpers):
    rgb = helpers.make_image(5, 7)
    assert np.array_equal(to_rgb_uint8((rgb.astype(np.uint16) * 257).astype(">u2")), rgb)
    assert np.array_equal(to_rgb_uint8((rgb / 255.0).astype(">f4")), rgb)
    with pytest.raises(TypeError, match="dtype"):
        to_rgb_uint8(rgb.astype(">i4"))


@pytest.mark.parametrize(
    "image, exc, match",
    [
        (np.zeros((0, 5, 3), np.uint8), ValueError, "empty"),
        (np.zeros((5, 0), np.uint8), ValueError, "empty"),
        (np.zeros((5, 5, 2), np.uint8), ValueError, "H×W"),
        (np.zeros((1, 5, 5, 3), np.uint8), ValueError, "H×W"),
        (np.zeros(5, np.uint8), ValueError, "H×W"),
        (np.full((3, 3, 3), 1.5, np.float32), ValueError, r"\[0, 1\]"),
        (np.full((3, 3, 3), -0.1, np.float64), ValueError, r"\[0, 1\]"),
        (np.full((3, 3, 3), np.nan, np.float32), ValueError, "NaN"),
        (np.full((3, 3, 3), np.inf, np.float32), ValueError, "NaN"),
        (np.zeros((3, 3, 3), np.int64), TypeError, "dtype"),
        (np.zeros((3, 3, 3), object), TypeError, "dtype"),
        ([[0, 1], [2, 3]], TypeError, "numpy"),
    ],
    ids=["0xN", "Nx0", "2ch", "4d", "1d", "float>1", "float<0", "nan", "inf", "int64", "object", "list"],
)
def test_bad_images(image, exc, match):
    with pytest.raises(exc, match=match) as info:
        to_rgb_uint8(image, name="photo")
    assert "photo" in str(info.value)


# ---------------------------------------------------------------------------------------------------
# mask_to_logits


def test_mask_to_logits_full_and_empty():
    full = mask_to_logits(np.ones((100, 160), bool), 128)
    assert full.shape == (1, 32, 32) and full.dtype == np.float32
    # 100×160 → 80×128 in the 128 frame → rows 0..19 of the 32×32 grid are inside the image
    assert np.allclose(full[0, :20], 10.0) and np.allclose(full[0, 20:], -10.0)
    assert np.allclose(mask_to_logits(np.zeros((100, 160), bool), 128), -10.0)


def test_mask_to_logits_left_half():
    mask = np.zeros((128, 128), bool)
    mask[:, :64] = True
    logits = mask_to_logits(mask, 128, logit=5.0)
    assert np.allclose(logits[0, :, :16], 5.0) and np.allclose(logits[0, :, 16:], -5.0)


@pytest.mark.parametrize("factor", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("shape", [(1, 3, 7, 9), (2, 1, 1, 5), (4, 6, 1)])
def test_upsample_bilinear_equals_interpolate(factor, shape):
    from promptseg.transforms import upsample_bilinear

    x = torch.randn(*shape)
    batched = x if x.ndim == 4 else x[None]
    expected = torch.nn.functional.interpolate(
        batched, (shape[-2] * factor, shape[-1] * factor), mode="bilinear", align_corners=False
    )
    got = upsample_bilinear(x, factor)
    assert got.shape == (*shape[:-2], shape[-2] * factor, shape[-1] * factor)
    assert (got - expected.reshape(got.shape)).abs().max() <= 1e-5


@pytest.mark.parametrize("size", [(16, 20), (24, 30), (8, 10), (16, 30), (11, 13)])
@pytest.mark.parametrize("grad", [False, True])
def test_resize_bilinear_equals_interpolate(size, grad):
    """Integer factors (×2, ×3, ×1) take the lerp path without autograd, the rest the general kernel."""
    from promptseg.transforms import resize_bilinear

    x = torch.randn(2, 3, 8, 10, requires_grad=grad)
    expected = torch.nn.functional.interpolate(x, size, mode="bilinear", align_corners=False)
    got = resize_bilinear(x, size)
    assert got.shape == expected.shape and (got - expected).abs().max() <= 1e-5
    if grad:
        g = torch.randn(expected.shape)
        (a,) = torch.autograd.grad(expected, x, g)
        (b,) = torch.autograd.grad(resize_bilinear(x, size), x, g)
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("factor", [0, -2, 2.0])
def test_upsample_bilinear_rejects_bad_factor(factor):
    from promptseg.transforms import upsample_bilinear

    with pytest.raises(ValueError, match="factor"):
        upsample_bilinear(torch.zeros(1, 1, 2, 2), factor)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_threshold_masks_equals_the_comparison(dtype):
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 3, 40, 50, generator=gen) * 3).to(dtype)
    logits[0, 0, 0, :4] = torch.tensor([0.0, -0.0, 0.5, float("nan")], dtype=dtype)
    view = logits[..., 1:, ::2]  # a non-contiguous crop, as postprocess_masks returns
    for x in (logits, view):
        for t in (0.0, 0.5, -1.0, 0.1):
            out = threshold_masks(x, t)
            assert out.dtype == torch.bool and out.shape == x.shape
            assert torch.equal(out, x > t)
    assert threshold_masks(logits)[0, 0, 0, :4].tolist() == [False, False, True, False]


def test_threshold_masks_keeps_autograd_inputs_on_the_torch_path():
    x = torch.randn(4, 5, requires_grad=True)
    assert torch.equal(threshold_masks(x, 0.1), x.detach() > 0.1)


@pytest.mark.parametrize("size", [(768, 1024), (1024, 683), (128, 128), (1, 128), (128, 3), (125, 97), (97, 125)])
@pytest.mark.parametrize("lead", [(1, 3), (2, 1), (3,)])
def test_postprocess_to_binary_equals_threshold_of_postprocess(size, lead):
    """The compare-as-you-upsample shortcut (long side = img_size) gives the same masks, bit for bit."""
    from promptseg.transforms import postprocess_to_binary

    img_size = max(size[0], size[1]) if max(size) in (128, 1024) else 128
    gen = torch.Generator().manual_seed(sum(size))
    low = torch.randn(*lead, img_size // 4, img_size // 4, generator=gen) * 3
    low.view(-1)[5] = float("nan")
    low.view(-1)[7] = 0.0
    original = size if max(size) == img_size else (img_size * size[0] // max(size), img_size * size[1] // max(size))
    for threshold in (0.0, 0.7, -1.5):
        expected = threshold_masks(postprocess_masks(low, original, original, img_size), threshold)
        got = postprocess_to_binary(low, original, original, img_size, threshold)
        assert got.dtype == torch.bool and got.is_contiguous() and got.shape == (*lead, *original)
        assert torch.equal(got, expected)


@pytest.mark.parametrize("input_size,original", [((96, 128), (300, 400)), ((128, 85), (60, 40))])
def test_postprocess_to_binary_with_a_final_resize(input_size, original):
    from promptseg.transforms import postprocess_to_binary

    low = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    expected = threshold_masks(postprocess_masks(low, input_size, original, 128))
    assert torch.equal(postprocess_to_binary(low, input_size, original, 128), expected)


def test_postprocess_to_binary_keeps_autograd_inputs_on_the_torch_path():
    from promptseg.transforms import postprocess_to_binary

    low = torch.randn(1, 1, 32, 32, requires_grad=True)
    got = postprocess_to_binary(low, (128, 96), (128, 96), 128)
    assert torch.equal(got, postprocess_masks(low.detach(), (128, 96), (128, 96), 128) > 0)


def test_upsample_bilinear_is_differentiable():
    """With an autograd graph it takes no ``out=`` buffers; its gradient is that of ``F.interpolate``."""
    from promptseg.transforms import upsample_bilinear

    x = torch.randn(1, 2, 5, 6, requires_grad=True)
    y = x.detach().clone().requires_grad_()
    weights = torch.randn(1, 2, 20, 24)
    (upsample_bilinear(x, 4) * weights).sum().backward()
    (torch.nn.functional.interpolate(y, scale_factor=4, mode="bilinear", align_corners=False) * weights).sum().backward()
    assert torch.allclose(x.grad, y.grad, atol=1e-5)
