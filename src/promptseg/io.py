"""Files in and out: images, mask PNGs, overlays, COCO RLE and JSON.

Nothing heavy is imported here: torch is never needed, and ``pycocotools`` (for RLE) is imported on first
use with a clear message naming the extra to install. Every file this module writes is written atomically
(temporary file + rename, :func:`promptseg.checkpoint.atomic_write`), so an interrupted run never leaves a
half-written PNG or JSON behind.

Coordinates follow the predictor: ``x`` right, ``y`` down, in pixels of the original image; boxes are
``(x0, y0, x1, y1)``; a COCO ``bbox`` is ``[x, y, width, height]`` from the top-left corner.
"""

from __future__ import annotations

import json
import os
import warnings
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

PathLike = Union[str, "os.PathLike[str]"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

#: Mask colours (RGB): distinct, saturated, and none of them the green/red of the click markers.
PALETTE: Tuple[Tuple[int, int, int], ...] = (
    (30, 144, 255),  # blue
    (255, 165, 0),  # amber
    (186, 85, 255),  # violet
    (0, 206, 209),  # turquoise
    (255, 105, 180),  # pink
    (255, 236, 60),  # yellow
    (100, 110, 255),  # indigo
    (160, 120, 70),  # brown
    (0, 160, 160),  # teal
    (230, 230, 230),  # light grey
)
POSITIVE_COLOR = (40, 220, 70)
NEGATIVE_COLOR = (235, 40, 40)
MASK_ALPHA = 0.45


class MissingDependencyError(ImportError):
    """An optional dependency is needed for this feature; the message says which extra to install."""


def optional_import(module: str, needed_for: str, package: str, extra: str) -> Any:
    """``importlib.import_module(module)``; when missing, a :class:`MissingDependencyError` saying
    ``"<needed_for> needs <package>, which is not installed: pip install promptseg[<extra>]"``. When it is
    installed but fails to import (a missing system library or dependency of its own), the message says so
    and gives the import error instead of "not installed"."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        absent = isinstance(err, ModuleNotFoundError) and f"{module}.".startswith(f"{err.name}.")
        state = "which is not installed" if absent else f"which fails to import ({err})"
        raise MissingDependencyError(f"{needed_for} needs {package}, {state}: pip install promptseg[{extra}]") from err


def import_cv2(needed_for: str) -> Any:
    """OpenCV (``cv2``), or a :class:`MissingDependencyError` saying that ``needed_for`` needs it and naming
    the ``promptseg[cv]`` extra (see :func:`optional_import`)."""
    return optional_import("cv2", needed_for, "OpenCV", "cv")


def _pycocotools_mask() -> Any:
    return optional_import("pycocotools.mask", "COCO RLE", "pycocotools", "coco")


# --------------------------------------------------------------------------------------------- images
def drop_transparent(pixels: np.ndarray) -> np.ndarray:
    """A mask image's pixels with their alpha channel folded in: ``H×W×4`` (RGBA) → ``H×W×3`` and ``H×W×2``
    (grey + alpha) → ``H×W``, fully transparent pixels 0 (the background, whatever their colour); any other
    array is returned as it is."""
    if pixels.ndim != 3 or pixels.shape[2] not in (2, 4):
        return pixels
    out = np.where(pixels[..., -1:] == 0, np.zeros((), pixels.dtype), pixels[..., :-1])
    return out[..., 0] if out.shape[2] == 1 else out


def read_image(path: PathLike) -> np.ndarray:
    """Read an image file → ``H×W×3`` RGB uint8, with its EXIF orientation applied.

    Grayscale, grayscale+alpha, RGBA, palette, CMYK and 16-bit files are converted explicitly (alpha is
    dropped, 16-bit grey is scaled by 255/65535, see :func:`promptseg.transforms.to_rgb_uint8`; Pillow reads
    16-bit colour files as their high byte, at most one level lower). A missing file
    raises :class:`FileNotFoundError`, an unreadable one :class:`ValueError`; both name the file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image file not found: {path}")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, not an image file")
    # A file object, not the path: Pillow memory-maps an uncompressed one-strip grey/palette TIFF opened by
    # name with the displayed (swapped) size of an orientation 5–8 image, scrambling its pixels.
    with open(path, "rb") as f:
        return _decode_image(f, str(path))


def decode_image(data: bytes, name: str = "in memory") -> np.ndarray:
    """Encoded image bytes (JPEG, PNG, …) → ``H×W×3`` RGB uint8, exactly as :func:`read_image` decodes
    the same bytes from a file; errors name the image ``name``."""
    import io as _io

    return _decode_image(_io.BytesIO(data), name)


def _decode_image(source: Any, name: str) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    from promptseg.transforms import to_rgb_uint8

    try:
        with Image.open(source) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            array = _pil_to_array(im)
    except UnidentifiedImageError as err:
        raise ValueError(f"cannot read image {name}: not a recognised image format") from err
    except Image.DecompressionBombError as err:  # not an OSError: more pixels than PIL.Image.MAX_IMAGE_PIXELS allows
        raise ValueError(f"cannot read image {name}: {err} (raise PIL.Image.MAX_IMAGE_PIXELS to read it)") from err
    except (OSError, SyntaxError, ValueError) as err:  # truncated / corrupt files
        if isinstance(err, (FileNotFoundError, PermissionError)):
            raise
        raise ValueError(f"cannot read image {name}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from err
    try:
        return to_rgb_uint8(array, name=f"image {name}")
    except (TypeError, ValueError) as err:
        raise ValueError(f"cannot use image {name}: {err}") from err


def _pil_to_array(im: Any) -> np.ndarray:
    """A PIL image in any common mode → an array :func:`to_rgb_uint8` understands."""
    mode = im.mode
    if mode in ("RGB", "RGBA", "L"):
        return np.asarray(im)
    if mode == "LA":
        return np.asarray(im)[:, :, 0]
    if mode == "1":
        return np.asarray(im.convert("L"))
    if mode.startswith("I;16"):
        return np.asarray(im).astype(np.uint16)
    if mode == "I":  # 32-bit integer; 16-bit PNG/TIFF data often arrive this way
        arr = np.asarray(im)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ValueError(f"32-bit integer pixel values outside [0, 65535] (range {arr.min()}–{arr.max()})")
        return arr.astype(np.uint16)
    if mode == "F":
        return np.asarray(im).astype(np.float32)
    if mode == "P" and "transparency" in im.info:
        return np.asarray(im.convert("RGBA"))
    return np.asarray(im.convert("RGB"))  # P, PA, CMYK, YCbCr, LAB, HSV, …


def sample_images() -> List[Path]:
    """The sample photos bundled with promptseg (see ``promptseg/assets/README.md``), sorted by name."""
    folder = Path(str(resources.files("promptseg") / "assets"))
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


#: Prompts chosen for the bundled photos, as fractions of (width, height): a click on an object and a box
#: around another one.
_SAMPLE_PROMPTS: Dict[str, Dict[str, Any]] = {
    "astronaut": {
        "point": (0.445, 0.225),
        "point_target": "the astronaut's face",
        "box": (0.53, 0.665, 0.99, 1.0),
        "box_target": "the helmet",
    },
    "coffee": {
        "point": (0.467, 0.35),
        "point_target": "the coffee",
        "box": (0.53, 0.155, 0.715, 0.825),
        "box_target": "the spoon",
    },
}


def sample_prompts(path: PathLike, size: Tuple[int, int]) -> Dict[str, Any]:
    """A sensible point and box for an image of ``size`` ``(H, W)``: curated ones for the bundled photos,
    else the centre point and a box around the centre half.

    Returns ``{"point": (x, y), "point_target": str, "box": (x0, y0, x1, y1), "box_target": str}`` in pixels.
    """
    h, w = size
    spec = _SAMPLE_PROMPTS.get(Path(path).stem, {
        "point": (0.5, 0.5),
        "point_target": "the centre",
        "box": (0.25, 0.25, 0.75, 0.75),
        "box_target": "the centre half",
    })
    px, py = spec["point"]
    x0, y0, x1, y1 = spec["box"]
    return {
        "point": (round(px * w, 1), round(py * h, 1)),
        "point_target": spec["point_target"],
        "box": (round(x0 * w, 1), round(y0 * h, 1), round(x1 * w, 1), round(y1 * h, 1)),
        "box_target": spec["box_target"],
    }


# --------------------------------------------------------------------------------------------- writing
def _atomic(path: PathLike, write: Any) -> Path:
    from promptseg.fileio import atomic_write

    path = Path(path)
    atomic_write(path, write)
    return path


def _save_png(array: np.ndarray, path: PathLike) -> Path:
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(array))
    return _atomic(path, lambda tmp: image.save(tmp, format="PNG"))


def _as_mask(mask: Any, name: str = "mask") -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D H×W array, got shape {arr.shape}")
    if arr.dtype != np.bool_:
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise TypeError(f"{name} must be bool or numeric, got dtype {arr.dtype}")
        arr = arr > 0
    return arr


def save_mask_png(mask: np.ndarray, path: PathLike) -> Path:
    """Write an ``H×W`` mask as an 8-bit grayscale PNG: 255 inside, 0 outside (atomically)."""
    arr = _as_mask(mask)
    return _save_png(arr.astype(np.uint8) * 255, path)


def read_mask_png(path: PathLike) -> np.ndarray:
    """Read a mask PNG written by :func:`save_mask_png` (any non-zero pixel is inside) → ``H×W`` bool."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask file not found: {path}")
    with Image.open(path) as im:
        arr = np.asarray(im.convert("L"))
    return arr > 0


def save_json(obj: Any, path: PathLike) -> Path:
    """Write ``obj`` as indented UTF-8 JSON (atomically)."""
    text = json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
    return _atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


# --------------------------------------------------------------------------------------------- RLE
def mask_to_rle(mask: np.ndarray) -> Dict[str, Any]:
    """``H×W`` mask → COCO compressed RLE ``{"size": [H, W], "counts": str}`` (JSON-ready)."""
    coco_mask = _pycocotools_mask()
    arr = _as_mask(mask)
    rle = coco_mask.encode(np.asfortranarray(arr.astype(np.uint8)))
    counts = rle["counts"]
    return {"size": [int(s) for s in rle["size"]], "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def rle_to_mask(rle: Dict[str, Any]) -> np.ndarray:
    """COCO RLE (compressed ``counts`` as str/bytes, or uncompressed as a list of ints) → ``H×W`` bool."""
    coco_mask = _pycocotools_mask()
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError("an RLE must be a dict with 'size' [H, W] and 'counts'")
    h, w = (int(s) for s in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):
        if sum(counts) != h * w:
            raise ValueError(f"uncompressed RLE counts sum to {sum(counts)}, expected H×W = {h * w}")
        encoded = coco_mask.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    elif isinstance(counts, (str, bytes)):
        encoded = {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    else:
        raise TypeError(f"RLE counts must be str, bytes or a list of ints, got {type(counts).__name__}")
    with warnings.catch_warnings():  # pycocotools ≤ 2.0.11 under numpy 2: a harmless DeprecationWarning
        warnings.filterwarnings("ignore", message=r"__array__ implementation doesn't accept a copy keyword")
        return coco_mask.decode(encoded).astype(bool)


def mask_bbox(mask: np.ndarray) -> List[int]:
    """COCO ``bbox`` of a mask: ``[x, y, width, height]`` of its tight box (``[0, 0, 0, 0]`` when empty)."""
    arr = _as_mask(mask)
    rows, cols = np.flatnonzero(arr.any(axis=1)), np.flatnonzero(arr.any(axis=0))
    if rows.size == 0:
        return [0, 0, 0, 0]
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


# --------------------------------------------------------------------------------------------- overlays
def _erode(mask: np.ndarray) -> np.ndarray:
    """One step of 4-neighbour binary erosion; pixels outside the image count as background."""
    out = mask.copy()
    out[1:, :] &= mask[:-1, :]
    out[:-1, :] &= mask[1:, :]
    out[:, 1:] &= mask[:, :-1]
    out[:, :-1] &= mask[:, 1:]
    out[0, :] = out[-1, :] = False
    out[:, 0] = out[:, -1] = False
    return out


def _outline(mask: np.ndarray, width: int) -> np.ndarray:
    inner = mask
    for _ in range(width):
        inner = _erode(inner)
    return mask & ~inner


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1 or no FreeType: the small bitmap font
        return ImageFont.load_default()


def render_overlay(
    image: np.ndarray,
    masks: Optional[np.ndarray] = None,
    points: Optional[np.ndarray] = None,
    labels: Optional[np.ndarray] = None,
    boxes: Optional[np.ndarray] = None,
    scores: Optional[Sequence[float]] = None,
) -> np.ndarray:
    """Draw masks and prompts on ``image`` → ``H×W×3`` uint8.

    Args:
        image: any array :func:`promptseg.transforms.to_rgb_uint8` accepts.
        masks: ``K×H×W`` (or ``H×W``) masks; each gets its own semi-transparent colour and an outline.
        points: ``N×2`` clicks ``(x, y)``; labels: ``N`` (1 → green marker, 0 → red marker with a bar).
        boxes: ``M×4`` (or ``4``) XYXY boxes; drawn in the colour of the mask with the same index when
            there are as many boxes as masks, else in white.
        scores: ``K`` scores, written next to each mask.
    """
    from PIL import Image, ImageDraw

    from promptseg.transforms import to_rgb_uint8

    base = to_rgb_uint8(np.asarray(image))
    h, w = base.shape[:2]
    if masks is None:
        stack = np.zeros((0, h, w), dtype=bool)
    else:
        stack = np.asarray(masks)
        if stack.ndim == 2:
            stack = stack[None]
        if stack.ndim != 3 or stack.shape[1:] != (h, w):
            raise ValueError(f"masks must have shape K×{h}×{w} (the image's size), got {stack.shape}")
        stack = stack > 0 if stack.dtype != np.bool_ else stack
    k = stack.shape[0]
    if scores is not None and len(scores) != k:
        raise ValueError(f"scores must have one value per mask ({k}), got {len(scores)}")
    pts = np.zeros((0, 2)) if points is None else np.asarray(points, dtype=np.float64).reshape(-1, 2)
    lbl = np.ones(len(pts), dtype=np.int64) if labels is None else np.asarray(labels).reshape(-1).astype(np.int64)
    if len(lbl) != len(pts):
        raise ValueError(f"labels must have one value per point ({len(pts)}), got {len(lbl)}")
    bxs = np.zeros((0, 4)) if boxes is None else np.asarray(boxes, dtype=np.float64).reshape(-1, 4)

    scale = max(h, w)
    line = max(1, round(scale / 400))
    colors = [np.array(PALETTE[i % len(PALETTE)], dtype=np.float32) for i in range(k)]

    out = base.astype(np.float32)
    # Fill the largest masks first so that small ones stay visible on top.
    order = sorted(range(k), key=lambda i: -int(stack[i].sum()))
    for i in order:
        m = stack[i]
        out[m] = out[m] * (1.0 - MASK_ALPHA) + colors[i] * MASK_ALPHA
    for i in order:
        edge = _outline(stack[i], line)
        out[edge] = colors[i]
    canvas = Image.fromarray(np.clip(np.round(out), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)

    for j, (x0, y0, x1, y1) in enumerate(bxs):
        color = tuple(int(c) for c in colors[j]) if len(bxs) == k and k else (255, 255, 255)
        draw.rectangle([x0 - line, y0 - line, x1 + line, y1 + line], outline=(0, 0, 0), width=1)
        draw.rectangle([x0, y0, x1, y1], outline=color, width=line + 1)

    radius = max(5, round(scale / 70))
    for (x, y), label in zip(pts, lbl):
        if label < 0:
            continue  # padding
        fill = POSITIVE_COLOR if label == 1 else NEGATIVE_COLOR
        draw.ellipse([x - radius - 1, y - radius - 1, x + radius + 1, y + radius + 1], fill=(0, 0, 0))
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=fill, outline=(255, 255, 255), width=max(1, radius // 4))
        bar = max(1, radius // 3)
        draw.rectangle([x - radius * 0.55, y - bar / 2, x + radius * 0.55, y + bar / 2], fill=(255, 255, 255))
        if label == 1:
            draw.rectangle([x - bar / 2, y - radius * 0.55, x + bar / 2, y + radius * 0.55], fill=(255, 255, 255))

    if scores is not None and k:
        font = _font(max(10, round(scale / 45)))
        for i in range(k):
            x, y, bw, bh = mask_bbox(stack[i])
            if bw == 0:
                continue
            text = f"{float(scores[i]):.2f}" if k == 1 else f"#{i} {float(scores[i]):.2f}"
            left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
            tw, th = right - left, bottom - top
            pad = max(2, line * 2)
            tx = min(max(0, x), max(0, w - tw - 2 * pad))
            ty = y - th - 2 * pad if y - th - 2 * pad >= 0 else min(y, max(0, h - th - 2 * pad))
            draw.rectangle([tx, ty, tx + tw + 2 * pad, ty + th + 2 * pad], fill=tuple(int(c) for c in colors[i]))
            draw.text((tx + pad - left, ty + pad - top), text, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def save_overlay_png(
    image: np.ndarray,
    masks: Optional[np.ndarray],
    path: PathLike,
    points: Optional[np.ndarray] = None,
    labels: Optional[np.ndarray] = None,
    boxes: Optional[np.ndarray] = None,
    scores: Optional[Sequence[float]] = None,
) -> np.ndarray:
    """Render :func:`render_overlay` and write it as a PNG (atomically); returns the overlay array."""
    overlay = render_overlay(image, masks, points=points, labels=labels, boxes=boxes, scores=scores)
    _save_png(overlay, path)
    return overlay
