"""``benchmarks/bench_seggpt.py --quick`` runs end to end against transformers (a smoke test; timings are not asserted)."""

from __future__ import annotations

import json
import time

import pytest


def test_bench_seggpt_reports_the_first_call_as_the_warm_up(run_benchmark, tmp_path, monkeypatch):
    """"first run" is the model's first call in the process (no hidden warm-up cost): a one-time cost of the
    first call shows there, not in the timed rounds."""
    pytest.importorskip("transformers")
    from promptseg.models.seggpt.model import SegGpt

    forward, calls = SegGpt.forward, []

    def first_call_slow(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            time.sleep(1.0)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(SegGpt, "forward", first_call_slow)
    out_json = tmp_path / "bench.json"
    out = run_benchmark("bench_seggpt.py", "--quick", "--repeats", "1", "--json", str(out_json))
    report = json.loads(out_json.read_text())
    assert len(calls) == 2  # the warm-up (also the parity check) and one timed round: no untimed extra call
    assert report["results"]["promptseg"]["first"]["wall_s"] >= 1.0
    assert report["results"]["promptseg"]["runs"][0]["wall_s"] < 1.0
    assert report["max_abs_diff"] < 1e-4 and "max |Δ pred_masks|" in out
