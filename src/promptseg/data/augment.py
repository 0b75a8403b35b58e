"""Augmentation and mask filtering for training items (see :mod:`promptseg.data` for the item format).

* :class:`LargeScaleJitter` — large-scale jitter (Ghiasi et al., used by SAM, paper §A): resize so that the
  long side is ``s × output_size`` with ``s`` drawn uniformly from ``scale`` (default [0.1, 2.0]), then a
  random ``output_size × output_size`` crop where the image is larger and padding at the bottom/right where
  it is smaller. Masks go through exactly the same geometry; masks left empty are dropped.
* :class:`RandomHorizontalFlip` — mirror image and masks with probability ``p``.
* :func:`filter_masks` — drop masks covering more than ``max_area_frac`` of the image (SAM drops those
  above 90 %, §A) and masks smaller than ``min_area`` pixels.

Random transforms take a :class:`numpy.random.Generator` (or a seed) at construction, and ``__call__``
accepts ``rng=`` to override it for one call, so results are reproducible. With a multi-worker
``DataLoader`` each worker gets a copy of the generator, made anew every epoch: call
``transform.reseed(torch.utils.data.get_worker_info().seed)`` (the loader's base seed of this epoch plus the
worker id) in ``worker_init_fn`` so that workers do not repeat each other and epochs differ (a fixed
``seed + worker_id`` repeats the same augmentations every epoch).

Resizing uses OpenCV (``pip install promptseg[cv]``); image resampling is area-averaging when shrinking
and bilinear when enlarging, and masks are resampled the same way and thresholded at one half, so a
mask's boundary stays where the image's object boundary goes.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence, Tuple, Union

import numpy as np

from promptseg.data import Item, select_masks

RngLike = Union[None, int, np.random.Generator]


def _rng(rng: RngLike) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _cv2() -> Any:
    from promptseg.io import import_cv2

    return import_cv2("augmentation")


def _area(masks: np.ndarray) -> np.ndarray:
    return masks.reshape(len(masks), -1).sum(axis=1) if len(masks) else np.zeros(0, dtype=np.int64)


def filter_masks(item: Item, max_area_frac: float = 0.9, min_area: int = 16) -> Item:
    """Drop masks covering more than ``max_area_frac`` of the image or fewer than ``min_area`` pixels.

    The fraction is of all pixels of ``item["image"]`` (for padded items that includes the padding).
    ``names`` and ``parents`` are kept aligned (see :func:`promptseg.data.select_masks`).
    """
    masks = item["masks"]
    h, w = masks.shape[1:] if masks.ndim == 3 else item["image"].shape[:2]
    area = _area(masks)
    keep = np.flatnonzero((area <= max_area_frac * h * w) & (area >= min_area))
    if len(keep) == len(masks):
        return dict(item)
    return select_masks(item, keep.tolist())


class _Random:
    def __init__(self, rng: RngLike = None) -> None:
        self.rng = _rng(rng)

    def reseed(self, seed: RngLike) -> None:
        """Replace the generator (e.g. per DataLoader worker)."""
        self.rng = _rng(seed)


class LargeScaleJitter(_Random):
    """Large-scale jitter: random resize of the long side to ``[scale[0], scale[1]] × output_size``, then a
    random crop / bottom-right padding to ``output_size × output_size``.

    Args:
        output_size: side of the square output.
        scale: range of the long side relative to ``output_size`` (uniform).
        pad_value: fill value for padded image pixels (masks are padded with False).
        min_area: masks with fewer pixels than this after the crop are dropped (default 1: empty ones).
        rng: a ``numpy.random.Generator`` or a seed.

    The output item has ``"image"`` ``output_size×output_size×3`` and ``"valid_size"`` ``(h, w)``, the
    extent of real (unpadded) pixels from the top-left corner.
    """

    def __init__(
        self,
        output_size: int = 1024,
        scale: Tuple[float, float] = (0.1, 2.0),
        pad_value: int = 0,
        min_area: int = 1,
        rng: RngLike = None,
    ) -> None:
        super().__init__(rng)
        if output_size < 1:
            raise ValueError(f"output_size must be positive, got {output_size}")
        lo, hi = (float(s) for s in scale)
        if not 0 < lo <= hi < float("inf"):
            raise ValueError(f"scale must be (low, high) with 0 < low ≤ high < inf, got {scale}")
        pad = np.asarray(pad_value, dtype=np.float64)  # out of uint8 range, it failed at call time (OverflowError)
        if pad.shape not in ((), (3,)) or not ((pad >= 0) & (pad <= 255)).all():
            raise ValueError(f"pad_value must be in [0, 255] (or an RGB triple of such values), got {pad_value!r}")
        self.output_size, self.scale = int(output_size), (lo, hi)
        self.pad_value, self.min_area = pad_value, int(min_area)

    def __call__(self, item: Item, rng: RngLike = None) -> Item:
        cv2 = _cv2()
        g = self.rng if rng is None else _rng(rng)
        image, masks = item["image"], item["masks"]
        h, w = image.shape[:2]
        out = self.output_size
        s = float(g.uniform(*self.scale))
        f = s * out / max(h, w)
        nh, nw = max(1, int(round(h * f))), max(1, int(round(w * f)))
        y0 = int(g.integers(0, nh - out + 1)) if nh > out else 0
        x0 = int(g.integers(0, nw - out + 1)) if nw > out else 0
        ch, cw = min(out, nh), min(out, nw)
        shrink = nh * nw <= h * w

        def warp(a: np.ndarray) -> np.ndarray:
            if shrink:  # resize the whole (small) result with area averaging, then crop
                r = cv2.resize(a, (nw, nh), interpolation=cv2.INTER_AREA)
                return r[y0 : y0 + ch, x0 : x0 + cw]
            fx, fy = nw / w, nh / h  # compute only the crop: dst = f·(src + ½) − ½ − offset
            m = np.array([[fx, 0, 0.5 * fx - 0.5 - x0], [0, fy, 0.5 * fy - 0.5 - y0]], dtype=np.float64)
            return cv2.warpAffine(a, m, (cw, ch), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

        canvas = np.empty((out, out, 3), dtype=np.uint8)
        canvas[...] = np.asarray(self.pad_value, dtype=np.uint8)
        canvas[:ch, :cw] = warp(np.ascontiguousarray(image)).reshape(ch, cw, -1)[..., :3]
        new_masks = np.zeros((len(masks), out, out), dtype=bool)
        for k in range(len(masks)):
            m = warp(masks[k].astype(np.uint8) * 255)
            new_masks[k, :ch, :cw] = m >= 128
        result = dict(item)
        result["image"], result["masks"], result["valid_size"] = canvas, new_masks, (ch, cw)
        keep = np.flatnonzero(_area(new_masks) >= max(1, self.min_area))
        if len(keep) < len(new_masks):
            result = select_masks(result, keep.tolist())
        return result


class RandomHorizontalFlip(_Random):
    """Mirror image and masks left–right with probability ``p``.

    For a padded item (with ``"valid_size"``, from :class:`LargeScaleJitter`) only the valid region is
    mirrored, so the padding stays at the bottom/right.
    """

    def __init__(self, p: float = 0.5, rng: RngLike = None) -> None:
        super().__init__(rng)
        self.p = float(p)
        if not 0.0 <= self.p <= 1.0:  # NaN too (it flipped every item)
            raise ValueError(f"p must be a probability in [0, 1], got {p}")

    def __call__(self, item: Item, rng: RngLike = None) -> Item:
        g = self.rng if rng is None else _rng(rng)
        if g.random() >= self.p:
            return dict(item)
        result = dict(item)
        vw = int(item["valid_size"][1]) if "valid_size" in item else item["image"].shape[1]
        image, masks = item["image"].copy(), item["masks"].copy()
        image[:, :vw] = item["image"][:, :vw][:, ::-1]
        masks[:, :, :vw] = item["masks"][:, :, :vw][:, :, ::-1]
        result["image"], result["masks"] = image, masks
        return result


class FilterMasks:
    """:func:`filter_masks` as a transform (for :class:`Compose`)."""

    def __init__(self, max_area_frac: float = 0.9, min_area: int = 16) -> None:
        self.max_area_frac, self.min_area = max_area_frac, min_area

    def __call__(self, item: Item, rng: RngLike = None) -> Item:
        return filter_masks(item, self.max_area_frac, self.min_area)


class Compose:
    """Apply transforms in order; ``rng=`` (when given) is passed to each, and ``reseed`` reseeds all of
    them with independent streams spawned from one seed."""

    def __init__(self, transforms: Sequence[Callable[..., Item]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, item: Item, rng: RngLike = None) -> Item:
        g = None if rng is None else _rng(rng)
        for t in self.transforms:
            item = t(item, rng=g) if g is not None else t(item)
        return item

    def reseed(self, seed: RngLike) -> None:
        if isinstance(seed, np.random.Generator):
            base = None
        else:  # an int, a sequence of ints ([seed, worker_id]) or a SeedSequence, as numpy.random.default_rng takes
            base = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
        for i, t in enumerate(self.transforms):
            if hasattr(t, "reseed"):
                if base is not None:
                    t.reseed(np.random.default_rng(base.spawn(1)[0]))
                else:
                    t.reseed(np.random.default_rng(seed.integers(0, 2**63)))
