"""``benchmarks/bench_train_step.py`` runs end to end on the CPU (a smoke test; timings are not asserted)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_train_step_reports_data_encoder_and_step_times(run_benchmark):
    out = run_benchmark("bench_train_step.py", str(ROOT / "configs" / "tiny_debug.json"), "--device", "cpu",
                        "--workers", "0", "--batches", "1", "--steps", "1")
    for needle in ("per item in this process", "DataLoader (0 workers", "image encoder forward + backward",
                   "11 rounds, whole step", "operator calls per step", "loss: one round"):
        assert needle in out, out


def test_bench_train_step_runs_configs_that_freeze_the_image_encoder(run_benchmark, tmp_path):
    """mode "decoder" (configs/finetune_decoder_vit_b_coco.json) freezes the encoder: it is timed forward only,
    as training runs it, instead of a backward through parameters that need no gradient."""
    import json

    config = json.loads((ROOT / "configs" / "tiny_debug.json").read_text())
    config.update(mode="decoder", rounds=2, out_dir=str(tmp_path / "run"))
    path = tmp_path / "decoder.json"
    path.write_text(json.dumps(config))
    out = run_benchmark("bench_train_step.py", str(path), "--device", "cpu", "--workers", "0", "--batches", "1",
                        "--steps", "1")
    for needle in ("image encoder forward (frozen by the config)", "2 rounds, whole step", "loss: one round"):
        assert needle in out, out
