"""Mask-by-mask comparison of eval reports (promptseg.eval.compare)."""

import json

import numpy as np
import pytest

from promptseg.eval.compare import (baseline_pairs, format_pairs, groups, load_report, metrics, pair_values, paired,
                                    size_bin, split_records)


def records(seed, n=40, clicks=5, shift=0.0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        curve = np.clip(np.sort(rng.random(clicks)) + shift, 0, 1).tolist()
        out.append({
            "point_top1": float(rng.random()) + shift, "point_oracle": float(rng.random()) + shift,
            "box": float(rng.random()) + shift, "box_fill": float(rng.random()), "grabcut_box": float(rng.random()),
            "clicks_iou": curve, "noc@85": int(rng.integers(1, clicks + 1)), "noc@90": clicks,
            "image_id": str(i // 4), "mask_index": i % 4, "part": bool(i % 3 == 0),
        })
    return out


def by_key(rows):
    return {r.metric: r for r in rows}


def test_paired_is_the_mean_and_standard_error_of_the_per_mask_difference():
    base, cand = records(0), records(1)
    rows = by_key(paired(base, cand))
    assert list(rows) == ["point_top1", "point_oracle", "box", "clicks@2", "clicks@3", "clicks@5", "clicks_best",
                          "curve", "noc@85", "noc@90"]  # clicks@9 is past the 5 recorded clicks; @5 is the last
    d = np.array([c["box"] - b["box"] for b, c in zip(base, cand)])
    row = rows["box"]
    assert row.n == 40 and row.diff == pytest.approx(d.mean(), abs=1e-12)
    assert row.stderr == pytest.approx(d.std(ddof=1) / np.sqrt(40), rel=1e-9)
    assert row.baseline == pytest.approx(np.mean([r["box"] for r in base]))
    assert (row.better, row.worse) == (int((d > 0).sum()), int((d < 0).sum()))
    curve = np.array([np.mean(c["clicks_iou"]) - np.mean(b["clicks_iou"]) for b, c in zip(base, cand)])
    assert rows["curve"].diff == pytest.approx(curve.mean(), abs=1e-12)
    best = np.array([max(c["clicks_iou"]) - max(b["clicks_iou"]) for b, c in zip(base, cand)])
    assert rows["clicks_best"].diff == pytest.approx(best.mean(), abs=1e-12)
    assert rows["clicks@3"].diff == pytest.approx(np.mean([c["clicks_iou"][2] - b["clicks_iou"][2]
                                                           for b, c in zip(base, cand)]), abs=1e-12)


def test_fewer_clicks_count_as_better():
    base = records(0)
    cand = [dict(r, **{"noc@85": r["noc@85"] - 1}) for r in base]
    row = by_key(paired(base, cand))["noc@85"]
    assert row.diff == pytest.approx(-1.0) and row.stderr == 0.0
    assert (row.better, row.worse) == (40, 0)
    same = by_key(paired(base, base))
    assert all(r.diff == 0.0 and r.better == r.worse == 0 for r in same.values())


def test_pair_values_of_plain_lists():
    rng = np.random.default_rng(3)
    base, cand = rng.random(25), rng.random(25)
    row = pair_values(base.tolist(), cand.tolist(), "jitter", "box mIoU, jittered boxes")
    d = cand - base
    assert (row.metric, row.n) == ("jitter", 25)
    assert row.diff == pytest.approx(d.mean(), abs=1e-12)
    assert row.stderr == pytest.approx(d.std(ddof=1) / 5, rel=1e-9)
    assert (row.better, row.worse) == (int((d > 0).sum()), int((d < 0).sum()))
    lower = pair_values(base.tolist(), cand.tolist(), higher_is_better=False)
    assert (lower.better, lower.worse) == (row.worse, row.better)
    for bad in (([], []), ([0.5, 0.5], [0.5])):
        with pytest.raises(ValueError, match="base and cand"):
            pair_values(*bad)


def test_reports_of_different_masks_are_refused():
    base = records(0)
    with pytest.raises(ValueError, match="40 records in the baseline, 39"):
        paired(base, base[:-1])
    swapped = [dict(r) for r in base]
    swapped[5]["mask_index"], swapped[6]["mask_index"] = 2, 1
    with pytest.raises(ValueError, match="record 5"):
        paired(base, swapped)
    with pytest.raises(ValueError, match=r"different numbers of clicks \(\[5\] vs \[6\]\)"):
        paired(base, records(1, clicks=6))
    old = [{k: v for k, v in r.items() if k != "mask_index"} for r in base]  # a report of an older version
    assert len(paired(old, base)) == 10
    with pytest.raises(ValueError, match="no masks"):
        paired([], [])


def test_reports_of_another_dataset_with_the_same_mask_ids_are_refused():
    base = [dict(r, area_fraction=0.01 * (i + 1)) for i, r in enumerate(records(0, n=8))]
    other = [dict(r, area_fraction=0.5 * r["area_fraction"]) for r in base]  # same ids, other masks
    with pytest.raises(ValueError, match="record 0 covers 0.01 of its image in the baseline but 0.005"):
        paired(base, other)
    with pytest.raises(ValueError, match="another dataset"):
        groups(base, other)
    assert len(paired(base, [dict(r) for r in base])) == 10


def test_box_against_its_baselines_in_one_report():
    recs = records(2)
    grabcut, fill = baseline_pairs(recs)
    d = np.array([r["box"] - r["grabcut_box"] for r in recs])
    assert grabcut.label == "box mIoU vs GrabCut" and grabcut.diff == pytest.approx(d.mean())
    assert fill.candidate == pytest.approx(np.mean([r["box"] for r in recs]))
    with pytest.raises(ValueError, match="no box baseline"):
        baseline_pairs([{"box": 0.5}])
    with pytest.raises(ValueError, match="no 'box'"):
        baseline_pairs([{"point_top1": 0.5}])
    # with the token-grid reference recorded: the best click against it
    gridded = [dict(r, token_grid=0.9) for r in recs]
    *_, grid = baseline_pairs(gridded)
    assert grid.metric == "token_grid" and grid.baseline == pytest.approx(0.9)
    assert grid.candidate == pytest.approx(np.mean([max(r["clicks_iou"]) for r in recs]))


def test_split_by_part_and_by_any_field():
    recs = records(0, n=7)
    assert split_records(recs, "part") == {"part": [0, 3, 6], "whole": [1, 2, 4, 5]}
    assert split_records(recs, "image_id") == {"0": [0, 1, 2, 3], "1": [4, 5, 6]}
    with pytest.raises(ValueError, match="--by name: record 0 has no 'name'"):
        split_records(recs, "name")
    assert groups(recs) == {"all": list(range(7))}
    assert groups(recs, recs, "part") == {"all": list(range(7)), "part": [0, 3, 6], "whole": [1, 2, 4, 5]}
    flipped = [dict(r, part=not r["part"]) for r in recs]
    with pytest.raises(ValueError, match="group their masks differently"):
        groups(recs, flipped, "part")
    with pytest.raises(ValueError, match="different masks"):
        groups(recs, recs[:3], "part")


def test_split_by_size_bins_of_the_area_fraction():
    assert [size_bin(f) for f in (0.0, 0.0099, 0.01, 0.03, 0.05, 0.1, 0.16, 0.9)] == [
        "<1%", "<1%", "1-2%", "2-4%", "4-8%", "8-16%", "≥16%", "≥16%"]
    recs = [{"area_fraction": f} for f in (0.2, 0.015, 0.05, 0.012, 0.005)]
    split = split_records(recs, "size")
    assert split == {"<1%": [4], "1-2%": [1, 3], "4-8%": [2], "≥16%": [0]}
    assert list(split) == ["<1%", "1-2%", "4-8%", "≥16%"]  # smallest first, not first seen
    with pytest.raises(ValueError, match="--by size: record 0 has no 'area_fraction'"):
        split_records([{"box": 0.5}], "size")


def test_metrics_follow_what_the_records_hold():
    keys = [m.key for m in metrics([{"box": 1.0, "noc@85": 3}])]
    assert keys == ["box", "noc@85"]
    assert [m.higher_is_better for m in metrics([{"box": 1.0, "noc@85": 3}])] == [True, False]


def test_load_report_checks_the_file(tmp_path):
    good = tmp_path / "r.json"
    good.write_text(json.dumps({"checkpoint": "x", "records": records(0, n=2)}))
    assert len(load_report(good)["records"]) == 2
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_report(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is not a JSON eval report"):
        load_report(bad)
    bad.write_text(json.dumps({"summary": {}}))
    with pytest.raises(ValueError, match="bad.json is not an eval report"):
        load_report(bad)
    bad.write_text(json.dumps({"records": records(0, n=2)[:1] + [{"box": 0.5, "clicks_iou": [0.5]}]}))
    with pytest.raises(ValueError, match=r"bad.json: record 1 is not a per-mask eval record \(missing \['point_top1'"):
        load_report(bad)


def test_format_pairs_prints_a_row_per_metric():
    text = format_pairs(paired(records(0), records(1)), "paired")
    lines = text.splitlines()
    assert lines[0].startswith("paired (40 masks") and len(lines) == 2 + 10
    assert "NoC@85" in text and "±" in text
