"""``promptseg amg`` batch runs: outputs, skip/resume (including after ``kill -9``), memory over many images,
and the Ray Data engine giving byte-identical files.

A tiny random SAM (the conftest architecture) is saved to a checkpoint; the mask generator is promptseg's
(``promptseg.amg.generator``) when it is importable, else the reference ``segment_anything`` one, with the
IoU/stability filters off so that the random model yields masks.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cv2")
pytest.importorskip("pycocotools")

from promptseg.amg.batch import (  # noqa: E402
    DEFAULT_GENERATOR,
    BatchError,
    REFERENCE_GENERATOR,
    STATE_DIR,
    GeneratorFactory,
    marker_path,
    plan,
    run_batch,
)

OPTIONS = {"points_per_side": 3, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 0.99}
REPO = Path(__file__).resolve().parents[2]


def _generator_spec() -> str:
    try:
        importlib.import_module("promptseg.amg.generator")
        return DEFAULT_GENERATOR
    except ImportError:
        pytest.importorskip("segment_anything")
        return REFERENCE_GENERATOR


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_config, helpers):
    import torch

    from promptseg import build_sam, save_sam

    torch.manual_seed(0)
    model = helpers.perturb_(build_sam(tiny_config), 1, 0.05).eval()
    path = tmp_path_factory.mktemp("amg_ckpt") / "tiny.safetensors"
    save_sam(model, path)
    return path


@pytest.fixture(scope="module")
def factory(checkpoint):
    return GeneratorFactory(str(checkpoint), generator=_generator_spec(), options=dict(OPTIONS), threads=1)


def _write_images(folder: Path, helpers, count: int = 5, size=(40, 56), bad: bool = True):
    from PIL import Image

    paths = []
    for i in range(count):
        sub = folder / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"img_{i}.png"
        Image.fromarray(helpers.make_image(size[0] + 4 * i, size[1], seed=i)).save(path)
        paths.append(path)
    if bad:
        (folder / "broken.jpg").write_bytes(b"this is not a JPEG")
    return paths


def _is_temporary(path: Path) -> bool:
    """``atomic_write``'s ``.NAME.XXXXXXXX.tmp``: what a kill during a write may leave, never read as an output."""
    return path.name.startswith(".") and path.suffix == ".tmp"


def _visible_files(out: Path):
    """The outputs a user sees: not the run's state folder, not atomic-write temporaries."""
    return sorted(p for p in out.rglob("*") if p.is_file() and STATE_DIR not in p.parts and not _is_temporary(p))


def _check_valid(path: Path) -> None:
    from PIL import Image

    if path.suffix == ".png":
        with Image.open(path) as im:
            im.load()
    else:
        json.loads(path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------- local engine
def test_local_batch_outputs_skip_and_formats(tmp_path, helpers, factory):
    from promptseg.amg.outputs import read_label_map
    from promptseg.io import rle_to_mask

    images = _write_images(tmp_path / "in", helpers)
    out = tmp_path / "out"
    summary = run_batch([tmp_path / "in"], out, factory, progress=False)
    assert (summary.total, summary.done, summary.skipped, summary.failed) == (6, 5, 0, 1)
    assert summary.failures[0][0].endswith("broken.jpg") and "cannot read image" in summary.failures[0][1]
    assert summary.masks > 0

    for image in images:
        key = f"{image.parent.name}/{image.stem}"
        doc = json.loads((out / f"{key}.json").read_text())
        h, w = doc["image"]["height"], doc["image"]["width"]
        assert doc["image"]["file_name"] == image.name and doc["annotations"]
        labels = read_label_map(out / f"{key}.labels.png")
        assert labels.shape == (h, w) and labels.max() <= len(doc["annotations"])
        for ann in doc["annotations"]:
            assert rle_to_mask(ann["segmentation"]).sum() == ann["area"]
        coco = json.loads((out / f"{key}.coco.json").read_text())
        assert len(coco) == len(doc["annotations"]) and coco[0]["image_id"] == doc["image"]["image_id"]
        geo = json.loads((out / f"{key}.geojson").read_text())
        assert geo["type"] == "FeatureCollection" and len(geo["features"]) == len(doc["annotations"])
        assert (out / f"{key}.overlay.png").is_file()
        assert marker_path(out, key).is_file()
    merged = json.loads((out / "coco_results.json").read_text())
    assert len(merged) == summary.masks
    assert not [p for p in out.rglob("*.tmp")]

    # Run again: finished images are skipped (not processed), the broken one is retried and fails again.
    mtimes = {p: p.stat().st_mtime_ns for p in _visible_files(out) if p.name != "coco_results.json"}
    again = run_batch([tmp_path / "in"], out, factory, progress=False)
    assert (again.done, again.skipped, again.failed) == (0, 5, 1)
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes

    # A subset of the formats is complete; a format not written yet makes the images run again.
    assert run_batch([tmp_path / "in"], out, factory, ["png"], progress=False).skipped == 5
    out2 = tmp_path / "out2"
    first = run_batch([tmp_path / "in"], out2, factory, ["sa1b"], progress=False)
    assert first.done == 5 and not list(out2.rglob("*.geojson"))
    second = run_batch([tmp_path / "in"], out2, factory, ["sa1b", "geojson"], progress=False)
    assert second.done == 5 and len(list(out2.rglob("*.geojson"))) == 5
    # Another polygon tolerance redoes the GeoJSON jobs only; other generator settings redo every image.
    assert run_batch([tmp_path / "in"], out2, factory, ["sa1b"], polygon_tolerance=3, progress=False).skipped == 5
    assert run_batch([tmp_path / "in"], out2, factory, ["geojson"], polygon_tolerance=3, progress=False).done == 5
    assert run_batch([tmp_path / "in"], out2, factory, ["sa1b", "geojson"], polygon_tolerance=3,
                     progress=False).skipped == 5  # the SA-1B files were rewritten with the GeoJSON ones
    fcntl = pytest.importorskip("fcntl")
    with open(out2 / STATE_DIR / "lock", "w") as held:  # one job per output folder
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(BatchError, match="another promptseg amg job"):
            run_batch([tmp_path / "in"], out2, factory, ["sa1b"], progress=False)
    other = GeneratorFactory(factory.checkpoint, factory.generator, {**OPTIONS, "points_per_side": 2}, threads=1)
    assert run_batch([tmp_path / "in"], out2, other, ["sa1b"], progress=False).done == 5


def test_local_engine_restores_the_callers_thread_count(tmp_path, helpers, checkpoint):
    import torch

    _write_images(tmp_path / "in", helpers, count=1, bad=False)
    factory = GeneratorFactory(str(checkpoint), generator=_generator_spec(), options=dict(OPTIONS), threads=1,
                               tune_allocator=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert run_batch([tmp_path / "in"], tmp_path / "out", factory, progress=False).done == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_the_local_engine_restores_the_thread_count_when_the_loop_fails(tmp_path, helpers, checkpoint):
    """An error in run_batch's own loop (here: the stream refusing a failure line) left the engine's
    generator suspended, so the caller's thread count came back only once the exception was freed."""
    import io

    import torch

    _write_images(tmp_path / "in", helpers, count=1)  # and broken.jpg: a failure line
    factory = GeneratorFactory(str(checkpoint), generator=_generator_spec(), options=dict(OPTIONS), threads=1,
                               tune_allocator=False)

    class Stream(io.StringIO):
        def write(self, text):
            if "failed:" in text:
                raise OSError("stream closed")
            return super().write(text)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(OSError, match="stream closed") as info:
            run_batch([tmp_path / "in"], tmp_path / "out", factory, ["sa1b"], progress=False, stream=Stream())
        assert info.value.__traceback__ is not None  # the exception, with run_batch's frame, is still alive
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_part_dtypes_are_part_of_the_fingerprint_only_when_set(checkpoint):
    import dataclasses

    import torch

    plain = GeneratorFactory(str(checkpoint), generator=DEFAULT_GENERATOR, options=dict(OPTIONS), threads=1)
    same = dataclasses.replace(plain, encoder_dtype="float32")  # = dtype: the same model
    fast = dataclasses.replace(plain, encoder_dtype="bfloat16", transformer_dtype="bfloat16")
    assert "encoder_dtype" not in plain.settings() and same.settings() == plain.settings()
    assert fast.settings()["encoder_dtype"] == fast.settings()["transformer_dtype"] == "bfloat16"
    fast.check()
    model = fast().generator.predictor.model
    assert model.image_encoder.patch_embed.proj.weight.dtype == torch.bfloat16 and model.dtype == torch.float32
    assert model.mask_decoder.transformer.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="encoder_dtype: unknown floating-point dtype 'float8'"):
        dataclasses.replace(plain, encoder_dtype="float8").check()


def test_inputs_keys_and_ids(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    for name in ("x/a.jpg", "x/a.png", "y/a.jpg", "x/sa_12.JPG"):
        (tmp_path / name).write_bytes(b"")
    out = tmp_path / "x" / "out"
    out.mkdir()
    (out / "a.labels.png").write_bytes(b"")  # our own outputs inside an input folder are not inputs
    (tmp_path / "list.txt").write_text("# images\ny/a.jpg\n\nx/sa_12.JPG\n")
    tasks = plan([tmp_path / "x", tmp_path / "y"], out)
    assert [t.key for t in tasks] == ["x/a.jpg", "x/a.png", "x/sa_12", "y/a"]
    assert [t.image_id for t in tasks] == [1, 2, 3, 4]  # not every name ends in a number
    listed = plan([tmp_path / "list.txt"])
    assert [(t.key, t.image_id) for t in listed] == [("x/sa_12", 1), ("y/a", 2)]
    numbered = plan([tmp_path / "x" / "sa_12.JPG"])
    assert [(t.key, t.image_id) for t in numbered] == [("sa_12", 12)]  # SA-1B / COCO style names keep their id
    with pytest.raises(FileNotFoundError):
        plan([tmp_path / "missing"])
    with pytest.raises(ValueError, match="no images"):
        plan([out], out)



def test_output_files_of_different_images_never_collide(tmp_path):
    """``x.coco.jpg``'s SA-1B JSON would be ``x.jpg``'s COCO results (``x.coco.json``), and ``coco_results.png``'s
    the merged COCO file: such images keep their extension in their key."""
    from promptseg.amg.batch import output_paths
    from promptseg.amg.outputs import FORMATS

    for name in ("x.jpg", "x.coco.jpg", "coco_results.png", "y.jpg", "y.labels.jpg"):
        (tmp_path / name).write_bytes(b"")
    tasks = plan([tmp_path])
    assert [t.key for t in tasks] == ["coco_results.png", "x.coco.jpg", "x.jpg", "y", "y.labels"]
    names = [p.name.casefold() for t in tasks for p in output_paths(tmp_path, t.key, FORMATS).values()]
    assert len(set(names)) == len(names) and "coco_results.json" not in names


def test_list_file_with_a_byte_order_mark(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "b c.jpg").write_bytes(b"")
    (tmp_path / "list.txt").write_bytes("\ufeffa.jpg\r\n# comment\r\n\r\n  b c.jpg \r\n".encode("utf-8"))
    assert [(Path(t.path).name, t.key) for t in plan([tmp_path / "list.txt"])] == [("a.jpg", "a"), ("b c.jpg", "b c")]


class _Squares:
    """A stand-in generator: ``n`` small square masks per image."""

    def __init__(self, n: int) -> None:
        self.n = n

    def generate(self, image):
        h, w = image.shape[:2]
        records = []
        for k in range(self.n):
            m = np.zeros((h, w), bool)
            m[k : k + 3, 1:4] = True
            records.append({"segmentation": m, "area": int(m.sum()), "bbox": [1, k, 2, 2], "predicted_iou": 0.9,
                            "point_coords": [[2.0, k + 1.0]], "stability_score": 0.95, "crop_box": [0, 0, w, h]})
        return records


def test_rerun_with_other_settings_leaves_no_stale_format(tmp_path):
    """A run with other settings and fewer formats rewrites every file the image had (and the merged COCO
    file): none is left from the old masks, so label ids and GeoJSON features match the new JSON."""
    from PIL import Image

    from promptseg.amg.outputs import read_label_map

    (tmp_path / "in").mkdir()
    Image.fromarray(np.full((10, 12, 3), 7, np.uint8)).save(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    assert run_batch([tmp_path / "in"], out, lambda: _Squares(3), settings={"v": 1}, progress=False).done == 1
    again = run_batch([tmp_path / "in"], out, lambda: _Squares(1), ["sa1b"], settings={"v": 2}, progress=False)
    assert again.done == 1
    assert len(json.loads((out / "a.json").read_text())["annotations"]) == 1
    assert read_label_map(out / "a.labels.png").max() == 1
    assert len(json.loads((out / "a.geojson").read_text())["features"]) == 1
    assert len(json.loads((out / "a.coco.json").read_text())) == 1
    assert len(json.loads((out / "coco_results.json").read_text())) == 1
    assert run_batch([tmp_path / "in"], out, lambda: _Squares(1), settings={"v": 2}, progress=False).skipped == 1


@pytest.mark.parametrize("module, formats, expected", [
    ("pycocotools.mask", ["png", "sa1b"], r"^COCO RLE needs pycocotools, .*promptseg\[coco\]$"),
    ("pycocotools.mask", ["coco"], r"^COCO RLE needs pycocotools, .*promptseg\[coco\]$"),
    ("cv2", ["overlay", "geojson"], r"^polygons and GeoJSON needs OpenCV, .*promptseg\[cv\]$"),
])
def test_a_format_whose_dependency_is_missing_fails_before_any_image(tmp_path, monkeypatch, module, formats, expected):
    """Without pycocotools or OpenCV (a plain `pip install promptseg`, whose `promptseg amg` writes every format
    by default) each image went through the encoder and then failed: a job of N images did N encodings for
    N failures. As the ray engine, the run now stops first, naming the extra."""
    from PIL import Image

    from promptseg.io import MissingDependencyError

    (tmp_path / "in").mkdir()
    Image.fromarray(np.full((10, 12, 3), 7, np.uint8)).save(tmp_path / "in" / "a.png")
    built = []

    def factory():
        built.append(1)
        return _Squares(2)

    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingDependencyError, match=expected):
        run_batch([tmp_path / "in"], tmp_path / "out", factory, formats, progress=False)
    assert not built and not (tmp_path / "out").exists()
    assert run_batch([tmp_path / "in"], tmp_path / "out", factory, ["png", "overlay"], progress=False).done == 1


class _OutOfMemory:
    def generate(self, image):
        raise RuntimeError("out of memory")


def test_a_failed_or_interrupted_rewrite_leaves_no_stale_format(tmp_path, monkeypatch):
    """An image whose rewrite failed after its old marker was deleted, or whose first run died after some of its
    files, still has those files: the next run (other settings, fewer formats) rewrites them all too."""
    from PIL import Image

    from promptseg.amg import batch
    from promptseg.amg.outputs import read_label_map

    (tmp_path / "in").mkdir()
    Image.fromarray(np.full((10, 12, 3), 7, np.uint8)).save(tmp_path / "in" / "a.png")
    out = tmp_path / "out"

    def counts():
        def read(name):
            return json.loads((out / name).read_text())

        return (len(read("a.json")["annotations"]), int(read_label_map(out / "a.labels.png").max()),
                len(read("a.geojson")["features"]), len(read("a.coco.json")))

    assert run_batch([tmp_path / "in"], out, lambda: _Squares(3), settings={"v": 1}, progress=False).done == 1
    assert run_batch([tmp_path / "in"], out, _OutOfMemory, ["sa1b"], settings={"v": 2}, progress=False).failed == 1
    assert run_batch([tmp_path / "in"], out, lambda: _Squares(1), ["sa1b"], settings={"v": 2}, progress=False).done == 1
    assert counts() == (1, 1, 1, 1)
    assert not list((out / STATE_DIR / "pending").rglob("*.json"))

    # A first run that dies after writing two of the five files (here: the disk fills up).
    write_formats = batch.write_formats

    def two_then_full(records, image, paths, **kwargs):
        write_formats(records, image, {f: paths[f] for f in ("sa1b", "coco")}, **kwargs)
        raise OSError("No space left on device")

    out = tmp_path / "out2"
    monkeypatch.setattr(batch, "write_formats", two_then_full)
    assert run_batch([tmp_path / "in"], out, lambda: _Squares(3), settings={"v": 1}, progress=False).failed == 1
    monkeypatch.setattr(batch, "write_formats", write_formats)
    assert run_batch([tmp_path / "in"], out, lambda: _Squares(2), ["png"], settings={"v": 2}, progress=False).done == 1
    assert len(json.loads((out / "a.json").read_text())["annotations"]) == 2
    assert len(json.loads((out / "a.coco.json").read_text())) == 2


def test_cli_usage_errors(tmp_path, capsys, helpers, checkpoint):
    from promptseg import hub
    from promptseg.amg.cli import main

    _write_images(tmp_path / "in", helpers, count=1, bad=False)
    assert main([str(tmp_path / "missing"), "-o", str(tmp_path / "o")]) == 2
    assert "input not found" in capsys.readouterr().err
    assert main([str(tmp_path / "in"), "-o", str(tmp_path / "o"), "--formats", "sa1b,tiff"]) == 2
    assert "unknown format" in capsys.readouterr().err
    if hub.default_model_path() is None:
        assert main([str(tmp_path / "in"), "-o", str(tmp_path / "o"), "--generator", _generator_spec()]) == 2
        assert "no checkpoint given" in capsys.readouterr().err
    assert main([str(tmp_path / "in"), "-o", str(tmp_path / "o"), "--checkpoint", str(checkpoint),
                 "--generator", "no_such_module:Gen"]) == 2
    assert "cannot import the mask generator" in capsys.readouterr().err
    assert main([str(tmp_path / "in"), "-o", str(tmp_path / "o"), "--checkpoint", str(checkpoint),
                 "--device", "nonsense"]) == 2
    assert "device nonsense cannot be used on this machine" in capsys.readouterr().err


def _factory_of_cli(tmp_path, monkeypatch, flags):
    """The GeneratorFactory ``promptseg amg IN -o OUT *flags`` builds (the run itself is skipped)."""
    from types import SimpleNamespace

    from promptseg.amg import cli

    seen = {}

    def fake_run(args, factory, threads):
        seen["factory"] = factory
        return SimpleNamespace(lines=lambda: [], failed=0)

    monkeypatch.setattr(cli, "_run", fake_run)
    (tmp_path / "in").mkdir()
    assert cli.main([str(tmp_path / "in"), "-o", str(tmp_path / "o"), *flags]) == 0
    return seen["factory"]


@pytest.mark.parametrize("flags,expected", [([], True), (["--no-tune-allocator"], False)])
def test_cli_tunes_the_allocator_of_its_workers_unless_told_not_to(tmp_path, checkpoint, monkeypatch, flags, expected):
    factory = _factory_of_cli(tmp_path, monkeypatch, ["--checkpoint", str(checkpoint), *flags])
    assert factory.tune_allocator is expected
    assert "tune_allocator" not in factory.settings()  # the masks do not depend on it


@pytest.mark.parametrize("flags,expected", [([], False), (["--force"], True)])
def test_cli_force_reaches_run_batch(tmp_path, checkpoint, monkeypatch, flags, expected):
    from types import SimpleNamespace

    from promptseg.amg import batch, cli

    seen = {}

    def fake_run_batch(*args, **kwargs):
        seen.update(kwargs)
        return SimpleNamespace(lines=lambda: [], failed=0)

    monkeypatch.setattr(batch, "run_batch", fake_run_batch)
    (tmp_path / "in").mkdir()
    assert cli.main([str(tmp_path / "in"), "-o", str(tmp_path / "o"), "--checkpoint", str(checkpoint), *flags]) == 0
    assert seen["force"] is expected


def test_presets_come_from_the_generator_class(checkpoint):
    from promptseg.amg.batch import PRESETS

    pytest.importorskip("segment_anything")
    ref = GeneratorFactory(str(checkpoint), REFERENCE_GENERATOR, {"box_nms_thresh": 0.8}, preset="proposals")
    assert ref.resolved_options() == {**PRESETS["proposals"], "box_nms_thresh": 0.8}
    if _generator_spec() == DEFAULT_GENERATOR:
        from promptseg.amg.generator import SamAutomaticMaskGenerator

        ours = GeneratorFactory(str(checkpoint), DEFAULT_GENERATOR, preset="proposals")
        assert ours.resolved_options() == SamAutomaticMaskGenerator.PRESETS["proposals"]
    with pytest.raises(ValueError, match="unknown preset"):
        GeneratorFactory(str(checkpoint), REFERENCE_GENERATOR, preset="nope").resolved_options()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="RSS is read from /proc (Linux)")
def test_memory_does_not_grow_over_images(tmp_path, helpers, factory):
    import gc

    _write_images(tmp_path / "in", helpers, count=12, size=(160, 200), bad=False)
    rss = []

    class Measured:
        def __init__(self, inner):
            self.inner = inner

        def generate(self, image):
            gc.collect()
            rss.append(_rss_bytes())
            return self.inner.generate(image)

    summary = run_batch([tmp_path / "in"], tmp_path / "out", lambda: Measured(factory()), progress=False)
    assert summary.done == 12 and len(rss) == 12
    growth = rss[-1] - rss[3]  # after warm-up (allocator pools, lazy imports)
    assert growth < 4 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB over 8 images: {[r >> 20 for r in rss]} MiB"


# --------------------------------------------------------------------------------------------- kill -9 and resume
_LOGGING_GENERATOR = '''
import hashlib, importlib, os, time
_module, _, _name = os.environ["AMG_TEST_BASE"].partition(":")
_Base = getattr(importlib.import_module(_module), _name)

class Generator(_Base):
    """The real generator, logging each call (image checksum) and sleeping so the test can kill it mid-way."""

    def generate(self, image):
        out = super().generate(image)
        with open(os.environ["AMG_TEST_LOG"], "a") as f:
            f.write(hashlib.md5(image.tobytes()).hexdigest() + "\\n")
        time.sleep(float(os.environ.get("AMG_TEST_DELAY", "0")))
        return out
'''


def _image_digest(path: Path) -> str:
    from promptseg.io import read_image

    return hashlib.md5(read_image(path).tobytes()).hexdigest()


def test_resume_after_kill_9(tmp_path, helpers, checkpoint):
    images = _write_images(tmp_path / "in", helpers, count=6, bad=False)
    digest_of = {f"{p.parent.name}/{p.stem}": _image_digest(p) for p in images}
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "logging_amg.py").write_text(_LOGGING_GENERATOR)
    out, log = tmp_path / "out", tmp_path / "calls.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "mods"), str(REPO / "src"),
                                                        os.environ.get("PYTHONPATH", "")]),
               AMG_TEST_BASE=_generator_spec(), AMG_TEST_LOG=str(log), AMG_TEST_DELAY="0.5")
    cmd = [sys.executable, "-m", "promptseg.amg.cli", str(tmp_path / "in"), "-o", str(out),
           "--checkpoint", str(checkpoint), "--generator", "logging_amg:Generator", "--threads", "1", "-q",
           "--points-per-side", "3", "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
           "--box-nms-thresh", "0.99", "--polygon-tolerance", "0.5"]

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    done_dir = out / STATE_DIR / "done"
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if done_dir.is_dir() and len(list(done_dir.rglob("*.json"))) >= 2:
            # Somewhere in the next image: while generating, sleeping or writing its files.
            time.sleep(float(np.random.default_rng().uniform(0.0, 0.6)))
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr.read().decode()[-2000:])

    finished = {key for key in digest_of if marker_path(out, key).is_file()}
    assert 2 <= len(finished) < len(images)
    for path in _visible_files(out):  # nothing half-written, whatever the moment of the kill
        _check_valid(path)
    left = [p for p in out.rglob("*.tmp") if STATE_DIR not in p.parts]
    assert all(_is_temporary(p) for p in left), left  # a kill mid-write leaves at most a hidden temporary
    first_calls = log.read_text().split()
    mtimes = {p: p.stat().st_mtime_ns for p in _visible_files(out) if any(p.name.startswith(Path(k).name + ".")
                                                                          and p.parent.name == Path(k).parent.name
                                                                          for k in finished)}
    assert len(mtimes) == 5 * len(finished)

    stale = out / "a" / ".img_1.json.k3x_9zq1.tmp"  # what a kill during an atomic write leaves
    stale.write_text('{"image": ')
    env["AMG_TEST_DELAY"] = "0"
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{len(finished)} skipped" in rerun.stdout

    second_calls = log.read_text().split()[len(first_calls):]
    for key, digest in digest_of.items():
        assert marker_path(out, key).is_file()
        if key in finished:  # never processed again
            assert digest not in second_calls and first_calls.count(digest) == 1
        else:  # processed once by the second run (the first may have been killed while writing it)
            assert second_calls.count(digest) == 1
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert not list(out.rglob("*.tmp"))  # the stale temporary file was removed
    for path in _visible_files(out):
        _check_valid(path)


# --------------------------------------------------------------------------------------------- Ray Data engine
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray's own DataContext deprecations
def test_ray_engine_matches_local(tmp_path, helpers, factory):
    pytest.importorskip("ray.data", reason="the ray engine needs Ray Data: pip install 'ray[data]'")
    _write_images(tmp_path / "in", helpers, count=4)
    local = run_batch([tmp_path / "in"], tmp_path / "local", factory, progress=False)
    ray_run = run_batch([tmp_path / "in"], tmp_path / "ray", factory, engine="ray", num_workers=2, progress=False)
    assert (local.done, local.failed) == (4, 1) and local.masks > 0
    assert (ray_run.done, ray_run.failed, ray_run.masks) == (local.done, local.failed, local.masks)
    a, b = _visible_files(tmp_path / "local"), _visible_files(tmp_path / "ray")
    assert [p.relative_to(tmp_path / "local") for p in a] == [p.relative_to(tmp_path / "ray") for p in b]
    for x, y in zip(a, b):
        assert x.read_bytes() == y.read_bytes(), f"{x.name} differs between the local and the Ray engine"
    workers = {json.loads(m.read_text())["worker"] for m in (tmp_path / "ray" / STATE_DIR / "done").rglob("*.json")}
    assert f"{socket.gethostname()}:{os.getpid()}" not in workers  # written by Ray actors, not this process


@pytest.mark.parametrize("flags,expected", [
    ([], {"pred_iou_thresh": 0.35, "stability_score_thresh": 0.35}),
    (["--preset", "sa1b"], {"pred_iou_thresh": 0.35, "stability_score_thresh": 0.35}),
    (["--pred-iou-thresh", "0.9"], {"pred_iou_thresh": 0.9, "stability_score_thresh": 0.35}),
    (["--preset", "edges"], {}),  # a preset without filters keeps none
    (["--checkpoint", "CKPT"], {}),  # a checkpoint of the user's: the reference's filters
])
def test_cli_filters_suit_the_bundled_model_when_no_checkpoint_is_given(tmp_path, checkpoint, monkeypatch, capsys,
                                                                         flags, expected):
    """The bundled model's scores are calibrated on synthetic scenes: with the reference's 0.88 / 0.95 the README's
    `promptseg amg photos/ -o out` kept no mask at all on the sample photos."""
    from promptseg.hub import DEFAULT_MODEL_AMG_FILTERS

    assert DEFAULT_MODEL_AMG_FILTERS == {"pred_iou_thresh": 0.35, "stability_score_thresh": 0.35}
    monkeypatch.chdir(checkpoint.parent)
    flags = [checkpoint.name if f == "CKPT" else f for f in flags]  # relative: made absolute for Ray workers
    factory = _factory_of_cli(tmp_path, monkeypatch, flags)
    assert factory.checkpoint in (None, str(checkpoint.absolute()))
    options = factory.options
    assert {k: v for k, v in options.items() if k in ("pred_iou_thresh", "stability_score_thresh")} == expected
    assert ("the bundled default model" in capsys.readouterr().err) is ("stability_score_thresh" in expected and
                                                                        "--checkpoint" not in flags)
