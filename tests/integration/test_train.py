"""End-to-end training of a tiny SAM on synthetic shapes: learning, exact resume, export, CLI, DDP."""

from __future__ import annotations

import csv
import math
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from promptseg.train.config import TrainConfig
from promptseg.train.trainer import Trainer, list_checkpoints, train

#: img 64, patch 16 (4×4 grid), embed 32, depth 2, 2 heads, window 2, block 1 global; decoder 32/2 heads/MLP 64.
TINY_MODEL = {
    "image_encoder": {"img_size": 64, "patch_size": 16, "embed_dim": 32, "depth": 2, "num_heads": 2,
                      "out_chans": 32, "window_size": 2, "global_attn_indexes": [1]},
    "prompt_encoder": {"embed_dim": 32, "mask_in_chans": 16},
    "mask_decoder": {"transformer_dim": 32, "transformer_depth": 2, "num_heads": 2, "mlp_dim": 64,
                     "iou_head_hidden_dim": 32},
}


def config_dict(out_dir: Path, **changes) -> dict:
    data = {
        "model": {"config": TINY_MODEL},
        "dataset": {"type": "synthetic-shapes", "num_images": 6, "height": 48, "width": 64},
        "out_dir": str(out_dir),
        "device": "cpu",
        "batch_size": 2,
        "masks_per_image": 3,
        "lr": 2e-3,
        "warmup": 2,
        "milestones": [3],
        "drop_path": 0.2,
        "max_steps": 4,
        "checkpoint_every": 2,
        "log_every": 1,
        "progress": False,
        "tensorboard": False,
    }
    data.update(changes)
    return data


def make_config(out_dir: Path, **changes) -> TrainConfig:
    return TrainConfig.from_dict(config_dict(out_dir, **changes))


def read_metrics(out_dir: Path) -> list:
    with open(out_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_short_run_lowers_the_loss_and_exports_a_loadable_model(tmp_path):
    from promptseg import load_sam

    cfg = make_config(tmp_path, dataset={"type": "synthetic-shapes", "num_images": 1}, batch_size=1,
                      masks_per_image=4, lr=4e-3, warmup=5, milestones=[1000], drop_path=0.0, max_steps=30,
                      checkpoint_every=100)
    trainer = Trainer(cfg)
    result = trainer.train()
    losses = [row["loss"] for row in result.history]
    assert result.steps == 30 and len(losses) == 30
    assert sum(losses[-3:]) / 3 < 0.3 * sum(losses[:3]) / 3, losses
    assert result.history[-1]["miou"] > 0.8  # it learns the masks, not just the background

    rows = read_metrics(tmp_path)
    assert list(rows[0]) == ["step", "lr", "loss", "focal", "dice", "iou_mse", "miou"]
    assert [int(r["step"]) for r in rows] == list(range(1, 31))
    assert float(rows[-1]["loss"]) == pytest.approx(losses[-1])

    model = load_sam(result.model_path)
    assert model.config == trainer.sam.config
    for name, value in trainer.sam.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000030.pt"]


def test_resume_continues_exactly(tmp_path):
    from promptseg.train.cli import main

    # grad_accum 2 × batch 2 over 6 images: epochs end mid-step; drop path uses the global RNG
    changes = {"grad_accum": 2, "max_steps": 5}
    full = train(make_config(tmp_path / "full", **changes))
    assert len(full.history) == 5

    interrupted = tmp_path / "interrupted"
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(config_dict(interrupted, **changes)))
    assert main([str(path), "--max-steps", "3"]) == 0  # checkpoints at 2 and 3
    # the run is "killed" after step 3 but before its checkpoint was written
    (interrupted / "checkpoints" / "step_00000003.pt").unlink()
    assert main([str(path), "--resume"]) == 0  # continues from step 2 up to max_steps 5

    ours, reference = read_metrics(interrupted), read_metrics(tmp_path / "full")
    assert [r["step"] for r in ours] == ["1", "2", "3", "4", "5"]  # the stale row 3 was dropped
    assert ours == reference  # every metric of steps 3–5 is bit-identical (repr of the floats)

    a = torch.load(tmp_path / "full" / "checkpoints" / "step_00000005.pt", weights_only=True)
    b = torch.load(interrupted / "checkpoints" / "step_00000005.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["data"] == b["data"] and a["step"] == b["step"] == 5


def test_a_run_extended_with_later_milestones_equals_a_run_started_with_them(tmp_path):
    from promptseg.train.cli import main

    longer = {"max_steps": 6, "milestones": [5]}
    reference = train(make_config(tmp_path / "full", **longer))
    short = tmp_path / "short"
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(config_dict(short, max_steps=4, milestones=[3])))
    assert main([str(path), "--max-steps", "2"]) == 0  # stopped before its first milestone (3)
    path.write_text(json.dumps(config_dict(short, **longer)))
    assert main([str(path), "--resume"]) == 0  # extended: milestone 5, 6 steps
    assert read_metrics(short) == read_metrics(tmp_path / "full")
    assert [float(r["lr"]) for r in read_metrics(short)][-2:] == [r["lr"] for r in reference.history][-2:]


def test_a_run_stopped_at_its_milestone_and_extended_takes_the_next_step_at_the_new_lr(tmp_path):
    """Stopped after step 2 with milestone 2: the saved lr of the next step is already decayed; the extended
    schedule (milestone 5) must set it back, in every parameter group, before that step is taken."""
    from promptseg.train.cli import main

    longer = {"max_steps": 4, "milestones": [5]}
    train(make_config(tmp_path / "full", **longer))
    short = tmp_path / "short"
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(config_dict(short, max_steps=2, milestones=[2])))
    assert main([str(path)]) == 0
    path.write_text(json.dumps(config_dict(short, **longer)))
    assert main([str(path), "--resume"]) == 0
    assert read_metrics(short) == read_metrics(tmp_path / "full")


def test_uniform_weight_average_exports_the_mean_of_the_steps_after_its_start(tmp_path):
    from promptseg import load_sam
    from promptseg.checkpoint import read_state_dict

    result = train(make_config(tmp_path, average="uniform", average_start=1, checkpoint_every=1, keep_checkpoints=0))
    assert result.model_path == tmp_path / "model.safetensors"
    assert result.raw_model_path == tmp_path / "model_raw.safetensors"
    saved = [torch.load(p, weights_only=True) for p in list_checkpoints(tmp_path)]
    assert [c["step"] for c in saved] == [1, 2, 3, 4] and saved[-1]["average"]["count"] == 3
    assert saved[0]["model_config"] == load_sam(result.model_path).config.to_dict()
    averaged, raw = read_state_dict(result.model_path)[0], read_state_dict(result.raw_model_path)[0]
    for name, value in averaged.items():
        assert torch.equal(raw[name], saved[-1]["model"][name]), name
        if value.is_floating_point():
            mean = sum(c["model"][name].double() for c in saved[1:]) / 3  # the weights after steps 2, 3, 4
            assert torch.allclose(value.double(), mean, atol=1e-6), name
    assert any(not torch.equal(averaged[k], raw[k]) for k in averaged)


def test_ema_weight_average_survives_a_resume_exactly(tmp_path):
    from promptseg.checkpoint import read_state_dict
    from promptseg.train.cli import main

    changes = {"average": "ema", "average_decay": 0.5, "max_steps": 5}
    train(make_config(tmp_path / "full", **changes))
    interrupted = tmp_path / "interrupted"
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(config_dict(interrupted, **changes)))
    assert main([str(path), "--max-steps", "2"]) == 0
    assert main([str(path), "--resume"]) == 0
    for name in ("model.safetensors", "model_raw.safetensors"):
        a, b = read_state_dict(tmp_path / "full" / name)[0], read_state_dict(interrupted / name)[0]
        assert all(torch.equal(a[k], b[k]) for k in a), name
    # resuming with other averaging settings is refused, naming the setting
    path.write_text(json.dumps(config_dict(interrupted, **{**changes, "average_decay": 0.9, "max_steps": 6})))
    with pytest.raises(ValueError, match="average_decay"):
        Trainer(TrainConfig.from_json(path), resume=True)


def test_weight_average_settings_are_checked():
    for changes, match in [({"average": "swa"}, "average must be one of"),
                           ({"average": "ema", "average_decay": 1.0}, "average_decay"),
                           ({"average": "uniform", "average_start": 4}, "below max_steps")]:
        with pytest.raises(ValueError, match=match):
            make_config(Path("unused"), **changes)


def test_fresh_run_refuses_an_output_directory_with_checkpoints(tmp_path):
    train(make_config(tmp_path, max_steps=2))
    with pytest.raises(ValueError, match="--resume"):
        Trainer(make_config(tmp_path, max_steps=4))


def test_keep_checkpoints_never_prunes_the_checkpoint_just_written(tmp_path):
    """Resumed from step 1 of a run that went on to step 4: the checkpoints of steps 3–4 (the abandoned
    continuation) are pruned before the one just written, which ``--resume`` must find next."""
    train(make_config(tmp_path, checkpoint_every=1, keep_checkpoints=0))
    resumed = train(make_config(tmp_path, max_steps=2, checkpoint_every=1, keep_checkpoints=1),
                    resume=tmp_path / "checkpoints" / "step_00000001.pt")
    assert resumed.last_checkpoint == tmp_path / "checkpoints" / "step_00000002.pt"
    assert list_checkpoints(tmp_path) == [resumed.last_checkpoint]


def test_a_second_train_call_keeps_the_metrics_of_the_first(tmp_path):
    trainer = Trainer(make_config(tmp_path / "a", max_steps=3))
    trainer.train(max_steps=2)
    trainer.train()
    reference = train(make_config(tmp_path / "b", max_steps=3))
    assert [r["step"] for r in read_metrics(tmp_path / "a")] == ["1", "2", "3"]
    assert read_metrics(tmp_path / "a") == read_metrics(tmp_path / "b")
    assert [r["loss"] for r in read_metrics(tmp_path / "a")] == [repr(r["loss"]) for r in reference.history]


def test_an_interrupted_run_stops_its_loader_workers(tmp_path):
    """Ctrl-C in a notebook keeps the exception (``sys.last_value``) and with it the loop's frames: the
    DataLoader's worker processes must stop when ``train`` exits, not when that traceback is freed."""
    import multiprocessing

    trainer = Trainer(make_config(tmp_path, max_steps=4, num_workers=1))
    step = trainer.train_step

    def interrupted(batches):
        if trainer.step == 1:
            raise KeyboardInterrupt
        return step(batches)

    trainer.train_step = interrupted
    with pytest.raises(KeyboardInterrupt) as info:
        trainer.train()
    assert info.value.__traceback__ is not None  # still held, as sys.last_traceback holds it
    assert multiprocessing.active_children() == []
    assert list_checkpoints(tmp_path) == []  # nothing half-written: no checkpoint was due yet


def test_progress_bar_shows_the_loss_of_the_step_it_counts(tmp_path, monkeypatch):
    import tqdm.auto

    shown = []

    class Bar:
        def __init__(self, *args, **kwargs):
            self.postfix = {}

        def set_postfix(self, refresh=True, **kwargs):
            self.postfix = kwargs

        def update(self, n=1):
            shown.append(self.postfix.get("loss"))

        def close(self):
            pass

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    result = train(make_config(tmp_path, max_steps=2, progress=True))
    assert shown == [f"{row['loss']:.4f}" for row in result.history]


def test_bf16_decoder_only_finetuning_from_a_checkpoint(tmp_path):
    first = train(make_config(tmp_path / "a", max_steps=1))
    cfg = make_config(tmp_path / "b", model={"checkpoint": str(first.model_path)}, mode="decoder", bf16=True,
                      max_steps=2, drop_path=None)
    trainer = Trainer(cfg)
    before = {k: v.clone() for k, v in trainer.sam.state_dict().items()}
    result = trainer.train()
    after = trainer.sam.state_dict()
    assert result.steps == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in result.history)
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("image_encoder.", "prompt_encoder.")))
    assert not torch.equal(before["mask_decoder.iou_token.weight"], after["mask_decoder.iou_token.weight"])


def test_cli_reports_config_errors(tmp_path, capsys):
    from promptseg.train.cli import main

    path = tmp_path / "bad.json"
    path.write_text(json.dumps(config_dict(tmp_path, lrr=1)))
    assert main([str(path)]) == 2
    assert "unknown key" in capsys.readouterr().err


def test_cli_refuses_to_resume_a_run_whose_model_or_mode_changed_and_an_unknown_device(tmp_path, capsys):
    from promptseg.train.cli import main

    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(config_dict(tmp_path / "run", max_steps=1)))
    assert main([str(path)]) == 0
    capsys.readouterr()
    model = json.loads(json.dumps(TINY_MODEL))
    model["mask_decoder"]["mlp_dim"] = 48
    for changes, what in (({"model": {"config": model}}, "model"), ({"mode": "decoder"}, "mode")):
        path.write_text(json.dumps(config_dict(tmp_path / "run", max_steps=2, **changes)))
        assert main([str(path), "--resume"]) == 2
        err = capsys.readouterr().err
        assert "cannot resume from" in err and f"changed since the checkpoint: max_steps, {what})" in err, err
        assert err.count("\n") == 1 and "Traceback" not in err
    assert main([str(path), "--out", str(tmp_path / "other"), "--device", "tpu"]) == 2
    err = capsys.readouterr().err
    assert "device 'tpu' is not a torch device" in err and err.count("\n") == 1


def test_torchrun_two_processes_on_cpu(tmp_path):
    out = tmp_path / "ddp"
    path = tmp_path / "ddp.json"
    path.write_text(json.dumps(config_dict(out, max_steps=2, checkpoint_every=1, drop_path=0.1)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "promptseg.train.cli", str(path)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["step"] for r in read_metrics(out)] == ["1", "2"]
    state = torch.load(out / "checkpoints" / "step_00000002.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # per-rank drop-path streams
    assert (out / "model.safetensors").is_file()


def test_trains_on_an_sa1b_folder(tmp_path):
    from promptseg.data.synth import SynthConfig, generate_dataset

    generate_dataset(tmp_path / "sa1b", 2, seed=0, config=SynthConfig(size=96, emoji=False, use_photos=False, max_objects=5))
    cfg = make_config(tmp_path / "run", dataset={"type": "sa1b", "root": [str(tmp_path / "sa1b")]}, max_steps=2)
    result = train(cfg)
    assert result.steps == 2 and result.model_path.is_file()


def test_trains_on_synthetic_scenes_generated_in_loader_workers(tmp_path):
    """The ``synth`` dataset type: scenes made on the fly in two DataLoader worker processes."""
    from promptseg.data.synth import emoji_font_available

    if not emoji_font_available():
        pytest.skip("needs fonts-noto-color-emoji")
    cfg = make_config(tmp_path, dataset={"type": "synth", "num_images": 4, "size": 64, "config": {"max_objects": 4}},
                      batch_size=2, num_workers=2, masks_per_image=2, max_steps=2, checkpoint_every=100)
    result = Trainer(cfg).train()
    assert result.steps == 2 and all(math.isfinite(row["loss"]) for row in result.history)


def test_time_limit_stops_with_a_checkpoint_and_resume_finishes_the_same_run(tmp_path, capsys):
    from promptseg.train.cli import main

    changes = {"max_steps": 4, "checkpoint_every": 100}
    full = train(make_config(tmp_path / "full", **changes))
    assert not full.time_limited

    limited = tmp_path / "limited"
    result = train(make_config(limited, **changes), time_limit=1e-9)  # out of time after the first step
    assert result.time_limited and result.steps == 1
    assert result.last_checkpoint == limited / "checkpoints" / "step_00000001.pt" and result.last_checkpoint.is_file()
    assert (limited / "model.safetensors").is_file()

    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(config_dict(limited, **changes)))
    assert main([str(path), "--resume", "--time-limit", "60"]) == 0
    assert "time limit reached" not in capsys.readouterr().out
    assert read_metrics(limited) == read_metrics(tmp_path / "full")
    assert main([str(path), "--time-limit", "0"]) == 2  # must be positive


@pytest.mark.parametrize("first_round_weight", [1.0, 3.0])
def test_round_backward_gives_the_standard_gradients(tmp_path, first_round_weight):
    """Back-propagating each round at once (``round_backward``) changes memory, not the gradients."""
    from promptseg.train.trainer import SamTrainingModel, TrainSamples, build_model, collate_train
    from promptseg.train.datasets import build_dataset

    cfg = make_config(tmp_path, dataset={"type": "synthetic-shapes", "num_images": 2}, batch_size=2,
                      masks_per_image=3, rounds=5, drop_path=0.0, first_round_weight=first_round_weight)
    samples = TrainSamples(build_dataset(cfg.dataset.type, cfg.dataset.options), 64, 3, 0.9, 0)
    batch = collate_train([samples[(0, 0)], samples[(0, 1)]])
    grads, losses = [], []
    for scale in (None, 0.5):
        torch.manual_seed(0)
        sam = build_model(cfg)
        model = SamTrainingModel(sam, cfg).train()
        out = model(generator=torch.Generator().manual_seed(3), backward_scale=scale, **batch)
        if scale is None:
            (out["loss"] * 0.5).backward()
        else:
            assert not out["loss"].requires_grad
        losses.append(out["loss"].item())
        grads.append({n: p.grad.clone() for n, p in sam.named_parameters() if p.grad is not None})
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    assert grads[0].keys() == grads[1].keys() and any(n.startswith("image_encoder.") for n in grads[0])
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-7), name


def test_round_backward_run_and_its_checks(tmp_path):
    run = train(make_config(tmp_path / "a", round_backward=True, max_steps=3, checkpoint_every=100))
    ref = train(make_config(tmp_path / "b", max_steps=3, checkpoint_every=100))
    for a, b in zip(run.history, ref.history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3)
    with pytest.raises(ValueError, match="detach_mask_prompt"):
        make_config(tmp_path / "c", round_backward=True, detach_mask_prompt=False)


def test_a_run_whose_area_limits_drop_every_mask_fails_early(tmp_path):
    """Area limits that drop every mask made a 'successful' run: loss 0 and mIoU 0 in the log, and an exported
    model changed only by weight decay. The first logging window without a single mask is now an error."""
    cfg = make_config(tmp_path, min_mask_area=0.95, max_mask_area=0.99, log_every=2, max_steps=6)
    trainer = Trainer(cfg)
    with pytest.raises(ValueError, match=r"no mask reached training in 2 step\(s\).*min_mask_area 0.95"):
        trainer.train()
    assert trainer.step == 2 and not (tmp_path / "model.safetensors").exists()
    ok = Trainer(make_config(tmp_path / "ok", log_every=2, max_steps=2))
    assert ok.train().steps == 2  # masks within the limits: no complaint


def test_resume_continues_from_the_checkpoint_written_last(tmp_path):
    """A run resumed from an earlier checkpoint (keep_checkpoints 0) leaves the abandoned run's later ones; a
    plain --resume after it took the highest step, the abandoned run's, dropping the resumed run's steps."""
    from promptseg.train.trainer import latest_checkpoint

    cfg = make_config(tmp_path, checkpoint_every=1, keep_checkpoints=0, max_steps=4)
    Trainer(cfg).train()
    ckpts = tmp_path / "checkpoints"
    assert latest_checkpoint(tmp_path) == ckpts / "step_00000004.pt"
    Trainer(cfg, resume=ckpts / "step_00000002.pt").train(max_steps=3)  # back to step 2, on to step 3
    assert latest_checkpoint(tmp_path) == ckpts / "step_00000003.pt"
    assert Trainer(cfg, resume=True).resume_from == ckpts / "step_00000003.pt"  # not the abandoned step 4
    (ckpts / "step_00000003.pt").unlink()  # a pointer to a missing file: the highest step left
    assert latest_checkpoint(tmp_path) == ckpts / "step_00000004.pt"
