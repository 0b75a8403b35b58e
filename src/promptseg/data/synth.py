"""Synthetic training scenes with exact masks, written in the SA-1B layout (``sa_N.jpg`` + ``sa_N.json``).

A scene is a background (a crop of a real photo or a procedural texture) with objects pasted on it, back
to front: colour emoji (Noto Color Emoji, Debian package ``fonts-noto-color-emoji``), random polygons,
smooth blobs and thin strokes. Shapes are filled with crops of real photos or procedural textures (value
noise, stripes, gradients, checkers). Objects get scale, rotation, aspect and colour jitter and a soft
shadow; the finished image gets a colour cast, sometimes defocus or motion blur, sensor noise and JPEG
compression. Sometimes a crowd of small copies of one object is added.

Masks
    An object's full mask is where its alpha is at least one half. Objects are pasted in order, so a later
    object hides earlier ones: the **visible** mask of an object is its full mask minus the full masks of
    all kept objects pasted after it. Objects hidden beyond ``max_occlusion`` (or left with fewer than
    ``min_area`` pixels) are not pasted at all. Hence the invariants (tested):

    * top-level masks (``parent == -1``) are pairwise disjoint, and each pixel of the image belongs to the
      top-level mask of the object whose colour it shows (up to the half-alpha threshold);
    * parts are nested: a part is inside its parent's (visible) mask, and parts sharing a parent are
      pairwise disjoint;
    * every mask has at least ``min_area`` pixels (parts: ``min_part_area``).

Parts (the whole / part / subpart ambiguity of the paper's Fig. 3)
    Inside an emoji, connected regions of a distinct colour (separated from their surroundings by a strong
    colour edge) become part masks, with their holes filled; a region lying inside another region's hole
    becomes a sub-part of it. Their ``parent`` is the enclosing part or the whole emoji. Parts that are
    tiny, nearly the whole of their parent, or mostly hidden are dropped.

Determinism
    Image ``index`` is generated from ``numpy.random.SeedSequence([seed, index])``: the same seed, index and
    configuration give byte-identical files, whatever the number of workers. Held-out data can be made with
    a disjoint index range (``start``) or another seed, or by emoji category: each emoji's Unicode name is
    hashed (SHA-1) into ``num_buckets`` buckets, and those in ``heldout_buckets`` form the held-out split
    (``split="heldout"``) that ``split="train"`` never uses. A categories file restricts the emoji further.
    Photos used for textures are the bundled ones (``promptseg/assets``), scikit-learn's sample images when
    scikit-learn is installed, and any given with ``photo_dirs``; installing scikit-learn therefore changes
    the scenes for a given seed (the metadata file lists the photos used).
"""

from __future__ import annotations

import colorsys
import hashlib
import math
import os
import struct
import unicodedata
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

PathLike = Union[str, "os.PathLike[str]"]

DEFAULT_EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
_FONT_CANDIDATES = (
    DEFAULT_EMOJI_FONT,
    Path("/usr/share/fonts/noto/NotoColorEmoji.ttf"),  # Arch
    Path("/usr/share/fonts/google-noto-emoji/NotoColorEmoji.ttf"),  # Fedora
    Path("/usr/share/fonts/truetype/NotoColorEmoji.ttf"),
)
#: The one size at which Noto Color Emoji's bitmaps render (136×128 pixels).
EMOJI_FONT_SIZE = 109
META_FILE = "synth_meta.json"
INSTALL_HINT = "install it with `apt-get install fonts-noto-color-emoji` (Debian/Ubuntu)"

#: Codepoints in the font that are not standalone pictures: joiners, keycap/skin-tone/hair components,
#: variation selectors, regional-indicator letters, tags and private-use glyphs.
_EXCLUDED_RANGES = (
    (0x0000, 0x1FFF),
    (0x200D, 0x200D),
    (0x20E3, 0x20E3),
    (0xE000, 0xF8FF),
    (0xFE00, 0xFE0F),
    (0x1F1E6, 0x1F1FF),
    (0x1F3FB, 0x1F3FF),
    (0x1F9B0, 0x1F9B3),
    (0xE0000, 0xE007F),
    (0xF0000, 0x10FFFF),
)


class EmojiFontNotFoundError(FileNotFoundError):
    """The colour emoji font is not installed."""


def _cv2() -> Any:
    from promptseg.io import import_cv2

    return import_cv2("scene generation")


# ================================================================================================ emoji
def find_emoji_font(path: Optional[PathLike] = None) -> Path:
    """The Noto Color Emoji font: ``path`` if given, else ``$PROMPTSEG_EMOJI_FONT``, else the usual places."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise EmojiFontNotFoundError(f"emoji font not found: {p}; {INSTALL_HINT}, or use --no-emoji")
        return p
    env = os.environ.get("PROMPTSEG_EMOJI_FONT")
    if env:
        return find_emoji_font(env)
    for p in _FONT_CANDIDATES:
        if p.is_file():
            return p
    raise EmojiFontNotFoundError(
        f"the colour emoji font NotoColorEmoji.ttf is not installed (looked in {DEFAULT_EMOJI_FONT.parent}); "
        f"{INSTALL_HINT}, set PROMPTSEG_EMOJI_FONT to its path, or use --no-emoji"
    )


def emoji_font_available() -> bool:
    try:
        find_emoji_font()
        return True
    except EmojiFontNotFoundError:
        return False


def _cmap_codepoints(path: Path) -> List[int]:
    """Codepoints mapped by a TrueType font's ``cmap`` table (formats 4 and 12)."""
    data = path.read_bytes()
    try:
        num_tables = struct.unpack(">H", data[4:6])[0]
        tables = {}
        for i in range(num_tables):
            tag, _, offset, length = struct.unpack(">4sIII", data[12 + 16 * i : 28 + 16 * i])
            tables[tag] = offset
        base = tables[b"cmap"]
        count = struct.unpack(">H", data[base + 2 : base + 4])[0]
        cps: set = set()
        for i in range(count):
            _, _, sub = struct.unpack(">HHI", data[base + 4 + 8 * i : base + 12 + 8 * i])
            b = base + sub
            fmt = struct.unpack(">H", data[b : b + 2])[0]
            if fmt == 12:
                groups = struct.unpack(">I", data[b + 12 : b + 16])[0]
                for g in range(groups):
                    start, end, _ = struct.unpack(">III", data[b + 16 + 12 * g : b + 28 + 12 * g])
                    cps.update(range(start, end + 1))
            elif fmt == 4:
                segs = struct.unpack(">H", data[b + 6 : b + 8])[0] // 2
                ends = struct.unpack(f">{segs}H", data[b + 14 : b + 14 + 2 * segs])
                starts = struct.unpack(f">{segs}H", data[b + 16 + 2 * segs : b + 16 + 4 * segs])
                for s, e in zip(starts, ends):
                    if s != 0xFFFF:
                        cps.update(range(s, e + 1))
    except (KeyError, struct.error) as err:
        raise ValueError(f"cannot read the character map of font {path}: {err}") from None
    return sorted(cps)


@lru_cache(maxsize=4)
def _font(path: str) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.truetype(path, EMOJI_FONT_SIZE)
    except OSError as err:
        raise ValueError(f"cannot load emoji font {path} at size {EMOJI_FONT_SIZE}: {err}") from None


def _render(cp: int, font_path: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    font = _font(font_path)
    left, top, right, bottom = font.getbbox(chr(cp))
    w, h = max(1, right - min(0, left)), max(1, bottom - min(0, top))
    im = Image.new("RGBA", (w + 4, h + 4), (0, 0, 0, 0))
    ImageDraw.Draw(im).text((2 - min(0, left), 2 - min(0, top)), chr(cp), font=font, embedded_color=True)
    return np.asarray(im)


@lru_cache(maxsize=4)
def emoji_codepoints(font_path: Optional[str] = None) -> Tuple[int, ...]:
    """The single-codepoint emoji the font renders as a picture (enumerated once per process, ~1 s)."""
    path = str(find_emoji_font(font_path))
    keep = []
    for cp in _cmap_codepoints(Path(path)):
        if any(lo <= cp <= hi for lo, hi in _EXCLUDED_RANGES) or not unicodedata.name(chr(cp), ""):
            continue
        alpha = _render(cp, path)[..., 3]
        if int((alpha >= 128).sum()) >= 600:  # a picture, not a speck (of ~17 000 pixels)
            keep.append(cp)
    return tuple(keep)


def emoji_name(cp: int) -> str:
    """The lower-case Unicode name of an emoji, e.g. ``"grinning face"``."""
    return unicodedata.name(chr(cp), f"U+{cp:04X}").lower()


def category_bucket(name: str, num_buckets: int = 10) -> int:
    """A stable bucket ``0 … num_buckets-1`` for a category name (SHA-1, independent of Python's hash seed)."""
    return int(hashlib.sha1(name.encode("utf-8")).hexdigest()[:8], 16) % num_buckets


def emoji_split(cp: int, heldout_buckets: Sequence[int] = (0,), num_buckets: int = 10) -> str:
    """``"heldout"`` or ``"train"`` for an emoji codepoint (by its name's bucket)."""
    return "heldout" if category_bucket(emoji_name(cp), num_buckets) in set(heldout_buckets) else "train"


def read_categories_file(path: PathLike, available: Iterable[int]) -> Tuple[int, ...]:
    """Emoji listed in a text file, one per line: the emoji itself, ``U+1F600`` or its name (``#`` comments).

    Unknown entries raise ``ValueError`` naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"categories file not found: {path}")
    by_name = {emoji_name(cp): cp for cp in available}
    avail = set(by_name.values())
    out: List[int] = []
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        cp: Optional[int] = None
        if line.upper().startswith("U+"):
            try:
                cp = int(line[2:], 16)
            except ValueError:
                cp = None
        elif len(line.replace("\ufe0f", "")) == 1:
            cp = ord(line.replace("\ufe0f", ""))
        else:
            cp = by_name.get(" ".join(line.lower().split()))
        if cp is None or cp not in avail:
            raise ValueError(f"{path}, line {n}: {line!r} is not an emoji the font renders (emoji, U+XXXX or Unicode name)")
        if cp not in out:
            out.append(cp)
    if not out:
        raise ValueError(f"categories file {path} lists no emoji")
    return tuple(out)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    cv2 = _cv2()

    padded = np.pad(mask, 1).astype(np.uint8)
    flood = np.zeros((padded.shape[0] + 2, padded.shape[1] + 2), np.uint8)
    cv2.floodFill(padded, flood, (0, 0), 2)
    return (padded != 2)[1:-1, 1:-1]


#: Colour step (max over RGB, 0–255) between neighbouring pixels that separates two emoji parts.
PART_EDGE = 40


@lru_cache(maxsize=256)
def emoji_sprite(cp: int, font_path: str) -> Tuple[np.ndarray, Tuple[Tuple[np.ndarray, int], ...]]:
    """``(rgba, parts)`` of an emoji at the font's native size, cropped to its pixels.

    ``parts`` are ``(mask, parent)`` pairs, larger first: ``mask`` is a bool array the size of ``rgba``,
    ``parent`` the index of the enclosing part in the tuple or -1 for the whole emoji.
    """
    cv2 = _cv2()

    rgba = _render(cp, font_path)
    ys, xs = np.nonzero(rgba[..., 3])
    rgba = np.ascontiguousarray(rgba[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1])
    rgb, opaque = rgba[..., :3].astype(np.int16), rgba[..., 3] >= 128
    edge = np.zeros(opaque.shape, bool)
    dx = np.abs(rgb[:, 1:] - rgb[:, :-1]).max(-1) > PART_EDGE
    dy = np.abs(rgb[1:] - rgb[:-1]).max(-1) > PART_EDGE
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    edge[1:] |= dy
    edge[:-1] |= dy
    n, labels, stats, _ = cv2.connectedComponentsWithStats((opaque & ~edge).astype(np.uint8), connectivity=4)
    total = int(opaque.sum())
    grow = edge & opaque
    cands = []
    for i in range(1, n):
        area = int(stats[i, cv2.CC_STAT_AREA])
        if area < 0.012 * total or area > 0.6 * total:
            continue
        m = labels == i
        m |= cv2.dilate(m.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & grow
        m = _fill_holes(m) & opaque
        if m.sum() <= 0.85 * total:
            cands.append(m)
    cands.sort(key=lambda m: -int(m.sum()))
    cands = cands[:10]
    parts: List[Tuple[np.ndarray, int]] = []
    for m in cands:
        parent = -1
        for j in range(len(parts) - 1, -1, -1):  # the smallest enclosing (earlier = larger) part
            pm = parts[j][0]
            if (m & pm).sum() >= 0.95 * m.sum():
                parent = j
                break
        if parent >= 0 and m.sum() > 0.85 * parts[parent][0].sum():
            continue  # nearly the same as its parent
        if parent >= 0:
            m = m & parts[parent][0]
        parts.append((m, parent))
    for m, _ in parts:
        m.setflags(write=False)
    rgba.setflags(write=False)
    return rgba, tuple(parts)


# ================================================================================================ config
def _is_weight(value: Any) -> bool:
    """A sampling weight: a real number ≥ 0 (not a bool, not a string from a JSON config)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and value >= 0


@dataclass
class SynthConfig:
    """Knobs of the scene generator (the defaults are what ``promptseg data synth`` uses)."""

    size: int = 512
    min_objects: int = 4
    max_objects: int = 20
    #: Object kinds and their weights (emoji are left out with ``emoji=False``).
    emoji: bool = True
    kind_weights: Dict[str, float] = field(default_factory=lambda: {"emoji": 0.6, "polygon": 0.15, "blob": 0.15, "stroke": 0.1})
    #: Object long side relative to the image side: log-uniform in this range.
    object_scale: Tuple[float, float] = (0.08, 0.5)
    crowd_prob: float = 0.3
    crowd_count: Tuple[int, int] = (8, 24)
    crowd_scale: Tuple[float, float] = (0.035, 0.08)
    #: Objects (and parts) with a smaller visible fraction than ``1 - max_occlusion`` are dropped.
    max_occlusion: float = 0.7
    #: Minimum mask size in pixels; 0 → ``size² / 4000`` (rounded: 66 px at 512) and half that for parts.
    min_area: int = 0
    parts: bool = True
    shadow_prob: float = 0.6
    photo_prob: float = 0.6
    #: Shapes textured with another part of the background (objects that blend in).
    camouflage_prob: float = 0.12
    blur_prob: float = 0.3
    noise_prob: float = 0.6
    jpeg_quality: Tuple[int, int] = (75, 95)
    #: Emoji categories: "all", "train" (without held-out buckets) or "heldout".
    split: str = "all"
    heldout_buckets: Tuple[int, ...] = (0,)
    num_buckets: int = 10
    #: Restrict emoji to these codepoints (e.g. from a categories file); None → all the font renders.
    categories: Optional[Tuple[int, ...]] = None
    emoji_font: Optional[str] = None
    use_photos: bool = True
    photo_dirs: Tuple[str, ...] = ()

    def validate(self) -> None:
        if self.size < 32:
            raise ValueError(f"size must be at least 32 pixels, got {self.size}")
        if not 0 <= self.min_objects <= self.max_objects:
            raise ValueError(f"need 0 ≤ min_objects ≤ max_objects, got {self.min_objects}, {self.max_objects}")
        if self.split not in ("all", "train", "heldout"):
            raise ValueError(f"split must be 'all', 'train' or 'heldout', got {self.split!r}")
        if not 0 <= self.max_occlusion < 1:
            raise ValueError(f"max_occlusion must be in [0, 1), got {self.max_occlusion}")
        lo, hi = self.object_scale
        if not 0 < lo <= hi:
            raise ValueError(f"object_scale must be (low, high) with 0 < low ≤ high, got {self.object_scale}")
        kinds = {"emoji", "polygon", "blob", "stroke"}
        if set(self.kind_weights) - kinds or not all(_is_weight(w) for w in self.kind_weights.values()):
            raise ValueError(f"kind_weights must map {sorted(kinds)} to weights ≥ 0, got {self.kind_weights}")
        if not sum(w for k, w in self.kind_weights.items() if self.emoji or k != "emoji") > 0:
            raise ValueError(f"kind_weights give every object kind weight 0 (emoji={self.emoji}): {self.kind_weights}")
        for name in ("crowd_prob", "shadow_prob", "photo_prob", "camouflage_prob", "blur_prob", "noise_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        for name, low, high in (("crowd_count", 0, math.inf), ("jpeg_quality", 1, 100)):
            a, b = getattr(self, name)
            if not low <= a <= b <= high:
                bound = "" if high == math.inf else f" ≤ {high}"
                raise ValueError(f"{name} must be (low, high) with {low} ≤ low ≤ high{bound}, got {getattr(self, name)}")
        if not 0 < self.crowd_scale[0] <= self.crowd_scale[1]:
            raise ValueError(f"crowd_scale must be (low, high) with 0 < low ≤ high, got {self.crowd_scale}")
        if self.num_buckets < 1 or any(not 0 <= b < self.num_buckets for b in self.heldout_buckets):
            raise ValueError(f"need num_buckets ≥ 1 and heldout_buckets in [0, num_buckets), got {self.num_buckets}, "
                             f"{self.heldout_buckets}")

    @property
    def mask_min_area(self) -> int:
        return int(self.min_area) if self.min_area else max(12, round(self.size**2 / 4000))

    @property
    def part_min_area(self) -> int:
        return max(8, self.mask_min_area // 2)


@dataclass
class Resources:
    """What every scene draws from: photos (RGB uint8 arrays and their names) and the emoji pool."""

    photos: List[np.ndarray]
    photo_names: List[str]
    emoji: Tuple[int, ...]
    font_path: Optional[str]


def load_photos(use_photos: bool = True, photo_dirs: Sequence[PathLike] = ()) -> Tuple[List[np.ndarray], List[str]]:
    """Photos for textures: bundled samples, scikit-learn's samples if installed, then ``photo_dirs``."""
    from promptseg.io import read_image, sample_images

    if not use_photos:
        return [], []
    photos, names = [], []
    for p in sample_images():
        photos.append(read_image(p))
        names.append(p.name)
    try:
        from sklearn.datasets import load_sample_images  # optional, never a dependency

        bunch = load_sample_images()
        for arr, fname in zip(bunch.images, bunch.filenames):
            photos.append(np.ascontiguousarray(arr[..., :3]).astype(np.uint8))
            names.append(f"sklearn:{Path(fname).name}")
    except Exception:  # not installed, or its data are missing: the bundled photos suffice
        pass
    for d in photo_dirs:
        d = Path(d)
        if not d.is_dir():
            raise FileNotFoundError(f"photo folder not found: {d}")
        for p in sorted(d.iterdir()):
            if p.suffix.lower() in (".jpg", ".jpeg", ".png") and p.is_file():
                photos.append(read_image(p))
                names.append(f"{d.name}/{p.name}")
    return photos, names


def emoji_pool(config: SynthConfig) -> Tuple[Tuple[int, ...], Optional[str]]:
    """The emoji a configuration may use (after split and categories) and the font path."""
    if not config.emoji:
        return (), None
    font = str(find_emoji_font(config.emoji_font))
    cps = emoji_codepoints(font)
    if config.categories is not None:
        allowed = set(config.categories)
        cps = tuple(c for c in cps if c in allowed)
    if config.split != "all":
        cps = tuple(c for c in cps if emoji_split(c, config.heldout_buckets, config.num_buckets) == config.split)
    if not cps:
        raise ValueError(f"no emoji left for split {config.split!r} with the given categories")
    return cps, font


def load_resources(config: SynthConfig) -> Resources:
    photos, names = load_photos(config.use_photos, config.photo_dirs)
    cps, font = emoji_pool(config)
    return Resources(photos, names, cps, font)


# ================================================================================================ textures
def _random_color(rng: np.random.Generator) -> np.ndarray:
    h, s, v = rng.random(), rng.uniform(0.15, 1.0), rng.uniform(0.15, 1.0)
    return np.array(colorsys.hsv_to_rgb(h, s, v), dtype=np.float32)


def _value_noise(h: int, w: int, rng: np.random.Generator, octaves: int = 4) -> np.ndarray:
    cv2 = _cv2()

    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    cells = rng.integers(2, 6)
    for _ in range(octaves):
        grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
        out += amp * cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
        total += amp
        amp *= rng.uniform(0.4, 0.65)
        cells *= 2
    out /= total
    lo, hi = out.min(), out.max()
    return (out - lo) / max(hi - lo, 1e-6)


def _photo_crop(h: int, w: int, rng: np.random.Generator, photos: List[np.ndarray], frac: Tuple[float, float]) -> np.ndarray:
    cv2 = _cv2()

    photo = photos[int(rng.integers(len(photos)))]
    ph, pw = photo.shape[:2]
    side = rng.uniform(*frac) * min(ph, pw)
    aspect = w / h * math.exp(rng.uniform(-0.2, 0.2))
    ch = int(min(ph, max(8, side / math.sqrt(aspect))))  # a photo under 8 px: all of it
    cw = int(min(pw, max(8, side * math.sqrt(aspect))))
    y0, x0 = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
    crop = photo[y0 : y0 + ch, x0 : x0 + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    interp = cv2.INTER_AREA if ch * cw > h * w else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(crop), (w, h), interpolation=interp).astype(np.float32) / 255.0


def texture(h: int, w: int, rng: np.random.Generator, photos: List[np.ndarray], photo_prob: float = 0.5,
            photo_frac: Tuple[float, float] = (0.12, 0.7)) -> np.ndarray:
    """An ``h×w×3`` float32 texture in [0, 1]: a photo crop or value noise / stripes / gradient / checkers."""
    if photos and rng.random() < photo_prob:
        return color_jitter(_photo_crop(h, w, rng, photos, photo_frac), rng, 0.25)
    kind = rng.choice(["noise", "stripes", "gradient", "checker", "flat"], p=[0.3, 0.2, 0.25, 0.1, 0.15])
    c1, c2 = _random_color(rng), _random_color(rng)
    if rng.random() < 0.5:  # two shades of one hue
        c2 = np.clip(c1 * rng.uniform(0.4, 0.8) + rng.uniform(0, 0.15), 0, 1).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "noise":
        t = _value_noise(h, w, rng)
    elif kind == "stripes":
        phi = rng.uniform(0, math.pi)
        period = rng.uniform(4, max(6, 0.3 * max(h, w)))
        u = xx * math.cos(phi) + yy * math.sin(phi)
        if rng.random() < 0.4:
            u = u + _value_noise(h, w, rng, 2) * period * 1.5
        t = 0.5 + 0.5 * np.sin(2 * math.pi * u / period)
        sharp = rng.uniform(1, 6)
        t = 1 / (1 + np.exp(-sharp * (t - 0.5) * 4))
    elif kind == "gradient":
        if rng.random() < 0.5:
            phi = rng.uniform(0, 2 * math.pi)
            u = xx * math.cos(phi) + yy * math.sin(phi)
        else:
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            u = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        t = (u - u.min()) / max(float(u.max() - u.min()), 1e-6)
    elif kind == "checker":
        cell = rng.uniform(3, max(4, 0.2 * max(h, w)))
        t = ((np.floor(xx / cell) + np.floor(yy / cell)) % 2).astype(np.float32)
    else:
        t = np.zeros((h, w), np.float32)
    out = c1[None, None] * (1 - t[..., None]) + c2[None, None] * t[..., None]
    grain = rng.uniform(0, 0.06)
    if grain > 0.01:
        out = out + (_value_noise(h, w, rng, 3)[..., None] - 0.5) * grain * 2
    return np.clip(out, 0, 1).astype(np.float32)


def color_jitter(rgb: np.ndarray, rng: np.random.Generator, strength: float = 0.2) -> np.ndarray:
    """Random brightness, contrast and saturation changes of an ``…×3`` float image in [0, 1]."""
    b = rng.uniform(1 - strength, 1 + strength)
    c = rng.uniform(1 - strength, 1 + strength)
    s = rng.uniform(1 - 1.5 * strength, 1 + 1.5 * strength)
    gray = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    out = gray[..., None] + s * (rgb - gray[..., None])
    out = (out - out.mean()) * c + out.mean()
    return np.clip(out * b, 0, 1).astype(np.float32)


def _shading(h: int, w: int, rng: np.random.Generator, amount: float) -> np.ndarray:
    phi = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u = (xx - w / 2) * math.cos(phi) + (yy - h / 2) * math.sin(phi)
    u /= max(h, w) / 2
    return (1 + amount * u).astype(np.float32)[..., None]


# ================================================================================================ objects
@dataclass
class _Object:
    rgb: np.ndarray  # h×w×3 float32, premultiplied by alpha
    alpha: np.ndarray  # h×w float32 in [0, 1]
    name: str
    kind: str
    parts: List[Tuple[np.ndarray, int]] = field(default_factory=list)  # (h×w bool, parent part or -1)
    x0: int = 0
    y0: int = 0


def _affine_warp(arrays: List[np.ndarray], sx: float, sy: float, angle: float) -> List[np.ndarray]:
    """Scale by (sx, sy) then rotate by ``angle`` degrees about the centre; output sized to fit, all
    arrays (same h×w, float32) warped identically."""
    cv2 = _cv2()

    h, w = arrays[0].shape[:2]
    if sx < 0.75 or sy < 0.75:  # area-average the big shrink first: no aliasing
        nw, nh = max(2, int(round(w * sx))), max(2, int(round(h * sy)))
        arrays = [cv2.resize(a, (nw, nh), interpolation=cv2.INTER_AREA) for a in arrays]
        sx, sy = sx * w / nw, sy * h / nh  # what is left: 1 up to rounding
        h, w = nh, nw
    t = math.radians(angle)
    c, s = math.cos(t), math.sin(t)
    a = np.array([[c * sx, -s * sy], [s * sx, c * sy]], dtype=np.float64)
    corners = np.array([[0, 0], [w, 0], [0, h], [w, h]], dtype=np.float64) - [w / 2, h / 2]
    out = corners @ a.T
    ow = int(math.ceil(out[:, 0].max() - out[:, 0].min())) + 2
    oh = int(math.ceil(out[:, 1].max() - out[:, 1].min())) + 2
    # dst = A (src + ½ − centre) + out_centre − ½ (pixel centres)
    off = np.array([ow / 2, oh / 2]) - a @ np.array([w / 2, h / 2]) + a @ [0.5, 0.5] - 0.5
    m = np.hstack([a, off[:, None]])
    return [
        cv2.warpAffine(arr, m, (ow, oh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        for arr in arrays
    ]


def _emoji_object(cp: int, long_side: float, rng: np.random.Generator, res: Resources, config: SynthConfig) -> _Object:
    rgba, parts = emoji_sprite(cp, res.font_path)
    alpha = rgba[..., 3].astype(np.float32) / 255.0
    rgb = rgba[..., :3].astype(np.float32) / 255.0
    if rng.random() < 0.85:
        rgb = color_jitter(rgb, rng, 0.15)
    if rng.random() < 0.25:  # lighting / material variation
        h, w = alpha.shape
        rgb = np.clip(rgb * (0.8 + 0.4 * _value_noise(h, w, rng, 3)[..., None]), 0, 1)
    rgb = rgb * _shading(*alpha.shape, rng, rng.uniform(0, 0.25))
    h, w = alpha.shape
    aspect = math.exp(rng.uniform(-0.15, 0.15))
    scale = long_side / max(h, w)
    angle = rng.uniform(-30, 30) if rng.random() < 0.75 else rng.uniform(-180, 180)
    arrays = [np.ascontiguousarray(rgb * alpha[..., None]), alpha]
    use_parts = config.parts and bool(parts)
    if use_parts:
        arrays += [m.astype(np.float32) for m, _ in parts]
    warped = _affine_warp(arrays, scale * math.sqrt(aspect), scale / math.sqrt(aspect), angle)
    obj = _Object(np.clip(warped[0], 0, None), np.clip(warped[1], 0, 1), emoji_name(cp), "emoji")
    if use_parts:
        obj.parts = [(w_ >= 0.5, parent) for w_, (_, parent) in zip(warped[2:], parts)]
    return obj


def _shape_alpha(kind: str, long_side: float, rng: np.random.Generator) -> np.ndarray:
    """Anti-aliased alpha of a random polygon / blob / stroke, drawn 4× supersampled."""
    cv2 = _cv2()
    from PIL import Image, ImageDraw

    ss = 4
    L = max(4.0, long_side)
    size = int(math.ceil(L)) + 4
    big = Image.new("L", (size * ss, size * ss), 0)
    draw = ImageDraw.Draw(big)
    c = size * ss / 2
    r = L * ss / 2
    if kind == "polygon":
        n = int(rng.integers(3, 10))
        angles = np.sort(rng.uniform(0, 2 * math.pi, n))
        if rng.random() < 0.5:  # near-regular
            angles = np.linspace(0, 2 * math.pi, n, endpoint=False) + rng.uniform(0, 2 * math.pi) + rng.normal(0, 0.1, n)
        radii = r * (rng.uniform(0.45, 1.0, n) if rng.random() < 0.6 else np.full(n, rng.uniform(0.8, 1.0)))
        pts = [(c + rr * math.cos(t), c + rr * math.sin(t)) for rr, t in zip(radii, angles)]
        draw.polygon(pts, fill=255)
    elif kind == "blob":
        t = np.linspace(0, 2 * math.pi, 240, endpoint=False)
        rad = np.ones_like(t)
        for k in range(1, 6):
            rad += rng.normal(0, 0.22 / k) * np.cos(k * t + rng.uniform(0, 2 * math.pi))
        rad = np.clip(rad, 0.25, None)
        rad *= r / rad.max()
        aspect = math.exp(rng.uniform(-0.5, 0.5))
        phi = rng.uniform(0, math.pi)
        x, y = rad * np.cos(t) * math.sqrt(aspect), rad * np.sin(t) / math.sqrt(aspect)
        x, y = x * math.cos(phi) - y * math.sin(phi), x * math.sin(phi) + y * math.cos(phi)
        s = r / max(np.abs(x).max(), np.abs(y).max())
        draw.polygon([(c + a * s, c + b * s) for a, b in zip(x, y)], fill=255)
    else:  # stroke: a thin cubic Bézier curve with round ends
        width = max(2.0 * ss, rng.uniform(0.03, 0.1) * L * ss)
        reach = r - width / 2
        centre = np.array([c, c])
        p = [centre + reach * rng.uniform(0.3, 1.0) * np.array([math.cos(a), math.sin(a)])
             for a in rng.uniform(0, 2 * math.pi, 4)]
        a0 = rng.uniform(0, 2 * math.pi)
        p[0] = centre + reach * np.array([math.cos(a0), math.sin(a0)])
        p[3] = 2 * centre - p[0]  # from one side of the box to the other: long and thin
        tt = np.linspace(0, 1, 64)[:, None]
        curve = ((1 - tt) ** 3) * p[0] + 3 * ((1 - tt) ** 2) * tt * p[1] + 3 * (1 - tt) * tt**2 * p[2] + tt**3 * p[3]
        pts = [tuple(q) for q in curve]
        draw.line(pts, fill=255, width=int(round(width)), joint="curve")
        for q in (pts[0], pts[-1]):
            draw.ellipse([q[0] - width / 2, q[1] - width / 2, q[0] + width / 2, q[1] + width / 2], fill=255)
    arr = np.asarray(big)
    small = cv2.resize(arr, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    ys, xs = np.nonzero(small > 0)
    if ys.size == 0:
        return np.zeros((1, 1), np.float32)
    return np.ascontiguousarray(small[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1])


def _camouflage(h: int, w: int, rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """A texture cut from elsewhere in the background, slightly changed: an object that blends in."""
    cv2 = _cv2()

    size = background.shape[0]
    ch, cw = min(size, max(4, h)), min(size, max(4, w))
    y0, x0 = int(rng.integers(0, size - ch + 1)), int(rng.integers(0, size - cw + 1))
    crop = np.ascontiguousarray(background[y0 : y0 + ch, x0 : x0 + cw])
    if rng.random() < 0.5:
        crop = np.ascontiguousarray(crop[::-1])
    crop = cv2.resize(crop, (w, h), interpolation=cv2.INTER_LINEAR)
    return color_jitter(np.clip(crop, 0, 1), rng, 0.12)


def _shape_object(kind: str, long_side: float, rng: np.random.Generator, res: Resources,
                  background: Optional[np.ndarray] = None, camouflage_prob: float = 0.0) -> _Object:
    alpha = _shape_alpha(kind, long_side, rng)
    h, w = alpha.shape
    if background is not None and rng.random() < camouflage_prob:
        rgb = _camouflage(h, w, rng, background)
    else:
        rgb = texture(h, w, rng, res.photos, photo_prob=0.5)
    rgb = rgb * _shading(h, w, rng, rng.uniform(0, 0.3))
    return _Object(np.clip(rgb, 0, 1) * alpha[..., None], alpha, kind, kind)


def _background(size: int, rng: np.random.Generator, res: Resources, config: SynthConfig) -> np.ndarray:
    if res.photos and rng.random() < config.photo_prob:
        bg = color_jitter(_photo_crop(size, size, rng, res.photos, (0.35, 1.0)), rng, 0.2)
    else:
        bg = texture(size, size, rng, [], photo_prob=0.0)
        if rng.random() < 0.5:  # blend two textures for variety
            other = texture(size, size, rng, [], photo_prob=0.0)
            t = _value_noise(size, size, rng, 2)[..., None]
            bg = bg * t + other * (1 - t)
    return (bg * _shading(size, size, rng, rng.uniform(0, 0.3))).astype(np.float32)


# ================================================================================================ scenes
@dataclass
class Scene:
    """A generated scene: ``image`` H×W×3 uint8, ``masks`` K×H×W bool, and per mask a name, the index of its
    parent mask (-1 for none) and its kind (``emoji``, ``part``, ``polygon``, ``blob``, ``stroke``)."""

    image: np.ndarray
    masks: np.ndarray
    names: List[str]
    parents: List[int]
    kinds: List[str]
    jpeg_quality: int = 90


def _window(size: int, x0: int, y0: int, h: int, w: int):
    cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(size, x0 + w), min(size, y0 + h)
    if cx0 >= cx1 or cy0 >= cy1:
        return None
    return (slice(cy0, cy1), slice(cx0, cx1)), (slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0))


def _full_mask(size: int, obj: _Object, local: np.ndarray) -> np.ndarray:
    full = np.zeros((size, size), dtype=bool)
    win = _window(size, obj.x0, obj.y0, *local.shape)
    if win is not None:
        full[win[0]] = local[win[1]]
    return full


def _plan_objects(rng: np.random.Generator, res: Resources, config: SynthConfig, background: np.ndarray) -> List[_Object]:
    size = config.size
    kinds = dict(config.kind_weights)
    if not res.emoji:
        kinds.pop("emoji", None)
    names = sorted(kinds)
    weights = np.array([kinds[k] for k in names], dtype=np.float64)
    weights /= weights.sum()

    def make(kind: str, long_side: float, cp: Optional[int] = None) -> _Object:
        if kind == "emoji":
            cp = cp if cp is not None else res.emoji[int(rng.integers(len(res.emoji)))]
            return _emoji_object(cp, long_side, rng, res, config)
        return _shape_object(kind, long_side, rng, res, background, config.camouflage_prob)

    specs: List[Tuple[float, _Object]] = []
    n = int(rng.integers(config.min_objects, config.max_objects + 1))
    lo, hi = config.object_scale
    for _ in range(n):
        long_side = size * math.exp(rng.uniform(math.log(lo), math.log(hi)))
        obj = make(str(rng.choice(names, p=weights)), long_side)
        h, w = obj.alpha.shape
        cx, cy = rng.uniform(-0.05, 1.05) * size, rng.uniform(-0.05, 1.05) * size
        obj.x0, obj.y0 = int(round(cx - w / 2)), int(round(cy - h / 2))
        specs.append((long_side * rng.uniform(0.6, 1.4), obj))
    specs.sort(key=lambda t: -t[0])  # mostly large objects at the back
    objects = [o for _, o in specs]
    if rng.random() < config.crowd_prob:
        kind = str(rng.choice(names, p=weights))
        cp = res.emoji[int(rng.integers(len(res.emoji)))] if kind == "emoji" else None
        count = int(rng.integers(config.crowd_count[0], config.crowd_count[1] + 1))
        ccx, ccy = rng.uniform(0.2, 0.8, 2) * size
        spread = rng.uniform(0.15, 0.4) * size
        base = size * rng.uniform(*config.crowd_scale)
        for _ in range(count):
            obj = make(kind, base * math.exp(rng.normal(0, 0.15)), cp)
            h, w = obj.alpha.shape
            cx, cy = ccx + rng.normal(0, spread), ccy + rng.normal(0, spread * 0.6)
            obj.x0, obj.y0 = int(round(cx - w / 2)), int(round(cy - h / 2))
            objects.append(obj)
    return objects


def generate_scene(index: int, seed: int, config: Optional[SynthConfig] = None, resources: Optional[Resources] = None) -> Scene:
    """Generate scene ``index`` of the stream ``seed`` (deterministic; see the module docstring)."""
    cv2 = _cv2()

    config = config or SynthConfig()
    config.validate()
    res = resources if resources is not None else load_resources(config)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))
    size = config.size
    min_area, part_min = config.mask_min_area, config.part_min_area
    keep_frac = 1.0 - config.max_occlusion

    background = _background(size, rng, res, config)
    objects = _plan_objects(rng, res, config, background)
    full = [_full_mask(size, o, o.alpha >= 0.5) for o in objects]

    # Occlusion, front to back: an object is kept when enough of it stays visible.
    covered = np.zeros((size, size), dtype=bool)
    visible: Dict[int, np.ndarray] = {}
    for j in range(len(objects) - 1, -1, -1):
        area = int(full[j].sum())
        vis = full[j] & ~covered
        v = int(vis.sum())
        if area == 0 or v < min_area or v < keep_frac * area:
            continue
        visible[j] = vis
        covered |= full[j]

    # Render, back to front.
    canvas = background
    light = rng.uniform(0, 2 * math.pi)
    for j, obj in enumerate(objects):
        if j not in visible:
            continue
        h, w = obj.alpha.shape
        if rng.random() < config.shadow_prob:
            extent = max(h, w)
            sigma = 0.03 * extent + 1.0
            dist = rng.uniform(0.02, 0.08) * extent
            dx, dy = int(round(dist * math.cos(light))), int(round(dist * math.sin(light)))
            m = int(math.ceil(3 * sigma))
            shadow = cv2.GaussianBlur(np.pad(obj.alpha, m), (0, 0), sigma) * rng.uniform(0.25, 0.55)
            win = _window(size, obj.x0 - m + dx, obj.y0 - m + dy, *shadow.shape)
            if win is not None:
                canvas[win[0]] *= 1.0 - shadow[win[1]][..., None]
        win = _window(size, obj.x0, obj.y0, h, w)
        if win is not None:
            a = obj.alpha[win[1]][..., None]
            canvas[win[0]] = canvas[win[0]] * (1.0 - a) + obj.rgb[win[1]]

    # Camera: colour cast, blur, noise.
    canvas *= rng.uniform(0.92, 1.08, 3).astype(np.float32)
    r = rng.random()
    if r < config.blur_prob * 0.8:
        canvas = cv2.GaussianBlur(canvas, (0, 0), rng.uniform(0.4, 1.1) * size / 512)
    elif r < config.blur_prob:
        length = int(rng.integers(3, 6))
        kernel = np.zeros((length, length), np.float32)
        kernel[length // 2, :] = 1.0 / length
        rot = cv2.getRotationMatrix2D(((length - 1) / 2, (length - 1) / 2), rng.uniform(0, 180), 1.0)
        kernel = cv2.warpAffine(kernel, rot, (length, length))
        canvas = cv2.filter2D(canvas, -1, kernel / max(float(kernel.sum()), 1e-6))
    if rng.random() < config.noise_prob:
        canvas = canvas + rng.normal(0, rng.uniform(0.004, 0.025), canvas.shape).astype(np.float32)
    image = np.clip(np.round(canvas * 255), 0, 255).astype(np.uint8)

    # Masks: each kept object, then its parts (parents before children).
    masks: List[np.ndarray] = []
    names: List[str] = []
    parents: List[int] = []
    kinds: List[str] = []
    for j, obj in enumerate(objects):
        if j not in visible:
            continue
        top = len(masks)
        masks.append(visible[j])
        names.append(obj.name)
        parents.append(-1)
        kinds.append(obj.kind)
        index_of: Dict[int, int] = {}  # part → mask index
        claimed: Dict[int, np.ndarray] = {}  # mask index → union of its kept children
        for p, (local, parent) in enumerate(obj.parts):
            while parent != -1 and parent not in index_of:
                parent = obj.parts[parent][1]
            parent_mask_index = top if parent == -1 else index_of[parent]
            parent_mask = masks[parent_mask_index]
            pfull = _full_mask(size, obj, local)
            pvis = pfull & parent_mask
            if parent_mask_index in claimed:
                pvis &= ~claimed[parent_mask_index]
            v = int(pvis.sum())
            if v < part_min or v < keep_frac * int(pfull.sum()) or v > 0.85 * int(parent_mask.sum()):
                continue
            index_of[p] = len(masks)
            claimed[parent_mask_index] = claimed.get(parent_mask_index, np.zeros_like(pvis)) | pvis
            masks.append(pvis)
            names.append(f"part of {obj.name}")
            parents.append(parent_mask_index)
            kinds.append("part")
    stack = np.stack(masks) if masks else np.zeros((0, size, size), dtype=bool)
    quality = int(rng.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1))
    return Scene(image, stack, names, parents, kinds, quality)


# ================================================================================================ writing
def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """The JPEG bytes :func:`write_scene` writes for ``image`` (H×W×3 uint8) at ``quality``."""
    import io as _io

    from PIL import Image

    buf = _io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality, subsampling=0 if quality >= 90 else 2)
    return buf.getvalue()


def write_scene(outdir: PathLike, index: int, scene: Scene, overlay: bool = False) -> Path:
    """Write ``sa_<index>.jpg`` and ``sa_<index>.json`` (SA-1B layout, plus ``name``/``parent``/``kind``)."""
    from promptseg.fileio import atomic_write
    from promptseg.data.sa1b import write_sa1b_json

    outdir = Path(outdir)
    stem = f"sa_{index}"
    data = encode_jpeg(scene.image, scene.jpeg_quality)
    image_path = outdir / f"{stem}.jpg"
    paired = (outdir / f"{stem}.json").is_file()  # this scene, from an earlier run of the same settings
    try:
        atomic_write(image_path, lambda tmp: Path(tmp).write_bytes(data))
        ids = list(range(1, len(scene.masks) + 1))
        extra = [
            {"name": n, "parent": (ids[p] if p >= 0 else -1), "kind": k}
            for n, p, k in zip(scene.names, scene.parents, scene.kinds)
        ]
        if len(scene.masks):
            path = write_sa1b_json(outdir / f"{stem}.json", index, f"{stem}.jpg", list(scene.masks), extra, ids)
        else:
            from promptseg.io import save_json

            h, w = scene.image.shape[:2]
            path = save_json({"image": {"image_id": index, "width": w, "height": h, "file_name": f"{stem}.jpg"},
                              "annotations": []}, outdir / f"{stem}.json")
    except BaseException:  # Ctrl-C, full disk: no image without its JSON (SA1BDataset refuses such a folder)
        if not paired:
            image_path.unlink(missing_ok=True)
        raise
    if overlay:
        from promptseg.io import save_overlay_png

        save_overlay_png(scene.image, scene.masks, outdir / "overlays" / f"{stem}.png")
    return path


_WORKER: Dict[str, Any] = {}


def one_opencv_thread() -> None:
    """Keep OpenCV to one thread in a generator process: the processes are the parallelism."""
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover
        pass


def _worker_init(config: SynthConfig, resources: Resources) -> None:
    one_opencv_thread()
    _WORKER["config"], _WORKER["resources"] = config, resources


def _worker_run(args: Tuple[str, int, int, bool]) -> Tuple[int, int]:
    outdir, index, seed, overlay = args
    scene = generate_scene(index, seed, _WORKER["config"], _WORKER["resources"])
    write_scene(outdir, index, scene, overlay)
    return index, len(scene.masks)


def _merged_ranges(meta_path: Path, meta: Dict[str, Any]) -> List[List[int]]:
    """The ``[start, end)`` index ranges ``OUTDIR`` holds after this run: a folder may be extended by runs of
    the same seed and settings (other ``--start``), but scenes of another seed or configuration are not
    mixed into it (its ``synth_meta.json`` would describe only the last run)."""
    import json

    from promptseg.data.sa1b import read_json

    runs = [[meta["start"], meta["start"] + meta["num"]]]
    if meta_path.is_file():
        old = read_json(meta_path)
        same = ("seed", "config", "photos", "num_emoji_categories")
        differ = [k for k in same if old.get(k) != json.loads(json.dumps(meta[k]))]  # tuples are lists in JSON
        if differ:
            raise ValueError(
                f"{meta_path.parent} holds scenes of another synth run ({', '.join(differ)} differ): mixing them "
                "would leave a dataset its synth_meta.json does not describe; use another folder or delete it"
            )
        runs += old.get("ranges") or [[old["start"], old["start"] + old["num"]]]
    merged: List[List[int]] = []
    for lo, hi in sorted(r for r in runs if r[1] > r[0]):
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return merged


def generate_dataset(
    outdir: PathLike,
    num: int,
    seed: int = 0,
    config: Optional[SynthConfig] = None,
    workers: int = 1,
    start: int = 0,
    progress: bool = False,
    overlays: bool = False,
) -> Dict[str, Any]:
    """Generate ``num`` scenes ``sa_<start>`` … ``sa_<start+num-1>`` into ``outdir`` (SA-1B layout).

    Also writes ``synth_meta.json`` (the configuration, seed, photos and emoji count). Returns a summary
    ``{"images": n, "masks": total, "outdir": str}``. ``workers > 1`` uses processes; the files do not
    depend on it.
    """
    from promptseg import __version__
    from promptseg.io import save_json

    config = config or SynthConfig()
    config.validate()
    if num < 0:
        raise ValueError(f"num must be ≥ 0, got {num}")
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise ValueError(f"output {outdir} exists and is not a directory")
    _cv2()  # a missing OpenCV or font fails before anything is written
    res = load_resources(config)
    outdir.mkdir(parents=True, exist_ok=True)
    meta_config = asdict(config)
    meta_config["categories"] = None if config.categories is None else [f"U+{c:04X}" for c in config.categories]
    meta_config["emoji_font"] = Path(res.font_path).name if res.font_path else None
    meta = {
        "generator": "promptseg.data.synth",
        "promptseg_version": __version__,
        "seed": int(seed),
        "start": int(start),
        "num": int(num),
        "config": meta_config,
        "photos": res.photo_names,
        "num_emoji_categories": len(res.emoji),
    }
    meta["ranges"] = _merged_ranges(outdir / META_FILE, meta)
    save_json(meta, outdir / META_FILE)

    from tqdm import tqdm

    tasks = [(str(outdir), start + i, int(seed), bool(overlays)) for i in range(num)]
    total_masks = 0
    bar = tqdm(total=num, desc="synth", unit="img", disable=not progress, dynamic_ncols=True)
    try:
        if workers <= 1 or num <= 1:  # in the caller's process: leave its OpenCV threads and memory as they were
            cv2 = _cv2()

            threads = cv2.getNumThreads()
            _worker_init(config, res)
            try:
                for t in tasks:
                    total_masks += _worker_run(t)[1]
                    bar.update(1)
            finally:
                cv2.setNumThreads(threads)
                _WORKER.clear()
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            ctx = mp.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init,
                                     initargs=(config, res)) as pool:
                for _, k in pool.map(_worker_run, tasks, chunksize=max(1, min(16, num // (4 * workers)))):
                    total_masks += k
                    bar.update(1)
    finally:
        bar.close()
    return {"images": num, "masks": total_masks, "outdir": str(outdir)}
