"""Losses (promptseg.train.losses) against hand-computed values; SamLoss's min-loss selection."""

from __future__ import annotations

import math

import pytest
import torch

from promptseg.train.losses import SamLoss, dice_loss, iou_of, sigmoid_focal_loss

LN2 = math.log(2.0)


def test_focal_loss_hand_values():
    logits = torch.zeros(1, 2, 2)
    target = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    # p = 0.5 everywhere: foreground 0.25·0.5²·ln2, background 0.75·0.5²·ln2
    expected = (0.25 * 0.25 * LN2 + 3 * 0.75 * 0.25 * LN2) / 4
    assert sigmoid_focal_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)
    # a confident correct foreground pixel: x = 2, p = σ(2)
    p = 1 / (1 + math.exp(-2.0))
    fg = 0.25 * (1 - p) ** 2 * -math.log(p)
    assert sigmoid_focal_loss(torch.full((1, 1, 1), 2.0), torch.ones(1, 1, 1)).item() == pytest.approx(fg, rel=1e-5)
    # γ = 0, α < 0: plain binary cross-entropy
    x = torch.tensor([[[-1.5, 0.3]]])
    t = torch.tensor([[[0.0, 1.0]]])
    bce = (-math.log(1 - 1 / (1 + math.exp(1.5))) - math.log(1 / (1 + math.exp(-0.3)))) / 2
    assert sigmoid_focal_loss(x, t, alpha=-1, gamma=0).item() == pytest.approx(bce, rel=1e-5)


def test_dice_loss_hand_values():
    logits = torch.zeros(1, 2, 2)  # p = 0.5
    target = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    # 1 − (2·0.5 + 1) / (2 + 1 + 1) = 0.5
    assert dice_loss(logits, target).item() == pytest.approx(0.5)
    perfect = torch.tensor([[[30.0, -30.0], [-30.0, -30.0]]])
    assert dice_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-6)


def test_padding_is_outside_the_losses():
    target = torch.zeros(1, 4, 4)
    target[0, :2, :2] = 1
    valid = torch.zeros(1, 4, 4, dtype=torch.bool)
    valid[0, :3, :3] = True
    a = torch.randn(1, 4, 4)
    b = a.clone()
    b[0, 3, :] = 50.0  # only padding changes
    b[0, :, 3] = -50.0
    for fn in (sigmoid_focal_loss, dice_loss, iou_of):
        assert fn(a, target, valid=valid).item() == pytest.approx(fn(b, target, valid=valid).item(), rel=1e-6)


def test_iou_of():
    gt = torch.zeros(2, 4, 4, dtype=torch.bool)
    gt[:, :2, :2] = True
    logits = torch.full((2, 4, 4), -1.0)
    logits[0, :2, :4] = 1.0  # 4 of 8
    assert iou_of(logits, gt).tolist() == pytest.approx([0.5, 0.0])
    assert iou_of(torch.full((1, 2, 2), -1.0), torch.zeros(1, 2, 2)).item() == 1.0  # both empty


def _candidates(gt: torch.Tensor, best: int) -> torch.Tensor:
    """4 mask logits where token ``best`` matches ``gt`` and the others are worse."""
    good = torch.where(gt, 8.0, -8.0)
    out = torch.stack([-good, good * 0.1, torch.zeros_like(good) - 3.0, -good], dim=1)
    out[:, best] = good
    return out


@pytest.mark.parametrize("best", [1, 2, 3])
def test_only_the_minimum_loss_mask_is_backpropagated(best):
    gt = torch.zeros(2, 16, 16, dtype=torch.bool)
    gt[:, 4:12, 3:9] = True
    logits = _candidates(gt, best).requires_grad_(True)
    iou_pred = torch.full((2, 4), 0.5, requires_grad=True)
    out = SamLoss()(logits, iou_pred, gt, multimask_output=True)
    assert out.selected.tolist() == [best, best] and out.offset == 1
    out.loss.backward()
    touched = logits.grad.abs().flatten(2).sum(-1) > 0  # B×4
    expected = torch.zeros(2, 4, dtype=torch.bool)
    expected[:, best] = True
    assert torch.equal(touched, expected)
    # the IoU head is trained on all 3 returned masks, never on the unused token 0
    assert (iou_pred.grad[:, 1:] != 0).all() and (iou_pred.grad[:, 0] == 0).all()


def test_single_output_token_when_several_prompts():
    gt = torch.zeros(1, 16, 16, dtype=torch.bool)
    gt[:, 2:7, 2:7] = True
    logits = _candidates(gt, 2).requires_grad_(True)  # token 2 would be best, but is not returned
    iou_pred = torch.full((1, 4), 0.5, requires_grad=True)
    out = SamLoss()(logits, iou_pred, gt, multimask_output=False)
    assert out.selected.tolist() == [0] and out.offset == 0 and out.iou.shape == (1, 1)
    out.loss.backward()
    touched = logits.grad.abs().flatten(2).sum(-1)[0] > 0
    assert touched.tolist() == [True, False, False, False]
    assert iou_pred.grad[0, 1:].abs().sum() == 0 and iou_pred.grad[0, 0] != 0


def test_total_is_20_focal_plus_dice_plus_iou_mse():
    torch.manual_seed(0)
    gt = torch.rand(3, 8, 8) > 0.6
    logits = torch.randn(3, 4, 8, 8)
    iou_pred = torch.rand(3, 4)
    loss = SamLoss()
    out = loss(logits, iou_pred, gt, multimask_output=False)
    focal = sigmoid_focal_loss(logits[:, 0], gt)
    dice = dice_loss(logits[:, 0], gt)
    mse = (iou_pred[:, 0] - iou_of(logits[:, 0], gt)) ** 2
    assert out.loss.item() == pytest.approx((20 * focal + dice + mse).mean().item(), rel=1e-5)
    assert out.focal.item() == pytest.approx(focal.mean().item(), rel=1e-5)
    assert out.iou_mse.item() == pytest.approx(mse.mean().item(), rel=1e-5)


def test_low_res_logits_are_upsampled_to_the_target():
    gt = torch.zeros(1, 64, 64, dtype=torch.bool)
    gt[:, 16:48, 16:48] = True
    low = torch.full((1, 4, 16, 16), -10.0)
    low[:, :, 4:12, 4:12] = 10.0
    out = SamLoss()(low, torch.ones(1, 4), gt, multimask_output=True)
    assert out.iou.min().item() > 0.99  # bilinear upsampling only rounds the 4 corners
    assert out.dice.item() < 0.02 and out.iou_mse.item() < 1e-4


def test_shape_errors():
    with pytest.raises(ValueError):
        SamLoss()(torch.zeros(1, 4, 8, 8), torch.zeros(1, 3), torch.zeros(1, 8, 8, dtype=torch.bool))


def test_recomputed_loss_has_identical_values_and_gradients():
    torch.manual_seed(1)
    gt = torch.rand(3, 32, 32) > 0.7
    valid = torch.ones(3, 32, 32, dtype=torch.bool)
    valid[:, 24:] = False
    base = torch.randn(3, 4, 8, 8)
    results = []
    for recompute in (False, True):
        logits = base.clone().requires_grad_(True)
        iou = torch.rand(3, 4, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
        out = SamLoss(recompute=recompute)(logits, iou, gt, valid, multimask_output=True)
        out.loss.backward()
        results.append((out.loss.detach(), out.selected, logits.grad, iou.grad))
    for a, b in zip(*results):
        assert torch.equal(a, b)
