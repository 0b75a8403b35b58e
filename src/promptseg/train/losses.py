"""Losses of SAM training (segment-anything.txt §3 "Losses and training", §A "Losses",
§A "Making the model ambiguity-aware").

Plain functions — :func:`sigmoid_focal_loss`, :func:`dice_loss`, :func:`iou_of` — and one aggregating
module, :class:`SamLoss`:

* mask loss = 20 · focal + 1 · dice (§A "Losses": a 20:1 ratio, no deep supervision);
* for a single prompt the decoder returns 3 masks (tokens 1–3); the loss is computed for each but only
  the lowest one is back-propagated (§A "Making the model ambiguity-aware"); for more than one prompt
  only the single-output token (0) is supervised;
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

from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


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
    iou: Tensor  # B×C — actual IoU of each returned (candidate) mask with the GT
    offset: int  # token index of candidate 0 (1 for the multimask outputs, 0 for the single output)


class SamLoss(nn.Module):
    """The training objective of one decoder call (§A).

    Args of :meth:`forward`:
        mask_logits: ``B×4×h×w`` logits of all four mask tokens (token 0 = single output, 1–3 =
            ambiguity-aware outputs), as returned by ``MaskDecoder.predict_masks``.
        iou_predictions: ``B×4``.
        target: ``B×H×W`` bool GT in the padded input frame (or already at ``h×w``).
        valid: ``B×H×W`` bool, False on padding (or None: all valid).
        multimask_output: True when the prompt is a single point/box — tokens 1–3 compete and only
            the minimum-loss one is back-propagated; False — token 0 alone is supervised.
    """

    def __init__(
        self,
        focal_weight: float = 20.0,
        dice_weight: float = 1.0,
        iou_weight: float = 1.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        recompute: bool = False,
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

    def _mask_terms(self, logits: Tensor, target: Tensor, valid: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        """Focal and dice of low-res candidate ``logits`` (``B×C×h×w``) vs ``target`` → ``B×C`` each."""
        size = tuple(target.shape[-2:])
        if tuple(logits.shape[-2:]) != size:
            logits = F.interpolate(logits, size, mode="bilinear", align_corners=False)
        gt = target[:, None]
        mask_valid = valid[:, None] if valid is not None else None
        focal = sigmoid_focal_loss(logits, gt, self.focal_alpha, self.focal_gamma, mask_valid)
        return focal, dice_loss(logits, gt, mask_valid)

    def forward(
        self,
        mask_logits: Tensor,
        iou_predictions: Tensor,
        target: Tensor,
        valid: Optional[Tensor] = None,
        multimask_output: bool = False,
    ) -> SamLossOutput:
        if mask_logits.ndim != 4 or iou_predictions.shape != mask_logits.shape[:2]:
            raise ValueError(
                f"expected mask logits B×C×h×w and IoU predictions B×C, got {tuple(mask_logits.shape)} "
                f"and {tuple(iou_predictions.shape)}"
            )
        offset = 1 if multimask_output else 0
        candidates = slice(1, None) if multimask_output else slice(0, 1)
        logits = mask_logits[:, candidates].float()
        iou_pred = iou_predictions[:, candidates].float()
        if self.recompute and torch.is_grad_enabled() and logits.requires_grad:
            focal, dice = checkpoint(self._mask_terms, logits, target, valid, use_reentrant=False)
        else:
            focal, dice = self._mask_terms(logits, target, valid)  # B×C each
        mask_loss = self.focal_weight * focal + self.dice_weight * dice
        best = mask_loss.detach().argmin(dim=1, keepdim=True)  # min over the candidates (§A)

        with torch.no_grad():  # constant regression target of the IoU head
            size = tuple(target.shape[-2:])
            full = logits if tuple(logits.shape[-2:]) == size else F.interpolate(logits, size, mode="bilinear", align_corners=False)
            actual_iou = iou_of(full, target[:, None], valid[:, None] if valid is not None else None)  # B×C
        iou_mse = ((iou_pred - actual_iou) ** 2).mean(dim=1)  # every returned mask is ranked
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
