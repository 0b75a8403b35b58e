"""``benchmarks/bench_train_step.py`` runs end to end on the CPU (a smoke test; timings are not asserted)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_train_step_reports_data_encoder_and_step_times(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["bench_train_step.py", str(ROOT / "configs" / "tiny_debug.json"), "--device", "cpu",
                                      "--workers", "0", "--batches", "1", "--steps", "1"])
    try:
        runpy.run_path(str(ROOT / "benchmarks" / "bench_train_step.py"), run_name="__main__")
    except SystemExit as exit_:
        assert exit_.code == 0
    out = capsys.readouterr().out
    for needle in ("per item in this process", "DataLoader (0 workers", "image encoder forward + backward",
                   "11 rounds, whole step", "operator calls per step"):
        assert needle in out, out
