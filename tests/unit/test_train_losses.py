"""Losses (promptseg.train.losses) against hand-computed values; SamLoss's min-loss selection."""

from __future__ import annotations

import math

import pytest
import torch

from promptseg.train.losses import SamLoss, dice_loss, focal_and_dice, iou_of, sigmoid_focal_loss

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


def test_per_mask_choice_gives_each_row_the_loss_of_its_kind():
    """A ``B`` bool ``multimask_output`` mixes the two rules row by row: each row's loss, selected token and
    gradients are those of the batch-wide bool path for that row."""
    torch.manual_seed(3)
    gt = torch.rand(4, 16, 16) > 0.6
    valid = torch.ones(4, 16, 16, dtype=torch.bool)
    valid[:, 12:] = False
    base, base_iou = torch.randn(4, 4, 8, 8), torch.rand(4, 4)
    rows = torch.tensor([True, False, False, True])

    def run(flag, index):
        logits, iou = base[index].clone().requires_grad_(True), base_iou[index].clone().requires_grad_(True)
        out = SamLoss()(logits, iou, gt[index], valid[index], multimask_output=flag)
        out.per_mask.sum().backward()
        return out, logits.grad, iou.grad

    mixed, g_logits, g_iou = run(rows, slice(None))
    assert mixed.offset == 0 and mixed.iou.shape == (4, 4)
    for flag in (True, False):
        index = (rows == flag).nonzero()[:, 0]
        alone, a_logits, a_iou = run(flag, index)
        assert torch.allclose(mixed.per_mask[index], alone.per_mask, rtol=1e-6, atol=1e-7)
        assert torch.equal(mixed.selected[index], alone.selected)
        assert torch.allclose(g_logits[index], a_logits, rtol=1e-6, atol=1e-9)
        assert torch.allclose(g_iou[index], a_iou, rtol=1e-6, atol=1e-9)
    assert mixed.loss.item() == pytest.approx(mixed.per_mask.mean().item(), rel=1e-6)
    assert (g_iou[rows, 0] == 0).all() and (g_iou[~rows, 1:] == 0).all()  # no token outside its rule is ranked


@pytest.mark.parametrize("flag", [True, False])
def test_uniform_per_mask_choice_equals_the_bool(flag):
    torch.manual_seed(4)
    gt = torch.rand(3, 16, 16) > 0.5
    logits, iou = torch.randn(3, 4, 8, 8), torch.rand(3, 4)
    a = SamLoss()(logits, iou, gt, multimask_output=flag)
    b = SamLoss()(logits, iou, gt, multimask_output=torch.full((3,), flag))
    assert torch.equal(a.loss, b.loss) and torch.equal(a.selected, b.selected) and a.offset == b.offset


@pytest.mark.parametrize("bad", [torch.ones(2, dtype=torch.bool), torch.ones(3), torch.ones(3, 1, dtype=torch.bool)])
def test_per_mask_choice_is_checked(bad):
    with pytest.raises(ValueError, match="multimask_output"):
        SamLoss()(torch.zeros(3, 4, 8, 8), torch.zeros(3, 4), torch.zeros(3, 8, 8, dtype=torch.bool), multimask_output=bad)


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


@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (-1.0, 1.5), (0.6, 0.0)])
@pytest.mark.parametrize("with_valid", [True, False])
def test_fused_focal_and_dice_gradient_is_exact(alpha, gamma, with_valid):
    """The written-out gradient against finite differences (float64)."""
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(2, 3, 6, 7, generator=gen, dtype=torch.float64) * 3).requires_grad_(True)
    t = torch.rand(2, 1, 6, 7, generator=gen) > 0.6
    valid = torch.rand(2, 1, 6, 7, generator=gen) > 0.2 if with_valid else None
    assert torch.autograd.gradcheck(lambda a: focal_and_dice(a, t, valid, alpha, gamma), (x,))


@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (-1.0, 1.5)])
def test_fused_focal_and_dice_equal_the_plain_functions(alpha, gamma):
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(4, 3, 20, 24, generator=gen) * 4
    t = torch.rand(4, 1, 20, 24, generator=gen) > 0.7
    valid = torch.ones(4, 1, 20, 24, dtype=torch.bool)
    valid[:, :, 15:] = False
    valid[3] = False  # a mask with no valid pixel
    g_focal, g_dice = torch.randn(4, 3, generator=gen), torch.randn(4, 3, generator=gen)
    results = []
    for fused in (True, False):
        x = base.clone().requires_grad_(True)
        if fused:
            focal, dice = focal_and_dice(x, t, valid, alpha, gamma)
        else:
            focal, dice = sigmoid_focal_loss(x, t, alpha, gamma, valid), dice_loss(x, t, valid)
        (focal * g_focal + dice * g_dice).sum().backward()
        results.append((focal.detach(), dice.detach(), x.grad))
    for a, b in zip(*results):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="B×1×H×W"):
        focal_and_dice(base, t[:, 0])


@pytest.mark.parametrize("dtype", [torch.bool, torch.float32])
def test_fused_loss_takes_a_non_contiguous_target(dtype):
    """A transposed (same values, other strides) target gives the fused loss what the plain functions give."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 8, 10, generator=gen)
    t = (torch.rand(2, 1, 10, 8, generator=gen) > 0.5).to(dtype).transpose(-1, -2)
    focal, dice = focal_and_dice(x, t)
    assert torch.allclose(focal, sigmoid_focal_loss(x, t), rtol=1e-5) and torch.allclose(dice, dice_loss(x, t), rtol=1e-5)
    gt = t[:, 0] > 0
    iou = torch.rand(2, 4, generator=gen)
    logits = torch.randn(2, 4, 8, 10, generator=gen)
    assert torch.allclose(SamLoss()(logits, iou, gt).loss, SamLoss(fused=False)(logits, iou, gt).loss, rtol=1e-5)


@pytest.mark.parametrize("multimask", [True, False, "mixed"])
@pytest.mark.parametrize("recompute", [False, True])
def test_samloss_fused_equals_plain(multimask, recompute):
    """SamLoss through the fused kernel (default) and through the plain functions: same losses, same
    selected tokens, same gradients — also when the same target comes back for several rounds."""
    gen = torch.Generator().manual_seed(2)
    gt = torch.rand(5, 32, 32, generator=gen) > 0.6
    valid = torch.ones(5, 32, 32, dtype=torch.bool)
    valid[:, 28:] = False
    flag = torch.tensor([True, False, True, False, False]) if multimask == "mixed" else multimask
    base, base_iou = torch.randn(5, 4, 16, 16, generator=gen) * 3, torch.rand(5, 4, generator=gen)
    outs = {}
    for fused in (True, False):
        loss = SamLoss(recompute=recompute, fused=fused)
        for round_ in range(2):  # the second round reuses the fused path's cached target maps
            logits, iou = (base + round_).requires_grad_(True), base_iou.clone().requires_grad_(True)
            out = loss(logits, iou, gt, valid, multimask_output=flag)
            out.loss.backward()
            outs[fused, round_] = (out.loss.detach(), out.selected, logits.grad, iou.grad)
    for round_ in range(2):
        for a, b in zip(outs[True, round_], outs[False, round_]):
            assert a.dtype == b.dtype and torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_fused_target_maps_follow_the_target():
    """The cached maps are those of the target passed now: a new tensor or an in-place change recomputes."""
    gen = torch.Generator().manual_seed(3)
    logits, iou = torch.randn(2, 4, 8, 8, generator=gen), torch.zeros(2, 4)
    gt = torch.rand(2, 8, 8, generator=gen) > 0.5
    fused = SamLoss()

    def check(target):
        got = fused(logits, iou, target, multimask_output=True)
        plain = SamLoss(fused=False)(logits, iou, target, multimask_output=True)
        assert torch.allclose(got.per_mask, plain.per_mask, rtol=1e-5)
        return got.per_mask

    first = check(gt)
    assert torch.equal(check(gt), first)  # served from the cache
    assert not torch.allclose(check(~gt), first)  # another tensor
    gt.logical_not_()  # the same tensor object, new contents
    assert not torch.allclose(check(gt), first)


def test_fused_loss_keeps_float32_under_bf16_autocast():
    """Under the trainer's bf16 autocast the fused kernel's per-mask sums (batched products) stay float32."""
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 2, 16, 16, generator=gen) * 3
    t = torch.rand(3, 1, 16, 16, generator=gen) > 0.5
    expected = focal_and_dice(logits, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = focal_and_dice(logits, t)
    for a, b in zip(got, expected):
        assert a.dtype == torch.float32 and torch.equal(a, b)
