"""Losses of SAM training (segment-anything.txt §3 "Losses and training", §A "Losses",
§A "Making the model ambiguity-aware").

Plain functions — :func:`sigmoid_focal_loss`, :func:`dice_loss`, :func:`iou_of` — and one aggregating
module, :class:`SamLoss`:

* mask loss = 20 · focal + 1 · dice (§A "Losses": a 20:1 ratio, no deep supervision);
* for a single prompt the decoder returns 3 masks (tokens 1–3); the loss is computed for each but only
  the lowest one is back-propagated (§A "Making the model ambiguity-aware"); for more than one prompt
  only the single-output token (0) is supervised. The choice is per batch (a bool) or per mask (a ``B``
  bool tensor: a batch that mixes one-click masks with box-prompted ones that the trainer's
  ``multimask_box: false`` sends to the single output);
* IoU head: 1.0 · MSE between each returned mask's predicted IoU and its actual IoU with the GT
  (§A "Losses"). The target IoU is a constant (computed without gradient).

Resolution (a choice the paper leaves open): the decoder's low-res logits (``4h'×4w'``, 256² for the
official models) are bilinearly upsampled to the resolution of the target — by default the padded
model-input frame (1024²), the same upsampling :func:`promptseg.transforms.postprocess_masks` applies
at inference — and every per-pixel term is averaged over the *valid* (non-padding) pixels only. A
target given at the low resolution skips the upsampling (the trainer's ``loss_resolution: "low_res"``,
16× cheaper in memory).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from promptseg.transforms import resize_bilinear


def _pixel_mean(values: Tensor, valid: Optional[Tensor]) -> Tensor:
    """Mean over the last two dims, restricted to ``valid`` pixels when given."""
    if valid is None:
        return values.mean(dim=(-2, -1))
    weight = valid.to(values.dtype)
    return (values * weight).sum(dim=(-2, -1)) / weight.sum(dim=(-2, -1)).clamp(min=1.0)


def sigmoid_focal_loss(
    logits: Tensor,
    targets: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    valid: Optional[Tensor] = None,
) -> Tensor:
    """Focal loss (Lin et al.) of mask ``logits`` vs binary ``targets``, averaged per mask.

    ``FL = −α_t (1 − p_t)^γ log p_t`` with ``p_t = p`` on foreground, ``1 − p`` on background and
    ``α_t = α`` / ``1 − α`` likewise (``alpha < 0`` disables the weighting). Inputs broadcast to
    ``…×H×W``; returns ``…`` (the mean over the valid pixels of each mask).
    """
    logits = logits.float()
    targets = targets.to(logits.dtype)
    prob = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets.expand_as(logits), reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return _pixel_mean(loss, valid)


def dice_loss(logits: Tensor, targets: Tensor, valid: Optional[Tensor] = None, smooth: float = 1.0) -> Tensor:
    """Soft dice loss ``1 − (2 Σ p t + s) / (Σ p + Σ t + s)`` per mask (``s = 1`` as in DETR/MaskFormer).

    Sums run over the valid pixels of the last two dims; returns ``…``.
    """
    prob = torch.sigmoid(logits.float())
    targets = targets.to(prob.dtype).expand_as(prob)
    if valid is not None:
        weight = valid.to(prob.dtype)
        prob, targets = prob * weight, targets * weight
    inter = (prob * targets).sum(dim=(-2, -1))
    total = prob.sum(dim=(-2, -1)) + targets.sum(dim=(-2, -1))
    return 1 - (2 * inter + smooth) / (total + smooth)


class TargetMaps(NamedTuple):
    """Per-pixel constants of :func:`focal_and_dice` for one ``B×1×H×W`` target (see :func:`target_maps`)."""

    sign: Tensor  # B×1×H×W float: 2t − 1
    alpha_sign: Tensor  # B×1×H×W float: α_t · w · (2t − 1)
    weight: Tensor  # B×1×H×W float: w (valid pixels)
    alpha_weight: Tensor  # B×HW×1 float: α_t·w
    split: Tensor  # B×HW×2 float: columns t·w and (1 − t)·w
    count: Tensor  # B×1: Σ w (at least 1)
    positives: Tensor  # B×1: Σ t·w
    negatives: Tensor  # B×1: Σ (1 − t)·w


def target_maps(
    targets: Tensor, valid: Optional[Tensor] = None, alpha: float = 0.25, dtype: torch.dtype = torch.float32
) -> TargetMaps:
    """The maps :func:`focal_and_dice` needs of ``B×1×H×W`` bool ``targets`` (and ``valid``): computed once
    per target and reused by every candidate and every round of the simulated session."""
    b, _, h, w = targets.shape
    t = targets.to(dtype).contiguous()  # the maps are viewed as B×HW below
    weight = torch.ones_like(t) if valid is None else valid.to(dtype).expand_as(t).contiguous()
    alpha_t = torch.ones_like(t) if alpha < 0 else t.mul(2 * alpha - 1).add_(1 - alpha)  # α on t = 1, 1 − α on 0
    sign = t.mul(2).sub_(1)
    alpha_t.mul_(weight)
    split = torch.stack([t * weight, (1 - t).mul_(weight)], dim=-1).view(b, h * w, 2)
    totals = split.sum(1)  # B×2
    return TargetMaps(
        sign=sign,
        alpha_sign=alpha_t * sign,
        weight=weight,
        alpha_weight=alpha_t.view(b, h * w, 1),
        split=split,
        count=weight.sum(dim=(-2, -1)).clamp(min=1.0),
        positives=totals[:, 0:1],
        negatives=totals[:, 1:2],
    )


class _FocalDice(torch.autograd.Function):
    """:func:`sigmoid_focal_loss` and :func:`dice_loss` of ``B×C×H×W`` logits against one ``B×1×H×W``
    target in a few passes over the logits, with the gradient written out.

    With the sign ``s = 2t − 1`` and ``z = s·x``: ``p_t = σ(z) = r``, ``1 − p_t = q = 1 − r`` and the
    cross entropy is ``−log r``, so the focal term is ``−α_t q^γ log r`` and its derivative
    ``∂/∂x = −s α_t q^γ (q − γ r log r)``. Dice: ``p = σ(x)`` and ``p(1 − p) = q r`` whatever ``t``; with
    ``I = Σ p t w`` and ``U = Σ p w + Σ t w``: ``∂D/∂p = w (2I + s₀ − 2t (U + s₀)) / (U + s₀)²``. The
    per-mask sums are batched products against the target maps. Saves ``r`` and ``log r``.
    """

    @staticmethod
    def forward(ctx: Any, logits: Tensor, maps: TargetMaps, gamma: float, smooth: float):
        with torch.autocast(logits.device.type, enabled=False):  # the sums stay in float32 under bf16 autocast
            return _FocalDice._forward(ctx, logits, maps, gamma, smooth)

    @staticmethod
    def _forward(ctx: Any, logits: Tensor, maps: TargetMaps, gamma: float, smooth: float):
        b, c, h, w = logits.shape
        z = logits * maps.sign
        r = torch.sigmoid(z)
        log_r = F.logsigmoid(z)
        q = 1 - r
        focal_map = (q.mul_(q) if gamma == 2 else q.pow_(gamma)).mul_(log_r)  # q^γ log r (q is not kept)
        focal = -torch.bmm(focal_map.view(b, c, h * w), maps.alpha_weight)[..., 0] / maps.count
        sums = torch.bmm(r.view(b, c, h * w), maps.split)  # Σ r t w = I, Σ r (1 − t) w
        inter = sums[..., 0]
        union = inter + (maps.negatives - sums[..., 1]) + maps.positives  # Σ p w + Σ t w
        dice = 1 - (2 * inter + smooth) / (union + smooth)
        ctx.save_for_backward(r, log_r, inter, union)
        ctx.maps = maps
        ctx.constants = (gamma, smooth)
        return focal, dice

    @staticmethod
    def backward(ctx: Any, grad_focal: Optional[Tensor], grad_dice: Optional[Tensor]):
        r, log_r, inter, union = ctx.saved_tensors
        maps, (gamma, smooth) = ctx.maps, ctx.constants
        q = 1 - r
        grad = torch.zeros_like(r)
        if grad_focal is not None:  # −s α_t w q^γ (q − γ r log r) · g / count
            core = torch.mul(r, log_r).mul_(-gamma).add_(q).mul_(q * q if gamma == 2 else q.pow(gamma))
            grad.addcmul_(core, maps.alpha_sign * (-grad_focal / maps.count)[..., None, None])
        if grad_dice is not None:  # q r w (a − t·k), a = g (2I + s₀) / (U + s₀)², k = 2g / (U + s₀)
            denom = union + smooth
            a = (grad_dice * (2 * inter + smooth) / denom**2)[..., None, None]
            k = (grad_dice * 2 / denom)[..., None, None]
            grad.addcmul_(q.mul_(r), maps.weight * a - maps.split[..., 0].view(maps.sign.shape) * k)
        return grad, None, None, None


def focal_and_dice(
    logits: Tensor,
    targets: Tensor,
    valid: Optional[Tensor] = None,
    alpha: float = 0.25,
    gamma: float = 2.0,
    smooth: float = 1.0,
    maps: Optional[TargetMaps] = None,
) -> Tuple[Tensor, Tensor]:
    """``(sigmoid_focal_loss(logits, targets, alpha, gamma, valid), dice_loss(logits, targets, valid, smooth))``
    of ``B×C×H×W`` logits against ``B×1×H×W`` bool targets (and valid pixels), in one fused pass with a
    written-out gradient — the training loss's default, equal to the two plain functions up to float
    rounding. ``maps`` (:func:`target_maps` of the same targets, valid and alpha) skips recomputing them.
    Returns two ``B×C`` tensors."""
    if logits.ndim != 4 or targets.shape != (logits.shape[0], 1) + tuple(logits.shape[-2:]):
        raise ValueError(f"expected logits B×C×H×W and targets B×1×H×W, got {tuple(logits.shape)} and {tuple(targets.shape)}")
    if maps is None:
        maps = target_maps(targets, valid, alpha, torch.float64 if logits.dtype == torch.float64 else torch.float32)
    return _FocalDice.apply(logits.to(maps.sign.dtype), maps, float(gamma), float(smooth))


@torch.no_grad()
def iou_of(pred_logits: Tensor, gt: Tensor, valid: Optional[Tensor] = None, threshold: float = 0.0) -> Tensor:
    """IoU of the masks ``pred_logits > threshold`` with ``gt`` over the last two dims (``…``, float).

    Two empty masks have IoU 1. A metric and a regression target: never differentiable.
    """
    pred = pred_logits > threshold
    gt = gt.bool()
    if valid is not None:
        pred, gt = pred & valid, gt & valid
    inter = (pred & gt).sum(dim=(-2, -1)).float()
    union = (pred | gt).sum(dim=(-2, -1)).float()
    return torch.where(union > 0, inter / union.clamp(min=1.0), torch.ones_like(union))


class SamLossOutput(NamedTuple):
    """Batch means (scalars) of one decoder call, plus per-mask details."""

    loss: Tensor  # weighted total: focal_w·focal + dice_w·dice + iou_w·iou_mse
    focal: Tensor  # focal loss of the selected masks (unweighted)
    dice: Tensor  # dice loss of the selected masks (unweighted)
    iou_mse: Tensor  # MSE of the IoU head over all returned masks
    per_mask: Tensor  # B — the weighted total of each prompt
    selected: Tensor  # B long — decoder token (0–3) whose mask loss was back-propagated
    iou: Tensor  # B×C — actual IoU of each candidate mask with the GT (C = 4, every token, when per mask)
    offset: int  # token index of candidate 0 (1 for the multimask outputs, 0 for the single output or per mask)


class SamLoss(nn.Module):
    """The training objective of one decoder call (§A).

    Args of :meth:`forward`:
        mask_logits: ``B×4×h×w`` logits of all four mask tokens (token 0 = single output, 1–3 =
            ambiguity-aware outputs), as returned by ``MaskDecoder.predict_masks``.
        iou_predictions: ``B×4``.
        target: ``B×H×W`` bool GT in the padded input frame (or already at ``h×w``).
        valid: ``B×H×W`` bool, False on padding (or None: all valid).
        multimask_output: True when the prompt is a single one — tokens 1–3 compete and only the
            minimum-loss one is back-propagated; False — token 0 alone is supervised; or a ``B`` bool
            tensor choosing per mask (each row's loss is what the bool would give it).
    """

    def __init__(
        self,
        focal_weight: float = 20.0,
        dice_weight: float = 1.0,
        iou_weight: float = 1.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        recompute: bool = False,
        fused: bool = True,
    ) -> None:
        super().__init__()
        self.focal_weight = focal_weight
        self.dice_weight = dice_weight
        self.iou_weight = iou_weight
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        #: Recompute the upsampled logits and per-pixel terms in the backward pass instead of keeping
        #: them (activation checkpointing): at 1024² the saved intermediates of one round are ~8 float
        #: maps per mask; with recomputation only the low-res logits are kept. Same values and gradients.
        self.recompute = recompute
        #: Focal and dice through :func:`focal_and_dice` (one fused pass, written-out gradient) instead of
        #: the plain :func:`sigmoid_focal_loss` + :func:`dice_loss`, the reference it is tested against.
        self.fused = fused
        self._maps_cache: Optional[Tuple[Tensor, Optional[Tensor], Tuple[Any, ...], TargetMaps]] = None

    def _target_maps(self, target: Tensor, valid: Optional[Tensor]) -> TargetMaps:
        """:func:`target_maps` of ``target``, kept while the same target tensors come back (the rounds of a
        step pass the same ones; a new batch, or an in-place change, computes them again)."""
        state = (target._version, None if valid is None else valid._version, self.focal_alpha)
        cached = self._maps_cache
        if cached is None or cached[0] is not target or cached[1] is not valid or cached[2] != state:
            maps = target_maps(target[:, None], None if valid is None else valid[:, None], self.focal_alpha)
            cached = self._maps_cache = (target, valid, state, maps)
        return cached[3]

    def _mask_terms(self, logits: Tensor, target: Tensor, valid: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        """Focal and dice of low-res candidate ``logits`` (``B×C×h×w``) vs ``target`` → ``B×C`` each."""
        logits = resize_bilinear(logits, tuple(target.shape[-2:]))
        gt = target[:, None]
        mask_valid = valid[:, None] if valid is not None else None
        if self.fused:
            maps = self._target_maps(target, valid)
            return focal_and_dice(logits, gt, mask_valid, self.focal_alpha, self.focal_gamma, maps=maps)
        focal = sigmoid_focal_loss(logits, gt, self.focal_alpha, self.focal_gamma, mask_valid)
        return focal, dice_loss(logits, gt, mask_valid)

    def forward(
        self,
        mask_logits: Tensor,
        iou_predictions: Tensor,
        target: Tensor,
        valid: Optional[Tensor] = None,
        multimask_output: Union[bool, Tensor] = False,
    ) -> SamLossOutput:
        if mask_logits.ndim != 4 or iou_predictions.shape != mask_logits.shape[:2]:
            raise ValueError(
                f"expected mask logits B×C×h×w and IoU predictions B×C, got {tuple(mask_logits.shape)} "
                f"and {tuple(iou_predictions.shape)}"
            )
        allowed: Optional[Tensor] = None  # B×4: the tokens each row may select (per-mask choice only)
        if isinstance(multimask_output, Tensor):
            rows = multimask_output
            if rows.dtype != torch.bool or rows.shape != mask_logits.shape[:1]:
                raise ValueError(
                    f"multimask_output must be a bool or a B bool tensor (B = {mask_logits.shape[0]}), "
                    f"got {rows.dtype} {tuple(rows.shape)}"
                )
            if bool(rows.all()) or not bool(rows.any()):  # one kind only: the cheaper batch path, same numbers
                multimask_output = bool(rows.all()) if rows.numel() else False
            else:
                if mask_logits.shape[1] != 4:
                    raise ValueError(f"a per-mask multimask_output needs all 4 tokens, got {mask_logits.shape[1]}")
                token = torch.arange(4, device=rows.device)
                allowed = torch.where(rows[:, None], token >= 1, token == 0)
        if allowed is not None:
            offset, candidates = 0, slice(None)
        else:
            offset = 1 if multimask_output else 0
            candidates = slice(1, None) if multimask_output else slice(0, 1)
        logits = mask_logits[:, candidates].float()
        iou_pred = iou_predictions[:, candidates].float()
        if self.recompute and torch.is_grad_enabled() and logits.requires_grad:
            focal, dice = checkpoint(self._mask_terms, logits, target, valid, use_reentrant=False)
        else:
            focal, dice = self._mask_terms(logits, target, valid)  # B×C each
        mask_loss = self.focal_weight * focal + self.dice_weight * dice
        ranked = mask_loss.detach() if allowed is None else mask_loss.detach().masked_fill(~allowed, float("inf"))
        best = ranked.argmin(dim=1, keepdim=True)  # min over the candidates (§A)

        with torch.no_grad():  # constant regression target of the IoU head
            size = tuple(target.shape[-2:])
            full = resize_bilinear(logits, size)
            actual_iou = iou_of(full, target[:, None], valid[:, None] if valid is not None else None)  # B×C
        squared = (iou_pred - actual_iou) ** 2
        if allowed is None:
            iou_mse = squared.mean(dim=1)  # every returned mask is ranked
        else:
            iou_mse = (squared * allowed).sum(dim=1) / allowed.sum(dim=1)
        per_mask = mask_loss.gather(1, best).squeeze(1) + self.iou_weight * iou_mse
        return SamLossOutput(
            loss=per_mask.mean(),
            focal=focal.gather(1, best).mean(),
            dice=dice.gather(1, best).mean(),
            iou_mse=iou_mse.mean(),
            per_mask=per_mask,
            selected=best.squeeze(1) + offset,
            iou=actual_iou,
            offset=offset,
        )
