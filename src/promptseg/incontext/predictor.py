"""In-context segmentation with SegGPT: examples ``(image, mask)`` in, label maps of the targets out.

:class:`SegGptPredictor` wraps a SegGPT model (promptseg's :class:`~promptseg.models.seggpt.SegGpt`, or any
module with the same ``forward`` as transformers' ``SegGptForImageSegmentation``) behind a numpy API::

    predictor = SegGptPredictor.from_checkpoint("seggpt_vit_large.safetensors")
    result = predictor.predict(photo, examples=[(example_photo, example_mask)])
    result.labels   # H×W int32 at the photo's size: 0 = background, k = the k-th object/category
    result.masks    # K×H×W bool, one per label 1..K
    result.colored  # H×W×3 uint8: the model's coloured output

Conventions (those of transformers' ``SegGptImageProcessor`` and the official inference code):

* every image is resized to the model's per-image size (448×448 for ViT-L) — bicubic for photos, nearest
  for masks — scaled to [0, 1] and normalised with the ImageNet mean ``(0.485, 0.456, 0.406)`` and std
  ``(0.229, 0.224, 0.225)``; coloured masks (0–255 RGB, see :mod:`promptseg.incontext.palette`) get the
  same scaling and normalisation;
* the model stacks each example above the target and paints the hidden bottom half; the bottom half of
  ``pred_masks`` is un-normalised to 0–255 colours, decoded by the nearest palette colour and resized
  to the target's size (the per-colour distances are resized bilinearly, so edges are not blocky).

Several examples (§3.2): ``ensemble="feature"`` puts them in the batch and averages the target's features
after every attention layer (``feature_ensemble=True``; the first example's row is read, as in the
official code); ``ensemble="spatial"`` tiles them into an ``n×n`` grid squeezed into one example;
``ensemble="none"`` takes exactly one example. Several objects or categories are predicted in one call
by colour: each label of the example masks gets its own palette colour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

from promptseg.incontext.palette import (
    MAX_LABELS,
    as_label_map,
    as_palette,
    color_distances,
    colors_to_labels,
    default_palette,
    encode_labels,
    labels_from_distances,
    relabel_to_palette,
)

#: ImageNet normalisation of ``SegGptImageProcessor`` (``IMAGENET_DEFAULT_MEAN`` / ``_STD``).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ENSEMBLES = ("feature", "spatial", "none")
EMBEDDING_TYPES = ("instance", "semantic")

Example = Tuple[np.ndarray, np.ndarray]


@dataclass
class InContextPrediction:
    """One target's prediction, at the target's original size ``H×W``.

    ``labels``: ``H×W`` int32 (0 = background, ``k`` = label ``k`` of the examples); ``masks``: ``K×H×W``
    bool, ``masks[k-1] = labels == k``; ``colored``: ``H×W×3`` uint8, the model's raw coloured output;
    ``palette``: ``K×3`` uint8, the colour of each label in the prompt.
    """

    labels: np.ndarray
    masks: np.ndarray
    colored: np.ndarray
    palette: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        """``H×W`` bool: any label (the foreground of a single-object prediction)."""
        return self.labels > 0


# --------------------------------------------------------------------------------------------- pre-processing
def model_image_size(model: Any) -> Tuple[int, int]:
    """``(H, W)`` of one image of the stacked pair the model expects (448×448 for ViT-L)."""
    size = getattr(model, "image_size", None)
    if isinstance(size, tuple) and len(size) == 2 and all(isinstance(v, int) for v in size):
        return size  # promptseg's SegGpt: already per image
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError("the model has no config: cannot tell its input size")
    single = getattr(config, "single_image_size", None)
    if single is not None:
        return int(single[0]), int(single[1])
    stacked = config.image_size  # transformers: (2H, W) of the stacked pair, or an int for a square
    h, w = (stacked, stacked) if isinstance(stacked, int) else (int(stacked[0]), int(stacked[1]))
    return h // 2, w


def resize_image(image: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """``H×W×3`` uint8 → ``h×w×3`` uint8, bicubic with antialiasing (PIL), as the official code."""
    from PIL import Image

    h, w = size
    if image.shape[:2] == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BICUBIC))


def resize_nearest(array: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of the first two axes (pixel centres), any dtype and channel count."""
    h, w = size
    ih, iw = array.shape[:2]
    if (ih, iw) == (h, w):
        return array
    rows = np.minimum(((np.arange(h) + 0.5) * ih / h).astype(np.int64), ih - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * iw / w).astype(np.int64), iw - 1)
    return array[rows[:, None], cols[None, :]]


def normalize(rgb: np.ndarray) -> np.ndarray:
    """``h×w×3`` uint8 (0–255) → ``3×h×w`` float32, ImageNet-normalised."""
    x = rgb.astype(np.float32) / 255.0
    x = (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def grid_cells(count: int, size: Tuple[int, int]) -> List[Tuple[slice, slice]]:
    """The ``n×n`` cells (``n = ceil(√count)``) of a canvas of ``size``, row by row (spatial ensemble)."""
    n = max(1, math.ceil(math.sqrt(count)))
    ys = np.round(np.linspace(0, size[0], n + 1)).astype(int)
    xs = np.round(np.linspace(0, size[1], n + 1)).astype(int)
    if (np.diff(ys) < 1).any() or (np.diff(xs) < 1).any():
        raise ValueError(f"{count} examples do not fit a spatial grid on a {size[0]}×{size[1]} input")
    return [(slice(ys[r], ys[r + 1]), slice(xs[c], xs[c + 1])) for r in range(n) for c in range(n)]


def tile_examples(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], size: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """Spatial ensemble (§3.2): examples stitched into an ``n×n`` grid the size of one example.

    ``images``/``masks``: ``H_i×W_i×3`` uint8 (masks already coloured). Each example is resized into its
    cell (bicubic / nearest); cells left over when the count is not a square repeat the examples in order.
    Returns ``(image, mask)``, both ``size + (3,)`` uint8.
    """
    canvas_img = np.zeros(size + (3,), np.uint8)
    canvas_mask = np.zeros(size + (3,), np.uint8)
    for i, (ys, xs) in enumerate(grid_cells(len(images), size)):
        j = i % len(images)
        cell = (ys.stop - ys.start, xs.stop - xs.start)
        canvas_img[ys, xs] = resize_image(images[j], cell)
        canvas_mask[ys, xs] = resize_nearest(masks[j], cell)
    return canvas_img, canvas_mask


def as_image(image: Any, name: str) -> np.ndarray:
    """Validate an image → ``H×W×3`` uint8 (``H×W``/RGBA/uint16/float in [0, 1] converted)."""
    from promptseg.transforms import to_rgb_uint8

    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} must be a numpy array H×W×3 (uint8, or float in [0, 1]), got {type(image).__name__}")
    return to_rgb_uint8(image, name=name)


def _as_examples(examples: Any, names: Optional[Sequence[str]] = None) -> List[Example]:
    if isinstance(examples, tuple) and len(examples) == 2 and isinstance(examples[0], np.ndarray):
        return [examples]  # a single (image, mask) pair
    if not isinstance(examples, (list, tuple)) or not examples:
        raise ValueError("examples must be a non-empty list of (image, mask) pairs")
    out = []
    for i, ex in enumerate(examples):
        if not isinstance(ex, (list, tuple)) or len(ex) != 2:
            raise ValueError(f"{_example_name(i, names)} must be an (image, mask) pair, got {type(ex).__name__}")
        out.append((ex[0], ex[1]))
    return out


def _example_name(i: int, names: Optional[Sequence[str]]) -> str:
    """How errors name example ``i``: ``names[i]``, or ``examples[i]``."""
    return names[i] if names is not None else f"examples[{i}]"


@dataclass
class ExampleSet:
    """Validated examples: ``images`` ``H_i×W_i×3`` uint8, ``labels`` ``H_i×W_i`` int64, ``palette`` ``K×3``."""

    images: List[np.ndarray]
    labels: List[np.ndarray]
    palette: np.ndarray

    @property
    def colored_masks(self) -> List[np.ndarray]:
        return [encode_labels(lab, self.palette, allow_empty=True) for lab in self.labels]


def prepare_examples(examples: Any, palette: Optional[np.ndarray] = None, allow_empty: bool = False,
                     names: Optional[Sequence[str]] = None) -> ExampleSet:
    """Validate ``[(image, mask), ...]`` and choose the palette (see :meth:`SegGptPredictor.predict`).

    Masks are label maps (``H×W`` bool/int) or colour masks (``H×W×3`` uint8, each non-black colour a
    label); all examples use one kind. Raises ValueError naming ``examples[i]`` (or ``names[i]``) for a
    size mismatch, an empty mask (unless ``allow_empty``; at least one example must still have a label) or
    more labels than palette colours.
    """
    pairs = _as_examples(examples, names)
    images, labels, colour_sets = [], [], []
    for i, (image, mask) in enumerate(pairs):
        what = _example_name(i, names)
        img = as_image(image, f"{what} image")
        if not isinstance(mask, np.ndarray):
            raise TypeError(f"{what} mask must be a numpy array, got {type(mask).__name__}")
        lab, colors = as_label_map(mask, f"{what} mask")
        if lab.shape != img.shape[:2]:
            raise ValueError(
                f"{what}: the image is {img.shape[0]}×{img.shape[1]} but its mask is "
                f"{lab.shape[0]}×{lab.shape[1]}; they must have the same size"
            )
        if not allow_empty and not (lab > 0).any():
            raise ValueError(f"{what} mask is empty: it marks no pixel, so it shows nothing to segment")
        images.append(img)
        labels.append(lab)
        colour_sets.append(colors)
    if any(c is not None for c in colour_sets):  # among colour masks, a grey-only H×W×3 one is a colour mask too
        for i, (_, mask) in enumerate(pairs):
            if colour_sets[i] is None and mask.ndim == 3 and mask.shape[2] in (3, 4):
                labels[i], colour_sets[i] = colors_to_labels(mask, f"{_example_name(i, names)} mask")
    if not any((lab > 0).any() for lab in labels):
        raise ValueError("every example mask is empty: at least one must mark the object(s) to segment")
    odd = next((i for i, c in enumerate(colour_sets) if (c is None) != (colour_sets[0] is None)), None)
    if odd is not None:  # name the first example of the other kind than the first one's
        kinds = ("a label map", "a colour mask") if colour_sets[0] is None else ("a colour mask", "a label map")
        raise ValueError(
            f"{_example_name(odd, names)} mask is {kinds[1]} but {_example_name(0, names)} mask is {kinds[0]}: "
            "examples mix label-map masks and colour masks; pass all as H×W labels or all as H×W×3 colours"
        )
    if colour_sets[0] is not None:  # colour masks: labels follow the palette, by default their sorted colours
        union = np.unique(np.vstack(colour_sets), axis=0) if palette is None else as_palette(palette)
        for i, colors in enumerate(colour_sets):
            labels[i] = relabel_to_palette(labels[i], colors, union, f"{_example_name(i, names)} mask")
        return ExampleSet(images, labels, union.astype(np.uint8))
    tops = [int(lab.max()) for lab in labels]
    top = max(tops)
    colors = default_palette(min(top, MAX_LABELS)) if palette is None else as_palette(palette)
    if len(colors) < top:
        raise ValueError(
            f"{_example_name(tops.index(top), names)} mask: palette has {len(colors)} colours but the example masks "
            f"have labels up to {top}" + (f" (the fixed palette holds at most {MAX_LABELS})" if palette is None else "")
        )
    return ExampleSet(images, labels, colors)


# --------------------------------------------------------------------------------------------- model call
def model_device_dtype(model: Any) -> Tuple[Any, Any]:
    """``(device, dtype)`` of the model's first parameter."""
    param = next(model.parameters())
    return param.device, param.dtype


def run_model(
    model: Any,
    pixel_values: Any,
    prompt_pixel_values: Any,
    prompt_masks: Any,
    feature_ensemble: bool = False,
    embedding_type: str = "instance",
) -> Any:
    """Forward normalised ``B×3×h×w`` tensors → the target half of ``pred_masks``, ``B×3×h×w`` float32
    (normalised colours). Gradients flow (no ``no_grad`` here)."""
    device, dtype = model_device_dtype(model)
    args = [t.to(device=device, dtype=dtype) for t in (pixel_values, prompt_pixel_values, prompt_masks)]
    out = model(*args, feature_ensemble=bool(feature_ensemble), embedding_type=embedding_type)
    pred = out if hasattr(out, "shape") else getattr(out, "pred_masks", None)
    if pred is None:
        pred = out[0]
    h = pred.shape[2] // 2
    return pred[:, :, h:, :].float()


def to_colors(pred: Any) -> Any:
    """Normalised ``B×3×h×w`` → 0–255 colours (float, clipped), as ``post_process_semantic_segmentation``."""
    import torch

    mean = torch.tensor(IMAGENET_MEAN, device=pred.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=pred.device).view(1, 3, 1, 1)
    return torch.clamp((pred * std + mean) * 255.0, 0.0, 255.0)


# --------------------------------------------------------------------------------------------- the predictor
class SegGptPredictor:
    """Numpy in, numpy out in-context segmentation with a SegGPT ``model`` (see the module docstring).

    Args:
        model: promptseg ``SegGpt`` (or transformers ``SegGptForImageSegmentation``); put in eval mode.
        embedding_type: ``"instance"`` (objects; the default) or ``"semantic"`` (categories): the learned
            type token of seggpt.txt App. A; can be overridden per call.
        batch_size: targets per forward pass when the context is a single example (one example, the
            spatial ensemble or a tuned prompt); the feature ensemble runs one target at a time.
        max_distance: default of :meth:`predict`'s ``max_distance``.
    """

    def __init__(self, model: Any, *, embedding_type: str = "instance", batch_size: int = 4,
                 max_distance: Optional[float] = None) -> None:
        _check_embedding_type(embedding_type)
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        self.model = model.eval()
        self.embedding_type = embedding_type
        self.batch_size = int(batch_size)
        self.max_distance = _check_max_distance(max_distance)
        self.image_size = model_image_size(model)

    @classmethod
    def from_checkpoint(cls, checkpoint: Any = None, *, device: Any = "cpu", dtype: Any = None, **kwargs: Any) -> "SegGptPredictor":
        """Load a SegGPT (promptseg safetensors, transformers dir/file, official ``.pth``) or the bundled
        default (:func:`load_model`) and wrap it."""
        return cls(load_model(checkpoint, device=device, dtype=dtype), **kwargs)

    @property
    def device(self) -> Any:
        return model_device_dtype(self.model)[0]

    # ----------------------------------------------------------------------------------------- context
    def build_context(self, examples: Any = None, *, prompt: Any = None, ensemble: str = "feature",
                      palette: Optional[np.ndarray] = None) -> "Context":
        """The prompt tensors for ``examples`` (or a tuned ``prompt``) — reusable over many targets."""
        import torch

        if ensemble not in ENSEMBLES:
            raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {ensemble!r}")
        if prompt is not None:
            if examples is not None:
                raise ValueError("give either examples or prompt (a TunedPrompt), not both")
            if palette is not None and not np.array_equal(as_palette(palette), as_palette(prompt.palette)):
                raise ValueError("palette differs from the prompt's own: a tuned prompt decodes with prompt.palette "
                                 "(the colours its mask was tuned with); leave palette out")
            if tuple(prompt.image_size) != self.image_size:
                raise ValueError(
                    f"prompt was tuned for {prompt.image_size[0]}×{prompt.image_size[1]} inputs but the model takes "
                    f"{self.image_size[0]}×{self.image_size[1]}"
                )
            return Context(prompt.image[None].float(), prompt.mask[None].float(), as_palette(prompt.palette), False,
                           prompt.embedding_type)
        if examples is None:
            raise ValueError("give examples=[(image, mask), ...] or prompt=TunedPrompt.load(path)")
        ex = prepare_examples(examples, palette)
        colored = ex.colored_masks
        if ensemble == "none" and len(ex.images) != 1:
            raise ValueError(f"ensemble='none' takes exactly one example, got {len(ex.images)}; use 'feature' or 'spatial'")
        if ensemble == "spatial":
            img, mask = tile_examples(ex.images, colored, self.image_size)
            pairs = [(img, mask)]
        else:
            pairs = [(resize_image(i, self.image_size), resize_nearest(m, self.image_size)) for i, m in zip(ex.images, colored)]
        images = torch.from_numpy(np.stack([normalize(i) for i, _ in pairs]))
        masks = torch.from_numpy(np.stack([normalize(m) for _, m in pairs]))
        return Context(images, masks, ex.palette, ensemble == "feature" and len(pairs) > 1, None)

    # ----------------------------------------------------------------------------------------- predict
    def predict(
        self,
        target_images: Any,
        examples: Any = None,
        *,
        prompt: Any = None,
        ensemble: str = "feature",
        palette: Optional[np.ndarray] = None,
        embedding_type: Optional[str] = None,
        max_distance: Optional[float] = None,
    ) -> Union[InContextPrediction, List[InContextPrediction]]:
        """Segment ``target_images`` like the ``examples``.

        Args:
            target_images: one image ``H×W×3`` (uint8, or float in [0, 1]; ``H×W`` grey is accepted), a
                list of them, or an ``N×H×W×3`` array; sizes may differ.
            examples: ``[(image, mask), ...]`` (or one pair): ``mask`` is ``H×W`` bool (one object), an
                ``H×W`` label map (0 = background, ``k`` = object/category ``k``: several at once) or an
                ``H×W×3`` uint8 colour mask (each non-black colour a label, numbered in sorted RGB order).
            prompt: a :class:`~promptseg.incontext.tuning.TunedPrompt` instead of examples.
            ensemble: ``"feature"`` (default), ``"spatial"`` or ``"none"`` (one example only).
            palette: ``K×3`` colours of labels ``1..K`` (default: the fixed palette; with colour masks,
                their own colours in sorted RGB order — a palette then fixes the numbering instead); with a
                ``prompt``, its own palette (a different one is a ValueError).
            embedding_type: ``"instance"`` or ``"semantic"`` (default: the predictor's; a tuned prompt's own).
            max_distance: a pixel whose colour is farther than this from every palette colour and from black
                is background (0–255 RGB units; default: nearest colour wins).
        Returns:
            an :class:`InContextPrediction` for a single image, a list for a list / ``N×H×W×3`` array.
        """
        context = self.build_context(examples, prompt=prompt, ensemble=ensemble, palette=palette)
        return self.predict_with_context(target_images, context, embedding_type=embedding_type, max_distance=max_distance)

    def predict_with_context(self, target_images: Any, context: "Context", *, embedding_type: Optional[str] = None,
                             max_distance: Optional[float] = None) -> Union[InContextPrediction, List[InContextPrediction]]:
        """:meth:`predict` with a context from :meth:`build_context` (skips re-preparing the examples)."""
        import torch

        single, targets = _as_targets(target_images)
        kind = embedding_type or context.embedding_type or self.embedding_type
        _check_embedding_type(kind)
        limit = self.max_distance if max_distance is None else _check_max_distance(max_distance)
        inputs = [torch.from_numpy(normalize(resize_image(t, self.image_size))) for t in targets]
        colors: List[Any] = []
        with torch.inference_mode():
            if context.feature_ensemble:
                n = context.images.shape[0]
                for x in inputs:
                    pred = run_model(self.model, x[None].expand(n, -1, -1, -1), context.images, context.masks, True, kind)
                    colors.append(to_colors(pred[:1]))  # the first example's row, as the official code
            else:
                for start in range(0, len(inputs), self.batch_size):
                    x = torch.stack(inputs[start : start + self.batch_size])
                    b = x.shape[0]
                    pred = run_model(self.model, x, context.images.expand(b, -1, -1, -1),
                                     context.masks.expand(b, -1, -1, -1), False, kind)
                    colors.extend(to_colors(pred).split(1))
        results = [decode_prediction(c[0], t.shape[:2], context.palette, limit) for c, t in zip(colors, targets)]
        return results[0] if single else results


@dataclass
class Context:
    """Prompt tensors ready for the model: ``images``/``masks`` ``N×3×h×w`` (normalised), the ``palette``,
    whether to average features over the ``N`` examples, and an embedding type it fixes (tuned prompts)."""

    images: Any
    masks: Any
    palette: np.ndarray
    feature_ensemble: bool
    embedding_type: Optional[str]


def decode_prediction(colors: Any, size: Tuple[int, int], palette: np.ndarray,
                      max_distance: Optional[float] = None) -> InContextPrediction:
    """``3×h×w`` 0–255 colours at model resolution → :class:`InContextPrediction` at ``size``."""
    import torch
    import torch.nn.functional as F

    rgb = colors.detach().float().cpu()
    dist = torch.from_numpy(color_distances(rgb.permute(1, 2, 0).numpy(), palette))
    dist = F.interpolate(dist[None], size=size, mode="bilinear", align_corners=False)[0]
    labels = labels_from_distances(dist.numpy(), max_distance)
    full = F.interpolate(rgb[None], size=size, mode="bilinear", align_corners=False)[0]
    colored = full.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    k = len(palette)
    masks = labels[None] == np.arange(1, k + 1, dtype=np.int32)[:, None, None]
    return InContextPrediction(labels, masks, np.ascontiguousarray(colored), np.array(palette, np.uint8))  # own copy


def _as_targets(target_images: Any) -> Tuple[bool, List[np.ndarray]]:
    if isinstance(target_images, np.ndarray):
        if target_images.ndim == 4:
            return False, [as_image(t, f"target_images[{i}]") for i, t in enumerate(target_images)]
        return True, [as_image(target_images, "target_images")]
    if isinstance(target_images, (list, tuple)):
        if not target_images:
            raise ValueError("target_images is empty")
        return False, [as_image(t, f"target_images[{i}]") for i, t in enumerate(target_images)]
    raise TypeError(f"target_images must be a numpy image or a list of them, got {type(target_images).__name__}")


def _check_max_distance(value: Any) -> Optional[float]:
    """``max_distance``: None or a number ≥ 0 (0–255 RGB units), checked before any forward pass."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"max_distance must be a number ≥ 0 (0–255 RGB units) or None, got {type(value).__name__}")
    if not value >= 0:
        raise ValueError(f"max_distance must be ≥ 0, got {value}")
    return float(value)


def _check_embedding_type(kind: str) -> None:
    if kind not in EMBEDDING_TYPES:
        raise ValueError(f"embedding_type must be one of {EMBEDDING_TYPES}, got {kind!r}")


# --------------------------------------------------------------------------------------------- models
DEFAULT_SEGGPT_FILE = "seggpt_default.safetensors"


class NoDefaultSegGptError(FileNotFoundError):
    """No SegGPT checkpoint was given and this installation bundles no default SegGPT."""


def default_seggpt_path() -> Optional[Any]:
    """Path of the bundled default SegGPT (``promptseg/weights/seggpt_default.safetensors``), or None."""
    from importlib import resources
    from pathlib import Path

    path = Path(str(resources.files("promptseg") / "weights" / DEFAULT_SEGGPT_FILE))
    return path if path.is_file() else None


def load_model(checkpoint: Any = None, *, device: Any = "cpu", dtype: Any = None) -> Any:
    """Load a SegGPT from ``checkpoint`` or the bundled default; never random weights.

    Without a checkpoint and without a bundled model this raises :class:`NoDefaultSegGptError`, which
    says what to pass (the command line turns it into exit status 2).
    """
    import torch

    from promptseg.models.seggpt import load_seggpt

    if checkpoint is None:
        checkpoint = default_seggpt_path()
        if checkpoint is None:
            raise NoDefaultSegGptError(
                "no checkpoint given and this promptseg build bundles no default SegGPT model yet; pass one, e.g. "
                "--checkpoint seggpt_vit_large.pth (official), a transformers folder (BAAI/seggpt-vit-large) or a "
                "promptseg .safetensors file"
            )
    return load_seggpt(checkpoint, device=device, dtype=dtype or torch.float32).eval()
