"""In-context tuning (seggpt.txt §3.3, §4.6): learn the prompt, keep the model frozen.

The example pair fed to SegGPT as its prompt — an image and its coloured mask — becomes a pair of
learnable tensors, initialised from one example. With every model parameter frozen, the tensors are
optimised (Adam) so that the model paints the masks of a small training set of ``(image, mask)`` pairs:
the same smooth-ℓ1 loss as training, on the target (bottom) half. The result, a :class:`TunedPrompt`, is
a plug-and-play key for the task: save it, then ``SegGptPredictor.predict(image, prompt=TunedPrompt.load(path))``.

Tensors live in the model's normalised space (ImageNet mean/std, ``3×h×w`` at the model's per-image size)
and are kept inside the range of real pixels (``[0, 1]`` before normalisation) after every step.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from promptseg.incontext.palette import as_palette
from promptseg.incontext.predictor import (
    EMBEDDING_TYPES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    model_device_dtype,
    model_image_size,
    normalize,
    prepare_examples,
    resize_image,
    resize_nearest,
    run_model,
)

PathLike = Union[str, "os.PathLike[str]"]
#: ``format`` value in the safetensors header of a saved prompt.
PROMPT_FORMAT = "promptseg-seggpt-prompt"
PROMPT_VERSION = "1"
LEARN_CHOICES = ("both", "image", "mask")


@dataclass
class TunedPrompt:
    """A learned SegGPT prompt: ``image`` and ``mask`` ``3×h×w`` float32 tensors (normalised), the
    ``palette`` (``K×3`` uint8) its mask colours mean, the ``embedding_type`` it was tuned with and free
    ``metadata`` (steps, losses, …)."""

    image: Any
    mask: Any
    palette: np.ndarray
    embedding_type: str = "instance"
    metadata: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        import torch

        for name in ("image", "mask"):
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or t.ndim != 3 or t.shape[0] != 3:
                raise ValueError(f"TunedPrompt.{name} must be a 3×H×W tensor, got {getattr(t, 'shape', type(t).__name__)}")
        if self.image.shape != self.mask.shape:
            raise ValueError(f"TunedPrompt image {tuple(self.image.shape)} and mask {tuple(self.mask.shape)} differ in shape")
        if self.embedding_type not in EMBEDDING_TYPES:
            raise ValueError(f"embedding_type must be one of {EMBEDDING_TYPES}, got {self.embedding_type!r}")
        self.palette = as_palette(self.palette)

    @property
    def image_size(self) -> Tuple[int, int]:
        """``(h, w)``: the model's per-image size the prompt was tuned for."""
        return int(self.image.shape[1]), int(self.image.shape[2])

    @classmethod
    def from_example(cls, image: np.ndarray, mask: np.ndarray, image_size: Tuple[int, int],
                     palette: Optional[np.ndarray] = None, embedding_type: str = "instance") -> "TunedPrompt":
        """The (untuned) prompt of one example, resized to ``image_size`` — the starting point of tuning."""
        import torch

        ex = prepare_examples([(image, mask)], palette)
        img = normalize(resize_image(ex.images[0], image_size))
        msk = normalize(resize_nearest(ex.colored_masks[0], image_size))
        return cls(torch.from_numpy(img), torch.from_numpy(msk), ex.palette, embedding_type)

    def to_images(self) -> Tuple[np.ndarray, np.ndarray]:
        """``(image, mask)`` as ``h×w×3`` uint8 pictures (to look at what was learned)."""
        mean = np.asarray(IMAGENET_MEAN, np.float32)[:, None, None]
        std = np.asarray(IMAGENET_STD, np.float32)[:, None, None]

        def picture(t: Any) -> np.ndarray:
            x = t.detach().float().cpu().numpy() * std + mean
            return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8).transpose(1, 2, 0)

        return picture(self.image), picture(self.mask)

    # ------------------------------------------------------------------------------------------ files
    def save(self, path: PathLike) -> Path:
        """Write a ``.safetensors`` file (atomically): tensors ``image``, ``mask``, ``palette`` + header."""
        import torch
        from safetensors.torch import save_file

        from promptseg.fileio import atomic_write

        path = Path(path)
        tensors = {
            "image": self.image.detach().float().cpu().contiguous(),
            "mask": self.mask.detach().float().cpu().contiguous(),
            "palette": torch.from_numpy(np.ascontiguousarray(self.palette)),
        }
        header = {
            "format": PROMPT_FORMAT,
            "version": PROMPT_VERSION,
            "embedding_type": self.embedding_type,
            "metadata": json.dumps(self.metadata, sort_keys=True),
        }
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))
        return path

    @classmethod
    def load(cls, path: PathLike) -> "TunedPrompt":
        """Read a prompt written by :meth:`save`; ValueError naming the file when it is not one."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file, safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tuned prompt not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            if isinstance(err, (FileNotFoundError, PermissionError)):
                raise
            raise ValueError(f"cannot read tuned prompt {path}: {err}") from err
        if header.get("format") != PROMPT_FORMAT:
            raise ValueError(f"{path} is not a promptseg SegGPT prompt (format {header.get('format')!r})")
        missing = {"image", "mask", "palette"} - set(tensors)
        if missing:
            raise ValueError(f"tuned prompt {path} lacks tensor(s) {sorted(missing)}")
        try:
            metadata = json.loads(header.get("metadata", "{}"))
            return cls(tensors["image"].float(), tensors["mask"].float(), tensors["palette"].numpy(),
                       header.get("embedding_type", "instance"), metadata)
        except (TypeError, ValueError) as err:
            raise ValueError(f"invalid tuned prompt {path}: {err}") from err


@dataclass
class TuningResult:
    """``prompt``: the tuned prompt; ``losses``: the batch loss of every step (before its update);
    ``initial_loss`` / ``final_loss``: the loss over all training pairs before and after tuning."""

    prompt: TunedPrompt
    losses: List[float]
    initial_loss: float
    final_loss: float


# --------------------------------------------------------------------------------------------- tuning
def _targets(pairs: Any, palette: np.ndarray, size: Tuple[int, int]) -> Tuple[Any, Any]:
    """Training pairs → normalised image and coloured-mask tensors ``N×3×h×w``."""
    return _tensors(prepare_examples(pairs, palette, allow_empty=True), size)


def _tensors(ex: Any, size: Tuple[int, int]) -> Tuple[Any, Any]:
    """Prepared examples → normalised image and coloured-mask tensors ``N×3×h×w``."""
    import torch

    images = np.stack([normalize(resize_image(i, size)) for i in ex.images])
    masks = np.stack([normalize(resize_nearest(m, size)) for m in ex.colored_masks])
    return torch.from_numpy(images), torch.from_numpy(masks)


@contextlib.contextmanager
def _eval_mode(model: Any, freeze: bool = False) -> Iterator[None]:
    """``model`` in eval mode inside the block (with ``freeze``, its parameters too); every submodule's own
    train/eval mode (a frozen part may be kept in eval mode) and every ``requires_grad`` restored after."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    if freeze:
        for p in model.parameters():
            p.requires_grad_(False)
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)


def prompt_loss(model: Any, image: Any, mask: Any, targets: Any, target_masks: Any,
                embedding_type: str = "instance", beta: Optional[float] = None) -> Any:
    """Mean smooth-ℓ1 (``beta``: the model config's, 0.01 by default) between the model's prediction of
    ``targets`` (``B×3×h×w``) from the prompt ``(image, mask)`` (``3×h×w``) and ``target_masks``."""
    import torch.nn.functional as F

    if beta is None:
        beta = float(getattr(getattr(model, "config", None), "beta", 0.01))
    b = targets.shape[0]
    pred = run_model(model, targets, image[None].expand(b, -1, -1, -1), mask[None].expand(b, -1, -1, -1),
                     False, embedding_type)
    return F.smooth_l1_loss(pred, target_masks.to(pred.device, pred.dtype), beta=beta)


def _mean_loss(model: Any, image: Any, mask: Any, targets: Any, target_masks: Any, embedding_type: str,
               batch_size: int = 8) -> float:
    import torch

    device, _ = model_device_dtype(model)
    total = 0.0
    with torch.no_grad():
        for s in range(0, len(targets), batch_size):
            loss = prompt_loss(model, image.to(device), mask.to(device), targets[s : s + batch_size],
                               target_masks[s : s + batch_size], embedding_type)
            total += float(loss) * len(targets[s : s + batch_size])
    return total / len(targets)


def evaluate_prompt(model: Any, prompt: TunedPrompt, pairs: Any) -> float:
    """Mean loss of ``prompt`` over the ``(image, mask)`` ``pairs`` (masks use the prompt's palette), with the
    model in eval mode as :func:`tune_prompt` scores (its modes are restored)."""
    targets, masks = _targets(pairs, prompt.palette, model_image_size(model))
    with _eval_mode(model):
        return _mean_loss(model, prompt.image, prompt.mask, targets, masks, prompt.embedding_type)


def tune_prompt(
    model: Any,
    pairs: Sequence[Tuple[np.ndarray, np.ndarray]],
    *,
    init: Optional[Tuple[np.ndarray, np.ndarray]] = None,
    steps: int = 100,
    lr: float = 0.01,
    batch_size: int = 4,
    palette: Optional[np.ndarray] = None,
    embedding_type: str = "instance",
    learn: str = "both",
    seed: int = 0,
    progress: bool = False,
    callback: Optional[Callable[[int, float], None]] = None,
) -> TuningResult:
    """Learn a prompt for ``pairs`` with the ``model`` frozen (§4.6).

    Args:
        model: a SegGPT (or a :class:`~promptseg.incontext.predictor.SegGptPredictor`, whose model is used).
        pairs: training ``(image, mask)`` pairs; masks as in ``SegGptPredictor.predict`` (labels or colours).
        init: the example the prompt starts from (default: the first pair). Its labels must use the
            same numbering as ``pairs``.
        steps, lr, batch_size: Adam steps, learning rate (normalised units) and pairs per step (sampled
            without replacement each step; all pairs when ``batch_size ≥ len(pairs)``).
        learn: ``"both"`` tensors, only the ``"image"`` or only the ``"mask"``.
        seed: seeds the batch sampling.
        callback: called as ``callback(step, loss)`` after every step.
    Returns:
        a :class:`TuningResult`. Model parameters are never changed (their ``requires_grad`` flags are
        restored afterwards).
    """
    import torch

    model = getattr(model, "model", model) if not isinstance(model, torch.nn.Module) else model
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a SegGPT torch module or a SegGptPredictor, got {type(model).__name__}")
    if learn not in LEARN_CHOICES:
        raise ValueError(f"learn must be one of {LEARN_CHOICES}, got {learn!r}")
    if embedding_type not in EMBEDDING_TYPES:
        raise ValueError(f"embedding_type must be one of {EMBEDDING_TYPES}, got {embedding_type!r}")
    if steps < 0 or batch_size < 1 or not lr > 0:
        raise ValueError(f"need steps ≥ 0, batch_size ≥ 1 and lr > 0, got steps={steps}, batch_size={batch_size}, lr={lr}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    pairs = list(pairs)
    if not pairs:
        raise ValueError("pairs is empty: tuning needs at least one (image, mask) pair")
    size = model_image_size(model)
    start = init if init is not None else pairs[0]
    names = ["init" if init is not None else "pairs[0]"] + [f"pairs[{i}]" for i in range(len(pairs))]
    everything = prepare_examples([start] + pairs, palette, allow_empty=True, names=names)  # one palette for all
    if not (everything.labels[0] > 0).any():
        raise ValueError(f"{names[0]} mask is empty: the prompt starts from it, so it must mark the object(s)")
    # the start and the targets come from the one numbering of all (a grey-only H×W×3 mask among colour
    # masks is read as a colour there, but as a label map alone)
    images, colored = _tensors(everything, size)
    initial = TunedPrompt(images[0].clone(), colored[0].clone(), everything.palette, embedding_type)
    targets, target_masks = images[1:], colored[1:]

    device, _ = model_device_dtype(model)
    image = initial.image.clone().to(device).requires_grad_(learn in ("both", "image"))
    mask = initial.mask.clone().to(device).requires_grad_(learn in ("both", "mask"))
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(3, 1, 1)
    low, high = (0 - mean) / std, (1 - mean) / std
    optimizer = torch.optim.Adam([t for t in (image, mask) if t.requires_grad], lr=lr)
    rng = np.random.default_rng(seed)
    losses: List[float] = []
    with _eval_mode(model, freeze=True):
        initial_loss = _mean_loss(model, initial.image, initial.mask, targets, target_masks, embedding_type)
        from tqdm import tqdm

        bar = tqdm(range(steps), desc="tuning prompt", unit="step", disable=not progress)
        for step in bar:
            if batch_size >= len(targets):
                idx = np.arange(len(targets))
            else:
                idx = np.sort(rng.choice(len(targets), size=batch_size, replace=False))
            loss = prompt_loss(model, image, mask, targets[idx], target_masks[idx], embedding_type)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                image.copy_(torch.maximum(torch.minimum(image, high), low))
                mask.copy_(torch.maximum(torch.minimum(mask, high), low))
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if callback is not None:
                callback(step, losses[-1])
        tuned = TunedPrompt(image.detach().cpu(), mask.detach().cpu(), everything.palette, embedding_type)
        final_loss = _mean_loss(model, tuned.image, tuned.mask, targets, target_masks, embedding_type)  # in eval mode
    tuned.metadata = {"steps": steps, "lr": lr, "batch_size": batch_size, "learn": learn, "pairs": len(pairs),
                      "initial_loss": initial_loss, "final_loss": final_loss}
    return TuningResult(tuned, losses, initial_loss, final_loss)
