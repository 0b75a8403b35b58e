"""Large-scale jitter, flips and mask filtering."""

from __future__ import annotations

import numpy as np
import pytest

from promptseg.data import make_item, validate_item
from promptseg.data.augment import Compose, FilterMasks, LargeScaleJitter, RandomHorizontalFlip, filter_masks


def labelled_item(h=60, w=90):
    """An image whose colour channel k is 255 exactly on mask k (mask 1 is a part of mask 0)."""
    masks = np.zeros((3, h, w), bool)
    masks[0, 5:40, 10:50] = True
    masks[1, 20:30, 20:30] = True  # inside mask 0
    masks[2, 45:58, 60:88] = True
    image = np.moveaxis(masks, 0, -1).astype(np.uint8) * 255
    return make_item(image, masks, "x", ["a", "b", "c"], [-1, 0, -1])


@pytest.mark.parametrize("seed", range(6))
def test_lsj_shapes_and_consistency(seed):
    item = labelled_item()
    out = LargeScaleJitter(output_size=64, scale=(0.3, 2.0), rng=seed)(item)
    validate_item(out)
    assert out["image"].shape == (64, 64, 3) and out["masks"].shape[1:] == (64, 64)
    vh, vw = out["valid_size"]
    assert not out["image"][vh:].any() and not out["image"][:, vw:].any()  # padding bottom/right only
    assert not out["masks"][:, vh:].any() and not out["masks"][:, :, vw:].any()
    assert out["names"], "the crop keeps something"
    for k, name in enumerate(out["names"]):
        channel = "abc".index(name)
        assert out["masks"][k].any()
        # masks go through exactly the image's geometry and resampling
        np.testing.assert_array_equal(out["masks"][k], out["image"][..., channel] >= 128)
    if "b" in out["names"] and "a" in out["names"]:
        assert out["parents"][out["names"].index("b")] == out["names"].index("a")


def test_lsj_scale_range_and_determinism():
    item = labelled_item(100, 50)
    lsj = LargeScaleJitter(output_size=80, scale=(0.1, 2.0), rng=0)
    sizes = set()
    for i in range(30):
        out = lsj(item, rng=np.random.default_rng(i))
        again = lsj(item, rng=np.random.default_rng(i))
        np.testing.assert_array_equal(out["image"], again["image"])
        np.testing.assert_array_equal(out["masks"], again["masks"])
        sizes.add(out["valid_size"])
        assert max(out["valid_size"]) <= 80
    assert min(max(s) for s in sizes) < 30 and max(max(s) for s in sizes) == 80  # shrinks and crops


def test_lsj_drops_empty_masks_and_remaps_parents():
    item = labelled_item()
    # upscale 2x then crop: most crops lose one of the masks
    lsj = LargeScaleJitter(output_size=40, scale=(2.0, 2.0))
    seen_drop = False
    for seed in range(20):
        out = lsj(item, rng=seed)
        validate_item(out)
        assert all(m.any() for m in out["masks"])
        if len(out["masks"]) < 3:
            seen_drop = True
        if "b" in out["names"]:
            p = out["parents"][out["names"].index("b")]
            assert p == (out["names"].index("a") if "a" in out["names"] else -1)
    assert seen_drop


def test_filter_masks_drops_large_and_tiny():
    h, w = 20, 20
    masks = np.zeros((4, h, w), bool)
    masks[0] = True  # 100 %
    masks[1, :19, :19] = True  # 90.25 % > 90 %
    masks[2, :18, :20] = True  # exactly 90 %: kept
    masks[3, 0, :3] = True  # 3 pixels: tiny
    item = make_item(np.zeros((h, w, 3), np.uint8), masks, "x", ["all", "most", "ninety", "tiny"], [-1, 0, 1, 2])
    out = filter_masks(item, max_area_frac=0.9, min_area=4)
    assert out["names"] == ["ninety"] and out["parents"] == [-1]
    assert filter_masks(item, min_area=1)["names"] == ["ninety", "tiny"]
    assert FilterMasks(1.0, 0)(item)["names"] == ["all", "most", "ninety", "tiny"]


def test_flip_and_compose():
    item = labelled_item()
    flipped = RandomHorizontalFlip(p=1.0)(item)
    np.testing.assert_array_equal(flipped["image"], item["image"][:, ::-1])
    np.testing.assert_array_equal(flipped["masks"], item["masks"][:, :, ::-1])
    same = RandomHorizontalFlip(p=0.0)(item)
    np.testing.assert_array_equal(same["image"], item["image"])
    pipeline = Compose([LargeScaleJitter(32, rng=1), RandomHorizontalFlip(rng=2), FilterMasks()])
    a = pipeline(item, rng=5)
    b = pipeline(item, rng=5)
    np.testing.assert_array_equal(a["masks"], b["masks"])
    pipeline.reseed(3)
    validate_item(pipeline(item))


def test_flip_of_a_padded_item_keeps_the_padding_bottom_right():
    item = labelled_item()
    padded = LargeScaleJitter(output_size=128, scale=(0.5, 0.5), rng=0)(item)
    vh, vw = padded["valid_size"]
    assert vw < 128
    out = RandomHorizontalFlip(p=1.0)(padded)
    assert out["valid_size"] == (vh, vw) and not out["image"][:, vw:].any() and not out["masks"][:, :, vw:].any()
    np.testing.assert_array_equal(out["image"][:vh, :vw], padded["image"][:vh, :vw][:, ::-1])
    np.testing.assert_array_equal(out["masks"][:, :vh, :vw], padded["masks"][:, :vh, :vw][:, :, ::-1])


def test_compose_reseed_with_a_numpy_integer_is_deterministic():
    item = labelled_item()

    def run(seed):
        pipeline = Compose([LargeScaleJitter(48), RandomHorizontalFlip()])
        pipeline.reseed(seed)
        return pipeline(item)["image"]

    # numpy integers (e.g. base_seed + worker_id from a numpy array) used to reseed from OS entropy
    np.testing.assert_array_equal(run(np.int64(7)), run(np.int64(7)))
    np.testing.assert_array_equal(run(np.int64(7)), run(7))


@pytest.mark.parametrize("seed", [[7, 1], (7, 1), "seed sequence"])
def test_compose_reseed_with_a_seed_sequence_or_a_list_is_deterministic(seed):
    """``[base_seed, worker_id]`` and SeedSequences (as numpy.random.default_rng takes) reseeded from OS entropy."""
    item = labelled_item()

    def run():
        pipeline = Compose([LargeScaleJitter(48), RandomHorizontalFlip()])
        pipeline.reseed(np.random.SeedSequence([7, 1]) if seed == "seed sequence" else seed)
        return pipeline(item)["image"], pipeline.transforms[1].rng.random()

    (a, flip_a), (b, flip_b) = run(), run()
    np.testing.assert_array_equal(a, b)
    assert flip_a == flip_b
    with pytest.raises(TypeError, match="1.5"):
        Compose([LargeScaleJitter(48)]).reseed(1.5)


@pytest.mark.parametrize("make", [lambda: RandomHorizontalFlip(p=float("nan")), lambda: RandomHorizontalFlip(p=1.5),
                                  lambda: RandomHorizontalFlip(p=-0.1),
                                  lambda: LargeScaleJitter(64, scale=(0.1, float("inf")))])
def test_out_of_range_probability_and_scale_are_named_errors(make):
    with pytest.raises(ValueError, match="p must be a probability|scale must be"):
        make()


@pytest.mark.parametrize("pad_value", [256, -1, float("nan"), (0, 0, 300), (1, 2)])
def test_lsj_pad_value_outside_uint8_is_a_named_error(pad_value):
    """A ``pad_value`` outside [0, 255] was accepted, then every call (in the loader's workers) failed with
    NumPy's ``OverflowError: Python integer 256 out of bounds for uint8``."""
    with pytest.raises(ValueError, match="pad_value must be in"):
        LargeScaleJitter(64, pad_value=pad_value)


def test_lsj_pads_with_a_grey_or_an_rgb_pad_value():
    item = labelled_item(10, 20)
    for pad in (114, (1, 2, 3)):
        out = LargeScaleJitter(64, scale=(0.5, 0.5), pad_value=pad, rng=0)(item)
        np.testing.assert_array_equal(out["image"][-1, -1], np.broadcast_to(pad, 3))
