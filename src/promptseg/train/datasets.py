"""Datasets for training: a name → factory registry and a tiny synthetic dataset.

The trainer accepts any map-style dataset whose items are dicts with

* ``"image"``: ``H×W×3`` uint8 RGB (numpy array or torch tensor),
* ``"masks"``: ``K×H×W`` bool, one GT mask per object (any extra keys are ignored).

A config names its dataset ``{"type": NAME, ...options}``; ``register_dataset(NAME, factory)`` makes
``factory(**options)`` available. Built in:

* ``"synthetic-shapes"`` — :class:`SyntheticShapes`, random ellipses and rectangles (tests, debugging);
* ``"sa1b"`` — ``promptseg.data.SA1BDataset(**options)``, imported when first used.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Mapping, Tuple

import numpy as np

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


def _sa1b(**options: Any) -> Any:
    try:
        from promptseg.data import SA1BDataset  # type: ignore[attr-defined]
    except ImportError as err:  # pragma: no cover - depends on the installed package version
        raise ValueError("dataset type 'sa1b' needs promptseg.data.SA1BDataset, which is not available") from err
    return SA1BDataset(**options)


register_dataset("synthetic-shapes", SyntheticShapes)
register_dataset("sa1b", _sa1b)
