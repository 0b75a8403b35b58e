"""``promptseg.incontext.evaluate`` and ``promptseg incontext eval``: one-shot episodes, mIoU, ensembles, J&F."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from promptseg.data import make_item
from promptseg.data.synth import SynthConfig, emoji_font_available, generate_dataset
from promptseg.incontext.evaluate import (
    category_mask,
    compare_ensembles,
    evaluate_oneshot,
    evaluate_video,
    format_oneshot,
    mask_iou,
    oneshot_episodes,
)
from promptseg.incontext.predictor import SegGptPredictor
from promptseg.incontext.synth_video import EMOJI

needs_font = pytest.mark.skipif(not emoji_font_available(), reason="Noto Color Emoji font not installed")


# --------------------------------------------------------------------------------------------- fixtures
def _shape_scenes(count=8, size=24):
    """In-memory scenes: a named square or disk (or both), a part of the square, an ignored polygon."""
    yy, xx = np.mgrid[:size, :size]
    items = []
    for i in range(count):
        rng = np.random.default_rng(i)
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)  # distinct images: the oracle's keys
        masks, names, parents = [], [], []
        if i % 3 != 2:
            square = (abs(yy - 6) < 4) & (abs(xx - 6 - i % 4) < 4)
            masks += [square, square & (yy < 6)]
            names += ["square", "part of square"]
            parents += [-1, len(masks) - 2]
        if i % 3 != 0:
            masks.append((yy - 16) ** 2 + (xx - 16) ** 2 < 20)
            names.append("disk")
            parents.append(-1)
        masks.append((yy > 20) & (xx < 8))
        names.append("polygon")
        parents.append(-1)
        items.append(make_item(image, np.stack(masks), i, names, parents))
    return items


class Oracle:
    """A predictor that returns the ground truth of each target (found by its pixels and the first example's
    mask: a scene can be the target of several categories); records the calls."""

    def __init__(self, episodes):
        self.truth = {}
        for i in range(len(episodes)):
            data = episodes.load(i)
            self.truth[data.target_image.tobytes(), data.examples[0][1].tobytes()] = data.target_mask
        self.calls = []

    def predict(self, target, examples, ensemble, embedding_type):
        self.calls.append((ensemble, len(examples), embedding_type))
        return SimpleNamespace(labels=self.truth[target.tobytes(), examples[0][1].tobytes()].astype(np.int32))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Ten 64-px emoji scenes of three categories (SA-1B layout, as `promptseg data synth` writes)."""
    if not emoji_font_available():
        pytest.skip("Noto Color Emoji font not installed")
    out = tmp_path_factory.mktemp("scenes")
    config = SynthConfig(size=64, categories=EMOJI[:3], kind_weights={"emoji": 1.0}, min_objects=2, max_objects=3,
                         crowd_prob=0.0, use_photos=False, parts=False)
    generate_dataset(out, 10, seed=3, config=config)
    return out


@pytest.fixture(scope="module")
def model(helpers):
    from promptseg.models.seggpt import build_seggpt

    torch.manual_seed(0)
    return helpers.perturb_(build_seggpt("tiny"), seed=1, std=0.05).eval()


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    from promptseg.models.seggpt import save_seggpt

    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_seggpt(model, path)
    return path


# --------------------------------------------------------------------------------------------- episodes
def test_mask_iou():
    a = np.zeros((4, 4), bool)
    b = a.copy()
    assert mask_iou(a, b) == 1.0
    a[0, :2] = True
    assert mask_iou(a, b) == 0.0
    b[0, 1:3] = True
    assert mask_iou(a, b) == pytest.approx(1 / 3)


def test_episodes_are_deterministic_and_hold_their_category():
    scenes = _shape_scenes()
    eps = oneshot_episodes(scenes, num_examples=2, seed=0, num_episodes=5)
    assert list(eps) == list(oneshot_episodes(scenes, num_examples=2, seed=0, num_episodes=5))
    assert list(eps) != list(oneshot_episodes(scenes, num_examples=2, seed=1, num_episodes=5))
    assert eps.categories == ["disk", "square"]  # not the polygon (a random shape) nor the part
    assert {eps[0].category, eps[1].category} == {"disk", "square"}  # categories take turns
    for ep in eps:
        assert len(ep.examples) == 2 and ep.target not in ep.examples and len(set(ep.examples)) == 2
        for index in (ep.target, *ep.examples):
            assert category_mask(scenes, index, ep.category)[1].any()
    targets = [(e.category, e.target) for e in oneshot_episodes(scenes, num_examples=2, num_episodes=None)]
    assert len(targets) == len(set(targets)) == 11  # every (category, scene) pair: 6 squares, 5 disks
    data = eps.load(0)
    scene = scenes[eps[0].target]
    want = scene["masks"][[k for k, n in enumerate(scene["names"]) if n == eps[0].category]].any(axis=0)
    np.testing.assert_array_equal(data.target_mask, want)
    assert len(data.examples) == 2 and data.examples[0][1].shape == (24, 24)
    with pytest.raises(ValueError, match="no category is held by 8 scenes"):
        oneshot_episodes(scenes, num_examples=7)


def test_episodes_name_min_area_when_it_filters_every_category():
    """With every named mask under ``min_area`` the error said the scenes had no named category mask at all
    (the scenes do: ``--min-area`` had filtered them); it names the area limit."""
    with pytest.raises(ValueError, match="no scene has a named category mask of at least min_area=10000 pixels"):
        oneshot_episodes(_shape_scenes(), num_examples=1, min_area=10_000)


def test_an_oracle_scores_one_and_the_settings_see_their_examples():
    eps = oneshot_episodes(_shape_scenes(), num_examples=3, num_episodes=4)
    oracle = Oracle(eps)
    report = compare_ensembles(oracle, eps)
    assert list(report["results"]) == ["one", "feature", "spatial"]
    for r in report["results"].values():
        assert r["mIoU"] == 1.0 and r["category_mIoU"] == 1.0 and r["episodes"] == 4
        assert set(r["per_category"]) == {"disk", "square"}
    assert report["feature_gain"] == 0.0 and report["feature_beats_one"] is False
    assert oracle.calls[:3] == [("none", 1, "semantic"), ("feature", 3, "semantic"), ("spatial", 3, "semantic")]
    assert [r["iou"] for r in report["records"]] == [{"one": 1.0, "feature": 1.0, "spatial": 1.0}] * 4

    class Empty(Oracle):
        def predict(self, target, examples, ensemble, embedding_type):
            return SimpleNamespace(labels=np.zeros(target.shape[:2], np.int32))

    assert evaluate_oneshot(Empty(eps), eps, "none")["mIoU"] == 0.0


def test_fss_miou_sums_intersection_and_union_per_category():
    # two scenes: a "square" at the top-left corner of side 4 or 12 and a 4×4 "dot" at the bottom-right; the
    # predictor always answers the 8×8 top-left box. Squares: IoU 16/64 and 64/144 (mean 0.347), FSS (16 + 64)
    # / (64 + 144) = 0.385; dots: 0 → fss_mIoU = 0.385 / 2, while mIoU / category_mIoU average episodes
    scenes = []
    for i, side in enumerate((4, 12)):
        square, dot = np.zeros((2, 24, 24), bool)
        square[:side, :side] = True
        dot[-4:, -4:] = True
        scenes.append(make_item(np.full((24, 24, 3), i, np.uint8), np.stack([square, dot]), i, ["square", "dot"],
                                [-1, -1]))
    eps = oneshot_episodes(scenes, num_examples=1, num_episodes=None)
    assert sorted(e.category for e in eps) == ["dot", "dot", "square", "square"]

    class Box:
        def predict(self, target, examples, ensemble, embedding_type):
            labels = np.zeros(target.shape[:2], np.int32)
            labels[:8, :8] = 1
            return SimpleNamespace(labels=labels)

    r = evaluate_oneshot(Box(), eps, "none")
    assert r["per_category"] == pytest.approx({"dot": 0.0, "square": (16 / 64 + 64 / 144) / 2})
    assert r["mIoU"] == pytest.approx(r["category_mIoU"]) and r["category_mIoU"] == pytest.approx((0.25 + 4 / 9) / 4)
    assert r["fss_mIoU"] == pytest.approx((16 + 64) / (64 + 144) / 2)
    report = compare_ensembles(Box(), eps)
    assert report["results"]["feature"]["fss_mIoU"] == pytest.approx(r["fss_mIoU"])
    assert "FSS mIoU" in format_oneshot(report).splitlines()[1]


# --------------------------------------------------------------------------------------------- tiny model
@needs_font
def test_tiny_model_on_synthetic_scenes(folder, model):
    predictor = SegGptPredictor(model)
    eps = oneshot_episodes(folder, num_examples=2, seed=0, num_episodes=3)
    assert len(eps) == 3 and eps.scene_name(eps[0].target).startswith("sa_")
    report = compare_ensembles(predictor, eps)
    assert set(report) >= {"num_examples", "embedding_type", "num_episodes", "num_categories", "results",
                           "feature_gain", "feature_beats_one", "records"}
    for r in report["results"].values():
        assert 0.0 <= r["mIoU"] <= 1.0 and r["episodes"] == 3
    spatial = evaluate_oneshot(predictor, eps, "spatial")
    assert spatial["examples"] == 2
    assert spatial["ious"] == [r["iou"]["spatial"] for r in report["records"]]  # same episodes, same targets
    table = format_oneshot(report).splitlines()
    assert [line.split()[0] for line in table[2:5]] == ["1", "2", "2"] and "spatial" in table[4]

    video = evaluate_video(predictor, count=1, num_frames=3, size=(32, 32), num_objects=1, fifo=1)
    assert 0.0 <= video["JF_mean"] <= 1.0 and video["config"]["fifo"] == 1 and len(video["sequences"]) == 1


# --------------------------------------------------------------------------------------------- command line
@needs_font
def test_cli_end_to_end(folder, checkpoint, tmp_path, capsys):
    from promptseg.cli import main

    out = tmp_path / "oneshot.json"
    assert main(["incontext", "eval", "oneshot", str(folder), "--examples", "2", "--episodes", "3",
                 "--checkpoint", str(checkpoint), "-o", str(out), "-q"]) == 0
    text = capsys.readouterr().out
    assert "1 example" in text and "2 examples, feature ensemble" in text and "2 examples, spatial ensemble" in text
    report = json.loads(out.read_text())
    assert report["task"] == "oneshot" and report["num_episodes"] == 3 and report["num_examples"] == 2
    assert set(report["results"]) == {"one", "feature", "spatial"} and len(report["records"]) == 3
    assert report["split"] == "all" and report["checkpoint"] == str(checkpoint)

    out = tmp_path / "video.json"
    assert main(["incontext", "eval", "video", "--sequences", "1", "--frames", "3", "--size", "32", "--objects", "1",
                 "--fifo", "1", "--checkpoint", str(checkpoint), "-o", str(out), "-q"]) == 0
    assert "J&F" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["task"] == "video" and set(report) >= {"J_mean", "F_mean", "JF_mean", "sequences", "config"}


def test_cli_errors_exit_2(checkpoint, tmp_path, capsys, monkeypatch):
    from promptseg.cli import main
    from promptseg.incontext import predictor as predictor_module

    monkeypatch.setattr(predictor_module, "default_seggpt_path", lambda: None)
    assert main(["incontext", "eval", "video", "--sequences", "1", "--frames", "2", "--size", "32"]) == 2
    assert "bundles no default SegGPT model" in capsys.readouterr().err
    assert main(["incontext", "eval", "oneshot", str(tmp_path / "missing"), "--checkpoint", str(checkpoint)]) == 2
    assert "dataset folder not found" in capsys.readouterr().err
    assert main(["incontext", "eval", "oneshot", str(tmp_path), "--examples", "0"]) == 2
    assert "expected an integer ≥ 1" in capsys.readouterr().err
    assert main(["incontext", "eval"]) == 2
    assert "oneshot" in capsys.readouterr().err
