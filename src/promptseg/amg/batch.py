"""Automatic mask generation over many images: resumable, one model per worker, local loop or Ray Data.

Layout of an output folder ``OUT`` for inputs under a common root ``ROOT``::

    OUT/<key>.json           SA-1B per-image JSON            (format "sa1b")
    OUT/<key>.coco.json      COCO results of the image       (format "coco")
    OUT/<key>.labels.png     label map, 8- or 16-bit         (format "png")
    OUT/<key>.geojson        polygons as GeoJSON             (format "geojson")
    OUT/<key>.overlay.png    all masks drawn on the image    (format "overlay")
    OUT/coco_results.json    every image's COCO results in one list (with "coco", rewritten at the end)
    OUT/.promptseg-amg/      done/<key>.json completion markers, pending/<key>.json, job.json, summary.json, lock

``<key>`` is the image's path relative to ``ROOT`` (the deepest folder holding all inputs) without its
extension, e.g. ``street/0001`` for ``ROOT/street/0001.jpg``; when two inputs would get the same key
(``a.jpg`` and ``a.png``) or the same output file (``a.jpg``'s ``a.coco.json`` is ``a.coco.jpg``'s SA-1B JSON;
``coco_results.jpg``'s is the merged COCO file) they keep their extension (``a.jpg``, ``a.png``), so names
never collide.

Resume: every file is written atomically (temporary file + rename) and flushed to disk; the image's
completion marker ``OUT/.promptseg-amg/done/<key>.json`` is written last. Before its files, ``pending/<key>.json``
names them (with those its marker named), so that a run that fails or dies half-way leaves no file of the old
masks behind: the next run rewrites them all, whatever formats it asks for. An image is skipped when its
marker exists, names every requested format, its files exist, and it was made with the same settings
(model, generator options, polygon options), the same image id and the same source file (size and mtime).
So after ``kill -9`` at any moment no output file is half-written (a stray ``.NAME.XXXXXXXX.tmp`` may be
left; the next run deletes it), completed images are not processed again, and the image that was being
written is processed again from scratch.

:func:`process_image` is the one per-image function: the local engine calls it in a loop, the Ray engine
inside Ray Data actors, so both write identical files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import math
import os
import re
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, TextIO, Tuple, Union

from promptseg.amg.outputs import FORMATS, SUFFIXES, read_georeference, write_formats, write_json

PathLike = Union[str, "os.PathLike[str]"]

#: File extensions collected from folders (case-insensitive). Files named explicitly are read whatever their
#: extension.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
STATE_DIR = ".promptseg-amg"
DEFAULT_GENERATOR = "promptseg.amg.generator:SamAutomaticMaskGenerator"
REFERENCE_GENERATOR = "segment_anything:SamAutomaticMaskGenerator"
ENGINES = ("local", "ray")
MARKER_VERSION = 1
#: The file in OUT that merges every image's COCO results (format "coco").
MERGED_COCO = "coco_results.json"

#: Generator settings of each preset, for generator classes that define no ``PRESETS`` of their own (promptseg's
#: generator does: its presets win); options given explicitly override them.
PRESETS: Dict[str, Dict[str, Any]] = {
    # The generator's own defaults (as segment_anything): 32×32 points, predicted IoU > 0.88, stability
    # ≥ 0.95, box NMS 0.7, no crops.
    "default": {},
    # §7.2 / §D.2 edge detection: 16×16 points, no IoU or stability filter, NMS only.
    "edges": {"points_per_side": 16, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "crop_n_layers": 0},
    # §7.3 / §D.3 object proposals: 64×64 points, no IoU or stability filter, NMS 0.9, no crops.
    "proposals": {
        "points_per_side": 64, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
        "box_nms_thresh": 0.9, "crop_n_layers": 0,
    },
    # §B, the SA-1B data engine: 32×32 points on the image, 2×2 and 4×4 crops with 16×16 and 8×8 grids,
    # IoU > 0.88, stability ≥ 0.95, NMS 0.7 within and across crops, components and holes < 100 px removed.
    "sa1b": {
        "points_per_side": 32, "pred_iou_thresh": 0.88, "stability_score_thresh": 0.95, "box_nms_thresh": 0.7,
        "crop_n_layers": 2, "crop_n_points_downscale_factor": 2, "crop_nms_thresh": 0.7,
        "min_mask_region_area": 100,
    },
}


class BatchError(RuntimeError):
    """The batch could not run (a Ray failure, another job holding the output folder)."""


# --------------------------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class ImageTask:
    """One image of a job: its absolute ``path``, output ``key`` and SA-1B/COCO ``image_id``."""

    path: str
    key: str
    image_id: int


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _within(path: str, folder: Optional[str]) -> bool:
    if folder is None:
        return False
    try:
        return os.path.commonpath([path, folder]) == folder
    except ValueError:  # different drives
        return False


_OUTPUT_IMAGE_SUFFIXES = tuple(s for s in SUFFIXES.values() if s.endswith(".png"))


def _walk(folder: str, out_dir: Optional[str]) -> List[str]:
    found = []
    for here, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not _is_hidden(d))
        for name in sorted(files):
            if _is_hidden(name) or not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            path = os.path.join(here, name)
            if name.endswith(_OUTPUT_IMAGE_SUFFIXES) and _within(path, out_dir):
                continue  # our own label maps and overlays when OUT is (inside) an input folder
            found.append(path)
    return found


def _read_list(list_file: str) -> List[str]:
    base = os.path.dirname(list_file)
    paths = []
    with open(list_file, "r", encoding="utf-8-sig") as f:  # a BOM (Windows editors) is not part of the first path
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            paths.append(os.path.normpath(os.path.join(base, os.path.expanduser(line))))
    return paths


def collect_images(inputs: Sequence[PathLike], out_dir: Optional[PathLike] = None) -> Tuple[List[str], str]:
    """Expand ``inputs`` → ``(absolute image paths, common root)``.

    An input is an image file (any extension), a folder (searched recursively for :data:`IMAGE_EXTENSIONS`,
    hidden files and folders skipped, and promptseg's own ``.labels.png``/``.overlay.png`` files inside
    ``out_dir`` skipped) or a ``.txt`` file listing one path per line (blank lines and ``#`` comments
    skipped; relative paths are relative to the list file's folder; a listed folder is searched like a
    folder argument; a listed file that does not exist is kept and fails as that image). A missing input
    argument raises ``FileNotFoundError``; no image at all raises ``ValueError``. Duplicates are dropped.
    """
    out_abs = os.path.abspath(out_dir) if out_dir is not None else None
    paths: List[str] = []
    roots: List[str] = []
    for item in inputs:
        item = os.path.abspath(os.path.expanduser(os.fspath(item)))
        if os.path.isdir(item):
            paths += _walk(item, out_abs)
            roots.append(item)
        elif os.path.isfile(item) and item.lower().endswith(".txt"):
            for listed in _read_list(item):
                if os.path.isdir(listed):
                    paths += _walk(listed, out_abs)
                    roots.append(listed)
                else:
                    paths.append(listed)
                    roots.append(os.path.dirname(listed))
        elif os.path.isfile(item):
            paths.append(item)
            roots.append(os.path.dirname(item))
        else:
            raise FileNotFoundError(f"input not found: {item}")
    unique = list(dict.fromkeys(os.path.normpath(p) for p in paths))
    if not unique:
        raise ValueError(f"no images found in {', '.join(os.fspath(i) for i in inputs)} "
                         f"(looked for {', '.join(IMAGE_EXTENSIONS)})")
    try:
        root = os.path.commonpath(roots)
    except ValueError:  # Windows paths on different drives
        root = ""
    return unique, root


def assign_keys(rel_paths: Sequence[str]) -> List[str]:
    """Output keys: each relative path without its extension, or with it where keys or their output files
    (``<key><suffix>``, and :data:`MERGED_COCO`) would collide (compared case-insensitively, for
    case-insensitive file systems)."""
    full = [Path(p).as_posix() for p in rel_paths]
    stem = [str(Path(p).with_suffix("")) if Path(p).suffix else p for p in full]
    stem = [Path(s).as_posix() for s in stem]
    promoted = [False] * len(full)
    while True:
        keys = [full[i] if promoted[i] else stem[i] for i in range(len(full))]
        groups: Dict[str, List[int]] = {MERGED_COCO.casefold(): [-1]}  # -1: the merged file, not an image
        for i, key in enumerate(keys):
            for suffix in SUFFIXES.values():
                groups.setdefault(f"{key}{suffix}".casefold(), []).append(i)
        changed = False
        for members in groups.values():
            if len(members) > 1:
                for i in members:
                    if i >= 0 and not promoted[i]:
                        promoted[i] = changed = True
        if not changed:
            return keys


_DIGITS = re.compile(r"(\d+)$")


def assign_image_ids(paths: Sequence[str]) -> List[int]:
    """Image ids: the number that ends each file name (``sa_223750.jpg`` → 223750, COCO's
    ``000000397133.jpg`` → 397133) when every name ends in a number and the numbers are unique, otherwise
    the 1-based position in the job's sorted list."""
    numbers = []
    for p in paths:
        match = _DIGITS.search(Path(p).stem)
        if match is None:
            break
        numbers.append(int(match.group(1)))
    if len(numbers) == len(paths) and len(set(numbers)) == len(numbers):
        return numbers
    return list(range(1, len(paths) + 1))


def plan(inputs: Sequence[PathLike], out_dir: Optional[PathLike] = None) -> List[ImageTask]:
    """The job's images, sorted by output key, with keys and image ids (see :func:`collect_images`)."""
    paths, root = collect_images(inputs, out_dir)
    rel = [os.path.relpath(p, root) if root else p.lstrip("/\\") for p in paths]
    keys = assign_keys(rel)
    order = sorted(range(len(paths)), key=lambda i: keys[i])
    paths, keys = [paths[i] for i in order], [keys[i] for i in order]
    ids = assign_image_ids(paths)
    return [ImageTask(path=p, key=k, image_id=i) for p, k, i in zip(paths, keys, ids)]


# --------------------------------------------------------------------------------------------- per image
@dataclass(frozen=True)
class OutputSpec:
    """Where and what to write (picklable: shipped to Ray workers)."""

    out_dir: str
    formats: Tuple[str, ...] = FORMATS
    polygon_tolerance: float = 1.0
    geotransform: Optional[Tuple[float, ...]] = None
    crs: Optional[str] = None
    georef: bool = False
    fingerprint: str = ""  # of what determines the masks (model, generator, options)
    geojson_fingerprint: str = ""  # of what else determines the GeoJSON (tolerance, georeferencing)
    durable: bool = True


def output_paths(out_dir: PathLike, key: str, formats: Sequence[str]) -> Dict[str, Path]:
    """``{format: OUT/<key><suffix>}`` for each format."""
    return {fmt: Path(out_dir) / f"{key}{SUFFIXES[fmt]}" for fmt in formats}


def marker_path(out_dir: PathLike, key: str) -> Path:
    """The completion marker of an image: ``OUT/.promptseg-amg/done/<key>.json``."""
    return Path(out_dir) / STATE_DIR / "done" / f"{key}.json"


def _source_stat(path: str) -> Optional[Dict[str, int]]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pending_path(out_dir: PathLike, key: str) -> Path:
    """The record of an image being (re)written: ``OUT/.promptseg-amg/pending/<key>.json``."""
    return Path(out_dir) / STATE_DIR / "pending" / f"{key}.json"


def read_marker(out_dir: PathLike, key: str, path: Optional[Path] = None) -> Optional[Dict[str, Any]]:
    """The completion marker of ``key`` (or the JSON file ``path``), or None when missing or unreadable."""
    import json

    path = marker_path(out_dir, key) if path is None else path
    try:
        with open(path, "r", encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def is_complete(task: ImageTask, spec: OutputSpec) -> bool:
    """Whether ``task``'s outputs for ``spec`` are all written (see the module docstring)."""
    marker = read_marker(spec.out_dir, task.key)
    if marker is None or marker.get("version") != MARKER_VERSION:
        return False
    if marker.get("fingerprint") != spec.fingerprint or marker.get("image_id") != task.image_id:
        return False
    if "geojson" in spec.formats and marker.get("geojson_fingerprint") != spec.geojson_fingerprint:
        return False
    if marker.get("source") != _source_stat(task.path):
        return False
    files = marker.get("files") or {}
    if not set(spec.formats) <= set(files):
        return False
    return all((Path(spec.out_dir) / files[fmt]).is_file() for fmt in spec.formats)


def process_image(task: ImageTask, generator: Any, spec: OutputSpec) -> Dict[str, Any]:
    """Generate the masks of one image and write its outputs, then its completion marker (last).

    Returns ``{"key", "path", "status": "done" | "failed", "masks", "seconds", "error"}``; any exception
    (unreadable image, generator error, full disk) makes the image ``failed`` with a one-line ``error`` and
    leaves no marker, so the next run tries it again.
    """
    from promptseg.io import read_image

    start = time.perf_counter()
    result = {"key": task.key, "path": task.path, "status": "failed", "masks": 0, "seconds": 0.0, "error": ""}
    try:
        source = _source_stat(task.path)
        formats = set(spec.formats)
        pending = pending_path(spec.out_dir, task.key)
        for old in (read_marker(spec.out_dir, task.key), read_marker(spec.out_dir, task.key, pending)):
            if old is not None:
                # Rewrite the formats the image already had too (its marker's, and those a failed or killed run
                # had started to rewrite) — also when its settings or source changed, else those files would
                # stay from the old run: all its files then come from one generator run.
                formats |= set(old.get("files") or {}) & set(FORMATS)
        paths = output_paths(spec.out_dir, task.key, [f for f in FORMATS if f in formats])
        # Until the marker is written, the pending record names the files: a run that fails or dies half-way
        # leaves it for the next one, whatever formats that one asks for.
        files = {fmt: p.relative_to(spec.out_dir).as_posix() for fmt, p in paths.items()}
        write_json({"key": task.key, "files": files}, pending, durable=spec.durable)
        marker = marker_path(spec.out_dir, task.key)
        if marker.exists():  # the old marker must not vouch for half-rewritten outputs
            marker.unlink()
            if spec.durable:
                _fsync_dir(marker.parent)
        image = read_image(task.path)
        geotransform, crs = spec.geotransform, spec.crs
        if spec.georef and geotransform is None:
            geotransform, found_crs = read_georeference(task.path)
            crs = crs or found_crs
        records = generator.generate(image)
        write_formats(
            records, image, paths,
            image_id=task.image_id, file_name=os.path.basename(task.path),
            polygon_tolerance=spec.polygon_tolerance, geotransform=geotransform, crs=crs, durable=spec.durable,
        )
        if spec.durable:
            for folder in sorted({p.parent for p in paths.values()}):
                _fsync_dir(folder)
        seconds = time.perf_counter() - start
        write_json({
            "version": MARKER_VERSION,
            "key": task.key,
            "image": task.path,
            "image_id": task.image_id,
            "source": source,
            "fingerprint": spec.fingerprint,
            "geojson_fingerprint": spec.geojson_fingerprint if "geojson" in paths else None,
            "files": files,
            "masks": len(records),
            "seconds": round(seconds, 3),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "worker": f"{socket.gethostname()}:{os.getpid()}",
        }, marker, durable=spec.durable)
        if spec.durable:
            _fsync_dir(marker.parent)
        pending.unlink(missing_ok=True)
        result.update(status="done", masks=len(records))
    except Exception as err:  # noqa: BLE001 — one bad image must not stop the job
        text = " ".join(str(err).split()) or type(err).__name__
        result["error"] = f"{type(err).__name__}: {text}"
    result["seconds"] = time.perf_counter() - start
    return result


# --------------------------------------------------------------------------------------------- the model
def _import_object(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"generator {spec!r} must be MODULE:CLASS, e.g. {DEFAULT_GENERATOR}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        hint = f" (until it is available, --generator {REFERENCE_GENERATOR} uses the reference one)" \
            if spec == DEFAULT_GENERATOR else ""
        raise ValueError(f"cannot import the mask generator {spec}: {err}{hint}") from err
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"module {module_name} has no {attr!r} (generator {spec})") from None


def _checkpoint_digest(path: Path) -> str:
    """sha256 of the file's size, first and last 8 MiB: cheap for multi-GB files, changes when weights do."""
    chunk = 8 << 20
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(chunk))
        if size > chunk:
            f.seek(max(chunk, size - chunk))
            h.update(f.read(chunk))
    return h.hexdigest()[:16]


class _NoGradGenerator:
    """Runs ``generate`` without autograd, so nothing accumulates across images."""

    def __init__(self, generator: Any) -> None:
        self.generator = generator

    def generate(self, image: Any) -> Any:
        import torch

        with torch.no_grad():
            return self.generator.generate(image)


@dataclass(frozen=True)
class GeneratorFactory:
    """Builds the model and its mask generator once per worker; picklable, so Ray actors can call it.

    Args:
        checkpoint: SAM checkpoint for :func:`promptseg.hub.load_model` (None: the bundled default model,
            which raises :class:`promptseg.hub.NoDefaultModelError` when this build bundles none).
        generator: ``"MODULE:CLASS"`` of the generator (default promptseg's; :data:`REFERENCE_GENERATOR` is
            segment_anything's). It is called as ``CLASS(model, **options, output_mode="binary_mask")``.
        options: generator keyword arguments (``points_per_side``, ``pred_iou_thresh``, …); they override
            the preset's.
        preset: ``"default"``, ``"edges"``, ``"proposals"`` or ``"sa1b"``: the settings of ``CLASS.PRESETS``
            when the class has them (promptseg's generator), else of :data:`PRESETS`.
        device, dtype: where and in which precision the model runs (``"float32"`` or ``"bfloat16"``).
        encoder_dtype, transformer_dtype: the precisions of the image encoder and of the decoder's two-way
            transformer when they differ from ``dtype`` (None: ``dtype``).
        threads: torch intra-op threads of the worker (None: torch's default); with the local engine, for
            the run only.
        tune_allocator: raise glibc's malloc thresholds in the worker (:func:`promptseg.runtime.tune_allocator`):
            image after image, the encoder's large activations are reused instead of page-faulted in again
            (≈ 10 % of a float32 ViT-B encoding on the development CPU); the worker keeps its peak memory.
            With the local engine the worker is the calling process, which keeps the setting: pass False
            from a long-lived application that does not want it.
    """

    checkpoint: Optional[str] = None
    generator: str = DEFAULT_GENERATOR
    options: Dict[str, Any] = field(default_factory=dict)
    preset: str = "default"
    device: str = "cpu"
    dtype: str = "float32"
    encoder_dtype: Optional[str] = None
    transformer_dtype: Optional[str] = None
    threads: Optional[int] = None
    tune_allocator: bool = True

    def _checkpoint_path(self) -> Path:
        from promptseg import hub

        if self.checkpoint is None:
            path = hub.default_model_path()
            if path is None:
                hub.load_model(None)  # raises NoDefaultModelError with the message users know
                raise AssertionError("unreachable")
            return path
        path = Path(self.checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        return path

    def _dtypes(self) -> Dict[str, Any]:
        """The :func:`promptseg.hub.load_model` precision arguments (a ``ValueError`` for unknown names)."""
        from promptseg.hub import precisions

        return precisions(self.dtype, self.encoder_dtype or None, self.transformer_dtype or None)

    def check(self) -> None:
        """Fail early, in the driver, on what would fail in every worker: no model, bad device, no generator."""
        from promptseg.hub import usable_device

        self._checkpoint_path()
        usable_device(self.device, "device")
        self._dtypes()
        self.resolved_options()

    def resolved_options(self) -> Dict[str, Any]:
        """The generator keyword arguments: the preset's, updated with :attr:`options`."""
        cls = _import_object(self.generator)
        presets = getattr(cls, "PRESETS", None)
        if not isinstance(presets, dict):
            presets = PRESETS
        if self.preset not in presets:
            raise ValueError(
                f"unknown preset {self.preset!r} for {self.generator}; use one of {', '.join(presets)}"
            )
        return {**presets[self.preset], **self.options}

    def settings(self) -> Dict[str, Any]:
        """What determines the masks (for the resume fingerprint): model identity, generator and options."""
        path = self._checkpoint_path()
        options = self.resolved_options()
        return {
            "checkpoint": path.name,
            "checkpoint_digest": _checkpoint_digest(path),
            "generator": self.generator,
            "options": {k: options[k] for k in sorted(options)},
            "dtype": self.dtype,
            # only when set, so that jobs started before the option existed keep their fingerprint
            **{k: v for k, v in (("encoder_dtype", self.encoder_dtype), ("transformer_dtype", self.transformer_dtype))
               if v and v != self.dtype},
        }

    def __call__(self) -> Any:
        import torch

        from promptseg import hub

        if self.threads:
            torch.set_num_threads(int(self.threads))
        if self.tune_allocator:
            from promptseg.runtime import tune_allocator

            tune_allocator()
        model = hub.load_model(self.checkpoint, device=torch.device(self.device), **self._dtypes())
        cls = _import_object(self.generator)
        return _NoGradGenerator(cls(model, **self.resolved_options(), output_mode="binary_mask"))


# --------------------------------------------------------------------------------------------- engines
def _run_local(todo: Sequence[ImageTask], factory: Callable[[], Any], spec: OutputSpec) -> Iterator[Dict[str, Any]]:
    """Every image in this process. The factory's ``threads`` apply for the run only: the caller's torch
    thread count is restored afterwards (its allocator tuning, which glibc cannot report, stays)."""
    import torch

    threads = torch.get_num_threads()
    try:
        generator = factory()
        for task in todo:
            yield process_image(task, generator, spec)
    finally:
        torch.set_num_threads(threads)


class RayImageWorker:
    """Ray Data callable class: builds the generator once per actor, then writes each image of its batches
    with :func:`process_image` (the same function as the local engine)."""

    def __init__(self, factory: Callable[[], Any], spec: OutputSpec, force: bool = False) -> None:
        self.generator = factory()
        self.spec = spec
        self.force = force

    def __call__(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        import numpy as np

        rows = []
        for p, k, i in zip(batch["path"], batch["key"], batch["image_id"]):
            task = ImageTask(str(p), str(k), int(i))
            if not self.force and is_complete(task, self.spec):  # a block Ray retries after a worker died
                rows.append({"key": task.key, "path": task.path, "status": "skipped", "masks": 0,
                             "seconds": 0.0, "error": ""})
            else:
                rows.append(process_image(task, self.generator, self.spec))
        return {
            "key": np.array([r["key"] for r in rows], dtype=object),
            "path": np.array([r["path"] for r in rows], dtype=object),
            "status": np.array([r["status"] for r in rows], dtype=object),
            "masks": np.array([r["masks"] for r in rows], dtype=np.int64),
            "seconds": np.array([r["seconds"] for r in rows], dtype=np.float64),
            "error": np.array([r["error"] for r in rows], dtype=object),
        }


def _import_ray() -> Any:
    from promptseg.io import optional_import

    optional_import("ray.data", "the ray engine", "Ray Data", "ray")
    return optional_import("ray", "the ray engine", "Ray", "ray")


def _import_format_dependencies(formats: Sequence[str]) -> None:
    """Fail now, not after every image has been through the encoder, when ``formats`` need a missing
    optional package: pycocotools for the RLE of ``sa1b`` and ``coco``, OpenCV for ``geojson``."""
    if "sa1b" in formats or "coco" in formats:
        from promptseg.io import _pycocotools_mask

        _pycocotools_mask()
    if "geojson" in formats:
        from promptseg.amg.outputs import _cv2

        _cv2()


def _run_ray(
    todo: Sequence[ImageTask],
    factory: Callable[[], Any],
    spec: OutputSpec,
    num_workers: int,
    ray_address: Optional[str],
    cpus_per_worker: float,
    gpus_per_worker: float,
    force: bool = False,
) -> Iterator[Dict[str, Any]]:
    import inspect
    import logging

    ray = _import_ray()
    started = False
    if not ray.is_initialized():
        kwargs: Dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
        if ray_address:
            kwargs["address"] = ray_address
        else:  # a new local Ray runtime on this machine only (even if RAY_ADDRESS names a cluster)
            kwargs["address"] = "local"
            kwargs["num_cpus"] = max(os.cpu_count() or 1, int(math.ceil(num_workers * cpus_per_worker)))
        ray.init(**kwargs)
        started = True
    data_logger = logging.getLogger("ray.data")
    data_level = data_logger.level
    data_logger.setLevel(max(data_level, logging.WARNING))  # no per-dataset INFO lines under our progress bar
    ctx = ray.data.DataContext.get_current()
    progress_bars = ctx.enable_progress_bars
    ctx.enable_progress_bars = False  # ours counts images
    try:
        items = [dataclasses.asdict(t) for t in todo]
        blocks = {}
        params = inspect.signature(ray.data.from_items).parameters
        count = min(len(items), 10000)  # one image per block for small jobs: even load, steady progress
        if "override_num_blocks" in params:
            blocks["override_num_blocks"] = count
        elif "parallelism" in params:
            blocks["parallelism"] = count
        ds = ray.data.from_items(items, **blocks)
        remote: Dict[str, Any] = {"num_cpus": cpus_per_worker}
        if gpus_per_worker:
            remote["num_gpus"] = gpus_per_worker
        ds = ds.map_batches(
            RayImageWorker,
            fn_constructor_kwargs={"factory": factory, "spec": spec, "force": force},
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=num_workers),
            **remote,
        )
        for row in ds.iter_rows():
            yield {
                "key": str(row["key"]), "path": str(row["path"]), "status": str(row["status"]),
                "masks": int(row["masks"]), "seconds": float(row["seconds"]), "error": str(row["error"]),
            }
    except Exception as err:
        if type(err).__module__.startswith("ray"):
            raise BatchError(f"Ray job failed: {' '.join(str(err).split())[:2000]}") from err
        raise
    finally:
        ctx.enable_progress_bars = progress_bars
        data_logger.setLevel(data_level)
        if started:
            ray.shutdown()


# --------------------------------------------------------------------------------------------- the job
@dataclass
class BatchSummary:
    """What a run did."""

    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    masks: int = 0
    seconds: float = 0.0
    failures: List[Tuple[str, str]] = field(default_factory=list)
    out_dir: str = ""

    def lines(self) -> List[str]:
        per = f", {self.seconds / self.done:.2f} s/image" if self.done else ""
        out = [
            f"{self.total} images: {self.done} done, {self.skipped} skipped (already complete), "
            f"{self.failed} failed; {self.masks} masks; {self.seconds:.1f} s{per}",
            f"outputs: {self.out_dir}",
        ]
        out += [f"failed: {path}: {error}" for path, error in self.failures]
        return out


@contextlib.contextmanager
def _job_lock(state: Path) -> Iterator[None]:
    """One job per output folder at a time (an advisory ``flock``, released by the OS if the job dies)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    fd = os.open(state / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BatchError(
                f"another promptseg amg job is writing to {state.parent} (lock {state / 'lock'})"
            ) from None
        yield
    finally:
        os.close(fd)


_STALE_TMP = re.compile(r"^\..+\.(json|geojson|png)\.[A-Za-z0-9_]{8}\.tmp$")


def _remove_stale_temporaries(out_dir: Path) -> int:
    """Delete temporary files that an interrupted run left (``atomic_write``'s ``.NAME.XXXXXXXX.tmp``)."""
    removed = 0
    for here, _dirs, files in os.walk(out_dir):
        for name in files:
            if _STALE_TMP.match(name):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(here, name))
                    removed += 1
    return removed


def _fingerprint(settings: Dict[str, Any]) -> str:
    from promptseg.amg.outputs import dumps

    return hashlib.sha256(dumps(settings).encode("utf-8")).hexdigest()[:16]


def _merge_coco(tasks: Sequence[ImageTask], spec: OutputSpec, path: Path) -> int:
    """Concatenate the per-image COCO results of the complete images into one list (streamed)."""
    import json

    from promptseg.fileio import atomic_write

    count = 0

    def write(tmp: str) -> None:
        nonlocal count
        with open(tmp, "w", encoding="utf-8") as out:
            out.write("[")
            first = True
            for task in tasks:
                marker = read_marker(spec.out_dir, task.key)
                if marker is None or "coco" not in (marker.get("files") or {}):
                    continue
                try:
                    with open(Path(spec.out_dir) / marker["files"]["coco"], "r", encoding="utf-8") as f:
                        entries = json.load(f)
                except (OSError, ValueError):
                    continue
                for entry in entries:
                    out.write(("" if first else ",") + json.dumps(entry, separators=(",", ":")))
                    first = False
                    count += 1
            out.write("]\n")

    atomic_write(path, write, durable=spec.durable)
    return count


def run_batch(
    inputs: Sequence[PathLike],
    out_dir: PathLike,
    generator_factory: Callable[[], Any],
    formats: Sequence[str] = FORMATS,
    *,
    polygon_tolerance: float = 1.0,
    geotransform: Optional[Sequence[float]] = None,
    crs: Optional[str] = None,
    georef: bool = False,
    engine: str = "local",
    num_workers: int = 1,
    ray_address: Optional[str] = None,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
    settings: Optional[Dict[str, Any]] = None,
    force: bool = False,
    progress: bool = True,
    durable: bool = True,
    merge_coco: bool = True,
    stream: Optional[TextIO] = None,
) -> BatchSummary:
    """Run the automatic mask generator over ``inputs`` and write ``formats`` under ``out_dir``.

    Args:
        inputs: image files, folders, ``.txt`` lists (see :func:`collect_images`).
        out_dir: output folder (created); layout in the module docstring.
        generator_factory: zero-argument callable returning an object with ``generate(image) -> records``;
            called once per worker (once in all for the local engine). A :class:`GeneratorFactory` also
            gives its :meth:`~GeneratorFactory.settings` to the resume fingerprint and is checked before the
            run; for Ray it must be picklable.
        formats: any of :data:`promptseg.amg.outputs.FORMATS`.
        polygon_tolerance: Douglas–Peucker tolerance of the GeoJSON polygons, in pixels.
        geotransform, crs: GDAL geotransform (and CRS name) for every image's GeoJSON; ``georef=True``
            reads each image's world file or GeoTIFF tags instead (images without stay in pixels).
        engine: ``"local"`` (a loop in this process) or ``"ray"`` (Ray Data, ``num_workers`` actors of
            ``cpus_per_worker`` CPUs and ``gpus_per_worker`` GPUs each; a local Ray runtime unless
            ``ray_address`` names a cluster, or Ray is already initialised by the caller).
        settings: extra values for the resume fingerprint (changing them redoes every image).
        force: process every image, even complete ones.
        progress: show a tqdm progress bar on ``stream`` (default stderr).
        durable: fsync files and folders before each completion marker (survives power loss, not only
            ``kill -9``); ``False`` is faster on slow disks.
        merge_coco: with the ``coco`` format, write ``OUT/coco_results.json`` at the end.

    Returns a :class:`BatchSummary`; failed images are listed there and do not stop the job.
    """
    from tqdm import tqdm

    stream = stream if stream is not None else sys.stderr
    formats = tuple(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"unknown output format(s) {unknown}; choose from {', '.join(FORMATS)}")
    if not (polygon_tolerance >= 0 and math.isfinite(polygon_tolerance)):
        raise ValueError(f"polygon tolerance must be a finite number ≥ 0 pixels, got {polygon_tolerance}")
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
    if num_workers < 1:
        raise ValueError(f"num_workers must be ≥ 1, got {num_workers}")
    if geotransform is not None:
        from promptseg.amg.outputs import _geotransform

        geotransform = _geotransform(geotransform)
    if engine == "ray":
        _import_ray()
    _import_format_dependencies(formats)

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {out} exists and is not a directory")
    tasks = plan(inputs, out)
    state = out / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    summary = BatchSummary(total=len(tasks), out_dir=str(out))
    with _job_lock(state):
        _remove_stale_temporaries(out)
        masks: Dict[str, Any] = {"settings": settings or {}}
        describe = getattr(generator_factory, "settings", None)
        if callable(describe):
            masks["generator"] = describe()
        geo: Dict[str, Any] = {
            "polygon_tolerance": float(polygon_tolerance),
            "geotransform": list(geotransform) if geotransform is not None else None,
            "crs": crs,
            "georef": bool(georef),
        }
        spec = OutputSpec(  # absolute: Ray workers on other machines or in another working_dir resolve it alike
            out_dir=str(out.absolute()), formats=formats, polygon_tolerance=float(polygon_tolerance),
            geotransform=geotransform, crs=crs, georef=georef, fingerprint=_fingerprint(masks),
            geojson_fingerprint=_fingerprint(geo), durable=durable,
        )
        from promptseg import __version__

        write_json({"promptseg": __version__, "formats": list(formats), "images": len(tasks),
                    "fingerprint": spec.fingerprint, "geojson_fingerprint": spec.geojson_fingerprint,
                    **masks, **geo}, state / "job.json")
        todo = [t for t in tasks if force or not is_complete(t, spec)]
        summary.skipped = len(tasks) - len(todo)
        if todo:
            check = getattr(generator_factory, "check", None)
            if callable(check):
                check()
            if engine == "local":
                results = _run_local(todo, generator_factory, spec)
            else:
                results = _run_ray(todo, generator_factory, spec, num_workers, ray_address, cpus_per_worker,
                                   gpus_per_worker, force)
            bar = tqdm(total=len(todo), desc="amg", unit="img", file=stream, disable=not progress)
            try:
                for result in results:
                    if result["status"] == "done":
                        summary.done += 1
                        summary.masks += int(result["masks"])
                    elif result["status"] == "skipped":
                        summary.skipped += 1
                    else:
                        summary.failed += 1
                        summary.failures.append((result["path"], result["error"]))
                        bar.write(f"failed: {result['path']}: {result['error']}", file=stream)
                    bar.set_postfix(masks=summary.masks, failed=summary.failed, refresh=False)
                    bar.update(1)
            finally:
                results.close()  # the engine's clean-up (thread count, Ray shutdown) now, not when garbage-collected
                bar.close()
        if merge_coco and ("coco" in formats or (out / MERGED_COCO).is_file()):  # images may have rewritten theirs
            _merge_coco(tasks, spec, out / MERGED_COCO)
        summary.seconds = time.perf_counter() - start
        write_json(dataclasses.asdict(summary), state / "summary.json")
    return summary
