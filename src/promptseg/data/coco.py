"""Reader for COCO instance annotations (``instances_*.json``): polygons, uncompressed and compressed RLE.

pycocotools is imported on first use (``pip install promptseg[coco]``). Crowd annotations
(``iscrowd: 1``) are skipped by default: they cover groups of objects, not one object.
"""

from __future__ import annotations

import contextlib
import io as _io
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np

from promptseg.data import Item, MaskDataset, make_item
from promptseg.data.sa1b import read_json

PathLike = Union[str, "os.PathLike[str]"]


def _coco_api() -> Any:
    from promptseg.io import optional_import

    return optional_import("pycocotools.coco", "COCO annotations", "pycocotools", "coco").COCO


class CocoInstancesDataset(MaskDataset):
    """COCO-style instance segmentation: one item per image, one mask per annotation.

    Args:
        images_dir: folder with the images (``file_name`` of each COCO image is relative to it).
        annotations_json: the COCO annotation file.
        transform: optional callable applied to each item.
        include_crowd: keep ``iscrowd`` annotations (default: skip them).
        skip_empty: leave out images without any (kept) annotation (default True).
        min_area: drop masks with fewer pixels than this (default 0).

    ``names`` are the category names; ``parents`` is None (COCO has no hierarchy).
    """

    def __init__(
        self,
        images_dir: PathLike,
        annotations_json: PathLike,
        transform: Optional[Callable[[Item], Item]] = None,
        include_crowd: bool = False,
        skip_empty: bool = True,
        min_area: int = 0,
    ) -> None:
        super().__init__(transform)
        self.images_dir = Path(images_dir)
        self.annotations_json = Path(annotations_json)
        if not self.images_dir.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.images_dir}")
        data = read_json(self.annotations_json)
        if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(
            data.get("annotations"), list
        ):
            raise ValueError(f"{self.annotations_json} is not a COCO instances file: expected 'images' and 'annotations' lists")
        data.setdefault("categories", [])
        seen: Dict[Any, Any] = {}
        for img in data["images"]:  # pycocotools keeps the last image of an id and gives it every annotation
            if isinstance(img, dict) and "id" in img:
                try:
                    first = seen.setdefault(img["id"], img)
                except TypeError:
                    raise ValueError(f"{self.annotations_json}: image id {img['id']!r} is not a number or string") from None
                if first is not img:
                    raise ValueError(
                        f"{self.annotations_json}: image id {img['id']!r} is used twice "
                        f"({first.get('file_name')!r} and {img.get('file_name')!r}); image ids must be unique"
                    )
        COCO = _coco_api()
        self.coco = COCO()
        self.coco.dataset = data
        try:
            with contextlib.redirect_stdout(_io.StringIO()):  # pycocotools prints progress
                self.coco.createIndex()
        except (KeyError, TypeError) as err:
            raise ValueError(f"{self.annotations_json}: malformed COCO entry (missing {err})") from None
        self.include_crowd = bool(include_crowd)
        self.min_area = int(min_area)
        try:
            self.category_names: Dict[int, str] = {int(c["id"]): str(c.get("name", c["id"])) for c in data["categories"]}
        except (TypeError, ValueError):
            raise ValueError(f"{self.annotations_json}: every category needs an integer 'id'") from None
        self.image_ids: List[int] = []
        for image_id in sorted(self.coco.imgs):
            if skip_empty and not self._annotations(image_id):
                continue
            self.image_ids.append(image_id)

    def _annotations(self, image_id: int) -> List[Dict[str, Any]]:
        # the annotations themselves: pycocotools' id → annotation map keeps one annotation per id
        anns = list(self.coco.imgToAnns.get(image_id, []))
        if not self.include_crowd:
            anns = [a for a in anns if not a.get("iscrowd", 0)]
        return sorted(anns, key=lambda a: a.get("id", 0))

    def __len__(self) -> int:
        return len(self.image_ids)

    def _info(self, index: int) -> Dict[str, Any]:
        info = self.coco.imgs[self.image_ids[index]]
        for key in ("file_name", "height", "width"):
            if key not in info:
                raise ValueError(f"{self.annotations_json}: image id {info.get('id')} has no {key!r}")
        for key in ("height", "width"):
            value = info[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer() or value <= 0:
                raise ValueError(
                    f"{self.annotations_json}: image id {info.get('id')}: {key!r} must be a positive integer, got {value!r}"
                )
            info[key] = int(value)  # pycocotools rasterises polygons at this size and needs an int
        return info

    def _decode(self, info: Dict[str, Any]):
        h, w = int(info["height"]), int(info["width"])
        masks, names = [], []
        for ann in self._annotations(info["id"]):
            where = f"{self.annotations_json}, annotation id {ann.get('id')}"
            seg = ann.get("segmentation")
            if seg is None:
                raise ValueError(f"{where}: no 'segmentation'")
            if isinstance(seg, dict):
                from promptseg.data.sa1b import decode_rle

                mask = decode_rle(seg, h, w, where)
            else:
                if not isinstance(seg, list) or not seg or not all(
                    isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in seg
                ):
                    raise ValueError(f"{where}: a polygon must be a list of [x0, y0, x1, y1, ...] with ≥ 3 points")
                limit = 2 * max(h, w)  # pycocotools rasterises any extent: NaN, inf or 1e12 exhaust memory or crash
                if not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and -limit <= v <= limit for p in seg for v in p
                ):
                    raise ValueError(
                        f"{where}: polygon coordinates must be finite numbers in [-{limit}, {limit}] "
                        f"(twice the longer side of the {h}×{w} image)"
                    )
                try:
                    with warnings.catch_warnings():
                        warnings.filterwarnings("ignore", message=r"__array__ implementation")
                        mask = self.coco.annToMask(ann).astype(bool)
                except Exception as err:  # pycocotools raises assorted types on bad input
                    raise ValueError(f"{where}: cannot decode segmentation: {err}") from None
            if mask.shape != (h, w):
                raise ValueError(f"{where}: mask size {mask.shape[0]}×{mask.shape[1]} differs from the image size {h}×{w}")
            if self.min_area and int(mask.sum()) < self.min_area:
                continue
            masks.append(mask)
            try:
                category = int(ann.get("category_id", -1))
            except (TypeError, ValueError):
                raise ValueError(f"{where}: 'category_id' must be an integer, got {ann.get('category_id')!r}") from None
            names.append(self.category_names.get(category, ""))
        stack = np.stack(masks) if masks else np.zeros((0, h, w), dtype=bool)
        return stack, names, None

    def load(self, index: int) -> Item:
        from promptseg.io import read_image

        info = self._info(index)
        path = self.images_dir / str(info["file_name"])
        image = read_image(path)
        h, w = int(info["height"]), int(info["width"])
        if image.shape[:2] != (h, w):
            raise ValueError(f"image {path} is {image.shape[0]}×{image.shape[1]} but {self.annotations_json} says {h}×{w}")
        masks, names, parents = self._decode(info)
        return make_item(image, masks, info["id"], names, parents)

    def load_masks(self, index: int):
        return self._decode(self._info(self._check_index(index)))
