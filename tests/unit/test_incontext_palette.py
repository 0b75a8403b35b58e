"""promptseg.incontext.palette: label maps ↔ colour-coded SegGPT masks."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from promptseg.incontext import palette as pal


def _labels(h=20, w=30, k=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, k + 1, size=(h, w))


# --------------------------------------------------------------------------------------------- palettes
def test_default_palette_is_fixed_well_separated_and_prefix_stable():
    p = pal.default_palette(12)
    assert p.shape == (12, 3) and p.dtype == np.uint8
    assert tuple(p[0]) == (255, 255, 255)  # one object: white on black, the official convention
    np.testing.assert_array_equal(pal.default_palette(5), p[:5])
    table = np.vstack([[0, 0, 0], p]).astype(float)
    d = np.linalg.norm(table[:, None] - table[None], axis=-1)
    d[np.diag_indices_from(d)] = np.inf
    assert d.min() >= 140  # the first colours are far from each other and from black
    assert len(pal.default_palette(pal.MAX_LABELS)) == pal.MAX_LABELS
    assert pal.default_palette(0).shape == (0, 3)


def test_random_palette_is_seeded_distinct_and_not_black():
    a, b = pal.random_palette(8, seed=3), pal.random_palette(8, seed=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, pal.random_palette(8, seed=4))
    table = np.vstack([[0, 0, 0], a]).astype(float)
    d = np.linalg.norm(table[:, None] - table[None], axis=-1)
    d[np.diag_indices_from(d)] = np.inf
    assert d.min() >= pal.RANDOM_MIN_DISTANCE
    assert len(pal.random_palette(300, seed=np.random.default_rng(0))) == 300  # crowded: relaxes, still distinct
    assert len(np.unique(pal.random_palette(300, seed=0), axis=0)) == 300


def test_palette_count_errors():
    with pytest.raises(ValueError, match="more than the fixed palette"):
        pal.default_palette(pal.MAX_LABELS + 1)
    with pytest.raises(ValueError, match="num_labels"):
        pal.default_palette(-1)
    with pytest.raises(TypeError, match="num_labels"):
        pal.random_palette(2.5)


# --------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("k", [1, 3, 10, 40])
def test_encode_decode_round_trip_fixed_palette(k):
    labels = _labels(k=k, seed=k)
    labels[0, 0] = k  # the largest label is present
    rgb = pal.encode_labels(labels)
    assert rgb.shape == labels.shape + (3,) and rgb.dtype == np.uint8
    assert (rgb[labels == 0] == 0).all()
    np.testing.assert_array_equal(pal.decode_colors(rgb, pal.default_palette(k)), labels)


def test_round_trip_random_palette_and_noisy_colours():
    labels = _labels(k=5, seed=1)
    colors = pal.random_palette(5, seed=7)
    rgb = pal.encode_labels(labels, colors)
    noisy = np.clip(rgb.astype(float) + np.random.default_rng(0).normal(0, 8, rgb.shape), 0, 255)
    np.testing.assert_array_equal(pal.decode_colors(noisy, colors), labels)


def test_decode_threshold_sends_unexplained_colours_to_background():
    colors = np.array([[255, 0, 0], [0, 0, 255]], np.uint8)
    rgb = np.array([[[250, 5, 0], [128, 128, 128], [0, 0, 0], [10, 0, 240]]], np.uint8)
    np.testing.assert_array_equal(pal.decode_colors(rgb, colors), [[1, 1, 0, 2]])  # grey: nearest is red
    np.testing.assert_array_equal(pal.decode_colors(rgb, colors, max_distance=40), [[1, 0, 0, 2]])
    dist = pal.color_distances(rgb, colors)
    assert dist.shape == (3, 1, 4)
    assert dist[0, 0, 2] == 0 and abs(dist[1, 0, 0] - np.hypot(5, 5)) < 1e-3
    with pytest.raises(ValueError, match="max_distance"):
        pal.decode_colors(rgb, colors, max_distance=-1)


def test_bool_and_float_label_maps():
    m = np.zeros((4, 5), bool)
    m[1:3, 1:4] = True
    rgb = pal.encode_labels(m)
    assert (rgb[m] == 255).all() and (rgb[~m] == 0).all()
    np.testing.assert_array_equal(pal.encode_labels(m.astype(np.float32)), rgb)


# --------------------------------------------------------------------------------------------- errors
def test_encode_errors_name_the_argument():
    with pytest.raises(ValueError, match="labels has labels up to 3 but the palette has only 2 colours"):
        pal.encode_labels(np.array([[0, 3]]), pal.default_palette(2))
    with pytest.raises(ValueError, match="ex_mask is empty"):
        pal.encode_labels(np.zeros((3, 3), int), name="ex_mask")
    assert pal.encode_labels(np.zeros((3, 3), int), allow_empty=True).sum() == 0
    with pytest.raises(ValueError, match="2-D"):
        pal.encode_labels(np.zeros((3, 3, 2), int))
    with pytest.raises(ValueError, match="negative"):
        pal.encode_labels(np.array([[-1, 1]]))
    with pytest.raises(ValueError, match="whole-number"):
        pal.encode_labels(np.array([[0.5, 1.0]]))
    with pytest.raises(ValueError, match="up to 125 but the palette"):
        pal.encode_labels(np.array([[0, 125]]))


def test_palette_validation():
    with pytest.raises(ValueError, match="black"):
        pal.as_palette([[0, 0, 0], [1, 2, 3]])
    with pytest.raises(ValueError, match="duplicate"):
        pal.as_palette([[1, 2, 3], [1, 2, 3]])
    with pytest.raises(ValueError, match="K×3"):
        pal.as_palette([1, 2, 3])
    with pytest.raises(ValueError, match="0–255"):
        pal.as_palette([[300, 0, 0]])
    with pytest.raises(ValueError, match="H×W×3"):
        pal.decode_colors(np.zeros((4, 4)), pal.default_palette(1))


# --------------------------------------------------------------------------------------------- user masks & files
def test_as_label_map_kinds():
    labels, colors = pal.as_label_map(np.array([[0, 255], [255, 0]], np.uint8))  # 0/255 binary
    np.testing.assert_array_equal(labels, [[0, 1], [1, 0]]) and colors is None
    labels, _ = pal.as_label_map(np.full((2, 2), 255, np.uint8))  # all foreground
    np.testing.assert_array_equal(labels, np.ones((2, 2)))
    labels, _ = pal.as_label_map(np.array([[0.1, 0.9]]))  # soft mask → threshold 0.5
    np.testing.assert_array_equal(labels, [[0, 1]])
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 1] = (0, 200, 0)
    rgb[1, 2] = (200, 0, 0)
    labels, colors = pal.as_label_map(rgb)  # colour mask: sorted RGB order → green is 1, red is 2
    np.testing.assert_array_equal(labels, [[0, 1, 0], [0, 0, 2]])
    np.testing.assert_array_equal(colors, [[0, 200, 0], [200, 0, 0]])
    grey = np.repeat(np.array([[0, 2], [1, 0]], np.uint8)[..., None], 3, axis=2)  # grey RGB is a label map
    labels, colors = pal.as_label_map(grey)
    np.testing.assert_array_equal(labels, [[0, 2], [1, 0]]) and colors is None
    with pytest.raises(ValueError, match="not a colour-coded mask"):
        pal.as_label_map(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8), "photo")
    with pytest.raises(ValueError, match="outside"):
        pal.as_label_map(np.array([[0.5, 1.5]]))


def test_label_png_round_trip_and_formats(tmp_path):
    labels = _labels(k=6, seed=2)
    path = pal.save_label_png(labels, tmp_path / "sub" / "l.png")
    np.testing.assert_array_equal(pal.read_label_png(path), labels)
    big = labels * 100  # > 255 → 16-bit
    np.testing.assert_array_equal(pal.read_label_png(pal.save_label_png(big, tmp_path / "b.png")), big)
    # a DAVIS-style palette PNG gives its indices
    im = Image.fromarray(labels.astype(np.uint8), mode="P")
    im.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [7] * (256 * 3 - 9))
    im.save(tmp_path / "davis.png")
    np.testing.assert_array_equal(pal.read_label_png(tmp_path / "davis.png"), labels)
    Image.fromarray(((labels > 0) * 255).astype(np.uint8)).save(tmp_path / "bin.png")
    np.testing.assert_array_equal(pal.read_label_png(tmp_path / "bin.png"), labels > 0)
    with pytest.raises(FileNotFoundError, match="mask file not found"):
        pal.read_label_png(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read mask"):
        pal.read_label_png(tmp_path / "bad.png")
    assert not list(tmp_path.glob(".*.tmp")) and not list((tmp_path / "sub").glob(".*.tmp"))


def test_a_float_label_map_beyond_int64_is_named_not_wrapped():
    """A float label map with a whole number ≥ 2**63 (1e30) wrapped to a negative int64 in the cast, with a
    NumPy "invalid value encountered in cast" RuntimeWarning and a misleading "negative labels" error."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"mask has labels up to 1e\+30"):
            pal.as_label_map(np.array([[0.0, 1e30]]))
    labels, _ = pal.as_label_map(np.array([[0.0, 3.0]]))
    np.testing.assert_array_equal(labels, [[0, 3]])


def test_fully_transparent_pixels_of_an_rgba_or_la_mask_are_background(tmp_path):
    """A mask saved with a transparent background whose hidden colour is not black (transparent white is
    common) must not turn the whole background into a label."""
    rgba = np.zeros((6, 8, 4), np.uint8)
    rgba[...] = (255, 255, 255, 0)  # transparent white background
    rgba[1:3, 1:4] = (255, 0, 0, 255)
    rgba[4:6, 5:8] = (0, 0, 255, 255)
    labels, colors = pal.as_label_map(rgba)
    np.testing.assert_array_equal(colors, [[0, 0, 255], [255, 0, 0]])
    assert (labels > 0).sum() == 6 + 6 and labels[0, 0] == 0
    labels2, colors2 = pal.colors_to_labels(rgba)
    np.testing.assert_array_equal(labels2, labels)
    np.testing.assert_array_equal(colors2, colors)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(pal.read_label_png(tmp_path / "rgba.png"), labels)
    assert pal.read_mask_array(tmp_path / "rgba.png").shape == (6, 8, 3)
    la = np.zeros((6, 8, 2), np.uint8)
    la[..., 0] = 255  # transparent white background
    la[1:3, 1:4] = (255, 255)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(pal.read_label_png(tmp_path / "la.png"), np.pad(np.ones((2, 3), int), ((1, 3), (1, 4))))
