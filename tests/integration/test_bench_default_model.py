"""``benchmarks/bench_default_model.py`` runs end to end on the bundled model (a smoke test; timings are not asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_bench_default_model_json_has_every_number_it_prints(run_benchmark, tmp_path, monkeypatch):
    pytest.importorskip("segment_anything")
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # as when run as a script: it imports bench_sam
    out_json = tmp_path / "bench.json"
    out = run_benchmark("bench_default_model.py", "--repeats", "1", "--json", str(out_json))
    report = json.loads(out_json.read_text())
    for what in ("encode", "predict"):
        for name in ("reference", "promptseg", "promptseg-bf16enc", "promptseg-bf16"):
            assert report[f"{what}/{name}"]["median_s"] > 0
    # the bf16 modes' mask agreement with float32 and the encoding target, as printed
    assert set(report["bf16_mean_iou"]) == {"promptseg-bf16enc", "promptseg-bf16"}
    for name, iou in report["bf16_mean_iou"].items():
        assert 0.9 < iou <= 1.0 and f"{name} vs float32 masks" in out and f"mean IoU {iou:.4f}" in out
    assert report["encode_target_s"] == 1.0 and isinstance(report["encode_meets_target"], bool)
