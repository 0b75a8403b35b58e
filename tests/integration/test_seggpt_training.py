"""End-to-end SegGPT training on synthetic scenes: learning, exact resume, export, CLI, bf16, DDP."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from promptseg.train.seggpt.config import SegGptTrainConfig
from promptseg.train.seggpt.trainer import SegGptTrainer, train_seggpt
from promptseg.train.trainer import list_checkpoints

REPO = Path(__file__).resolve().parents[2]
#: Synthetic scenes without emoji or photos (fast: no font scan). Their shapes ("polygon", "blob",
#: "stroke") are made categories here, so that semantic pairs are drawn too; the committed debug config
#: (emoji categories) runs in test_debug_config_through_the_module_entry_point.
SCENES = {"type": "synth-scenes", "num_scenes": 6, "size": 48, "emoji": False, "use_photos": False,
          "max_objects": 5, "crowd_prob": 0.0}
PAIRS = {"mix_prob": 0.3, "mix_grid": [1, 2], "min_mask_area": 8, "ignore_categories": [""]}


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny model is fastest on one thread (and the test machine's cores are shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


#: A tiny run: 2 pairs a step, 4 steps, checkpoints every 2; no progress bar, no TensorBoard.
BASE = {"model": {"preset": "tiny"}, "dataset": SCENES, "pairs": PAIRS, "device": "cpu", "batch_size": 2, "lr": 2e-3,
        "warmup": 2, "milestones": [100], "drop_path": 0.1, "max_steps": 4, "checkpoint_every": 2, "log_every": 1,
        "progress": False, "tensorboard": False}


def config_dict(out_dir: Path, **changes) -> dict:
    return {**BASE, "out_dir": str(out_dir), **changes}


def make_config(out_dir: Path, **changes) -> SegGptTrainConfig:
    return SegGptTrainConfig.from_dict(config_dict(out_dir, **changes))


def metric_rows(out_dir: Path) -> list:
    """``metrics.csv`` as lists of strings, header first."""
    with open(out_dir / "metrics.csv", newline="") as f:
        return list(csv.reader(f))


def test_short_run_learns_and_exports_a_loadable_model(tmp_path):
    from promptseg.models.seggpt import load_seggpt

    cfg = make_config(tmp_path, batch_size=4, max_steps=20, checkpoint_every=100, drop_path=0.0,
                      pairs={**PAIRS, "mix_prob": 0.0})
    trainer = SegGptTrainer(cfg)
    result = trainer.train()
    losses = [row["loss"] for row in result.history]
    # from the standard small init (std 0.02, init_seggpt_weights_) 20 steps of the tiny model take ~12 % off
    assert result.steps == 20 and sum(losses[-3:]) < 0.92 * sum(losses[:3]), losses

    header, *rows = metric_rows(tmp_path)
    assert header == ["step", "lr", "loss", "miou"] and [int(r[0]) for r in rows] == list(range(1, 21))
    assert float(rows[-1][2]) == pytest.approx(losses[-1])

    model = load_seggpt(result.model_path)  # the final model: promptseg safetensors with its config
    assert model.config == trainer.seggpt.config
    assert all(torch.equal(model.state_dict()[k], v) for k, v in trainer.seggpt.state_dict().items())
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000020.pt"]


def test_ema_weight_average_is_exported_beside_the_last_weights(tmp_path):
    """The loop's weight averaging (promptseg.train.averaging) works for SegGPT as for SAM."""
    from promptseg.checkpoint import read_state_dict
    from promptseg.models.seggpt import load_seggpt

    result = train_seggpt(make_config(tmp_path, max_steps=3, average="ema", average_decay=0.5))
    assert result.raw_model_path == tmp_path / "model_raw.safetensors"
    averaged, raw = load_seggpt(result.model_path), load_seggpt(result.raw_model_path)
    last = torch.load(list_checkpoints(tmp_path)[-1], weights_only=True)
    assert last["average"]["count"] == 3 and last["model_config"] == averaged.config.to_dict()
    assert all(torch.equal(raw.state_dict()[k], v) for k, v in last["model"].items())
    assert any(not torch.equal(averaged.state_dict()[k], v) for k, v in last["model"].items())
    assert read_state_dict(result.model_path)[1] is not None  # its config embedded, like any export


def test_kill_and_resume_gives_the_identical_next_step_loss(tmp_path):
    from promptseg.train.seggpt_cli import main

    # grad_accum 2 × batch 2 over 6 scenes: epochs end mid-step; drop path draws from the global RNG
    changes = {"grad_accum": 2, "max_steps": 4}
    reference = train_seggpt(make_config(tmp_path / "reference", **changes)).history

    run = tmp_path / "run"
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(config_dict(run, **changes)))
    assert main([str(path), "--max-steps", "3"]) == 0  # checkpoints at steps 2 and 3
    step2, step3 = list_checkpoints(run)
    step3.unlink()  # killed after step 3, before its checkpoint landed
    resumed = SegGptTrainer(make_config(run, **changes), resume=str(step2))
    assert resumed.step == 2
    history = resumed.train().history
    assert [h["loss"] for h in history] == [h["loss"] for h in reference[2:]]  # bit-identical, from step 3 on
    assert [h["miou"] for h in history] == [h["miou"] for h in reference[2:]]
    assert [r[0] for r in metric_rows(run)[1:]] == ["1", "2", "3", "4"]  # the stale row of step 3 replaced


def test_bf16_finetuning_from_a_checkpoint_and_cli_errors(tmp_path, capsys):
    from promptseg.train.seggpt_cli import main

    first = train_seggpt(make_config(tmp_path / "a", max_steps=1))
    cfg = make_config(tmp_path / "b", model={"checkpoint": str(first.model_path)}, bf16=True, max_steps=2,
                      drop_path=None)
    result = train_seggpt(cfg)
    assert result.steps == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in result.history)

    with pytest.raises(ValueError, match="--resume"):  # a fresh run never overwrites checkpoints
        SegGptTrainer(make_config(tmp_path / "b", max_steps=4))
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(config_dict(tmp_path, pairs={"mix": 1})))
    assert main([str(path)]) == 2
    assert "unknown key" in capsys.readouterr().err


def test_debug_config_through_the_module_entry_point(tmp_path):
    """``python -m promptseg.train.seggpt_cli configs/seggpt_tiny_debug.json`` (emoji scenes, 2 steps)."""
    from promptseg.data.synth import emoji_font_available

    if not emoji_font_available():
        pytest.skip("the colour emoji font is not installed")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "promptseg.train.seggpt_cli", str(REPO / "configs" / "seggpt_tiny_debug.json"),
         "--out", str(tmp_path / "debug"), "--max-steps", "2", "--no-progress"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trained to step 2" in proc.stdout
    assert (tmp_path / "debug" / "model.safetensors").is_file()


def test_torchrun_two_processes_on_cpu(tmp_path):
    out = tmp_path / "ddp"
    path = tmp_path / "ddp.json"
    path.write_text(json.dumps(config_dict(out, max_steps=2, checkpoint_every=1)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "promptseg.train.seggpt_cli", str(path)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r[0] for r in metric_rows(out)[1:]] == ["1", "2"]
    state = torch.load(out / "checkpoints" / "step_00000002.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert (out / "model.safetensors").is_file()
