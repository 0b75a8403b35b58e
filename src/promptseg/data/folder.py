"""Reader for a folder of images plus mask PNGs.

For each image ``images_dir/<stem>.<jpg|jpeg|png>`` the masks are either

* a folder of binary PNGs, ``masks_dir/<stem>/*.png`` (any non-zero pixel is inside; for PNGs with an
  alpha channel that is not fully opaque, the alpha channel is the mask); ``names`` are the file stems; or
* one label PNG, ``masks_dir/<stem>.png``: 0 is background and each other value is one mask (8- or 16-bit
  grayscale or palette indices; for an RGB label image each colour other than black is one mask, and
  fully transparent pixels of an RGBA or grayscale+alpha one are background);
  ``names`` are the values as text (``"3"``, or ``"#ff8800"`` for RGB labels).

If both exist the folder wins. Two images with one stem are refused. ``parents`` is None.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np

from promptseg.data import Item, MaskDataset, make_item
from promptseg.io import drop_transparent

PathLike = Union[str, "os.PathLike[str]"]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _open_png(path: Path):
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise FileNotFoundError(f"mask file not found: {path}")
    try:
        im = Image.open(path)
        try:
            im.load()
        except BaseException:
            im.close()  # else the file stays open for as long as the exception (and its traceback) lives
            raise
    except UnidentifiedImageError as err:
        raise ValueError(f"cannot read mask PNG {path}: not a recognised image format") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot read mask PNG {path}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from err
    return im


def read_binary_mask(path: Path) -> np.ndarray:
    """A binary mask PNG → ``H×W`` bool (alpha channel if not fully opaque, else any non-zero value)."""
    im = _open_png(path)
    with im:
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = np.asarray(im.convert("RGBA"))
            alpha = rgba[..., 3]
            if (alpha < 255).any():
                return alpha > 0
            return rgba[..., :3].max(axis=2) > 0
        if im.mode == "P":
            return np.asarray(im) > 0  # palette index 0 = background
        arr = np.asarray(im)
        return (arr.max(axis=2) if arr.ndim == 3 else arr) > 0


def read_label_png(path: Path) -> Tuple[np.ndarray, List[str]]:
    """A label PNG → ``(K×H×W bool, names)``: one mask per non-zero value (or non-black colour)."""
    im = _open_png(path)
    with im:
        if im.mode in ("RGB", "RGBA"):
            rgb = drop_transparent(np.asarray(im)).astype(np.uint32)  # fully transparent pixels are background
            labels = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
            values = [int(v) for v in np.unique(labels) if v != 0]
            names = [f"#{v:06x}" for v in values]
        else:
            if im.mode == "LA":
                labels = drop_transparent(np.asarray(im))  # as in an RGBA label PNG
            elif im.mode in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
                labels = np.asarray(im)
            else:
                labels = np.asarray(im.convert("L"))
            if labels.ndim != 2:
                raise ValueError(f"label PNG {path} must have one channel, got shape {labels.shape}")
            values = [int(v) for v in np.unique(labels) if v != 0]
            names = [str(v) for v in values]
    if not values:
        return np.zeros((0,) + labels.shape, dtype=bool), []
    return np.stack([labels == v for v in values]), names


class MaskFolderDataset(MaskDataset):
    """Images in ``images_dir`` with masks in ``masks_dir`` (see the module docstring for the layouts).

    Args:
        images_dir: folder of images (``.jpg``, ``.jpeg``, ``.png``), sorted by name.
        masks_dir: folder of per-image mask folders and/or label PNGs.
        transform: optional callable applied to each item.
        min_area: drop masks with fewer pixels than this (default 0).

    The constructor raises ``FileNotFoundError`` for a missing folder or an image without masks (naming
    the expected paths); loading raises ``ValueError`` naming the file for an unreadable PNG or a mask
    whose size differs from its image.
    """

    def __init__(
        self,
        images_dir: PathLike,
        masks_dir: PathLike,
        transform: Optional[Callable[[Item], Item]] = None,
        min_area: int = 0,
    ) -> None:
        super().__init__(transform)
        self.images_dir, self.masks_dir = Path(images_dir), Path(masks_dir)
        for d, what in ((self.images_dir, "image"), (self.masks_dir, "mask")):
            if not d.is_dir():
                raise FileNotFoundError(f"{what} folder not found: {d}")
        self.min_area = int(min_area)
        self.images: List[Path] = sorted(
            p for p in self.images_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not self.images:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {self.images_dir}")
        stems: Dict[str, Path] = {}
        for image in self.images:
            other = stems.setdefault(image.stem, image)
            if other is not image:  # masks are matched by stem: both would get them, under one image_id
                raise ValueError(f"images {other} and {image} share the stem {image.stem!r}, which names their masks")
            self._source(image)

    def _source(self, image: Path) -> Path:
        folder = self.masks_dir / image.stem
        if folder.is_dir():
            return folder
        label = self.masks_dir / f"{image.stem}.png"
        if label.is_file():
            return label
        raise FileNotFoundError(f"no masks for image {image}: expected a folder {folder}/ of PNGs or a label PNG {label}")

    def __len__(self) -> int:
        return len(self.images)

    def _decode(self, image: Path, size: Optional[Tuple[int, int]]):
        source = self._source(image)
        if source.is_dir():
            files = sorted(p for p in source.iterdir() if p.suffix.lower() == ".png" and p.is_file())
            if not files:
                raise ValueError(f"mask folder {source} holds no PNG files (image {image})")
            masks, names = [], []
            for f in files:
                m = read_binary_mask(f)
                if size is None:
                    size = m.shape
                if m.shape != size:
                    raise ValueError(f"mask {f} is {m.shape[0]}×{m.shape[1]} but image {image} is {size[0]}×{size[1]}")
                masks.append(m)
                names.append(f.stem)
            stack = np.stack(masks)
        else:
            stack, names = read_label_png(source)
            if size is not None and stack.shape[1:] != tuple(size):
                raise ValueError(
                    f"label PNG {source} is {stack.shape[1]}×{stack.shape[2]} but image {image} is {size[0]}×{size[1]}"
                )
        if self.min_area and len(stack):
            keep = stack.reshape(len(stack), -1).sum(axis=1) >= self.min_area
            stack, names = stack[keep], [n for n, k in zip(names, keep) if k]
        return stack, names, None

    def load(self, index: int) -> Item:
        from promptseg.io import read_image

        path = self.images[index]
        image = read_image(path)
        masks, names, parents = self._decode(path, image.shape[:2])
        return make_item(image, masks, path.stem, names, parents)

    def load_masks(self, index: int):
        """Masks without reading the image (so without checking their size against it)."""
        return self._decode(self.images[self._check_index(index)], None)
