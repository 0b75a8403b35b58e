"""Colour encoding of label maps for SegGPT (seggpt.txt §3.1–3.2): several objects or categories in one call.

SegGPT reads and writes *coloured* masks: the prompt mask is an RGB image in which every object (or
category) has its own colour on a black background, and the model paints the target with the same colours.
This module turns a label map (``H×W`` ints, 0 = background, ``k`` = object/category ``k``) into such an
RGB mask and back:

* :func:`default_palette` — a fixed, well-separated palette for inference (label 1 is white, the colour of
  the official single-object examples; further labels are chosen by farthest-point sampling of the RGB cube);
* :func:`random_palette` — a random colour mapping (seeded) as used in training (§3.1, random colouring);
* :func:`encode_labels` — label map → ``H×W×3`` uint8 mask;
* :func:`decode_colors` — predicted ``H×W×3`` colours → label map by the nearest palette colour, black
  included, with an optional distance threshold under which a colour counts as a label at all;
* :func:`as_label_map` — any mask a user passes (bool, ints, ``{0, 1}`` floats, or an RGB colour mask)
  → ``(labels, colors)``; :func:`read_label_png` / :func:`save_label_png` — label maps as PNG files.

Colours are RGB uint8 triplets; distances are Euclidean in 0–255 RGB units.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional, Tuple, Union

import numpy as np

from promptseg.config_utils import is_integer
from promptseg.io import drop_transparent

PathLike = Union[str, "os.PathLike[str]"]

#: The background colour (label 0).
BACKGROUND = (0, 0, 0)
#: Grid levels of the RGB cube the fixed palette is drawn from (5³ − 1 = 124 non-black colours).
_LEVELS = (0, 64, 128, 192, 255)
#: Most labels the fixed palette can encode.
MAX_LABELS = len(_LEVELS) ** 3 - 1
#: Smallest distance of a random colour to black and to the other colours (0–255 RGB units).
RANDOM_MIN_DISTANCE = 60.0
#: An RGB mask with more distinct colours than this is not a colour-coded label mask (e.g. a JPEG).
MAX_MASK_COLORS = MAX_LABELS


# --------------------------------------------------------------------------------------------- palettes
@lru_cache(maxsize=1)
def _fixed_palette() -> np.ndarray:
    """All ``MAX_LABELS`` fixed colours, in order: greedy farthest-point sampling of the RGB grid."""
    grid = np.array([(r, g, b) for r in _LEVELS for g in _LEVELS for b in _LEVELS], dtype=np.float64)
    candidates = grid[1:]  # without black
    nearest = np.linalg.norm(candidates, axis=1)  # distance to the chosen set, which starts as {black}
    order = []
    for _ in range(len(candidates)):
        i = int(np.argmax(nearest))  # ties: the first in grid order (deterministic)
        order.append(i)
        nearest = np.minimum(nearest, np.linalg.norm(candidates - candidates[i], axis=1))
        nearest[order] = -1.0
    out = candidates[order].astype(np.uint8)
    out.setflags(write=False)
    return out


def default_palette(num_labels: int) -> np.ndarray:
    """The fixed inference palette for labels ``1..num_labels`` → ``num_labels×3`` uint8.

    Label 1 is white (the official single-object convention), then red-, green-, blue-like colours, …:
    each colour is the grid colour farthest from black and from all earlier ones, so the first colours
    are as far apart as possible and a palette of ``n`` colours is a prefix of any longer one.
    """
    num_labels = _check_count(num_labels, "num_labels")
    if num_labels > MAX_LABELS:
        raise ValueError(f"num_labels={num_labels} is more than the fixed palette holds ({MAX_LABELS} colours)")
    return _fixed_palette()[:num_labels].copy()


def random_palette(
    num_labels: int,
    seed: Union[int, np.random.Generator, None] = None,
    min_distance: float = RANDOM_MIN_DISTANCE,
) -> np.ndarray:
    """A random colour mapping for labels ``1..num_labels`` (training, §3.1) → ``num_labels×3`` uint8.

    Colours are uniform in the RGB cube, at least ``min_distance`` from black and from each other; if
    that cannot be met after many draws the distance is relaxed, so any count up to 4096 succeeds.
    ``seed`` is an int, a ``numpy.random.Generator`` or None (fresh entropy).
    """
    num_labels = _check_count(num_labels, "num_labels")
    if num_labels > 4096:
        raise ValueError(f"num_labels={num_labels} is too many colours for a random palette (at most 4096)")
    if not min_distance >= 0:
        raise ValueError(f"min_distance must be ≥ 0, got {min_distance}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    chosen = np.zeros((0, 3), dtype=np.float64)
    limit = float(min_distance)
    tries = 0
    while len(chosen) < num_labels:
        color = rng.integers(0, 256, size=3).astype(np.float64)
        ref = np.vstack([np.zeros((1, 3)), chosen])
        if np.linalg.norm(ref - color, axis=1).min() >= limit:
            chosen = np.vstack([chosen, color])
            tries = 0
            continue
        tries += 1
        if tries >= 200:  # crowded cube: accept closer colours
            limit *= 0.8
            tries = 0
    return chosen.astype(np.uint8)


def _check_count(value: Any, name: str) -> int:
    if not is_integer(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be ≥ 0, got {value}")
    return int(value)


def as_palette(palette: Any, name: str = "palette") -> np.ndarray:
    """Validate a palette → ``K×3`` uint8 (no black entry, no duplicates)."""
    arr = np.asarray(palette)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"{name} must have shape K×3 (one RGB colour per label), got {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"{name} must hold numbers (RGB 0–255), got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() > 255 or not np.array_equal(arr, np.round(arr))):
        raise ValueError(f"{name} colours must be integers in 0–255")
    arr = arr.astype(np.uint8)
    if (arr == 0).all(axis=1).any():
        raise ValueError(f"{name} must not contain black (0, 0, 0): black is the background")
    if len(np.unique(arr, axis=0)) != len(arr):
        raise ValueError(f"{name} has duplicate colours: each label needs its own colour")
    return arr


# --------------------------------------------------------------------------------------------- encode
def encode_labels(
    labels: np.ndarray,
    palette: Optional[np.ndarray] = None,
    *,
    name: str = "labels",
    allow_empty: bool = False,
) -> np.ndarray:
    """Label map ``H×W`` (0 = background, ``k`` ≥ 1 = label ``k``) → RGB mask ``H×W×3`` uint8.

    Label ``k`` gets ``palette[k - 1]`` (default: :func:`default_palette` of the largest label); the
    background is black. Raises ValueError (naming ``name``) for negative labels, more labels than the
    palette has colours, or — unless ``allow_empty`` — a map without any labelled pixel.
    """
    arr = _label_array(labels, name)
    top = int(arr.max()) if arr.size else 0
    if top == 0 and not allow_empty:
        raise ValueError(f"{name} is empty: no pixel has a label ≥ 1 (0 is the background)")
    colors = default_palette(min(top, MAX_LABELS)) if palette is None else as_palette(palette)
    if top > len(colors):
        raise ValueError(
            f"{name} has labels up to {top} but the palette has only {len(colors)} colours"
            + (f" (the fixed palette holds at most {MAX_LABELS})" if palette is None else "")
        )
    table = np.vstack([np.zeros((1, 3), np.uint8), colors])
    return table[arr]


def _label_array(labels: Any, name: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D H×W label map, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    if arr.dtype == np.bool_:
        return arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or not np.array_equal(arr, np.round(arr)):
            raise ValueError(f"{name} must hold whole-number labels, got non-integer floats")
        if arr.size and arr.max() >= 2.0**63:  # the int64 cast would wrap to a negative label
            raise ValueError(f"{name} has labels up to {arr.max():.4g}, beyond any palette")
        arr = arr.astype(np.int64)
    elif not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must be bool or integer labels, got dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} has negative labels (min {arr.min()}); use 0 for the background")
    return arr.astype(np.int64, copy=False)


# --------------------------------------------------------------------------------------------- decode
def color_distances(rgb: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Distance of every pixel to black and to each palette colour → ``(K+1)×H×W`` float32.

    ``rgb`` is ``H×W×3`` in 0–255 (uint8 or float); channel 0 of the result is the distance to black.
    """
    colors = as_palette(palette).astype(np.float32)
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"rgb must have shape H×W×3, got {arr.shape}")
    table = np.vstack([np.zeros((1, 3), np.float32), colors])  # (K+1)×3
    pix = arr.astype(np.float32)
    # |p − c|² = |p|² − 2 p·c + |c|²: one matrix product instead of a (K+1)×H×W×3 array
    sq = (pix**2).sum(-1)[None] - 2.0 * np.einsum("hwc,kc->khw", pix, table) + (table**2).sum(-1)[:, None, None]
    return np.sqrt(np.maximum(sq, 0.0)).astype(np.float32)


def labels_from_distances(distances: np.ndarray, max_distance: Optional[float] = None) -> np.ndarray:
    """``(K+1)×H×W`` distances (channel 0 = black) → ``H×W`` int32 labels by the nearest colour.

    With ``max_distance`` a pixel whose nearest colour is farther than that is background (0): colours
    the palette does not explain are not forced onto a label.
    """
    dist = np.asarray(distances)
    if dist.ndim != 3 or dist.shape[0] < 1:
        raise ValueError(f"distances must have shape (K+1)×H×W, got {dist.shape}")
    labels = dist.argmin(axis=0).astype(np.int32)
    if max_distance is not None:
        if not max_distance >= 0:
            raise ValueError(f"max_distance must be ≥ 0, got {max_distance}")
        labels[dist.min(axis=0) > max_distance] = 0
    return labels


def decode_colors(rgb: np.ndarray, palette: np.ndarray, max_distance: Optional[float] = None) -> np.ndarray:
    """Coloured mask ``H×W×3`` (0–255) → label map ``H×W`` int32 by the nearest of black + ``palette``."""
    return labels_from_distances(color_distances(rgb, palette), max_distance)


# --------------------------------------------------------------------------------------------- user masks
def colors_to_labels(rgb: np.ndarray, name: str = "mask") -> Tuple[np.ndarray, np.ndarray]:
    """Colour-coded RGB mask ``H×W×3`` → ``(labels H×W int64, colors K×3 uint8)``.

    Each distinct non-black colour is a label, numbered in sorted (R, G, B) order from 1. A mask with
    more than :data:`MAX_MASK_COLORS` colours (a photo, a JPEG-compressed mask) is refused.
    """
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"{name} must have shape H×W×3 to be a colour mask, got {arr.shape}")
    if arr.dtype != np.uint8:
        raise TypeError(f"{name} colour mask must be uint8 RGB, got dtype {arr.dtype}")
    arr = drop_transparent(arr)
    colors, inverse = np.unique(arr.reshape(-1, 3), axis=0, return_inverse=True)
    inverse = inverse.reshape(arr.shape[:2])
    keep = np.flatnonzero(~(colors == 0).all(axis=1))
    if len(keep) > MAX_MASK_COLORS:
        raise ValueError(
            f"{name} has {len(colors)} distinct colours: not a colour-coded mask (use exact colours, PNG "
            f"not JPEG, or pass a label map)"
        )
    lut = np.zeros(len(colors), np.int64)
    lut[keep] = np.arange(1, len(keep) + 1)
    return lut[inverse], colors[keep].astype(np.uint8)


def as_label_map(mask: Any, name: str = "mask") -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Any mask a user passes → ``(labels H×W int64, colors K×3 uint8 or None)``.

    * ``H×W`` bool → labels {0, 1}; ``H×W`` ints → labels as they are (0 = background);
    * ``H×W`` floats → whole numbers are labels, otherwise values in [0, 1] are thresholded at 0.5;
    * ``H×W×3`` (or ``×4``) uint8 → a colour-coded mask: each non-black colour is a label and ``colors``
      lists them (label ``k`` ↔ ``colors[k-1]``); a grey-only mask (R = G = B) is read as ``H×W``; fully
      transparent pixels of an ``×4`` (RGBA) mask are background.
    """
    arr = np.asarray(mask)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        rgb = drop_transparent(arr) if arr.dtype == np.uint8 else arr[..., :3]
        if arr.dtype == np.uint8 and (rgb == rgb[..., :1]).all():
            arr = rgb[..., 0]
        else:
            return colors_to_labels(arr, name)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be H×W (labels or binary) or H×W×3 (colour mask), got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating) and np.isfinite(arr).all() and not np.array_equal(arr, np.round(arr)):
        if arr.min() < 0 or arr.max() > 1:
            raise ValueError(f"{name} holds fractional values outside [0, 1]: pass labels or a binary mask")
        arr = arr > 0.5
    if arr.dtype == np.uint8 and arr.size and set(np.unique(arr).tolist()) in ({0, 255}, {255}):
        arr = arr > 0  # a 0/255 binary image
    return _label_array(arr, name), None


def relabel_to_palette(labels: np.ndarray, colors: np.ndarray, palette: np.ndarray, name: str = "mask") -> np.ndarray:
    """Labels of a colour mask (label ``k`` ↔ ``colors[k-1]``, from :func:`as_label_map`) → the labels of
    the same colours in ``palette`` (``K×3``; label ``k`` ↔ ``palette[k-1]``). A colour that is not in the
    palette is a ValueError naming ``name``."""
    lookup = {tuple(c): k + 1 for k, c in enumerate(np.asarray(palette).tolist())}
    missing = [tuple(c) for c in colors.tolist() if tuple(c) not in lookup]
    if missing:
        raise ValueError(f"{name} has colour(s) {missing[:3]} that are not in the palette")
    return np.array([0] + [lookup[tuple(c)] for c in colors.tolist()], np.int64)[labels]


# --------------------------------------------------------------------------------------------- files
def save_label_png(labels: np.ndarray, path: PathLike) -> Path:
    """Write a label map as a grayscale PNG, atomically: 8-bit when labels ≤ 255, else 16-bit."""
    from promptseg.io import _save_png

    arr = _label_array(labels, "labels")
    top = int(arr.max()) if arr.size else 0
    if top > 65535:
        raise ValueError(f"labels up to {top} do not fit a 16-bit PNG")
    return _save_png(arr.astype(np.uint8 if top <= 255 else np.uint16), path)


def read_label_png(path: PathLike) -> np.ndarray:
    """Read a mask image as a label map ``H×W`` int64 (0 = background).

    Palette PNGs (DAVIS) give their indices; grayscale gives its values, with a 0/255 binary mask read
    as {0, 1}; colour images give one label per distinct non-black colour (sorted RGB order).
    """
    labels, _ = as_label_map(read_mask_array(path), name=f"mask {Path(path)}")
    return labels


def read_mask_array(path: PathLike) -> np.ndarray:
    """A mask image's pixels for :func:`as_label_map`: palette indices, grey values or ``H×W×3`` RGB colours
    (kept, so that masks read from several files can share one numbering by colour); fully transparent pixels
    of an RGBA or grayscale+alpha image are background (0 / black)."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "P":
                return np.asarray(im)
            if im.mode in ("RGB", "RGBA", "LA"):  # fully transparent pixels are background
                return drop_transparent(np.asarray(im))
            if im.mode.startswith("I"):
                return np.asarray(im).astype(np.int64)
            return np.asarray(im.convert("L"))
    except OSError as err:
        if isinstance(err, (FileNotFoundError, PermissionError)):
            raise
        raise ValueError(f"cannot read mask {path}: {err}") from err
