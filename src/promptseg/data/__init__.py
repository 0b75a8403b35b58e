"""Training data for promptseg: dataset readers, augmentation, synthetic scenes and dataset statistics.

Sample format
-------------
Every dataset here returns the same kind of item, a plain ``dict``::

    {
        "image":    H×W×3 uint8 RGB array,
        "masks":    K×H×W bool array (K may be 0),
        "image_id": str,
        "names":    list[str] of length K, or None  (a per-mask label when the source has one: a COCO
                    category name, a mask file's stem, an emoji's Unicode name; "" for a mask without one),
        "parents":  list[int] of length K, or None  (index, in this item, of the mask that encloses mask k,
                    or -1 for a top-level mask; None when the source has no hierarchy),
    }

Transforms that drop or reorder masks (:func:`select_masks`, used by everything in
:mod:`promptseg.data.augment`) keep ``names`` and ``parents`` aligned with ``masks``: a mask whose parent
was dropped is re-attached to the nearest kept ancestor (or -1).

Datasets are map-style and work with :class:`torch.utils.data.DataLoader` (``__len__`` and
``__getitem__``; torch itself is not imported here). Each takes an optional ``transform`` callable that
receives the item and returns a new one. Items have a varying number of masks, so use
``DataLoader(..., collate_fn=list)`` (or your own collate function) rather than the default collate.

Readers (all in this package, imported lazily by attribute access):

* :class:`~promptseg.data.sa1b.SA1BDataset` — the official SA-1B layout (``sa_N.jpg`` + ``sa_N.json``),
  which is also what :mod:`promptseg.data.synth` writes.
* :class:`~promptseg.data.coco.CocoInstancesDataset` — COCO instance annotations (polygons and RLE).
* :class:`~promptseg.data.folder.MaskFolderDataset` — an image folder plus binary mask PNGs or label PNGs.

Every reader also has ``load_masks(index) -> (masks, names, parents)`` that skips decoding the image
(used by :mod:`promptseg.data.stats`).
"""

from __future__ import annotations

import operator
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

Item = Dict[str, Any]

__all__ = [
    "Item",
    "MaskDataset",
    "make_item",
    "validate_item",
    "select_masks",
    "SA1BDataset",
    "CocoInstancesDataset",
    "MaskFolderDataset",
    "LargeScaleJitter",
    "RandomHorizontalFlip",
    "Compose",
    "filter_masks",
    "generate_dataset",
    "SynthConfig",
    "compute_stats",
]


def make_item(
    image: np.ndarray,
    masks: Optional[np.ndarray],
    image_id: Any,
    names: Optional[Sequence[str]] = None,
    parents: Optional[Sequence[int]] = None,
) -> Item:
    """Build an item in the format above (``masks=None`` → no masks), converting types where needed."""
    image = np.asarray(image)
    h, w = image.shape[:2]
    if masks is None or len(masks) == 0:
        masks = np.zeros((0, h, w), dtype=bool)
    masks = np.asarray(masks)
    if masks.dtype != np.bool_:
        masks = masks > 0
    return {
        "image": image,
        "masks": masks,
        "image_id": str(image_id),
        "names": None if names is None else [str(n) for n in names],
        "parents": None if parents is None else [int(p) for p in parents],
    }


def validate_item(item: Item) -> None:
    """Raise ``ValueError`` if ``item`` does not follow the sample format (shapes, dtypes, parents)."""
    image, masks = item.get("image"), item.get("masks")
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"item['image'] must be an H×W×3 uint8 array, got {getattr(image, 'shape', type(image))}")
    h, w = image.shape[:2]
    if not isinstance(masks, np.ndarray) or masks.ndim != 3 or masks.shape[1:] != (h, w) or masks.dtype != np.bool_:
        raise ValueError(
            f"item['masks'] must be a K×{h}×{w} bool array, got "
            f"{getattr(masks, 'shape', type(masks))} {getattr(masks, 'dtype', '')}"
        )
    k = masks.shape[0]
    if not isinstance(item.get("image_id"), str):
        raise ValueError("item['image_id'] must be a str")
    for key in ("names", "parents"):
        value = item.get(key)
        if value is not None and len(value) != k:
            raise ValueError(f"item[{key!r}] has {len(value)} entries for {k} masks")
    parents = item.get("parents")
    if parents is not None:
        for i, p in enumerate(parents):
            if not (p == -1 or 0 <= p < k) or p == i:
                raise ValueError(f"item['parents'][{i}] = {p} is not -1 or the index of another mask")


def select_masks(item: Item, keep: Sequence[int]) -> Item:
    """A copy of ``item`` with only the masks at indices ``keep`` (in that order).

    ``names`` follow their masks; ``parents`` are re-indexed, and a mask whose parent is not kept gets the
    nearest kept ancestor (or -1).
    """
    keep = [int(i) for i in keep]
    out = dict(item)
    masks = item["masks"]
    out["masks"] = masks[keep] if keep else np.zeros((0,) + masks.shape[1:], dtype=bool)
    if item.get("names") is not None:
        out["names"] = [item["names"][i] for i in keep]
    parents = item.get("parents")
    if parents is not None:
        new_index = {old: new for new, old in enumerate(keep)}
        remapped = []
        for i in keep:
            p, seen = parents[i], 0
            while p != -1 and p not in new_index and seen <= len(parents):
                p, seen = parents[p], seen + 1
            remapped.append(new_index.get(p, -1))
        out["parents"] = remapped
    return out


class MaskDataset:
    """Base class of the readers: ``len``, indexing (negative indices too) and the optional ``transform``.

    Subclasses implement ``__len__``, ``load(index) -> item`` and ``load_masks(index)``.
    """

    def __init__(self, transform: Optional[Callable[[Item], Item]] = None) -> None:
        self.transform = transform

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def load(self, index: int) -> Item:  # pragma: no cover - abstract
        raise NotImplementedError

    def load_masks(self, index: int):  # pragma: no cover - abstract
        """``(masks K×H×W bool, names or None, parents or None)`` without decoding the image."""
        raise NotImplementedError

    def _check_index(self, index: int) -> int:
        n = len(self)
        try:
            given = operator.index(index)  # an integer (numpy's too), not a float truncated to one
        except TypeError:
            raise TypeError(f"dataset index must be an integer, got {type(index).__name__} {index!r}") from None
        index = given + n if given < 0 else given
        if not 0 <= index < n:
            raise IndexError(f"index {given} out of range for a dataset of {n} items")
        return index

    def __getitem__(self, index: int) -> Item:
        item = self.load(self._check_index(index))
        if self.transform is not None:
            item = self.transform(item)
        return item

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]


_LAZY = {
    "SA1BDataset": "sa1b",
    "CocoInstancesDataset": "coco",
    "MaskFolderDataset": "folder",
    "LargeScaleJitter": "augment",
    "RandomHorizontalFlip": "augment",
    "Compose": "augment",
    "filter_masks": "augment",
    "generate_dataset": "synth",
    "SynthConfig": "synth",
    "compute_stats": "stats",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_LAZY))
