"""The sparse prompt protocol (``promptseg.prompts``) and the validation of user prompts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from promptseg.prompts import (
    BOX_BOTTOM_RIGHT_LABEL,
    BOX_TOP_LEFT_LABEL,
    PAD_LABEL,
    check_boxes,
    check_points,
    sparse_prompt,
)

# ---------------------------------------------------------------------------------------------------
# sparse_prompt


def test_constants():
    assert (PAD_LABEL, BOX_TOP_LEFT_LABEL, BOX_BOTTOM_RIGHT_LABEL) == (-1, 2, 3)


def test_empty_prompt_is_none():
    assert sparse_prompt(None, None) is None


def test_points_only_get_one_padding_point():
    coords = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]])
    labels = torch.tensor([[1, 0], [0, 1]], dtype=torch.int32)
    out_coords, out_labels = sparse_prompt((coords, labels), None)
    assert out_coords.shape == (2, 3, 2) and out_labels.shape == (2, 3)
    assert torch.equal(out_coords[:, :2], coords)
    assert torch.equal(out_coords[:, 2], torch.zeros(2, 2))
    assert out_labels.tolist() == [[1, 0, -1], [0, 1, -1]]
    assert out_labels.dtype == torch.int64 and out_coords.dtype == coords.dtype


def test_box_only_becomes_two_corners_without_padding():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 40.0], [1.0, 2.0, 3.0, 4.0]])
    out_coords, out_labels = sparse_prompt(None, boxes)
    assert out_coords.tolist() == [[[10, 20], [30, 40]], [[1, 2], [3, 4]]]
    assert out_labels.tolist() == [[2, 3], [2, 3]]


def test_box_given_as_b_by_1_by_4():
    out_coords, out_labels = sparse_prompt(None, torch.tensor([[[10.0, 20.0, 30.0, 40.0]]]))
    assert out_coords.tolist() == [[[10, 20], [30, 40]]] and out_labels.tolist() == [[2, 3]]


def test_points_then_box_corners_and_no_padding():
    coords = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])
    labels = torch.tensor([[1, 0, 1]])
    box = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    out_coords, out_labels = sparse_prompt((coords, labels), box)
    assert out_coords.tolist() == [[[1, 2], [3, 4], [5, 6], [10, 20], [30, 40]]]
    assert out_labels.tolist() == [[1, 0, 1, 2, 3]]
    assert PAD_LABEL not in out_labels


def test_box_corners_take_the_points_dtype():
    coords = torch.tensor([[[1.0, 2.0]]], dtype=torch.float64)
    out_coords, _ = sparse_prompt((coords, torch.tensor([[1]])), torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    assert out_coords.dtype == torch.float64


@pytest.mark.parametrize("kind", ["points", "box", "points_box"])
def test_prompt_encoder_matches_reference(tiny_pair, kind):
    """promptseg's prompt encoder (built on sparse_prompt) equals the reference's for B > 1 prompts."""
    ref, ours = tiny_pair
    gen = torch.Generator().manual_seed(0)
    coords = torch.rand(3, 2, 2, generator=gen) * 128
    labels = torch.tensor([[1, 0], [0, 0], [1, 1]])
    boxes = torch.tensor([[0.0, 0.0, 64.0, 64.0], [10.0, 20.0, 120.0, 100.0], [5.0, 5.0, 6.0, 7.0]])
    points = (coords, labels) if "points" in kind else None
    box = boxes if "box" in kind else None
    masks = torch.randn(3, 1, 32, 32, generator=gen)
    with torch.no_grad():
        for mask in (None, masks):
            s_ref, d_ref = ref.prompt_encoder(points, box, mask)
            s_our, d_our = ours.prompt_encoder(points, box, mask)
            assert s_our.shape == s_ref.shape and d_our.shape == d_ref.shape
            assert (s_our - s_ref).abs().max() <= 1e-5
            assert (d_our - d_ref).abs().max() <= 1e-5
            assert torch.equal(ours.prompt_encoder.get_dense_pe(), ref.prompt_encoder.get_dense_pe())


# ---------------------------------------------------------------------------------------------------
# check_points / check_boxes (the predictor's tests cover the messages end to end)


def test_check_points_single_and_batched():
    coords, labels = check_points([[1, 2], [3, 4]], [1, 0], (10, 20), batched=False)
    assert coords.shape == (1, 2, 2) and coords.dtype == np.float64
    assert labels.shape == (1, 2) and labels.dtype == np.int64
    coords, labels = check_points(np.zeros((3, 2, 2)), np.ones((3, 2)), (10, 20), batched=True)
    assert coords.shape == (3, 2, 2) and labels.shape == (3, 2)


def test_check_points_border_is_inside_and_padding_may_be_anywhere():
    check_points([[0, 0], [20, 10]], [1, 0], (10, 20), batched=False)  # x = W and y = H allowed
    check_points([[5, 5], [-100, 999]], [1, -1], (10, 20), batched=False)
    with pytest.raises(ValueError, match="point_coords"):
        check_points([[20.01, 5]], [1], (10, 20), batched=False)


def test_check_points_integer_valued_float_labels_are_accepted():
    _, labels = check_points([[1, 1]], np.array([1.0]), (10, 10), batched=False)
    assert labels.dtype == np.int64 and labels.tolist() == [[1]]


def test_check_points_accepts_box_corner_labels_and_rejects_others():
    _, labels = check_points([[1, 1], [5, 5]], [2, 3], (10, 10), batched=False)
    assert labels.tolist() == [[2, 3]]
    for bad in (4, -2):
        with pytest.raises(ValueError, match=r"point_labels.*\[" + str(bad) + r"\]"):
            check_points([[1, 1]], [bad], (10, 10), batched=False)


def test_check_boxes_shapes():
    assert check_boxes([1, 2, 3, 4], (10, 10), batched=False).shape == (1, 4)
    assert check_boxes([[1, 2, 3, 4]], (10, 10), batched=False).shape == (1, 4)
    assert check_boxes(np.array([[1, 2, 3, 4], [0, 0, 10, 10]]), (10, 10), batched=True).shape == (2, 4)
    assert check_boxes([2, 2, 2, 2], (10, 10), batched=False).shape == (1, 4)  # degenerate box allowed
    with pytest.raises(ValueError, match="boxes"):
        check_boxes(np.zeros((0, 4)), (10, 10), batched=True, name="boxes")
    with pytest.raises(ValueError, match="boxes"):
        check_boxes([1, 2, 3, 4], (10, 10), batched=True, name="boxes")
