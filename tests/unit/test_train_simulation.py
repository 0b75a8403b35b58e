"""SamTrainingModel: the 11 simulated rounds through the real prompt encoder and decoder of a tiny SAM."""

from __future__ import annotations

import pytest
import torch

from promptseg.prompts import BOX_TOP_LEFT_LABEL
from promptseg.train.config import TrainConfig
from promptseg.train.trainer import SamTrainingModel, TrainSamples, build_model, collate_train

TINY_MODEL = {
    "image_encoder": {"img_size": 64, "patch_size": 16, "embed_dim": 32, "depth": 2, "num_heads": 2,
                      "out_chans": 32, "window_size": 2, "global_attn_indexes": [1]},
    "prompt_encoder": {"embed_dim": 32},
    "mask_decoder": {"transformer_dim": 32, "num_heads": 2, "mlp_dim": 64, "iou_head_hidden_dim": 32},
}


def make_config(**changes) -> TrainConfig:
    data = {"model": {"config": TINY_MODEL}, "dataset": {"type": "synthetic-shapes", "num_images": 2},
            "masks_per_image": 3, "drop_path": 0.1, **changes}
    return TrainConfig.from_dict(data)


def make_batch(cfg: TrainConfig):
    from promptseg.train.datasets import SyntheticShapes

    samples = TrainSamples(SyntheticShapes(num_images=2), 64, cfg.masks_per_image, cfg.max_mask_area, 0)
    return collate_train([samples[(0, 0)], samples[(0, 1)]])


def test_samples_are_resized_padded_and_subsampled():
    cfg = make_config(masks_per_image=2)
    batch = make_batch(cfg)
    assert [tuple(im.shape) for im in batch["images"]] == [(3, 48, 64), (3, 48, 64)]
    assert batch["targets"].shape[1:] == (64, 64) and len(batch["targets"]) <= 4
    assert not batch["targets"][:, 48:].any()  # padding rows are never foreground
    assert batch["image_valid"][:, :48].all() and not batch["image_valid"][:, 48:].any()
    assert batch["image_indices"].tolist() == sorted(batch["image_indices"].tolist())


def test_mask_area_limits():
    """Masks outside [min_mask_area, max_mask_area] of the image never reach the loss."""
    import numpy as np

    class Three:
        def __len__(self):
            return 1

        def __getitem__(self, i):
            masks = np.zeros((3, 40, 50), dtype=bool)
            masks[0, :2, :2] = True  # 0.2 % of the image
            masks[1, 5:25, 5:30] = True  # 25 %
            masks[2, :, :48] = True  # 96 %
            return {"image": np.zeros((40, 50, 3), dtype=np.uint8), "masks": masks}

    def kept(min_area: float) -> list:
        item = TrainSamples(Three(), 50, 8, 0.9, 0, min_mask_area=min_area)[(0, 0)]
        return sorted(int(m.sum()) for m in item["masks"])

    assert kept(0.0) == [4, 500]
    assert kept(0.01) == [500]
    with pytest.raises(ValueError, match="min_mask_area"):
        make_config(min_mask_area=0.95)


@pytest.mark.parametrize("shape", [(2, 50, 40), (1, 20, 100), (40, 50, 2)])
def test_masks_that_do_not_match_the_image_are_refused(shape):
    """K×H×W masks must have the image's H×W: masks of another size with the same pixel count (transposed,
    another resolution) were silently reshaped into scrambled masks."""
    import numpy as np

    class One:
        def __len__(self):
            return 1

        def __getitem__(self, i):
            return {"image": np.zeros((40, 50, 3), dtype=np.uint8), "masks": np.ones(shape, dtype=bool)}

    with pytest.raises(ValueError, match="'masks' must be K×H×W"):
        TrainSamples(One(), 64, 8, 1.0, 0)[(0, 0)]
    single = type("Single", (One,), {"__getitem__": lambda self, i: {"image": np.zeros((40, 50, 3), np.uint8),
                                                                     "masks": np.ones((40, 50), bool)}})
    assert TrainSamples(single(), 64, 8, 1.0, 0)[(0, 0)]["masks"].shape == (1, 64, 64)  # one H×W mask still reads


@pytest.mark.parametrize("multimask_box", [False, True])
def test_rounds_prompts_and_multimask_choice(monkeypatch, multimask_box):
    torch.manual_seed(0)
    cfg = make_config(multimask_box=multimask_box, masks_per_image=6)
    model = SamTrainingModel(build_model(cfg), cfg)
    batch = make_batch(cfg)
    flags, selected, sparse_lengths, first_labels, mask_prompts = [], [], [], [], []
    criterion = model.criterion.forward
    embed_sparse = model.sam.prompt_encoder.embed_sparse
    prompt_forward = model.sam.prompt_encoder.forward

    def spy_loss(*args, multimask_output, **kw):
        flags.append(multimask_output)
        out = criterion(*args, multimask_output=multimask_output, **kw)
        selected.append(out.selected)
        return out

    def spy_sparse(coords, labels):
        sparse_lengths.append(labels.shape[1])
        first_labels.append(labels[:, 0].clone())
        return embed_sparse(coords, labels)

    def spy_prompt(points, boxes, masks, *rest):
        mask_prompts.append(None if masks is None else tuple(masks.shape))
        return prompt_forward(points, boxes, masks, *rest)

    monkeypatch.setattr(model.criterion, "forward", spy_loss)
    monkeypatch.setattr(model.sam.prompt_encoder, "embed_sparse", spy_sparse)
    monkeypatch.setattr(model.sam.prompt_encoder, "forward", spy_prompt)
    gen = torch.Generator().manual_seed(0)
    out = model(generator=gen, **batch)
    b = len(batch["targets"])
    is_box = first_labels[0] == BOX_TOP_LEFT_LABEL  # a box-first prompt starts with its top-left corner
    assert 0 < int(is_box.sum()) < b  # this batch mixes both kinds of first prompt
    assert flags[1:] == [False] * 10  # the single output once there is more than one prompt
    if multimask_box:  # 3 masks for every single first prompt, a box included
        assert flags[0] is True and (selected[0] >= 1).all()
    else:  # 3 masks for a first click, the single-output token for a first box (two corner tokens)
        assert torch.equal(flags[0], ~is_box)
        assert (selected[0][is_box] == 0).all() and (selected[0][~is_box] >= 1).all()
    assert mask_prompts == [None] + [(b, 1, 16, 16)] * 10  # low-res logits of the previous round
    steps = [n - m for n, m in zip(sparse_lengths[1:], sparse_lengths)]
    assert sparse_lengths[0] == 2 and sorted(steps) == [0] * 2 + [1] * 8 and steps[-1] == 0
    assert set(out) == {"loss", "focal", "dice", "iou_mse", "miou"} and out["loss"].requires_grad


@pytest.mark.parametrize(
    "mode, encoder_grad, prompt_grad",
    [("full", True, True), ("decoder", False, False), ("decoder+prompt", False, True)],
)
def test_training_modes_freeze_the_right_parts(mode, encoder_grad, prompt_grad):
    torch.manual_seed(0)
    cfg = make_config(mode=mode)
    model = SamTrainingModel(build_model(cfg), cfg)
    model.train()
    assert model.sam.image_encoder.training == (mode == "full")
    out = model(generator=torch.Generator().manual_seed(1), **make_batch(cfg))
    out["loss"].backward()
    sam = model.sam
    assert (sam.image_encoder.blocks[0].attn.qkv.weight.grad is not None) == encoder_grad
    assert (sam.prompt_encoder.mask_downscaling[0].weight.grad is not None) == prompt_grad
    assert sam.mask_decoder.output_hypernetworks_mlps[0].layers[0].weight.grad is not None


@pytest.mark.parametrize("changes", [{"detach_mask_prompt": False}, {"loss_resolution": "low_res"}, {"rounds": 1}])
def test_variants_run_and_backpropagate(changes):
    torch.manual_seed(0)
    cfg = make_config(**changes)
    model = SamTrainingModel(build_model(cfg), cfg)
    out = model(generator=torch.Generator().manual_seed(2), **make_batch(cfg))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and model.sam.mask_decoder.iou_token.weight.grad is not None


def test_same_generator_same_loss():
    torch.manual_seed(0)
    cfg = make_config(drop_path=0.0)
    model = SamTrainingModel(build_model(cfg), cfg)
    batch = make_batch(cfg)
    a = model(generator=torch.Generator().manual_seed(7), **batch)["loss"]
    b = model(generator=torch.Generator().manual_seed(7), **batch)["loss"]
    c = model(generator=torch.Generator().manual_seed(8), **batch)["loss"]
    assert a.item() == b.item() and a.item() != c.item()


@pytest.mark.parametrize("weight", [1.0, 3.0])
def test_first_round_weight_is_a_weighted_mean_over_rounds(monkeypatch, weight):
    """``loss`` = Σ w_r·L_r / Σ w_r with w_0 = ``first_round_weight``; the reported parts stay plain means."""
    torch.manual_seed(0)
    cfg = make_config(first_round_weight=weight, drop_path=0.0)
    model = SamTrainingModel(build_model(cfg), cfg)
    rounds = []
    criterion = model.criterion.forward

    def spy_loss(*args, **kw):
        out = criterion(*args, **kw)
        rounds.append((out.loss.item(), out.focal.item()))
        return out

    monkeypatch.setattr(model.criterion, "forward", spy_loss)
    out = model(generator=torch.Generator().manual_seed(4), **make_batch(cfg))
    losses = [loss for loss, _ in rounds]
    assert len(losses) == 11
    expected = (weight * losses[0] + sum(losses[1:])) / (weight + 10)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-6)
    assert out["focal"].item() == pytest.approx(sum(f for _, f in rounds) / 11, rel=1e-6)
    with pytest.raises(ValueError, match="first_round_weight"):
        make_config(first_round_weight=0.0)
