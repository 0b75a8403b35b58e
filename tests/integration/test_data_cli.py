"""``promptseg data synth`` and ``promptseg data stats`` end to end (small images, a few seconds)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from promptseg.data.cli import main, register
from promptseg.data.sa1b import SA1BDataset
from promptseg.data.stats import FIGURES, SUMMARY
from promptseg.data.synth import emoji_font_available

NO_FONT = "Noto Color Emoji font not installed: apt-get install fonts-noto-color-emoji"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


needs_matplotlib = pytest.mark.skipif(
    __import__("importlib").util.find_spec("matplotlib") is None, reason="matplotlib not installed (pip install promptseg[train])"
)


def check_figures(folder):
    for name in FIGURES:
        with Image.open(folder / name) as im:
            assert im.format == "PNG" and im.size[0] > 200
    return json.loads((folder / SUMMARY).read_text())


@needs_matplotlib
@pytest.mark.skipif(not emoji_font_available(), reason=NO_FONT)
def test_synth_then_stats(tmp_path, capsys):
    out = tmp_path / "synth"
    code, stdout, err = run(capsys, "synth", out, "--num", 4, "--seed", 3, "--size", 192, "--overlays", "--quiet")
    assert code == 0, err
    assert sorted(p.name for p in out.glob("sa_*")) == [f"sa_{i}.{e}" for i in range(4) for e in ("jpg", "json")]
    assert len(list((out / "overlays").glob("*.png"))) == 4
    meta = json.loads((out / "synth_meta.json").read_text())
    assert meta["seed"] == 3 and meta["num"] == 4 and meta["config"]["size"] == 192
    ds = SA1BDataset(out)
    assert len(ds) == 4 and ds[0]["image"].shape == (192, 192, 3)
    assert any(p >= 0 for i in range(4) for p in ds[i]["parents"])

    code, stdout, err = run(capsys, "data", "stats", out, "--format", "sa1b", "-o", tmp_path / "stats")
    assert code == 0, err
    summary = check_figures(tmp_path / "stats")
    assert summary["images"] == 4 and summary["masks"] == sum(len(ds[i]["masks"]) for i in range(4))
    assert summary["nested_masks"] > 0 and "per image" in stdout


@pytest.mark.skipif(not emoji_font_available(), reason=NO_FONT)
def test_list_and_split_options(tmp_path, capsys):
    code, stdout, _ = run(capsys, "synth", tmp_path, "--split", "heldout", "--list-categories")
    lines = stdout.splitlines()
    assert code == 0 and 30 < len(lines) < 300 and all(line.split("\t")[1] == "heldout" for line in lines)
    cats = tmp_path / "cats.txt"
    cats.write_text("U+1F600\n", encoding="utf-8")
    code, stdout, _ = run(capsys, "synth", tmp_path, "--categories-file", cats, "--list-categories")
    assert code == 0 and stdout.split("\t")[-1].strip() == "grinning face"


def test_no_emoji_and_errors(tmp_path, capsys):
    out = tmp_path / "shapes"
    code, _, err = run(capsys, "synth", out, "--num", 2, "--size", 96, "--no-emoji", "--quiet", "--workers", 1)
    assert code == 0, err
    item = SA1BDataset(out)[1]
    assert set(item["names"]) <= {"polygon", "blob", "stroke"} and len(item["masks"]) > 0

    code, _, err = run(capsys, "synth", out, "--num", "-1")
    assert code == 2 and "expected an integer ≥ 0" in err
    code, _, err = run(capsys, "synth", out, "--seed", "-5")
    assert code == 2 and "--seed: expected an integer ≥ 0" in err and err.count("\n") == 1
    code, _, err = run(capsys, "stats", tmp_path / "missing", "-o", tmp_path / "s")
    assert code == 2 and "missing" in err and err.count("\n") == 1
    code, _, err = run(capsys, "synth", out, "--no-emoji", "--categories-file", tmp_path / "c.txt")
    assert code == 2 and "--no-emoji" in err
    code, _, err = run(capsys)
    assert code == 2 and "synth" in err


def test_object_scale_and_crowd_options(tmp_path, capsys):
    small, large = tmp_path / "small", tmp_path / "large"
    common = ("--num", 3, "--size", 96, "--no-emoji", "--quiet", "--min-objects", 2, "--max-objects", 3, "--crowd-prob", 0)
    assert run(capsys, "synth", small, *common, "--object-scale", "0.1,0.15")[0] == 0
    assert run(capsys, "synth", large, *common, "--object-scale", "0.5,0.6")[0] == 0

    def mean_area(folder):
        data = SA1BDataset(folder)
        return np.mean([m.sum() for i in range(3) for m in data[i]["masks"]])  # no emoji: no parts

    assert mean_area(large) > 4 * mean_area(small)
    for bad, message in ((("--object-scale", "0.5"), "LO,HI"), (("--object-scale", "0.6,0.2"), "LO ≤ HI"),
                         (("--crowd-prob", "1.5"), "probability")):
        code, _, err = run(capsys, "synth", small, *bad)
        assert code == 2 and message in err


@needs_matplotlib
def test_stats_on_coco_and_folder(tmp_path, capsys):
    h, w = 24, 32
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(images / "a.png")
    labels = np.zeros((h, w), np.uint8)
    labels[2:10, 2:12] = 1
    labels[12:22, 4:30] = 2
    (tmp_path / "masks").mkdir()
    Image.fromarray(labels).save(tmp_path / "masks" / "a.png")
    code, _, err = run(capsys, "stats", tmp_path, "--format", "folder", "-o", tmp_path / "out_folder", "--quiet")
    assert code == 0, err
    assert check_figures(tmp_path / "out_folder")["masks"] == 2

    doc = {"images": [{"id": 1, "file_name": "a.png", "height": h, "width": w}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 50, "bbox": [0, 0, 10, 10],
                            "segmentation": [[0, 0, 10, 0, 0, 10]]}],
           "categories": [{"id": 1, "name": "thing"}]}
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    code, _, err = run(capsys, "stats", images, "--format", "coco", "--annotations", tmp_path / "ann.json",
                       "-o", tmp_path / "out_coco", "--quiet")
    assert code == 0, err
    summary = check_figures(tmp_path / "out_coco")
    assert summary["masks"] == 1 and summary["top_names"] == [["thing", 1]]


def test_stats_without_matplotlib(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails
    code, _, err = run(capsys, "stats", tmp_path, "-o", tmp_path / "out")
    assert code == 2 and "needs matplotlib" in err and "pip install promptseg[train]" in err
    assert not (tmp_path / "out").exists()


def test_register_into_a_parent_parser():
    parser = argparse.ArgumentParser(prog="promptseg")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args(["data", "synth", "out", "--num", "3", "--no-emoji"])
    assert args.command == "data" and args.data_command == "synth" and args.num == 3 and callable(args.func)
    assert args.func.__name__ == "cmd_synth"
    assert parser.parse_args(["data", "stats", "d", "-o", "o"]).func.__name__ == "cmd_stats"


def test_module_entry_point(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "promptseg.data.cli", "synth", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--categories-file" in proc.stdout


def test_stats_empty_mask_has_no_centre():
    """An empty mask (an all-zero PNG of a folder dataset, a COCO polygon that rasterises to nothing) was
    counted as a mask centred at (0, 0): a false hot spot in the top-left corner of the heat map."""
    from promptseg.data.stats import compute_stats, summarize

    masks = np.zeros((2, 40, 60), bool)
    masks[1, 30:38, 50:58] = True
    stats = compute_stats([{"image": np.zeros((40, 60, 3), np.uint8), "masks": masks, "names": None, "parents": None}])
    np.testing.assert_allclose(stats["centers"], [[0.9, 0.85]])
    summary = summarize(stats)
    assert summary["masks"] == 2 and summary["center_heatmap_8x8"][0][0] == 0 and summary["center_heatmap_8x8"][6][7] == 1
    np.testing.assert_allclose(stats["relative_size"], [0.0, np.sqrt(64 / 2400)])
