"""promptseg.io: images in, masks/overlays/RLE/JSON out."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from PIL import Image

from promptseg import io


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------------------------- RLE
@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (64, 48), (33, 100)])
def test_rle_round_trip(shape):
    rng = np.random.default_rng(sum(shape))
    for mask in (rng.random(shape) > 0.6, np.zeros(shape, bool), np.ones(shape, bool)):
        rle = io.mask_to_rle(mask)
        assert rle["size"] == list(shape)
        assert isinstance(rle["counts"], str)
        decoded = io.rle_to_mask(json.loads(json.dumps(rle)))  # survives JSON
        assert decoded.dtype == np.bool_ and decoded.shape == shape
        np.testing.assert_array_equal(decoded, mask)
        # bytes counts, as pycocotools returns them, are accepted too
        np.testing.assert_array_equal(io.rle_to_mask({"size": rle["size"], "counts": rle["counts"].encode()}), mask)


def test_rle_uncompressed_counts_and_bad_input():
    # column-major runs: 2 zeros, 3 ones, 1 zero over a 3×2 mask
    mask = io.rle_to_mask({"size": [3, 2], "counts": [2, 3, 1]})
    np.testing.assert_array_equal(mask, np.array([[0, 1], [0, 1], [1, 0]], bool))
    with pytest.raises(ValueError, match="sum to"):
        io.rle_to_mask({"size": [3, 2], "counts": [2, 3]})
    with pytest.raises(ValueError, match="'size'"):
        io.rle_to_mask({"counts": "abc"})


@pytest.mark.parametrize(
    "module, call, expected",
    [
        ("cv2", lambda: __import__("promptseg.amg.outputs", fromlist=["x"]).mask_to_polygons(np.ones((4, 4), bool)),
         r"^polygons and GeoJSON needs OpenCV, which is not installed: pip install promptseg\[cv\]$"),
        ("cv2", lambda: __import__("promptseg.amg.helpers", fromlist=["x"]).remove_small_regions(np.ones((4, 4), bool), 2, "holes"),
         r"^min_mask_region_area > 0 needs OpenCV, .*promptseg\[cv\]$"),
        ("pycocotools.mask", lambda: __import__("promptseg.amg.helpers", fromlist=["x"]).coco_encode_mask(np.ones((2, 2), bool)),
         r"^output_mode 'coco_rle' needs pycocotools, .*promptseg\[coco\]$"),
        ("ray.data", lambda: __import__("promptseg.amg.batch", fromlist=["x"])._import_ray(),
         r"^the ray engine needs Ray Data, .*promptseg\[ray\]$"),
        ("matplotlib.figure", lambda: __import__("promptseg.data.stats", fromlist=["x"])._matplotlib(),
         r"^drawing dataset figures needs matplotlib, .*promptseg\[train\]$"),
        ("segment_anything.modeling", lambda: __import__("promptseg.models.sam.reference", fromlist=["x"])
         ._segment_anything_modeling(), r"^the reference SAM needs segment-anything, .*promptseg\[dev\]$"),
        # these imported cv2 bare: a ModuleNotFoundError traceback from the CLI, no extra named
        ("cv2", lambda: __import__("promptseg.data.synth", fromlist=["x"]).generate_scene(
            0, 0, __import__("promptseg.data.synth", fromlist=["x"]).SynthConfig(size=32, emoji=False, use_photos=False)),
         r"^scene generation needs OpenCV, .*promptseg\[cv\]$"),
        ("cv2", lambda: __import__("promptseg.data.stats", fromlist=["x"]).concavity(np.ones((4, 4), bool)),
         r"^concavity needs OpenCV, .*promptseg\[cv\]$"),
        ("cv2", lambda: __import__("promptseg.eval.protocols", fromlist=["x"]).center_point(np.ones((4, 4), bool)),
         r"^click placement needs OpenCV, .*promptseg\[cv\]$"),
        ("cv2", lambda: __import__("promptseg.eval.grabcut", fromlist=["x"]).grabcut_from_box(
            np.zeros((8, 8, 3), np.uint8), np.array([1, 1, 6, 6])), r"^the GrabCut baseline needs OpenCV, .*promptseg\[cv\]$"),
    ],
)
def test_missing_optional_dependencies_name_the_feature_and_the_extra(monkeypatch, module, call, expected):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(io.MissingDependencyError, match=expected):
        call()


@pytest.mark.parametrize("body, cause", [
    ("raise ImportError('libGL.so.1: cannot open shared object file: No such file or directory')", "libGL.so.1"),
    ("import promptseg_no_such_module_of_its_own", "No module named 'promptseg_no_such_module_of_its_own'"),
])
def test_an_installed_dependency_that_fails_to_import_is_not_called_missing(tmp_path, monkeypatch, body, cause):
    """opencv-python (not -headless) on a server without libGL raises ImportError at import: the message said
    "which is not installed" and the CLI, which prints the message only, hid the real cause."""
    (tmp_path / "promptseg_broken_dep").mkdir()
    (tmp_path / "promptseg_broken_dep" / "__init__.py").write_text(body + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(io.MissingDependencyError, match=r"^polygons needs OpenCV, which fails to import \(.*") as info:
        io.optional_import("promptseg_broken_dep", "polygons", "OpenCV", "cv")
    assert cause in str(info.value) and "not installed" not in str(info.value)
    monkeypatch.setitem(sys.modules, "promptseg_broken_dep", None)
    with pytest.raises(io.MissingDependencyError, match=r"^polygons needs OpenCV, which is not installed: pip"):
        io.optional_import("promptseg_broken_dep.sub", "polygons", "OpenCV", "cv")


def test_rle_without_pycocotools_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    monkeypatch.setitem(sys.modules, "pycocotools.mask", None)
    with pytest.raises(io.MissingDependencyError, match=r"pip install promptseg\[coco\]"):
        io.mask_to_rle(np.ones((2, 2), bool))


def test_mask_bbox_is_xywh_from_top_left():
    mask = np.zeros((10, 20), bool)
    mask[2:5, 3:11] = True
    assert io.mask_bbox(mask) == [3, 2, 8, 3]
    assert io.mask_bbox(np.zeros((4, 4), bool)) == [0, 0, 0, 0]


# --------------------------------------------------------------------------------------------- masks & overlays
def test_mask_png_round_trip(tmp_path):
    mask = np.random.default_rng(0).random((30, 40)) > 0.5
    path = io.save_mask_png(mask, tmp_path / "sub" / "m.png")
    with Image.open(path) as im:
        assert im.mode == "L" and im.size == (40, 30)
        assert set(np.unique(np.asarray(im)).tolist()) <= {0, 255}
    np.testing.assert_array_equal(io.read_mask_png(path), mask)
    assert _files(tmp_path / "sub") == ["m.png"]
    with pytest.raises(ValueError, match="2-D"):
        io.save_mask_png(np.zeros((2, 3, 4), bool), tmp_path / "bad.png")


def test_overlay_shape_dtype_and_content(tmp_path):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    masks = np.zeros((2, 120, 160), bool)
    masks[0, 10:60, 10:70] = True
    masks[1, 70:110, 90:150] = True
    overlay = io.render_overlay(
        image, masks, points=[[20, 20], [150, 10]], labels=[1, 0], boxes=[[5, 5, 75, 65], [85, 65, 155, 115]],
        scores=[0.9, 0.5],
    )
    assert overlay.shape == (120, 160, 3) and overlay.dtype == np.uint8
    assert not np.array_equal(overlay[30:50, 30:50], image[30:50, 30:50])  # tinted inside the mask
    np.testing.assert_array_equal(overlay[62:68, 0:4], image[62:68, 0:4])  # untouched far from everything
    # markers: green for the positive click, red for the negative one
    g = overlay[17:24, 17:24].reshape(-1, 3).astype(int)
    assert ((g[:, 1] > 150) & (g[:, 0] < 120)).any()
    r = overlay[7:14, 147:154].reshape(-1, 3).astype(int)
    assert ((r[:, 0] > 180) & (r[:, 1] < 100)).any()

    saved = io.save_overlay_png(image, masks[0], tmp_path / "o.png", boxes=[5, 5, 75, 65], scores=[0.9])
    assert saved.shape == (120, 160, 3) and saved.dtype == np.uint8
    with Image.open(tmp_path / "o.png") as im:
        assert im.format == "PNG" and im.mode == "RGB" and im.size == (160, 120)
        np.testing.assert_array_equal(np.asarray(im), saved)


def test_overlay_accepts_grayscale_and_no_masks():
    gray = np.full((20, 30), 128, np.uint8)
    out = io.render_overlay(gray)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, 128)


def test_overlay_rejects_mismatched_inputs():
    image = np.zeros((20, 30, 3), np.uint8)
    with pytest.raises(ValueError, match="image's size"):
        io.render_overlay(image, np.zeros((1, 20, 31), bool))
    with pytest.raises(ValueError, match="one value per mask"):
        io.render_overlay(image, np.zeros((2, 20, 30), bool), scores=[0.5])
    with pytest.raises(ValueError, match="one value per point"):
        io.render_overlay(image, points=[[1, 1], [2, 2]], labels=[1])


# --------------------------------------------------------------------------------------------- read_image
def test_read_image_rgb_jpeg_and_exif_orientation(tmp_path):
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[:, :30] = (250, 10, 10)
    im = Image.fromarray(rgb)
    im.save(tmp_path / "plain.png")
    np.testing.assert_array_equal(io.read_image(tmp_path / "plain.png"), rgb)

    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    im.save(tmp_path / "rotated.jpg", quality=95, exif=exif)
    out = io.read_image(tmp_path / "rotated.jpg")
    assert out.shape == (60, 40, 3) and out.dtype == np.uint8
    assert out[:30, :, 0].mean() > 200 and out[30:, :, 0].mean() < 50  # red half moved to the top


@pytest.mark.parametrize("mode", ["L", "I;16", "P", "RGB"])
def test_read_image_applies_a_tiff_orientation_to_every_mode(tmp_path, mode):
    """An uncompressed grey/palette TIFF rotated by its Orientation tag: Pillow (≥ 12, which rotates TIFFs
    itself) memory-maps such a file opened by name with the rotated size and scrambled its pixels."""
    values = np.arange(6 * 8, dtype=np.uint8).reshape(6, 8) * 5
    arrays = {"L": values, "I;16": values.astype(np.uint16) * 257, "P": values, "RGB": np.dstack([values] * 3)}
    im = Image.fromarray(arrays[mode])
    im = im.convert("P") if mode == "P" else im
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    im.save(tmp_path / "rotated.tif", exif=exif)
    shown = np.asarray(im.convert("RGB")) if mode == "P" else np.dstack([values] * 3)  # 16-bit: × 255/65535
    expected = np.rot90(shown, -1)
    np.testing.assert_array_equal(io.read_image(tmp_path / "rotated.tif"), expected)
    np.testing.assert_array_equal(io.decode_image((tmp_path / "rotated.tif").read_bytes()), expected)


def test_read_image_grayscale_rgba_palette_and_16bit(tmp_path):
    gray = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    out = io.read_image(tmp_path / "gray.png")
    assert out.shape == (12, 10, 3) and out.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)

    rgba = np.random.default_rng(2).integers(0, 256, (12, 10, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(io.read_image(tmp_path / "rgba.png"), rgba[..., :3])

    Image.fromarray(np.stack([gray, gray], -1), "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(io.read_image(tmp_path / "la.png")[..., 1], gray)

    Image.fromarray(rgba[..., :3]).convert("P").save(tmp_path / "palette.png")
    assert io.read_image(tmp_path / "palette.png").shape == (12, 10, 3)

    deep = (np.arange(12 * 10).reshape(12, 10) * 500).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    out = io.read_image(tmp_path / "deep.png")
    assert out.shape == (12, 10, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], np.round(deep / 65535.0 * 255).astype(np.uint8))


def test_read_image_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        io.read_image(missing)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match="junk.png"):
        io.read_image(junk)
    truncated = tmp_path / "truncated.png"
    Image.fromarray(np.zeros((50, 50, 3), np.uint8) + 7).save(tmp_path / "full.png")
    truncated.write_bytes((tmp_path / "full.png").read_bytes()[:60])
    with pytest.raises(ValueError, match="truncated.png"):
        io.read_image(truncated)
    with pytest.raises(IsADirectoryError, match="directory"):
        io.read_image(tmp_path)


def test_read_image_over_the_pixel_limit_is_a_value_error_naming_the_file(tmp_path, monkeypatch):
    """Pillow's DecompressionBombError (more than twice ``MAX_IMAGE_PIXELS``) is no OSError/ValueError."""
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    with pytest.raises(ValueError, match="cannot read image .*big.png: Image size .*MAX_IMAGE_PIXELS"):
        io.read_image(tmp_path / "big.png")
    with pytest.raises(ValueError, match="cannot read image upload: Image size"):
        io.decode_image((tmp_path / "big.png").read_bytes(), name="upload")


# --------------------------------------------------------------------------------------------- atomic writes
def test_failed_png_write_leaves_no_temp_file_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "mask.png"
    io.save_mask_png(np.ones((4, 4), bool), path)
    before = path.read_bytes()

    def broken_save(self, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"half a PNG")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        io.save_mask_png(np.zeros((4, 4), bool), path)
    with pytest.raises(OSError, match="disk full"):
        io.save_overlay_png(np.zeros((4, 4, 3), np.uint8), None, tmp_path / "overlay.png")
    assert _files(tmp_path) == ["mask.png"]
    assert path.read_bytes() == before


def test_save_json_is_atomic_and_readable(tmp_path):
    path = io.save_json({"a": [1, 2], "name": "été"}, tmp_path / "x" / "out.json")
    assert json.loads(path.read_text(encoding="utf-8")) == {"a": [1, 2], "name": "été"}
    with pytest.raises(TypeError):
        io.save_json({"bad": object()}, tmp_path / "x" / "bad.json")
    assert _files(tmp_path / "x") == ["out.json"]


# --------------------------------------------------------------------------------------------- samples
def test_sample_images_are_small_real_photos():
    photos = io.sample_images()
    assert [p.name for p in photos] == ["astronaut.jpg", "coffee.jpg"]
    for photo in photos:
        assert photo.stat().st_size <= 150_000
        with Image.open(photo) as im:
            assert im.format == "JPEG" and max(im.size) <= 800
        image = io.read_image(photo)
        h, w = image.shape[:2]
        prompts = io.sample_prompts(photo, (h, w))
        x, y = prompts["point"]
        x0, y0, x1, y1 = prompts["box"]
        assert 0 <= x <= w and 0 <= y <= h
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h


def test_sample_prompts_default_to_the_centre():
    prompts = io.sample_prompts("other.png", (100, 200))
    assert prompts["point"] == (100.0, 50.0)
    assert prompts["box"] == (50.0, 25.0, 150.0, 75.0)


def test_decode_image_equals_read_image_of_the_same_bytes(tmp_path):
    from PIL import Image

    rgba = (np.random.default_rng(0).random((9, 7, 4)) * 255).astype(np.uint8)
    path = tmp_path / "x.png"
    Image.fromarray(rgba, "RGBA").save(path)
    assert np.array_equal(io.decode_image(path.read_bytes()), io.read_image(path))
    with pytest.raises(ValueError, match="cannot read image upload.bin: not a recognised image format"):
        io.decode_image(b"not an image", name="upload.bin")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_atomic_writes_get_the_permissions_of_a_plain_write(tmp_path):
    import os

    from promptseg.fileio import atomic_write

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    written = tmp_path / "out.txt"
    atomic_write(written, lambda tmp: open(tmp, "w").write("y"))
    assert written.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777  # not mkstemp's 0o600
    io.save_mask_png(np.ones((4, 4), bool), tmp_path / "mask.png")
    assert (tmp_path / "mask.png").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
    os.chmod(written, 0o640)  # a file replaced keeps its mode
    atomic_write(written, lambda tmp: open(tmp, "w").write("z"))
    assert written.stat().st_mode & 0o777 == 0o640 and written.read_text() == "z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd")
def test_durable_atomic_writes_reach_the_disk_before_the_rename(tmp_path, monkeypatch):
    """``durable=True`` fsyncs the finished temporary file, then renames it (training checkpoints and the
    batch runner's outputs use it); a plain write does not fsync."""
    import os

    from promptseg.fileio import atomic_write

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(a))), real_replace(a, b))[1])
    target = tmp_path / "ckpt.pt"
    atomic_write(target, lambda tmp: open(tmp, "w").write("state"), durable=True)
    assert [e[0] for e in events] == ["fsync", "replace"] and events[0][1] == events[1][1]
    assert target.read_text() == "state"
    events.clear()
    atomic_write(target, lambda tmp: open(tmp, "w").write("again"))
    assert [e[0] for e in events] == ["replace"]
