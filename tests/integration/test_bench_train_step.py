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
