"""The §A prompt simulator (promptseg.train.prompts): pure functions, explicit generators."""

from __future__ import annotations

import pytest
import torch

from promptseg.prompts import PAD_LABEL
from promptseg.train import prompts as P


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def disk(h: int, w: int, cy: float, cx: float, r: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


# ------------------------------------------------------------------------------------------- schedule
def test_schedule_has_11_rounds_with_two_mask_only_rounds():
    kinds = P.round_schedule(11, gen())
    assert len(kinds) == 11
    assert kinds[0] == P.INITIAL and kinds[-1] == P.MASK_ONLY
    assert kinds.count(P.POINT) == 8 and kinds.count(P.MASK_ONLY) == 2 and kinds.count(P.INITIAL) == 1
    inserted = kinds.index(P.MASK_ONLY)
    assert 1 <= inserted <= 8 and kinds[inserted + 1] == P.POINT  # among the 8 point rounds


def test_schedule_inserted_round_position_is_random_and_reproducible():
    positions = {P.round_schedule(11, gen(s)).index(P.MASK_ONLY) for s in range(200)}
    assert positions == set(range(1, 9))
    assert P.round_schedule(11, gen(5)) == P.round_schedule(11, gen(5))


def test_schedule_short():
    assert P.round_schedule(1, gen()) == [P.INITIAL]
    assert P.round_schedule(2, gen()) == [P.INITIAL, P.MASK_ONLY]
    assert P.round_schedule(3, gen()) == [P.INITIAL, P.MASK_ONLY, P.MASK_ONLY]
    with pytest.raises(ValueError):
        P.round_schedule(0)


# ------------------------------------------------------------------------------------- uniform points
def test_sampled_points_lie_in_the_mask_and_cover_it_uniformly():
    mask = torch.zeros(2, 20, 30, dtype=torch.bool)
    mask[0, 3, 4] = mask[0, 10, 20] = mask[0, 19, 29] = mask[0, 0, 0] = True
    mask[1] = disk(20, 30, 10, 15, 6)
    coords, found = P.sample_uniform(mask, 4000, gen())
    assert found.all() and coords.shape == (2, 4000, 2)
    x, y = coords[..., 0].long(), coords[..., 1].long()
    assert mask[torch.arange(2)[:, None], y, x].all()
    counts = torch.bincount((y[0] * 30 + x[0]), minlength=600)[mask[0].flatten()]
    assert counts.sum() == 4000 and counts.min() > 850 and counts.max() < 1150  # 4 pixels, ~1000 each


def test_empty_region_is_reported():
    region = torch.zeros(2, 5, 5, dtype=torch.bool)
    region[1, 2, 3] = True
    coords, found = P.sample_uniform(region, 3, gen())
    assert found.tolist() == [False, True]
    assert coords[1].tolist() == [[3.0, 2.0]] * 3


# ----------------------------------------------------------------------------------------------- boxes
def test_masks_to_boxes_inclusive():
    m = torch.zeros(2, 10, 12, dtype=torch.bool)
    m[0, 2:5, 3:9] = True
    assert P.masks_to_boxes(m).tolist() == [[3.0, 2.0, 8.0, 4.0], [0.0, 0.0, 0.0, 0.0]]


def test_box_noise_is_clipped_to_20_px():
    boxes = torch.tensor([[100.0, 100.0, 499.0, 699.0]]).repeat(2000, 1)  # sides 400 and 600 → std 40, 60
    out = P.noisy_boxes(boxes, gen(), 0.1, 20.0)
    delta = (out - boxes).abs()
    assert delta.max() <= 20.0 + 1e-4
    assert (delta > 19.9).float().mean() > 0.5  # heavily saturated: std ≫ 20


def test_box_noise_is_proportional_to_the_side():
    boxes = torch.tensor([[200.0, 200.0, 219.0, 239.0]]).repeat(4000, 1)  # sides 20 (x) and 40 (y)
    delta = P.noisy_boxes(boxes, gen(1), 0.1, 20.0) - boxes
    # the reordering of corners cannot trigger here (noise ≪ side)
    std_x = delta[:, [0, 2]].std().item()
    std_y = delta[:, [1, 3]].std().item()
    assert abs(std_x - 2.0) < 0.15 and abs(std_y - 4.0) < 0.3


def test_box_noise_stays_inside_the_image_and_ordered():
    boxes = torch.tensor([[0.0, 0.0, 9.0, 9.0]]).repeat(500, 1)
    sizes = torch.tensor([[12, 10]]).repeat(500, 1)  # h 12, w 10
    out = P.noisy_boxes(boxes, gen(), 0.5, 20.0, sizes)
    assert (out >= 0).all() and (out[:, [0, 2]] <= 9).all() and (out[:, [1, 3]] <= 11).all()
    assert (out[:, 0] <= out[:, 2]).all() and (out[:, 1] <= out[:, 3]).all()


def test_initial_prompts_mix_points_and_boxes():
    gt = disk(40, 50, 20, 25, 8)[None].repeat(400, 1, 1)
    valid = torch.zeros_like(gt)
    valid[:, :40, :45] = True
    first = P.initial_prompts(gt, valid, gen())
    n_box = int(first.is_box.sum())
    assert 150 < n_box < 250  # probability 0.5
    pts = first.coords[~first.is_box]
    assert (first.labels[~first.is_box] == torch.tensor([1, PAD_LABEL])).all()
    x, y = pts[:, 0, 0].long(), pts[:, 0, 1].long()
    assert gt[0, y, x].all()  # foreground points lie inside the mask
    assert (pts[:, 1] == 0).all()
    assert (first.labels[first.is_box] == torch.tensor([2, 3])).all()
    exact = P.masks_to_boxes(gt[:1])[0]  # [17, 12, 33, 28]: sides 17 → std 1.7
    delta = first.coords[first.is_box].reshape(-1, 4) - exact
    assert delta.abs().max() <= 20 and delta.abs().mean() < 3


# ------------------------------------------------------------------------------------- error points
def test_error_points_label_false_negatives_positive_and_false_positives_negative():
    gt = torch.zeros(3, 30, 30, dtype=torch.bool)
    gt[:, 5:20, 5:20] = True
    pred = torch.zeros_like(gt)
    pred[1] = True  # only false positives outside the square
    pred[2, 5:20, 5:12] = True  # false negatives only
    pred[2, 25:, 25:] = True  # and false positives
    valid = torch.ones_like(gt)
    coords, labels = P.error_points(pred, gt, valid, gen(), num=500)
    x, y = coords[..., 0].long(), coords[..., 1].long()
    rows = torch.arange(3)[:, None]
    assert (pred ^ gt)[rows, y, x].all()  # always in the error region
    assert (labels == gt[rows, y, x].long()).all()  # FN → 1, FP → 0
    assert (labels[0] == 1).all() and (labels[1] == 0).all()
    assert 0 < labels[2].sum() < 500


def test_error_points_respect_padding_and_perfect_predictions():
    gt = torch.zeros(2, 16, 16, dtype=torch.bool)
    gt[:, 2:6, 2:6] = True
    valid = torch.zeros_like(gt)
    valid[:, :10, :12] = True
    pred = gt.clone()
    pred[0, 12:, :] = True  # error only inside the padding: ignored
    coords, labels = P.error_points(pred, gt, valid, gen(), num=300)
    x, y = coords[..., 0].long(), coords[..., 1].long()
    assert valid[torch.arange(2)[:, None], y, x].all()
    assert (labels == gt[torch.arange(2)[:, None], y, x].long()).all()  # correct-label fallback


def test_assemble_sparse_matches_the_predictor_layout():
    first = P.InitialPrompt(
        coords=torch.tensor([[[1.0, 2.0], [0.0, 0.0]], [[3.0, 4.0], [9.0, 8.0]]]),
        labels=torch.tensor([[1, PAD_LABEL], [2, 3]]),
        is_box=torch.tensor([False, True]),
    )
    clicks = torch.tensor([[[5.0, 5.0]], [[6.0, 6.0]]])
    coords, labels = P.assemble_sparse(first, clicks, torch.tensor([[0], [1]]))
    assert labels.tolist() == [[1, 0, PAD_LABEL], [1, 2, 3]]
    assert coords[0].tolist() == [[1, 2], [5, 5], [0, 0]]
    assert coords[1].tolist() == [[6, 6], [3, 4], [9, 8]]
    from promptseg.prompts import sparse_prompt

    # the predictor's own join for a box + one click gives the same list
    ref_coords, ref_labels = sparse_prompt((clicks[1:], torch.tensor([[1]])), first.coords[1:].reshape(1, 4))
    assert torch.equal(ref_coords, coords[1:]) and torch.equal(ref_labels, labels[1:])


def test_multimask_only_for_a_single_prompt():
    assert P.use_multimask(1) and not P.use_multimask(2) and not P.use_multimask(10)


def test_a_lone_box_gets_the_three_outputs_unless_asked():
    gt = torch.zeros(6, 32, 32, dtype=torch.bool)
    gt[:, 8:20, 4:24] = True
    first = P.initial_prompts(gt, generator=torch.Generator().manual_seed(0), box_probability=0.5)
    assert 0 < int(first.is_box.sum()) < 6
    assert P.multimask_rows(first, 1) is True  # §A: one prompt, a click or a box, 3 masks
    # a click: 3 masks; a box: the single output
    assert torch.equal(P.multimask_rows(first, 1, multimask_box=False), ~first.is_box)
    for n in (2, 5):  # more than one prompt: the single output for every mask, whatever came first
        assert P.multimask_rows(first, n) is False and P.multimask_rows(first, n, multimask_box=False) is False


def test_simulation_is_reproducible_from_the_generator():
    gt = disk(32, 32, 16, 16, 7)[None].repeat(8, 1, 1)
    a = P.initial_prompts(gt, None, gen(3))
    b = P.initial_prompts(gt, None, gen(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
