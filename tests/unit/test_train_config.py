"""TrainConfig: JSON in, typed config out; unknown keys are errors at every level."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from promptseg.train.config import TrainConfig
from promptseg.train.datasets import SyntheticShapes, build_dataset, register_dataset

#: The SAM training configs (SegGPT's, ``*seggpt*.json``, are checked in tests/unit/test_seggpt_train.py).
CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[2] / "configs").glob("*.json") if "seggpt" not in p.name)
MINIMAL = {"model": {"preset": "vit_b"}, "dataset": {"type": "synthetic-shapes", "num_images": 4}}


def test_minimal_config_has_the_paper_defaults():
    cfg = TrainConfig.from_dict(MINIMAL)
    assert cfg.lr == 8e-4 and cfg.betas == (0.9, 0.999) and cfg.weight_decay == 0.1
    assert cfg.drop_path == 0.4 and cfg.layer_decay == 0.8 and cfg.warmup == 250
    assert cfg.milestones == (60000, 86666) and cfg.max_steps == 90000 and cfg.rounds == 11
    assert cfg.masks_per_image == 64 and cfg.max_mask_area == 0.9 and cfg.mode == "full"
    assert cfg.dataset.options == {"num_images": 4}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"learning_rate": 1e-3}, "unknown key"),
        ({"model": {"preset": "vit_b", "weights": "x"}}, "unknown key"),
        ({"model": {"config": {"image_encoder": {"depht": 2}}}}, "unknown key"),
        ({"dataset": {"type": "synthetic-shapes", "num_imgs": 3}}, "num_imgs"),
        ({"dataset": {"type": "no-such-dataset"}}, "unknown dataset type"),
        ({"mode": "encoder"}, "mode"),
        ({"loss_resolution": "full"}, "loss_resolution"),
        ({"grad_accum": 0}, "grad_accum"),
        ({"milestones": [10, 5]}, "milestones"),
        ({"model": {"preset": "vit_x"}}, "preset"),
        ({"model": {}}, "preset"),
    ],
)
def test_invalid_configs_are_rejected(change, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict({**MINIMAL, **change})


@pytest.mark.parametrize(
    "change, message",
    [
        ({"batch_size": "2"}, "batch_size must be an integer, got '2'"),
        ({"points_per_round": 2.5}, "points_per_round must be an integer, got 2.5"),
        ({"lr": "abc"}, "lr must be a finite number, got 'abc'"),
        ({"box_noise_std": float("nan")}, "box_noise_std must be a finite number, got nan"),
        ({"progress": "no"}, "progress must be true or false"),
        ({"milestones": ["a"]}, "milestones must be a list of integers"),
        ({"betas": 0.9}, "betas must be a list of 2 finite numbers"),
        ({"clip_grad_norm": "1"}, "clip_grad_norm must be a finite number or null"),
        ({"dataset": {"type": "synthetic-shapes", "num_images": "six"}}, "num_images must be an integer, got 'six'"),
        ({"model": {"config": {"image_encoder": {"depth": "two"}}}}, "image_encoder: depth must be an integer"),
        ({"lr_gamma": -1}, "lr_gamma must be > 0"),
        ({"weight_decay": -0.1}, "weight_decay must be ≥ 0"),
        ({"box_noise_max": -5}, "box_noise_max must be ≥ 0"),
    ],
)
def test_values_of_the_wrong_type_or_range_are_named(change, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig.from_dict({**MINIMAL, **change})


def test_missing_required_keys():
    with pytest.raises(ValueError, match="dataset"):
        TrainConfig.from_dict({"model": {"preset": "vit_b"}})


def test_round_trip_through_json(tmp_path):
    cfg = TrainConfig.from_dict({**MINIMAL, "milestones": [5, 9], "bf16": True, "mode": "decoder"})
    path = tmp_path / "c.json"
    path.write_text(cfg.to_json())
    assert TrainConfig.from_json(path) == cfg


def test_from_json_names_the_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**MINIMAL, "lr_rate": 1}))
    with pytest.raises(ValueError, match="bad.json"):
        TrainConfig.from_json(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="invalid JSON"):
        TrainConfig.from_json(path)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_parse(path):
    cfg = TrainConfig.from_json(path)
    assert cfg.max_steps >= 1


def test_dataset_registry():
    register_dataset("test-registry-shapes", lambda n=2: SyntheticShapes(num_images=n), overwrite=True)
    ds = build_dataset("test-registry-shapes", {"n": 3})
    assert len(ds) == 3
    item = ds[0]
    assert item["image"].dtype.name == "uint8" and item["image"].shape == (48, 64, 3)
    assert item["masks"].dtype == bool and item["masks"].shape[1:] == (48, 64) and len(item["masks"]) >= 1
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("synthetic-shapes", SyntheticShapes)


def test_sa1b_dataset_with_an_empty_list_of_roots_is_a_named_error():
    with pytest.raises(ValueError, match="sa1b: root .* non-empty list"):  # was an AssertionError of ConcatDataset
        build_dataset("sa1b", {"root": []})
