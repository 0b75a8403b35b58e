"""``benchmarks/noisy_box_miou.py`` runs end to end on a tiny SA-1B folder (a smoke test of its pairing)."""

from __future__ import annotations

import json

from promptseg import save_sam


def test_noisy_box_miou_pairs_checkpoints_on_the_reports_masks(run_benchmark, tiny_sam, tmp_path, disk_square_scenes):
    root = tmp_path / "data"
    disk_square_scenes(root, lambda disk, square, xx: ([disk, square], None))
    records = [{"image_id": str(i), "mask_index": k} for i in range(2) for k in (1, 0)]
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"records": records}))
    checkpoint = tmp_path / "tiny.safetensors"
    save_sam(tiny_sam, checkpoint)

    out = run_benchmark("noisy_box_miou.py", str(checkpoint), str(checkpoint), "--dataset", str(root),
                        "--report", str(report), "--draws", "2")
    first, second = out.strip().splitlines()
    assert "(4 masks × 2)" in first and "paired" not in first
    assert first.split(": box mIoU")[1].split()[3] == second.split(": box mIoU")[1].split()[3]  # same draws
    assert "paired vs the first +0.0000 ± 0.0000" in second
