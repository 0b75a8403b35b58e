"""Datasets for training: a name → factory registry and a tiny synthetic dataset.

The trainer accepts any map-style dataset whose items are dicts with

* ``"image"``: ``H×W×3`` uint8 RGB (numpy array or torch tensor),
* ``"masks"``: ``K×H×W`` bool, one GT mask per object (any extra keys are ignored).

A config names its dataset ``{"type": NAME, ...options}``; ``register_dataset(NAME, factory)`` makes
``factory(**options)`` available. Built in:

* ``"synthetic-shapes"`` — :class:`SyntheticShapes`, random ellipses and rectangles (tests, debugging);
* ``"synth"`` — :class:`SynthScenes`, the scenes of :mod:`promptseg.data.synth` generated on the fly in
  the loader's workers (no files: an unbounded, deterministic stream for GPU runs that outpace a disk set);
* ``"sa1b"`` — :class:`promptseg.data.SA1BDataset` (``root``: one folder or a list, concatenated;
  also what ``promptseg.data.synth`` writes);
* ``"coco"`` — :class:`promptseg.data.CocoInstancesDataset` (``images_dir``, ``annotations_json``);
* ``"folder"`` — :class:`promptseg.data.MaskFolderDataset` (``images_dir``, ``masks_dir``).

The readers of :mod:`promptseg.data` are imported only when a dataset is built.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from promptseg.config_utils import check_value_types

DatasetFactory = Callable[..., Any]
_REGISTRY: Dict[str, DatasetFactory] = {}


def register_dataset(name: str, factory: DatasetFactory, *, overwrite: bool = False) -> None:
    """Make ``{"type": name, ...}`` in a train config build ``factory(**options)``."""
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"dataset type {name!r} is already registered")
    _REGISTRY[name] = factory


def dataset_types() -> Tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def check_dataset_options(name: str, options: Mapping[str, Any], where: str = "dataset") -> None:
    """Fail early (at config time) on an unknown type or options its factory does not accept."""
    if name not in _REGISTRY:
        raise ValueError(f"{where}: unknown dataset type {name!r}; registered: {list(dataset_types())}")
    try:
        inspect.signature(_REGISTRY[name]).bind(**options)
    except TypeError as err:
        raise ValueError(f"{where} ({name!r}): {err}") from err
    except ValueError:  # no signature available (builtins): checked when built
        pass
    factory = _REGISTRY[name]
    try:  # the options' JSON types against the factory's annotations (a string for a count fails now, named)
        hints = typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory)
    except Exception:  # noqa: BLE001 - unresolvable annotations: the factory checks its own arguments
        return
    check_value_types(hints, options, f"{where} ({name!r})")


def build_dataset(name: str, options: Mapping[str, Any]) -> Any:
    check_dataset_options(name, options)
    return _REGISTRY[name](**options)


class SyntheticShapes:
    """Random filled ellipses and rectangles on a noisy background, generated once, in memory.

    Each item: ``{"image": H×W×3 uint8, "masks": K×H×W bool, "index": i}``; shapes are drawn in
    order, later ones occluding earlier ones; every mask is the *visible* part of its shape and masks
    that end up smaller than ``min_area`` pixels are dropped. Deterministic in ``seed``.
    """

    def __init__(
        self,
        num_images: int = 64,
        height: int = 48,
        width: int = 64,
        max_shapes: int = 4,
        min_area: int = 16,
        seed: int = 0,
    ) -> None:
        if num_images < 1 or height < 8 or width < 8 or max_shapes < 1:
            raise ValueError("synthetic-shapes needs num_images ≥ 1, height/width ≥ 8 and max_shapes ≥ 1")
        self.items = [self._make(np.random.default_rng([seed, i]), height, width, max_shapes, min_area, i)
                      for i in range(num_images)]

    @staticmethod
    def _make(rng: np.random.Generator, h: int, w: int, max_shapes: int, min_area: int, index: int) -> dict:
        yy, xx = np.mgrid[0:h, 0:w]
        image = np.empty((h, w, 3), np.float32)
        image[:] = rng.uniform(0, 255, size=3)
        owner = np.full((h, w), -1, np.int64)
        count = int(rng.integers(1, max_shapes + 1))
        for k in range(count):
            cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
            ry, rx = rng.uniform(0.1, 0.35) * h, rng.uniform(0.1, 0.35) * w
            if rng.uniform() < 0.5:
                inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
            else:
                inside = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
            owner[inside] = k
            image[inside] = rng.uniform(0, 255, size=3)
        image += rng.normal(0, 8, size=image.shape)
        masks = np.stack([owner == k for k in range(count)])
        masks = masks[masks.reshape(count, -1).sum(1) >= min_area]
        return {
            "image": np.clip(np.round(image), 0, 255).astype(np.uint8),
            "masks": masks.astype(bool).reshape(-1, h, w),
            "index": index,
        }

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]


class SynthScenes:
    """Scenes of :func:`promptseg.data.synth.generate_scene` made when asked for, never written.

    Item ``i`` is scene ``start + i`` of the stream ``seed`` — the same scene ``promptseg data synth
    --seed SEED --start START`` writes as ``sa_<start+i>`` — passed through the same JPEG encoding
    (``jpeg=True``), so training on it equals training on the written set read back with the ``"sa1b"``
    type. ``size`` and ``split`` are the generator's; ``config`` holds any other
    :class:`~promptseg.data.synth.SynthConfig` field (unknown keys raise). The photos and the emoji font
    are loaded once per process, on the first item (DataLoader workers each load their own).

    Each item: ``{"image": H×W×3 uint8, "masks": K×H×W bool, "index": i}``.
    """

    def __init__(self, num_images: int, seed: int = 0, start: int = 0, size: int = 256, split: str = "train",
                 jpeg: bool = True, config: Optional[Mapping[str, Any]] = None) -> None:
        from promptseg.config_utils import check_unknown_keys
        from promptseg.data.synth import SynthConfig

        if int(num_images) < 1:
            raise ValueError(f"synth: num_images must be ≥ 1, got {num_images}")
        if int(start) < 0:
            raise ValueError(f"synth: start must be ≥ 0, got {start}")
        options = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(config or {}).items()}  # JSON lists
        check_unknown_keys(SynthConfig, options, "synth.config")
        for key in ("size", "split"):
            if key in options:
                raise ValueError(f"synth: give {key!r} as the dataset's own option, not inside 'config'")
        self.config = SynthConfig(size=int(size), split=split, **options)
        self.config.validate()
        self.num_images, self.seed, self.start, self.jpeg = int(num_images), int(seed), int(start), bool(jpeg)
        self._resources: Any = None

    def __len__(self) -> int:
        return self.num_images

    def __getstate__(self) -> Dict[str, Any]:  # workers load their own resources (spawn-safe, small pickle)
        return {**self.__dict__, "_resources": None}

    def __getitem__(self, index: int) -> dict:
        from promptseg.data.synth import encode_jpeg, generate_scene, load_resources, one_opencv_thread
        from promptseg.io import decode_image

        if not 0 <= index < self.num_images:
            raise IndexError(f"synth: index {index} out of range [0, {self.num_images})")
        if self._resources is None:
            self._resources = load_resources(self.config)
            from torch.utils.data import get_worker_info

            if get_worker_info() is not None:  # a DataLoader worker
                one_opencv_thread()
        scene = generate_scene(self.start + index, self.seed, self.config, self._resources)
        image = decode_image(encode_jpeg(scene.image, scene.jpeg_quality)) if self.jpeg else scene.image
        masks = scene.masks.reshape(-1, *image.shape[:2]).astype(bool, copy=False)
        return {"image": image, "masks": masks, "index": index}


def _concat(parts: List[Any]) -> Any:
    if len(parts) == 1:
        return parts[0]
    from torch.utils.data import ConcatDataset

    return ConcatDataset(parts)


def _paths(value: Union[str, Sequence[str]]) -> List[str]:
    return [value] if isinstance(value, str) else [str(v) for v in value]


def sa1b(root: Union[str, Sequence[str]], pattern: str = "sa_*.json", min_area: int = 0) -> Any:
    """``promptseg.data.SA1BDataset`` over one folder or several (concatenated): ``sa_N.jpg`` + ``sa_N.json``."""
    from promptseg.data.sa1b import SA1BDataset

    roots = _paths(root)
    if not roots:
        raise ValueError("sa1b: root must be a folder or a non-empty list of folders, got []")
    return _concat([SA1BDataset(r, pattern=pattern, min_area=min_area) for r in roots])


def coco(images_dir: str, annotations_json: str, include_crowd: bool = False, min_area: int = 0) -> Any:
    """``promptseg.data.CocoInstancesDataset`` (images without annotations are skipped)."""
    from promptseg.data.coco import CocoInstancesDataset

    return CocoInstancesDataset(images_dir, annotations_json, include_crowd=include_crowd, skip_empty=True,
                                min_area=min_area)


def folder(images_dir: str, masks_dir: str, min_area: int = 0) -> Any:
    """``promptseg.data.MaskFolderDataset``: an image folder plus binary-mask or label PNGs."""
    from promptseg.data.folder import MaskFolderDataset

    return MaskFolderDataset(images_dir, masks_dir, min_area=min_area)


register_dataset("synthetic-shapes", SyntheticShapes)
register_dataset("synth", SynthScenes)
register_dataset("sa1b", sa1b)
register_dataset("coco", coco)
register_dataset("folder", folder)
