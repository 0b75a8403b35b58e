"""Synthetic video sequences with exact per-frame label maps, for video object segmentation checks.

Each sequence is a textured background (slowly panning) with ``num_objects`` objects — colour emoji from
the Noto Color Emoji font when it is installed (:mod:`promptseg.data.synth`), else filled shapes —
moving in straight lines towards the middle of the frame and bouncing off its borders, so their paths
cross and later objects hide earlier ones. The label map of every frame is exact: a pixel belongs to the
front-most object whose alpha there is at least ½ (0 = background, ``k`` = the ``k``-th object). Every
object is visible in the first frame (the annotation a VOS method is given).

Deterministic: the same ``seed`` and options give the same frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np

#: Common emoji that Noto Color Emoji renders (a fixed list: no font scan, ~1 s, is needed).
EMOJI = (
    0x1F600, 0x1F34E, 0x1F697, 0x1F415, 0x1F431, 0x26BD, 0x1F333, 0x1F680, 0x1F388, 0x1F41F,
    0x1F422, 0x1F3C0, 0x1F34C, 0x1F6B2, 0x1F98B, 0x1F427, 0x1F34A, 0x1F6F8, 0x1F40C, 0x1F352,
)
SHAPES = ("ellipse", "rectangle", "triangle", "diamond")


@dataclass
class SyntheticSequence:
    """``frames``: ``T`` images ``H×W×3`` uint8; ``labels``: ``T`` label maps ``H×W`` int32; ``names``:
    the kind of each object (label ``k`` ↔ ``names[k-1]``)."""

    name: str
    frames: List[np.ndarray]
    labels: List[np.ndarray]
    names: List[str] = field(default_factory=list)


@dataclass
class _Sprite:
    rgb: np.ndarray  # h×w×3 float32 in [0, 1]
    alpha: np.ndarray  # h×w float32 in [0, 1]
    name: str


def _shape_sprite(kind: str, side: int, rng: np.random.Generator) -> _Sprite:
    from PIL import Image, ImageDraw

    from promptseg.data.synth import texture

    ss = 4
    big = Image.new("L", (side * ss, side * ss), 0)
    draw = ImageDraw.Draw(big)
    s = side * ss - 1
    if kind == "ellipse":
        draw.ellipse([0, s * 0.15, s, s * 0.85], fill=255)
    elif kind == "rectangle":
        draw.rectangle([s * 0.1, s * 0.2, s * 0.9, s * 0.8], fill=255)
    elif kind == "triangle":
        draw.polygon([(s / 2, 0), (s, s), (0, s)], fill=255)
    else:
        draw.polygon([(s / 2, 0), (s, s / 2), (s / 2, s), (0, s / 2)], fill=255)
    alpha = np.asarray(big.resize((side, side), Image.BOX), np.float32) / 255.0
    return _Sprite(texture(side, side, rng, [], photo_prob=0.0), alpha, kind)


def _emoji_sprite(cp: int, side: int, font: str) -> Optional[_Sprite]:
    from PIL import Image

    from promptseg.data.synth import emoji_name, emoji_sprite

    try:
        rgba, _ = emoji_sprite(cp, font)
    except (ValueError, OSError):
        return None
    if int((rgba[..., 3] >= 128).sum()) < 200:
        return None
    h, w = rgba.shape[:2]
    scale = side / max(h, w)
    size = (max(2, round(w * scale)), max(2, round(h * scale)))
    arr = np.asarray(Image.fromarray(np.ascontiguousarray(rgba)).resize(size, Image.LANCZOS), np.float32) / 255.0
    return _Sprite(arr[..., :3], arr[..., 3], emoji_name(cp))


def _paste(canvas: np.ndarray, labels: np.ndarray, sprite: _Sprite, y: int, x: int, label: int) -> None:
    h, w = sprite.alpha.shape
    H, W = labels.shape
    y0, x0, y1, x1 = max(0, y), max(0, x), min(H, y + h), min(W, x + w)
    if y0 >= y1 or x0 >= x1:
        return
    a = sprite.alpha[y0 - y : y1 - y, x0 - x : x1 - x]
    rgb = sprite.rgb[y0 - y : y1 - y, x0 - x : x1 - x]
    region = canvas[y0:y1, x0:x1]
    region[...] = region * (1 - a[..., None]) + rgb * a[..., None]
    labels[y0:y1, x0:x1][a >= 0.5] = label


def make_sequence(
    seed: int = 0,
    num_frames: int = 8,
    size: Tuple[int, int] = (128, 128),
    num_objects: int = 2,
    emoji: Optional[bool] = None,
    speed: float = 0.04,
    name: Optional[str] = None,
) -> SyntheticSequence:
    """One synthetic sequence (see the module docstring).

    Args:
        seed: random seed; num_frames: ``T`` ≥ 1; size: ``(H, W)``; num_objects: 1–20.
        emoji: use colour emoji (True), shapes (False), or emoji when the font is installed (None).
        speed: object speed per frame as a fraction of the frame's smaller side.
    Raises ValueError when no starting placement of 50 tries shows every object in the first frame.
    """
    from promptseg.data.synth import emoji_font_available, find_emoji_font, texture

    if num_frames < 1:
        raise ValueError(f"num_frames must be ≥ 1, got {num_frames}")
    if not 1 <= num_objects <= len(EMOJI):
        raise ValueError(f"num_objects must be in 1..{len(EMOJI)}, got {num_objects}")
    H, W = int(size[0]), int(size[1])
    if H < 16 or W < 16:
        raise ValueError(f"size must be at least 16×16, got {H}×{W}")
    use_emoji = emoji_font_available() if emoji is None else bool(emoji)
    font = str(find_emoji_font()) if use_emoji else ""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EE9]))
    short = min(H, W)

    sprites: List[_Sprite] = []
    cps = list(rng.permutation(len(EMOJI)))
    while len(sprites) < num_objects:
        side = int(round(short * rng.uniform(0.22, 0.38)))
        sprite = None
        if use_emoji and cps:
            sprite = _emoji_sprite(EMOJI[cps.pop()], side, font)
        if sprite is None:
            sprite = _shape_sprite(SHAPES[len(sprites) % len(SHAPES)], side, rng)
        sprites.append(sprite)

    pan = rng.uniform(-1, 1, size=2) * short * 0.01
    margin = int(math.ceil(abs(pan).max() * num_frames)) + 1
    background = texture(H + 2 * margin, W + 2 * margin, rng, [], photo_prob=0.0)

    best: Tuple[float, List[np.ndarray], List[np.ndarray]] = (-1.0, [], [])
    for _attempt in range(50):  # starting places where every object shows in the first frame
        pos, vel = [], []
        for sp in sprites:
            h, w = sp.alpha.shape
            p = np.array([rng.uniform(0, H - h), rng.uniform(0, W - w)])
            towards = np.array([H / 2 - h / 2, W / 2 - w / 2]) - p
            direction = towards / (np.linalg.norm(towards) + 1e-6) + rng.normal(0, 0.3, 2)
            pos.append(p)
            vel.append(direction / (np.linalg.norm(direction) + 1e-6) * speed * short * rng.uniform(0.7, 1.3))
        frame0 = _render(background, margin, np.zeros(2), sprites, pos, (H, W))[1]
        counts = [(int((frame0 == k + 1).sum()), float((sp.alpha >= 0.5).sum())) for k, sp in enumerate(sprites)]
        if all(c >= 0.3 * n for c, n in counts):
            best = (1.0, pos, vel)
            break
        shown = min(c / n if n else 1.0 for c, n in counts)
        if shown > best[0]:
            best = (shown, pos, vel)
    shown, pos, vel = best  # else the attempt that shows its most hidden object best
    if shown <= 0:
        raise ValueError(f"cannot place {num_objects} objects in a {H}×{W} frame so that each shows in the first "
                         "frame: use fewer objects or a larger size")

    frames, labels = [], []
    for t in range(num_frames):
        image, lab = _render(background, margin, pan * t, sprites, pos, (H, W))
        frames.append(image)
        labels.append(lab)
        for k, sp in enumerate(sprites):  # move, bouncing off the borders
            h, w = sp.alpha.shape
            pos[k] = pos[k] + vel[k]
            for axis, limit in ((0, H - h), (1, W - w)):
                if pos[k][axis] < 0 or pos[k][axis] > limit:
                    vel[k][axis] = -vel[k][axis]
                    pos[k][axis] = min(max(pos[k][axis], 0.0), float(limit))
    return SyntheticSequence(name or f"synth_{seed:04d}", frames, labels, [s.name for s in sprites])


def _render(background: np.ndarray, margin: int, offset: np.ndarray, sprites: List[_Sprite],
            pos: List[np.ndarray], size: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    H, W = size
    oy, ox = margin + int(round(offset[0])), margin + int(round(offset[1]))
    canvas = background[oy : oy + H, ox : ox + W].copy()
    lab = np.zeros((H, W), np.int32)
    for k, (sp, p) in enumerate(zip(sprites, pos)):
        _paste(canvas, lab, sp, int(round(p[0])), int(round(p[1])), k + 1)
    return np.clip(np.round(canvas * 255.0), 0, 255).astype(np.uint8), lab


def make_sequences(count: int, seed: int = 0, **kwargs) -> List[SyntheticSequence]:
    """``count`` sequences with seeds ``seed, seed+1, …`` (options as :func:`make_sequence`)."""
    return [make_sequence(seed + i, **kwargs) for i in range(count)]
