"""Prompt simulation for training (segment-anything.txt §3 "Losses and training", §A "Training algorithm").

Pure functions on torch tensors. Every random draw takes an explicit :class:`torch.Generator` (on the
device of the tensors), so a training step is reproducible from its seed alone and never touches the
global RNG.

Frames and conventions
    * Masks are ``B×H×W`` bool tensors in the *padded model-input frame* (``H = W = img_size``): the
      image resized to a longest side of ``img_size`` sits top-left, padding bottom/right. ``valid``
      (``B×H×W`` bool) marks the image pixels; nothing is ever sampled in the padding.
    * Points are ``(x, y)`` integer pixel indices of that frame as floats — the prompt encoder adds
      0.5 (pixel centre), exactly as for user clicks at inference.
    * Boxes are XYXY with *inclusive* corner pixels (``x1`` is the last column of the object), the
      convention of the automatic mask generator's mask→box.
    * Labels follow :mod:`promptseg.prompts`: 1 positive, 0 negative, 2/3 box corners, -1 padding.

The simulated interaction (§A):
    1. The first prompt is, with equal probability, a foreground point drawn uniformly from the GT
       mask or the GT box with Gaussian noise on each coordinate (std 10 % of the box side length,
       "to a maximum of 20 pixels").
    2. Each later point is drawn uniformly from the error region between the previous prediction and
       the GT: positive where it is a false negative, negative where it is a false positive.
    3. 11 rounds: the initial prompt, 8 rounds that each add a point, and 2 rounds that add nothing
       (only the previous mask logits are re-supplied) — one inserted at a random position among the
       point rounds, one always last (:func:`round_schedule`).
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor

from promptseg.prompts import BOX_BOTTOM_RIGHT_LABEL, BOX_TOP_LEFT_LABEL, NEGATIVE_LABEL, PAD_LABEL, POSITIVE_LABEL

#: Round kinds of :func:`round_schedule`.
INITIAL = "initial"
POINT = "point"
MASK_ONLY = "mask"


def round_schedule(num_rounds: int = 11, generator: Optional[torch.Generator] = None) -> List[str]:
    """The kinds of the ``num_rounds`` simulated rounds (§A "Training algorithm").

    With the paper's 11 rounds: ``initial``, 8 × ``point`` and 2 × ``mask`` (no new point, the previous
    mask logits only). One ``mask`` round is inserted at a uniformly random position among the point
    rounds — before point round ``j`` for ``j ∈ [0, 8)``, so it is always followed by at least one
    point round ("randomly inserted among the 8 iteratively sampled points") — and the other is last.

    In general: 1 round → ``[initial]``; 2 → ``[initial, mask]``; ``n ≥ 3`` → ``n − 3`` point rounds
    plus the two mask-only rounds.
    """
    if num_rounds < 1:
        raise ValueError(f"num_rounds must be at least 1, got {num_rounds}")
    if num_rounds == 1:
        return [INITIAL]
    if num_rounds == 2:
        return [INITIAL, MASK_ONLY]
    num_points = num_rounds - 3
    middle = [POINT] * num_points
    device = generator.device if generator is not None else None  # a CUDA generator draws on its device
    slot = int(torch.randint(max(num_points, 1), (1,), generator=generator, device=device).item())
    middle.insert(slot, MASK_ONLY)
    return [INITIAL] + middle + [MASK_ONLY]


def sample_uniform(region: Tensor, num: int = 1, generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
    """Draw ``num`` pixels uniformly (with replacement) from each ``B×H×W`` bool ``region``.

    Uses one uniform number per draw and a prefix count of the region (memory: 4 bytes per pixel),
    so the number of random draws does not depend on the image size.

    Returns:
        ``coords B×num×2`` float ``(x, y)`` pixel indices and ``found B`` (False where the region is
        empty; the coordinates of those rows are ``(0, 0)``).
    """
    if region.dtype != torch.bool or region.ndim != 3:
        raise ValueError(f"region must be a B×H×W bool tensor, got {tuple(region.shape)} {region.dtype}")
    b, h, w = region.shape
    flat = region.reshape(b, h * w)
    cum = flat.cumsum(1, dtype=torch.int32)
    counts = cum[:, -1:] if h * w else flat.new_zeros((b, 1), dtype=torch.int32)
    u = torch.rand((b, num), generator=generator, device=region.device)
    # the k-th foreground pixel (1-based) for k = floor(u · count) + 1 — uniform over the region
    k = (u * counts).floor().to(torch.int32).clamp(max=counts.clamp(min=1) - 1) + 1
    index = torch.searchsorted(cum, k).clamp(max=max(h * w - 1, 0))
    found = counts[:, 0] > 0
    index = torch.where(found[:, None], index, torch.zeros_like(index))
    coords = torch.stack([index % w, torch.div(index, w, rounding_mode="floor")], dim=-1).to(torch.float32)
    return coords, found


def masks_to_boxes(masks: Tensor) -> Tensor:
    """``B×H×W`` bool → ``B×4`` float XYXY boxes with inclusive corners; ``(0, 0, 0, 0)`` for empty masks."""
    b, h, w = masks.shape
    rows, cols = masks.any(2), masks.any(1)  # B×H, B×W
    ys = torch.arange(h, device=masks.device)
    xs = torch.arange(w, device=masks.device)
    big = h + w
    y0 = torch.where(rows, ys, big).amin(1)
    y1 = torch.where(rows, ys, -1).amax(1)
    x0 = torch.where(cols, xs, big).amin(1)
    x1 = torch.where(cols, xs, -1).amax(1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).to(torch.float32)
    return torch.where(rows.any(1)[:, None], boxes, torch.zeros_like(boxes))


def noisy_boxes(
    boxes: Tensor,
    generator: Optional[torch.Generator] = None,
    std_fraction: float = 0.1,
    max_noise: float = 20.0,
    image_sizes: Optional[Tensor] = None,
) -> Tensor:
    """Jitter XYXY ``boxes`` (``B×4``) as in §A: per-coordinate Gaussian noise with std ``std_fraction``
    × the box side along that axis, each offset clipped to ``±max_noise`` pixels.

    "std equal to 10 % of the box sidelength, to a maximum of 20 pixels" is read as a bound on the
    noise itself (a box corner never moves more than 20 px), so small boxes get proportional noise and
    large boxes a noise that saturates at 20 px. The result is clamped to the image
    (``image_sizes B×2`` as ``(h, w)``, when given) and its corners re-ordered so ``x0 ≤ x1, y0 ≤ y1``.
    """
    side_w = boxes[:, 2] - boxes[:, 0] + 1
    side_h = boxes[:, 3] - boxes[:, 1] + 1
    std = std_fraction * torch.stack([side_w, side_h, side_w, side_h], dim=1)
    noise = torch.randn(boxes.shape, generator=generator, device=boxes.device) * std
    out = boxes + noise.clamp(-max_noise, max_noise)
    if image_sizes is not None:
        hi = torch.stack([image_sizes[:, 1], image_sizes[:, 0]], dim=1).to(out.dtype) - 1  # B×2 (x_max, y_max)
        out = torch.minimum(out.clamp(min=0).view(-1, 2, 2), hi[:, None, :]).view(-1, 4)
    lo = torch.minimum(out[:, :2], out[:, 2:])
    hi_corner = torch.maximum(out[:, :2], out[:, 2:])
    return torch.cat([lo, hi_corner], dim=1)


def valid_sizes(valid: Tensor) -> Tensor:
    """``B×H×W`` valid (top-left image) region → ``B×2`` long ``(h, w)``."""
    return torch.stack([valid.any(2).sum(1), valid.any(1).sum(1)], dim=1)


class InitialPrompt(NamedTuple):
    """The first prompt of every mask, as two protocol points.

    A point prompt is ``[(x, y) label 1, (0, 0) label -1]`` (the click and the padding point that the
    protocol appends when there is no box); a box prompt is ``[top-left label 2, bottom-right label 3]``.
    """

    coords: Tensor  # B×2×2
    labels: Tensor  # B×2 long
    is_box: Tensor  # B bool


def initial_prompts(
    gt: Tensor,
    valid: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
    box_probability: float = 0.5,
    box_noise_std: float = 0.1,
    box_noise_max: float = 20.0,
) -> InitialPrompt:
    """First prompt for each GT mask (``B×H×W`` bool): a uniform foreground point or a noisy box (§A)."""
    b = gt.shape[0]
    device = gt.device
    is_box = torch.rand(b, generator=generator, device=device) < box_probability
    points, _ = sample_uniform(gt, 1, generator)  # B×1×2
    sizes = valid_sizes(valid) if valid is not None else torch.tensor(gt.shape[-2:], device=device).expand(b, 2)
    boxes = noisy_boxes(masks_to_boxes(gt), generator, box_noise_std, box_noise_max, sizes)
    point_coords = torch.cat([points, torch.zeros_like(points)], dim=1)
    coords = torch.where(is_box[:, None, None], boxes.view(b, 2, 2), point_coords)
    box_labels = torch.tensor([BOX_TOP_LEFT_LABEL, BOX_BOTTOM_RIGHT_LABEL], device=device)
    point_labels = torch.tensor([POSITIVE_LABEL, PAD_LABEL], device=device)
    labels = torch.where(is_box[:, None], box_labels, point_labels)
    return InitialPrompt(coords, labels, is_box)


def error_points(
    pred: Tensor,
    gt: Tensor,
    valid: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
    num: int = 1,
) -> Tuple[Tensor, Tensor]:
    """Correction clicks drawn uniformly from the error region of ``pred`` vs ``gt`` (``B×H×W`` bool, §A).

    A click in a false negative is positive (label 1), in a false positive negative (label 0). When a
    prediction has no error inside ``valid`` the click is drawn uniformly from the whole image instead
    and labelled by the GT there (a correct, uninformative click keeps every mask's prompt count equal).

    Returns ``coords B×num×2`` and ``labels B×num`` (long).
    """
    error = pred ^ gt
    if valid is None:
        valid = torch.ones_like(gt)
    error = error & valid
    has_error = error.flatten(1).any(1)
    region = torch.where(has_error[:, None, None], error, valid)
    coords, _ = sample_uniform(region, num, generator)
    x, y = coords[..., 0].long(), coords[..., 1].long()
    inside = gt[torch.arange(gt.shape[0], device=gt.device)[:, None], y, x]  # B×num
    labels = torch.where(inside, POSITIVE_LABEL, NEGATIVE_LABEL).to(torch.int64)
    return coords, labels


def assemble_sparse(first: InitialPrompt, click_coords: Tensor, click_labels: Tensor) -> Tuple[Tensor, Tensor]:
    """The protocol point list of every mask: the layout the predictor builds for the same prompts.

    * point first: ``[click₀, clicks…, pad]`` (clicks, then the padding point — no box);
    * box first:   ``[clicks…, box top-left, box bottom-right]`` (clicks, then the box corners).

    Both have ``n + 2`` entries for ``n`` correction clicks, so the batch needs no extra padding
    tokens (which would change the computation relative to inference).
    """
    as_point = torch.cat([first.coords[:, :1], click_coords, first.coords[:, 1:]], dim=1)
    as_box = torch.cat([click_coords, first.coords], dim=1)
    coords = torch.where(first.is_box[:, None, None], as_box, as_point)
    lab_point = torch.cat([first.labels[:, :1], click_labels, first.labels[:, 1:]], dim=1)
    lab_box = torch.cat([click_labels, first.labels], dim=1)
    labels = torch.where(first.is_box[:, None], lab_box, lab_point)
    return coords, labels


def use_multimask(num_prompts: int) -> bool:
    """§A: the 3 ambiguity-aware masks for a single prompt, the single-output token for more than one.

    Counted per round: the initial prompt, each correction click and the previous mask are one prompt
    each, so the first round has one and every later round at least two. Whether a lone *box* is "a
    single prompt" is :func:`multimask_rows`' choice.
    """
    return num_prompts == 1


def multimask_rows(first: InitialPrompt, num_prompts: int, multimask_box: bool = True) -> Union[bool, Tensor]:
    """Which masks of a round are supervised through the 3 ambiguity-aware outputs (§A).

    ``False`` for every round with more than one prompt (:func:`use_multimask`). In the first round a
    click always gets the 3 outputs; a box gets them with ``multimask_box`` (§A's "single prompt", the
    default). Without it a box goes to the single-output token: it is two corner tokens, the way it is
    predicted at inference (``predict(box=…, multimask_output=False)``, the box evaluation of §7) and
    the way SAM 2's released trainer counts it (box corners as points, 3 outputs for at most one
    point). Returns a bool (all masks alike) or a ``B`` bool tensor.
    """
    if not use_multimask(num_prompts):
        return False
    if multimask_box:
        return True
    return ~first.is_box
