"""In-context training pairs for SegGPT (seggpt.txt §3.1 "In-Context Coloring", §4, App. A).

A training sample is a *pair*: a prompt (image + coloured mask) and a target (image + coloured mask) that
share a context, coloured with the same **random colour mapping** (:func:`~promptseg.incontext.random_palette`,
one per sample), so the model has to read the colours from the prompt instead of memorising them:

* **semantic** pairs (``embedding_type="semantic"``): the target scene and a *different* scene that
  contains the same category (an emoji's Unicode name for :mod:`promptseg.data.synth` scenes, the
  per-mask ``names`` of any dataset; another view of the target scene when no other scene holds the
  category); every instance of a chosen category is painted in that
  category's colour. One to ``max_categories`` categories of the prompt scene are coloured, each in its
  own colour. With probability ``same_image_prob`` (App. A: 0.5) the prompt is instead another
  augmented view of the target scene;
* **instance** pairs (``embedding_type="instance"``): two independently augmented views of one scene
  (App. A: "we always use two transformed views of the same image"); one to ``max_instances`` masks,
  each its own colour;
* **mix-context** (§3.1): with probability ``mix_prob`` several pairs of one type are stitched into a
  ``rows×cols`` grid — prompts into one canvas, targets into another, with one colour mapping for all
  of them (a semantic mix shares the categories of its first tile, so a colour means the same category
  in every tile) — and the two canvases are cropped with one random box and resized to the model input.

Augmentations (§4: "random resize cropping, color jittering, and random horizontal flipping") act on an
image and its *label map* together — the crop box and the flip are shared, the image is resized bicubically
(:func:`promptseg.incontext.predictor.resize_image`) and the labels by nearest neighbour at pixel centres
(:func:`~promptseg.incontext.predictor.resize_nearest`) — and colour jitter
(:func:`promptseg.data.synth.color_jitter`) touches the image only, so masks stay aligned. Colours are
applied after the geometry (label maps are resized, never colours).

Model inputs (:meth:`PairDataset.encode`) follow the predictor and transformers' ``SegGptImageProcessor``:
images and coloured masks ImageNet-normalised (:func:`promptseg.incontext.predictor.normalize`); the
prompt goes on top, the target below (the model stacks them); ``labels`` is the target's coloured mask,
and the loss is taken on the stacked ``[prompt mask; labels]`` under ``bool_masked_pos``: by default the
whole target half (``half_mask_prob`` 1.0, as at inference); otherwise Painter's random block-wise masking
of ``random_mask_ratio`` of the stacked grid (BEiT's ``MaskingGenerator``).

Every random draw of a sample comes from ``numpy.random.default_rng([seed, epoch, index])``: samples are a
function of their key, whatever the number of workers, and a resumed run sees the same data.
"""

from __future__ import annotations

import bisect
import copy
import inspect
import math
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from promptseg.config_utils import check_value_types
from promptseg.data import MaskDataset, make_item
from promptseg.incontext.palette import default_palette, encode_labels, random_palette
from promptseg.incontext.predictor import normalize, resize_image, resize_nearest
from promptseg.train.config import _check_keys

EMBEDDING_TYPES = ("instance", "semantic")
#: Names of the synthetic generator's random shapes: not categories (every one looks different).
SHAPE_NAMES = ("polygon", "blob", "stroke")
#: Padding colour of the per-sample palettes in a batch: farther from any RGB colour than any real one.
PALETTE_PAD = 1.0e4


# ================================================================================================ config
@dataclass(frozen=True)
class PairConfig:
    """How in-context pairs are drawn and augmented (the ``pairs`` section of a SegGPT train config)."""

    #: Probability of a semantic pair (when the target scene has a category); otherwise an instance pair.
    semantic_prob: float = 0.5
    #: Semantic pairs: probability that the prompt is another view of the target scene (App. A: 0.5).
    same_image_prob: float = 0.5
    #: At most this many categories (semantic) / instances (instance) coloured per pair, each its own colour.
    max_categories: int = 3
    max_instances: int = 4
    #: Mix-context (§3.1): probability of a stitched sample, its grid (rows, cols) and the crop's area
    #: fraction of the stitched canvas.
    mix_prob: float = 0.0
    mix_grid: Tuple[int, int] = (2, 2)
    mix_scale: Tuple[float, float] = (0.5, 1.0)
    #: Random resized crop (area fraction, aspect ratio; Painter's minimum scale 0.3), flip, colour jitter.
    crop_scale: Tuple[float, float] = (0.3, 1.0)
    crop_ratio: Tuple[float, float] = (3 / 4, 4 / 3)
    hflip_prob: float = 0.5
    jitter_prob: float = 0.8
    jitter_strength: float = 0.2
    #: Redraw a view's augmentation up to this many times when it loses every coloured pixel.
    max_tries: int = 4
    #: ``bool_masked_pos``: probability of hiding the whole target half (else random block masking of
    #: ``random_mask_ratio`` of the stacked patch grid, as Painter).
    half_mask_prob: float = 1.0
    random_mask_ratio: float = 0.5
    #: Masks with fewer pixels (in the source scene) or covering more than ``max_mask_area`` of it are
    #: never coloured.
    min_mask_area: int = 16
    max_mask_area: float = 0.9
    #: Names that are not categories ("" = unnamed); parts ("part of …", or a parent) count only if
    #: ``semantic_parts``.
    ignore_categories: Tuple[str, ...] = ("",) + SHAPE_NAMES
    semantic_parts: bool = False
    #: Colour in the target only the labels that the prompt view shows (not in Painter, whose views are
    #: cropped independently: a target object the prompt crop missed has a colour the model cannot know).
    target_needs_prompt: bool = False
    #: Pairs of one scene: probability that the target view repeats the prompt view exactly (same crop,
    #: flip and jitter) — a copy task that teaches a model from scratch to read the prompt's colours
    #: before it learns to match objects across views (not in the paper; for short runs).
    same_view_prob: float = 0.0
    #: Probability that a sample is coloured with the fixed inference palette (``default_palette``: label 1
    #: white, …) instead of a random colour mapping — easier for a small model, and what the predictor uses
    #: (not in the paper, whose mapping is always random, §3.1).
    fixed_palette_prob: float = 0.0

    def __post_init__(self) -> None:
        def need(cond: bool, message: str) -> None:
            if not cond:
                raise ValueError(f"pairs: {message}")

        for name in ("semantic_prob", "same_image_prob", "mix_prob", "hflip_prob", "jitter_prob", "half_mask_prob",
                     "same_view_prob", "fixed_palette_prob"):
            need(0.0 <= getattr(self, name) <= 1.0, f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("max_categories", "max_instances", "max_tries"):
            need(int(getattr(self, name)) >= 1, f"{name} must be ≥ 1, got {getattr(self, name)}")
        need(len(self.mix_grid) == 2 and min(self.mix_grid) >= 1, f"mix_grid must be (rows, cols) ≥ 1, got {self.mix_grid}")
        for name in ("mix_scale", "crop_scale"):
            lo, hi = getattr(self, name)
            need(0.0 < lo <= hi <= 1.0, f"{name} must be (low, high) with 0 < low ≤ high ≤ 1, got {getattr(self, name)}")
        need(0.0 < self.crop_ratio[0] <= self.crop_ratio[1], f"crop_ratio must be (low, high) > 0, got {self.crop_ratio}")
        need(0.0 <= self.jitter_strength <= 2 / 3, "jitter_strength must be in [0, 2/3] (saturation is scaled by "
             f"1 ± 1.5·strength: above 2/3 it can turn negative and invert the hues), got {self.jitter_strength}")
        need(0.0 < self.random_mask_ratio < 1.0, "random_mask_ratio must be in (0, 1)")
        need(self.min_mask_area >= 0 and 0.0 < self.max_mask_area <= 1.0, "need min_mask_area ≥ 0 and max_mask_area in (0, 1]")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PairConfig":
        """From a JSON object; unknown keys raise ValueError."""
        _check_keys(cls, data, "pairs")
        check_value_types(typing.get_type_hints(cls), data, "pairs")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def to_dict(self) -> Dict[str, Any]:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}


# ================================================================================================ scenes
def load_masks(dataset: Any, index: int) -> Tuple[np.ndarray, Optional[List[str]], Optional[List[int]]]:
    """``(masks, names, parents)`` of item ``index``, without decoding the image where the reader can."""
    if hasattr(dataset, "load_masks"):
        return dataset.load_masks(index)
    item = dataset[index]
    return np.asarray(item["masks"]), item.get("names"), item.get("parents")


def mask_categories(
    names: Optional[Sequence[str]], parents: Optional[Sequence[int]], areas: np.ndarray, config: PairConfig,
    pixels: Optional[int] = None,
) -> Dict[str, List[int]]:
    """Category name → indices of its masks in one scene (only masks usable for semantic pairs: non-empty,
    at least ``min_mask_area`` pixels and, given the scene's ``pixels``, at most ``max_mask_area`` of it)."""
    out: Dict[str, List[int]] = {}
    if names is None:
        return out
    for k, name in enumerate(names):
        if name in config.ignore_categories or areas[k] < max(1, config.min_mask_area):
            continue
        if pixels is not None and areas[k] > config.max_mask_area * pixels:
            continue
        part = name.startswith("part of ") or (parents is not None and parents[k] != -1)
        if part and not config.semantic_parts:
            continue
        out.setdefault(name, []).append(k)
    return out


def mask_areas(masks: np.ndarray) -> np.ndarray:
    return masks.reshape(len(masks), -1).sum(axis=1) if len(masks) else np.zeros(0, np.int64)


def usable_instances(areas: np.ndarray, pixels: int, config: PairConfig) -> np.ndarray:
    """Indices of masks usable as instances (``min_mask_area`` ≤ area ≤ ``max_mask_area`` of the image)."""
    return np.flatnonzero((areas >= max(1, config.min_mask_area)) & (areas <= config.max_mask_area * pixels))


def scene_summary(dataset: Any, index: int) -> Tuple[Optional[List[str]], Optional[List[int]], np.ndarray, int]:
    """``(names, parents, areas, pixels)`` of scene ``index``: what :class:`SceneIndex` needs.

    An :class:`~promptseg.data.sa1b.SA1BDataset` is read from its JSON alone (``name``, ``parent`` and
    ``area`` of each annotation, with the reader's own ``min_area`` filter), without decoding any mask.
    """
    from promptseg.data.sa1b import SA1BDataset, read_json

    if isinstance(dataset, SA1BDataset) and dataset.transform is None:
        data = read_json(dataset.annotation_files[index])
        anns = data.get("annotations") or []
        if all(isinstance(a, dict) and "area" in a for a in anns):
            # ids as the reader's: an annotation without one is known by its position in the file
            kept = [(a.get("id", n), a) for n, a in enumerate(anns) if int(a["area"]) >= dataset.min_area]
            ids = {i for i, _ in kept}
            anns = [a for _, a in kept]
            names = [str(a.get("name") or "") for a in anns] if any("name" in a for a in anns) else None
            # only whether a mask has a (kept, other) parent matters here: 0 stands for "some parent"
            parents = [-1 if p in (-1, None) or p not in ids or p == i else 0
                       for i, p in ((i, a.get("parent", -1)) for i, a in kept)]
            pixels = int(data["image"]["height"]) * int(data["image"]["width"])
            return names, parents, np.array([int(a["area"]) for a in anns], np.int64), pixels
    if hasattr(dataset, "cumulative_sizes"):  # torch ConcatDataset (several sa1b folders)
        j = bisect.bisect_right(dataset.cumulative_sizes, index)
        return scene_summary(dataset.datasets[j], index - (dataset.cumulative_sizes[j - 1] if j else 0))
    masks, names, parents = load_masks(dataset, index)
    masks = np.asarray(masks)
    return names, parents, mask_areas(masks), int(np.prod(masks.shape[1:])) if masks.ndim == 3 else 0


@dataclass
class SceneIndex:
    """Which categories each scene holds, and which scenes hold each category (built once)."""

    categories: List[Tuple[str, ...]]
    scenes_with: Dict[str, np.ndarray]
    has_instances: np.ndarray

    @classmethod
    def build(cls, dataset: Any, config: PairConfig) -> "SceneIndex":
        categories: List[Tuple[str, ...]] = []
        has_instances = np.zeros(len(dataset), bool)
        scenes: Dict[str, List[int]] = {}
        for i in range(len(dataset)):
            names, parents, areas, pixels = scene_summary(dataset, i)
            cats = tuple(sorted(mask_categories(names, parents, areas, config, pixels)))
            categories.append(cats)
            has_instances[i] = len(usable_instances(areas, pixels, config)) > 0
            for c in cats:
                scenes.setdefault(c, []).append(i)
        return cls(categories, {c: np.asarray(v) for c, v in scenes.items()}, has_instances)

    def shared_categories(self) -> List[str]:
        """Categories found in at least two scenes (those that can make cross-scene semantic pairs)."""
        return sorted(c for c, v in self.scenes_with.items() if len(v) >= 2)


# ================================================================================================ augmentation
def random_resized_crop_box(
    height: int, width: int, scale: Tuple[float, float], ratio: Tuple[float, float], rng: np.random.Generator
) -> Tuple[int, int, int, int]:
    """``(y0, x0, h, w)`` of a random crop with area fraction in ``scale`` and aspect ``w/h`` in ``ratio``
    (torchvision's ``RandomResizedCrop`` sampling; after 10 misses: the largest centred crop in range)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            y0 = int(rng.integers(0, height - h + 1))
            x0 = int(rng.integers(0, width - w + 1))
            return y0, x0, h, w
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, max(1, int(round(width / ratio[0])))
    elif aspect > ratio[1]:
        h, w = height, max(1, int(round(height * ratio[1])))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def crop_resize(image: np.ndarray, labels: np.ndarray, box: Tuple[int, int, int, int], size: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """Crop ``box`` out of an image and its label map and resize both to ``size`` (bicubic / nearest)."""
    y0, x0, h, w = box
    img = np.ascontiguousarray(image[y0 : y0 + h, x0 : x0 + w])
    lab = labels[y0 : y0 + h, x0 : x0 + w]
    return resize_image(img, size), np.ascontiguousarray(resize_nearest(lab, size))


def jitter_image(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Random brightness / contrast / saturation (:func:`promptseg.data.synth.color_jitter`) of a uint8 image."""
    from promptseg.data.synth import color_jitter

    out = color_jitter(image.astype(np.float32) / 255.0, rng, strength)
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


def augment_view(
    image: np.ndarray, labels: np.ndarray, size: Tuple[int, int], config: PairConfig, rng: np.random.Generator,
    crop: bool = True,
) -> Tuple[np.ndarray, np.ndarray]:
    """One augmented view ``(image h×w×3 uint8, labels h×w)`` at ``size``: random resized crop (or the whole
    image with ``crop=False``), horizontal flip, colour jitter (image only)."""
    h, w = labels.shape
    box = random_resized_crop_box(h, w, config.crop_scale, config.crop_ratio, rng) if crop else (0, 0, h, w)
    image, labels = crop_resize(image, labels, box, size)
    if rng.random() < config.hflip_prob:
        image, labels = np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(labels[:, ::-1])
    if config.jitter_strength > 0 and rng.random() < config.jitter_prob:
        image = jitter_image(image, rng, config.jitter_strength)
    return image, labels


def paint_labels(masks: np.ndarray, groups: Sequence[Sequence[int]], shape: Tuple[int, int]) -> np.ndarray:
    """Label map ``H×W`` int32: group ``g`` (a list of mask indices) → label ``g + 1``, 0 elsewhere.

    Larger groups are painted first, so a smaller mask lying on a larger one (a part on its object) stays
    visible."""
    labels = np.zeros(shape, np.int32)
    unions = [masks[list(g)].any(axis=0) if len(g) else np.zeros(shape, bool) for g in groups]
    for g in sorted(range(len(groups)), key=lambda g: -int(unions[g].sum())):
        labels[unions[g]] = g + 1
    return labels


def block_mask(grid: Tuple[int, int], num_masked: int, rng: np.random.Generator, min_block: int = 4,
               max_block: Optional[int] = None, min_aspect: float = 0.3) -> np.ndarray:
    """BEiT / Painter block-wise masking: ``grid`` bool with about ``num_masked`` True patches in random
    rectangles of ``min_block``–``max_block`` (default ``num_masked``) patches and aspect in
    ``[min_aspect, 1/min_aspect]``."""
    h, w = grid
    mask = np.zeros(grid, bool)
    max_block = num_masked if max_block is None else max_block
    log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
    count = 0
    while count < num_masked:
        budget = min(num_masked - count, max_block)
        added = 0
        for _ in range(10):
            target = rng.uniform(min(min_block, budget), budget)
            aspect = math.exp(rng.uniform(*log_aspect))
            bh, bw = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < bh < h and 0 < bw < w:
                top, left = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
                new = bh * bw - int(mask[top : top + bh, left : left + bw].sum())
                if 0 < new <= budget:
                    mask[top : top + bh, left : left + bw] = True
                    added = new
                    break
        if added == 0:
            break
        count += added
    return mask


# ================================================================================================ pairs
@dataclass
class _Tile:
    """One in-context pair before colouring: label maps hold indices into ``keys`` (1-based)."""

    prompt_image: np.ndarray
    prompt_labels: np.ndarray
    target_image: np.ndarray
    target_labels: np.ndarray
    keys: List[str]
    prompt_scene: int
    target_scene: int


@dataclass
class PairSample:
    """A coloured in-context pair at model resolution ``h×w``.

    ``prompt_labels``/``target_labels``: ``h×w`` int32, label ``k`` ↔ ``keys[k-1]`` (a category name, or
    ``"scene:mask"`` for an instance) ↔ colour ``palette[k-1]``; ``*_scenes``: source scene of every tile.
    """

    prompt_image: np.ndarray
    prompt_labels: np.ndarray
    target_image: np.ndarray
    target_labels: np.ndarray
    palette: np.ndarray
    embedding_type: str
    keys: List[str]
    prompt_scenes: List[int] = field(default_factory=list)
    target_scenes: List[int] = field(default_factory=list)
    mixed: bool = False

    @property
    def prompt_mask(self) -> np.ndarray:
        """The prompt's coloured mask ``h×w×3`` uint8."""
        return encode_labels(self.prompt_labels, self.palette, allow_empty=True)

    @property
    def target_mask(self) -> np.ndarray:
        return encode_labels(self.target_labels, self.palette, allow_empty=True)


class PairDataset:
    """Map-style dataset of SegGPT training samples over a dataset of scenes.

    ``scenes`` yields items in :mod:`promptseg.data`'s format (``image``, ``masks``, optional ``names`` and
    ``parents``); ``image_size`` is the model's per-image ``(h, w)``; ``patch_size`` sizes
    ``bool_masked_pos``. Indexed by ``(epoch, index)`` keys (:class:`promptseg.train.trainer.ResumableSampler`):
    ``index`` is the target scene. A dataset without names gives instance pairs only.
    """

    def __init__(self, scenes: Any, config: PairConfig, image_size: Tuple[int, int], patch_size: int, seed: int = 0,
                 index: Optional[SceneIndex] = None) -> None:
        if len(scenes) < 1:
            raise ValueError("the scene dataset is empty")
        self.scenes = scenes
        self.config = config
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.patch_size = int(patch_size)
        self.seed = int(seed)
        self.index = index if index is not None else SceneIndex.build(scenes, config)
        if not self.index.has_instances.any():
            raise ValueError(f"no scene has a usable mask (min_mask_area {config.min_mask_area}, max_mask_area {config.max_mask_area})")

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, key: Tuple[int, int]) -> Dict[str, Any]:
        epoch, index = key
        rng = np.random.default_rng([self.seed, int(epoch), int(index)])
        return self.encode(self.sample(int(index), rng), rng)

    # ------------------------------------------------------------------------------------------ scenes
    def _load(self, index: int) -> Dict[str, Any]:
        item = self.scenes[index]
        image = item["image"]
        image = image.cpu().numpy() if hasattr(image, "cpu") else np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"scene {index}: 'image' must be H×W×3 uint8, got {image.shape} {image.dtype}")
        masks = item["masks"]
        masks = (masks.cpu().numpy() if hasattr(masks, "cpu") else np.asarray(masks)).astype(bool)
        if masks.size and (masks.ndim not in (2, 3) or masks.shape[-2:] != image.shape[:2]):
            raise ValueError(f"scene {index}: 'masks' must be K×H×W with the image's H×W {image.shape[:2]}, "
                             f"got {masks.shape}")
        masks = masks.reshape(-1, *image.shape[:2])
        areas = mask_areas(masks)
        pixels = image.shape[0] * image.shape[1]
        return {
            "image": image,
            "masks": masks,
            "categories": mask_categories(item.get("names"), item.get("parents"), areas, self.config, pixels),
            "instances": usable_instances(areas, pixels, self.config),
        }

    def _scene_with(self, category: str, rng: np.random.Generator, exclude: int = -1) -> int:
        scenes = self.index.scenes_with.get(category, np.zeros(0, np.int64))
        scenes = scenes[scenes != exclude]
        return int(rng.choice(scenes)) if len(scenes) else exclude

    # ------------------------------------------------------------------------------------------- views
    def _views(self, prompt: Dict[str, Any], prompt_groups: List[List[int]], target: Dict[str, Any],
               target_groups: List[List[int]], rng: np.random.Generator) -> Tuple[np.ndarray, ...]:
        """Augmented prompt and target views; a view that lost every label is redrawn (``max_tries``), the
        last time without a crop."""
        out: List[np.ndarray] = []
        same_view = prompt is target and self.config.same_view_prob > 0 and rng.random() < self.config.same_view_prob
        replay = copy.deepcopy(rng) if same_view else None  # repeats the prompt view's draws for the target
        for scene, groups in ((prompt, prompt_groups), (target, target_groups)):
            labels = paint_labels(scene["masks"], groups, scene["image"].shape[:2])
            if out and self.config.target_needs_prompt:
                labels = np.where(np.isin(labels, out[1]), labels, 0).astype(labels.dtype)  # out[1]: prompt labels
            want = bool(labels.any())
            view_rng = replay if out and replay is not None else rng
            for attempt in range(self.config.max_tries + 1):
                view = augment_view(scene["image"], labels, self.image_size, self.config, view_rng,
                                    crop=attempt < self.config.max_tries)
                if view[1].any() or not want:
                    break
            out.extend(view)
        return tuple(out)

    def _instance_tile(self, index: int, rng: np.random.Generator) -> Optional[_Tile]:
        scene = self._load(index)
        candidates = scene["instances"]
        if not len(candidates):
            return None
        n = int(rng.integers(1, min(self.config.max_instances, len(candidates)) + 1))
        chosen = sorted(int(k) for k in rng.choice(candidates, n, replace=False))
        groups = [[k] for k in chosen]
        views = self._views(scene, groups, scene, groups, rng)
        return _Tile(*views, keys=[f"{index}:{k}" for k in chosen], prompt_scene=index, target_scene=index)

    def _semantic_tile(self, index: int, rng: np.random.Generator, keys: Optional[List[str]] = None) -> Optional[_Tile]:
        target = self._load(index)
        if not target["categories"]:
            return None
        if keys is None:
            anchor = str(rng.choice(sorted(target["categories"])))
        else:
            anchor = keys[0]
        other = -1 if rng.random() < self.config.same_image_prob else self._scene_with(anchor, rng, exclude=index)
        prompt_index = index if other == -1 else other
        prompt = target if prompt_index == index else self._load(prompt_index)
        if keys is None:  # the anchor plus random other categories of the prompt scene
            others = sorted(set(prompt["categories"]) - {anchor})
            n = int(rng.integers(0, min(self.config.max_categories - 1, len(others)) + 1))
            keys = [anchor] + [str(c) for c in rng.choice(others, n, replace=False)] if n else [anchor]
        prompt_groups = [prompt["categories"].get(c, []) for c in keys]
        target_groups = [target["categories"].get(c, []) for c in keys]
        views = self._views(prompt, prompt_groups, target, target_groups, rng)
        return _Tile(*views, keys=list(keys), prompt_scene=prompt_index, target_scene=index)

    # ------------------------------------------------------------------------------------------ sample
    def sample(self, index: int, rng: np.random.Generator) -> PairSample:
        """The in-context pair whose target is scene ``index`` (another scene if it has no usable mask)."""
        cfg = self.config
        semantic = bool(self.index.categories[index]) and rng.random() < cfg.semantic_prob
        kind = "semantic" if semantic else "instance"
        tile = self._semantic_tile(index, rng) if semantic else self._instance_tile(index, rng)
        while tile is None:  # no usable mask in this scene: an instance pair of another scene
            kind, index = "instance", int(rng.choice(np.flatnonzero(self.index.has_instances)))
            tile = self._instance_tile(index, rng)
        tiles = [tile]
        count = cfg.mix_grid[0] * cfg.mix_grid[1]
        mixed = count > 1 and rng.random() < cfg.mix_prob
        for _ in range(4 * count if mixed else 0):
            if len(tiles) == count:
                break
            if kind == "semantic":  # another scene with the same (first) category, coloured alike
                extra = self._semantic_tile(self._scene_with(tile.keys[0], rng, exclude=tile.target_scene), rng, keys=tile.keys)
            else:
                extra = self._instance_tile(int(rng.choice(np.flatnonzero(self.index.has_instances))), rng)
            if extra is not None:
                tiles.append(extra)
        if mixed:  # too few matching scenes: repeat the first tile
            tiles.extend([tiles[0]] * (count - len(tiles)))
        keys: List[str] = []
        for t in tiles:
            keys.extend(k for k in t.keys if k not in keys)
        if cfg.fixed_palette_prob > 0 and rng.random() < cfg.fixed_palette_prob:
            palette = default_palette(len(keys))
        else:
            palette = random_palette(len(keys), rng)
        if mixed:
            prompt_image, prompt_labels, target_image, target_labels = self._stitch(tiles, keys, rng)
        else:
            prompt_image, prompt_labels, target_image, target_labels = (
                tile.prompt_image, tile.prompt_labels, tile.target_image, tile.target_labels)
        return PairSample(prompt_image, prompt_labels, target_image, target_labels, palette, kind, keys,
                          [t.prompt_scene for t in tiles], [t.target_scene for t in tiles], mixed)

    def _stitch(self, tiles: List[_Tile], keys: List[str], rng: np.random.Generator) -> Tuple[np.ndarray, ...]:
        """Mix-context: tiles in a ``rows×cols`` grid, labels renumbered to ``keys``, one random crop of both
        canvases, resized to the model input."""
        rows, cols = self.config.mix_grid
        h, w = self.image_size
        canvases = [np.zeros((rows * h, cols * w, 3), np.uint8), np.zeros((rows * h, cols * w), np.int32),
                    np.zeros((rows * h, cols * w, 3), np.uint8), np.zeros((rows * h, cols * w), np.int32)]
        for t, tile in enumerate(tiles):
            r, c = divmod(t, cols)
            cell = (slice(r * h, (r + 1) * h), slice(c * w, (c + 1) * w))
            remap = np.array([0] + [keys.index(k) + 1 for k in tile.keys], np.int32)
            canvases[0][cell], canvases[2][cell] = tile.prompt_image, tile.target_image
            canvases[1][cell], canvases[3][cell] = remap[tile.prompt_labels], remap[tile.target_labels]
        aspect = (cols * w) / (rows * h) / (w / h)  # crop aspect relative to the canvas, output keeps w/h
        ratio = (w / h * min(1.0, aspect), w / h * max(1.0, aspect))
        box = random_resized_crop_box(rows * h, cols * w, self.config.mix_scale, ratio, rng)
        prompt = crop_resize(canvases[0], canvases[1], box, self.image_size)
        target = crop_resize(canvases[2], canvases[3], box, self.image_size)
        if self.config.target_needs_prompt:  # the crop or the downscaling may drop a label from the prompt only
            target = (target[0], np.where(np.isin(target[1], prompt[1]), target[1], 0).astype(target[1].dtype))
        return prompt + target

    # ------------------------------------------------------------------------------------------ encode
    def masked_positions(self, rng: np.random.Generator) -> np.ndarray:
        """``bool_masked_pos`` of one sample: ``N`` bool over the stacked ``2h/p × w/p`` patch grid."""
        grid = (2 * self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size)
        n = grid[0] * grid[1]
        if rng.random() < self.config.half_mask_prob:
            hide = np.zeros(n, bool)
            hide[n // 2 :] = True
            return hide
        num = int(round(self.config.random_mask_ratio * n))
        return block_mask(grid, num, rng, min_block=min(16, max(1, num // 8)), max_block=max(1, n // 4)).reshape(-1)

    def encode(self, sample: PairSample, rng: np.random.Generator) -> Dict[str, Any]:
        """Model inputs of one sample (numpy): normalised ``pixel_values`` (target image), ``prompt_pixel_values``,
        ``prompt_masks``, ``labels`` (target's coloured mask), ``bool_masked_pos``; plus ``embedding_type``,
        ``palette`` and ``target_labels`` for the metrics."""
        return {
            "pixel_values": normalize(sample.target_image),
            "prompt_pixel_values": normalize(sample.prompt_image),
            "prompt_masks": normalize(sample.prompt_mask),
            "labels": normalize(sample.target_mask),
            "bool_masked_pos": self.masked_positions(rng),
            "embedding_type": sample.embedding_type,
            "palette": sample.palette,
            "target_labels": sample.target_labels.astype(np.int64),
        }


TENSOR_KEYS = ("pixel_values", "prompt_pixel_values", "prompt_masks", "labels", "bool_masked_pos", "target_labels")


def collate_pairs(items: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Encoded samples → a batch of tensors: the :data:`TENSOR_KEYS` stacked, ``semantic`` (``B`` bool: the
    embedding type of each sample) and ``palettes`` (``B×K×3`` float, padded with :data:`PALETTE_PAD`)."""
    import torch

    batch = {k: torch.from_numpy(np.stack([item[k] for item in items])) for k in TENSOR_KEYS}
    batch["semantic"] = torch.tensor([item["embedding_type"] == "semantic" for item in items])
    k = max(1, max(len(item["palette"]) for item in items))
    palettes = torch.full((len(items), k, 3), PALETTE_PAD)
    for i, item in enumerate(items):
        palettes[i, : len(item["palette"])] = torch.from_numpy(item["palette"].astype(np.float32))
    batch["palettes"] = palettes
    return batch


# ================================================================================================ synthetic scenes
class SynthScenes(MaskDataset):
    """``num_scenes`` scenes of :mod:`promptseg.data.synth`, generated in memory when built (small runs).

    ``num_categories`` restricts the emoji to that many categories drawn (with ``seed``) from the pool the
    other options select, so categories repeat across scenes and semantic pairs exist even in a handful
    of scenes; ``synth`` holds any other :class:`~promptseg.data.synth.SynthConfig` field. For real runs,
    write scenes with ``promptseg data synth`` and read them with the ``sa1b`` dataset type.
    """

    def __init__(self, num_scenes: int = 16, seed: int = 0, start: int = 0, num_categories: Optional[int] = None,
                 **synth: Any) -> None:
        super().__init__()
        from promptseg.data.synth import SynthConfig, emoji_pool, generate_scene, load_resources

        if num_scenes < 1:
            raise ValueError(f"num_scenes must be ≥ 1, got {num_scenes}")
        options = {k: tuple(v) if isinstance(v, list) else v for k, v in synth.items()}
        config = SynthConfig(**options)
        config.validate()
        if num_categories is not None and config.emoji:
            pool, _ = emoji_pool(config)
            if not 1 <= num_categories <= len(pool):
                raise ValueError(f"num_categories must be in [1, {len(pool)}], got {num_categories}")
            rng = np.random.default_rng([int(seed), 0x5E66])
            config.categories = tuple(sorted(int(c) for c in rng.choice(pool, num_categories, replace=False)))
        resources = load_resources(config)
        self.items = []
        for i in range(start, start + num_scenes):
            scene = generate_scene(i, seed, config, resources)
            self.items.append(make_item(scene.image, scene.masks, f"synth_{seed}_{i}", scene.names, scene.parents))

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> Dict[str, Any]:
        return self.items[index]

    def load_masks(self, index: int) -> Tuple[np.ndarray, Optional[List[str]], Optional[List[int]]]:
        item = self.items[self._check_index(index)]
        return item["masks"], item["names"], item["parents"]


def _synth_signature() -> inspect.Signature:
    """``SynthScenes``' own parameters plus every ``SynthConfig`` field, so that a config with an unknown
    option fails when it is read (:func:`promptseg.train.datasets.check_dataset_options`)."""
    from promptseg.data.synth import SynthConfig

    own = [p for name, p in inspect.signature(SynthScenes.__init__).parameters.items() if name not in ("self", "synth")]
    extra = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None) for f in fields(SynthConfig)]
    return inspect.Signature(own + extra)


def synth_scenes(**options: Any) -> SynthScenes:
    """Factory of the ``synth-scenes`` dataset type (see :class:`SynthScenes`)."""
    return SynthScenes(**options)


def _synth_annotations() -> Dict[str, Any]:
    """The types of those options (``SynthConfig``'s fields, ``SynthScenes``' own), so that a string count or
    a fractional seed is a named error when the config is read, not a traceback when the scenes are built."""
    from promptseg.data.synth import SynthConfig

    own = {k: v for k, v in typing.get_type_hints(SynthScenes.__init__).items() if k not in ("synth", "return")}
    return {**typing.get_type_hints(SynthConfig), **own, "return": SynthScenes}


synth_scenes.__signature__ = _synth_signature()  # type: ignore[attr-defined]
synth_scenes.__annotations__ = _synth_annotations()


def register_datasets() -> None:
    """Register ``synth-scenes`` with :func:`promptseg.train.datasets.register_dataset` (idempotent)."""
    from promptseg.train.datasets import dataset_types, register_dataset

    if "synth-scenes" not in dataset_types():
        register_dataset("synth-scenes", synth_scenes)


register_datasets()
