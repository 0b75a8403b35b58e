"""Reader for the SA-1B layout: ``sa_N.jpg`` + ``sa_N.json`` side by side in one folder.

Each JSON file holds::

    {"image": {"image_id": int, "width": int, "height": int, "file_name": "sa_N.jpg"},
     "annotations": [{"id": int, "segmentation": {"size": [h, w], "counts": str}, "bbox": [x, y, w, h],
                      "area": int, "predicted_iou": float, "stability_score": float,
                      "point_coords": [[x, y]], "crop_box": [x, y, w, h]}, ...]}

Annotations may carry two extra keys that promptseg's synthetic scenes write and this reader uses when
present: ``"name"`` (a label) and ``"parent"`` (the ``id`` of the enclosing annotation, or -1).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from promptseg.data import Item, MaskDataset, make_item

PathLike = Union[str, "os.PathLike[str]"]


def read_json(path: PathLike) -> Any:
    """Parse a JSON file; a missing file → ``FileNotFoundError``, bad JSON → ``ValueError`` (both name it)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot parse JSON file {path}: {err}") from err


def rle_counts(counts: Union[str, bytes]) -> np.ndarray:
    """Decode the run lengths of a compressed COCO RLE string (vectorised); ``ValueError`` if malformed.

    pycocotools does not validate its input: an empty or truncated string decodes to uninitialised memory.
    This decoder follows the same format (5-bit groups offset by 48, bit 0x20 = continuation, bit 0x10 of
    the last group = sign, counts after the second delta-coded against the one two places before).
    """
    raw = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    v = np.frombuffer(raw, dtype=np.uint8).astype(np.int64) - 48
    if v.size == 0:
        raise ValueError("empty RLE counts")
    if v.min() < 0 or v.max() > 63:
        raise ValueError("RLE counts contain characters outside the COCO alphabet")
    more = (v & 0x20) != 0
    if more[-1]:
        raise ValueError("RLE counts end in the middle of a number")
    ends = np.flatnonzero(~more)
    starts = np.concatenate([[0], ends[:-1] + 1])
    group = np.repeat(np.arange(len(starts)), ends - starts + 1)
    pos = np.arange(v.size) - starts[group]
    if pos.max() > 11:
        raise ValueError("RLE counts hold a number too large for an image")
    x = np.add.reduceat((v & 0x1F) << (5 * pos), starts)
    last = v[ends]
    length = ends - starts + 1
    x = np.where((last & 0x10) != 0, x - (np.int64(1) << (5 * length)), x)
    out = x.copy()
    if out.size > 3:
        out[1::2] = np.cumsum(x[1::2])  # counts[m] = x[m] + counts[m-2] for m ≥ 3
        out[2::2] = np.cumsum(x[2::2])
    return out


def decode_rle(rle: Any, height: int, width: int, where: str) -> np.ndarray:
    """Validated RLE → ``height×width`` bool mask; every problem is a ``ValueError`` naming ``where``."""
    from promptseg.io import rle_to_mask

    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError(f"{where}: 'segmentation' must be an RLE dict with 'size' and 'counts'")
    try:
        h, w = (int(s) for s in rle["size"])
    except (TypeError, ValueError):
        raise ValueError(f"{where}: RLE size {rle['size']!r} is not [height, width]") from None
    if (h, w) != (height, width):
        raise ValueError(f"{where}: mask size {h}×{w} differs from the image size {height}×{width}")
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        try:
            runs = rle_counts(counts)
        except (ValueError, UnicodeEncodeError) as err:
            raise ValueError(f"{where}: broken RLE: {err}") from None
        if runs.size and (runs[0] < 0 or (runs[1:] <= 0).any()):
            raise ValueError(f"{where}: broken RLE: negative or zero run lengths")
        if int(runs.sum()) != h * w:
            raise ValueError(f"{where}: broken RLE: run lengths sum to {int(runs.sum())}, expected {h}×{w} = {h * w}")
    elif isinstance(counts, list):  # uncompressed; pycocotools casts to uint32 (wraps or overflows)
        if not all(
            isinstance(c, (int, float)) and not isinstance(c, bool) and c >= 0 and float(c).is_integer() for c in counts
        ):
            raise ValueError(f"{where}: broken RLE: uncompressed counts must be non-negative integers")
    try:
        return rle_to_mask({"size": [h, w], "counts": counts})
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: broken RLE: {err}") from None


_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPG")


def _image_beside(annotation: Path) -> Path:
    """The image next to ``annotation`` with its stem (``sa_N.jpg``, else ``.jpeg`` / ``.png`` / ``.JPG``);
    the ``.jpg`` path when there is none."""
    for suffix in _IMAGE_SUFFIXES:
        if annotation.with_suffix(suffix).is_file():
            return annotation.with_suffix(suffix)
    return annotation.with_suffix(".jpg")


class SA1BDataset(MaskDataset):
    """Images and masks in the SA-1B layout (also written by ``promptseg data synth``).

    Args:
        root: the folder holding ``sa_N.jpg`` and ``sa_N.json`` (an extracted SA-1B tar file).
        transform: optional callable applied to each item.
        pattern: glob of the annotation files inside ``root`` (default ``sa_*.json``).
        min_area: drop masks with fewer pixels than this (default 0: keep all).

    Every annotation file must have its image (``image.file_name`` or ``<stem>.jpg``), and every
    ``sa_*.jpg`` its annotation file; the constructor checks this and raises ``FileNotFoundError`` naming
    the missing file. Broken RLE or a mask whose size differs from the image raise ``ValueError`` naming
    the JSON file and the annotation id when the item is loaded.
    """

    def __init__(
        self,
        root: PathLike,
        transform: Optional[Callable[[Item], Item]] = None,
        pattern: str = "sa_*.json",
        min_area: int = 0,
    ) -> None:
        super().__init__(transform)
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"SA-1B folder not found: {self.root}")
        self.min_area = int(min_area)
        self.annotation_files: List[Path] = sorted(self.root.glob(pattern), key=_natural_key)
        json_stems = {p.stem for p in self.annotation_files}
        image_pattern = pattern[: -len(".json")] + ".jpg" if pattern.endswith(".json") else "sa_*.jpg"
        for image in sorted(self.root.glob(image_pattern), key=_natural_key):
            if image.stem not in json_stems:
                raise FileNotFoundError(f"annotation file not found for image {image}: expected {image.with_suffix('.json')}")
        if not self.annotation_files:
            raise FileNotFoundError(f"no annotation files matching {pattern!r} in {self.root}")
        for ann in self.annotation_files:
            if not _image_beside(ann).is_file():  # the JSON may name another file; checked exactly when loading
                raise FileNotFoundError(f"image file not found for {ann}: expected {ann.with_suffix('.jpg')}")

    def __len__(self) -> int:
        return len(self.annotation_files)

    def _read(self, index: int) -> Tuple[Path, Dict[str, Any], Path]:
        path = self.annotation_files[index]
        data = read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("image"), dict) or not isinstance(
            data.get("annotations"), list
        ):
            raise ValueError(f"{path} is not an SA-1B annotation file: expected keys 'image' and 'annotations'")
        name = data["image"].get("file_name") or _image_beside(path).name
        image_path = path.parent / Path(str(name)).name
        if not image_path.is_file():
            raise FileNotFoundError(f"image file not found: {image_path} (named by {path})")
        return path, data, image_path

    def _decode(self, path: Path, data: Dict[str, Any], height: int, width: int):
        masks, names, parent_ids, ids = [], [], [], []
        have_names = have_parents = False
        for n, ann in enumerate(data["annotations"]):
            ann_id = ann.get("id", n) if isinstance(ann, dict) else n
            where = f"{path}, annotation id {ann_id}"
            if not isinstance(ann, dict) or "segmentation" not in ann:
                raise ValueError(f"{where}: annotation has no 'segmentation'")
            mask = decode_rle(ann["segmentation"], height, width, where)
            if self.min_area and int(mask.sum()) < self.min_area:
                continue
            masks.append(mask)
            ids.append(ann_id)
            if "name" in ann:
                have_names = True
            names.append(str(ann.get("name") or ""))
            if "parent" in ann:
                have_parents = True
            parent = ann.get("parent", -1)
            if isinstance(parent, (list, dict)):  # unhashable: a TypeError naming no file when looked up
                raise ValueError(f"{where}: 'parent' must be the id of another annotation or -1, got {parent!r}")
            parent_ids.append(parent)
        index_of = {ann_id: i for i, ann_id in enumerate(ids)}
        parents = None
        if have_parents:
            parents = []
            for i, p in enumerate(parent_ids):
                j = index_of.get(p, -1) if p is not None and p != -1 else -1
                parents.append(j if j != i else -1)
        stack = np.stack(masks) if masks else np.zeros((0, height, width), dtype=bool)
        return stack, (names if have_names else None), parents

    def _size(self, path: Path, data: Dict[str, Any]) -> Tuple[int, int]:
        info = data["image"]
        try:
            return int(info["height"]), int(info["width"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: 'image' must give integer 'height' and 'width'") from None

    def load(self, index: int) -> Item:
        from promptseg.io import read_image

        path, data, image_path = self._read(index)
        image = read_image(image_path)
        h, w = self._size(path, data)
        if image.shape[:2] != (h, w):
            raise ValueError(
                f"image {image_path} is {image.shape[0]}×{image.shape[1]} but {path} says {h}×{w}"
            )
        masks, names, parents = self._decode(path, data, h, w)
        image_id = data["image"].get("image_id", path.stem)
        return make_item(image, masks, image_id, names, parents)

    def load_masks(self, index: int):
        path, data, _ = self._read(self._check_index(index))
        h, w = self._size(path, data)
        return self._decode(path, data, h, w)


def _natural_key(path: Path) -> Tuple[Tuple[Any, ...], str]:
    """Sort ``sa_2`` before ``sa_10``; names equal as numbers (``sa_1``, ``sa_01``) by name, not by listing order."""
    import re

    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)), path.name


def write_sa1b_json(
    path: PathLike,
    image_id: Any,
    file_name: str,
    masks: Sequence[np.ndarray],
    extra: Optional[Sequence[Dict[str, Any]]] = None,
    ids: Optional[Sequence[int]] = None,
) -> Path:
    """Write an SA-1B annotation file for ``masks`` (atomically); ``extra[k]`` is merged into annotation k.

    ``point_coords`` is the mask pixel farthest from the mask's border (OpenCV distance transform when
    available, else the first pixel of the middle row); ``predicted_iou`` and ``stability_score`` are 1.0
    (exact masks) and ``crop_box`` is the whole image.
    """
    from promptseg.io import mask_bbox, mask_to_rle, save_json

    masks = list(masks)
    if not masks:
        raise ValueError("write_sa1b_json needs the image size: pass at least one mask")
    h, w = masks[0].shape
    for k, mask in enumerate(masks):
        if np.shape(mask) != (h, w):
            raise ValueError(f"write_sa1b_json ({path}): mask {k} has shape {np.shape(mask)}, mask 0 has {(h, w)}")
    for arg, values in (("extra", extra), ("ids", ids)):
        if values is not None and len(values) != len(masks):
            raise ValueError(f"write_sa1b_json ({path}): {len(values)} {arg} entries for {len(masks)} masks")
    anns = []
    for k, mask in enumerate(masks):
        ann: Dict[str, Any] = {
            "id": int(ids[k]) if ids is not None else k + 1,
            "segmentation": mask_to_rle(mask),
            "bbox": mask_bbox(mask),
            "area": int(mask.sum()),
            "predicted_iou": 1.0,
            "stability_score": 1.0,
            "point_coords": [list(inner_point(mask))],
            "crop_box": [0, 0, int(w), int(h)],
        }
        if extra is not None:
            ann.update(extra[k])
        anns.append(ann)
    doc = {"image": {"image_id": image_id, "width": int(w), "height": int(h), "file_name": file_name}, "annotations": anns}
    return save_json(doc, path)


def inner_point(mask: np.ndarray) -> Tuple[float, float]:
    """A point ``(x, y)`` well inside ``mask``: the pixel centre farthest from the background."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return (0.0, 0.0)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = np.pad(mask[y0:y1, x0:x1], 1).astype(np.uint8)
    try:
        import cv2

        dist = cv2.distanceTransform(crop, cv2.DIST_L2, 5)
        y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
        return (float(x0 + x - 1), float(y0 + y - 1))
    except ImportError:
        mid = ys.size // 2
        return (float(xs[mid]), float(ys[mid]))
