"""The ``promptseg`` command line, end to end on a tiny random SAM (fast on a CPU)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from promptseg import build_sam, hub, io, save_sam
from promptseg.cli import main
from promptseg.models.sam.config import ImageEncoderConfig, MaskDecoderConfig, PromptEncoderConfig, SamConfig
from promptseg.models.sam.weights import load_sam

TINY = SamConfig(
    image_encoder=ImageEncoderConfig(
        img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2, window_size=2,
        global_attn_indexes=(1,), out_chans=32,
    ),
    prompt_encoder=PromptEncoderConfig(embed_dim=32, mask_in_chans=16),
    mask_decoder=MaskDecoderConfig(transformer_dim=32, num_heads=2, mlp_dim=64, iou_head_hidden_dim=32),
)
W, H = 96, 72


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    model = build_sam(TINY)
    save_sam(model, root / "tiny.safetensors")
    torch.save(model.state_dict(), root / "tiny_official.pth")  # the official checkpoint layout
    yy, xx = np.mgrid[:H, :W]
    image = np.stack([(xx * 2) % 256, (yy * 3) % 256, ((xx + yy) * 5) % 256], -1).astype(np.uint8)
    Image.fromarray(image).save(root / "photo.png")
    return {"root": root, "ckpt": str(root / "tiny.safetensors"), "pth": str(root / "tiny_official.pth"),
            "image": str(root / "photo.png")}


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_png(path, size=None, mode=None):
    assert Path(path).is_file(), f"{path} was not written"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        if size is not None:
            assert im.size == size
        if mode is not None:
            assert im.mode == mode


# --------------------------------------------------------------------------------------------- segment
def test_segment_point(files, capsys, tmp_path):
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "segment", files["image"], "--checkpoint", files["ckpt"],
                            "--point", "40,30", "--point", "10,60,0", "-o", out)
    assert code == 0, err
    assert_png(out / "mask.png", (W, H), "L")
    assert_png(out / "overlay.png", (W, H), "RGB")
    assert not (out / "masks.json").exists()
    lines = [line for line in stdout.splitlines() if "score" in line]
    assert len(lines) == 1 and "mask.png" in lines[0] and "area" in lines[0]
    area = int(lines[0].split("area ")[1].split()[0])
    assert area == int(io.read_mask_png(out / "mask.png").sum())


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["--single"],
        ["--multimask", "--dtype", "bfloat16"],
        ["--encoder-dtype", "bfloat16"],
        ["--encoder-dtype", "bfloat16", "--transformer-dtype", "bfloat16"],
    ],
)
def test_segment_box_with_points(files, capsys, tmp_path, extra):
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "segment", files["image"], "--checkpoint", files["ckpt"],
                            "--box", "10,5,80,60", "--point", "40,30", "-o", out, *extra)
    assert code == 0, err
    assert_png(out / "mask.png", (W, H))
    assert_png(out / "overlay.png", (W, H))
    assert stdout.count("score") == 1


def test_segment_several_boxes_with_rle(files, capsys, tmp_path):
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "segment", files["image"], "--checkpoint", files["ckpt"],
                            "--box", "0,0,40,30", "--box", "30,20,96,72", "--box", "5,40,50,70", "--rle", "-o", out)
    assert code == 0, err
    assert stdout.count("score") == 3
    assert not (out / "mask.png").exists()
    assert_png(out / "overlay.png", (W, H))
    doc = json.loads((out / "masks.json").read_text())
    assert (doc["height"], doc["width"]) == (H, W)
    assert [m["file"] for m in doc["masks"]] == ["mask_0.png", "mask_1.png", "mask_2.png"]
    for i, record in enumerate(doc["masks"]):
        assert_png(out / record["file"], (W, H))
        png = io.read_mask_png(out / record["file"])
        decoded = io.rle_to_mask(record["segmentation"])
        np.testing.assert_array_equal(decoded, png)
        assert record["area"] == int(png.sum())
        assert record["bbox"] == io.mask_bbox(png)  # XYWH from the top-left corner
        assert isinstance(record["score"], float)
        assert record["prompt"]["box"] == [float(v) for v in [[0, 0, 40, 30], [30, 20, 96, 72], [5, 40, 50, 70]][i]]


def test_segment_again_into_the_same_folder_removes_its_stale_outputs(files, capsys, tmp_path):
    """A second run leaves no mask_K.png / masks.json of the first one behind, and nothing else is touched."""
    out = tmp_path / "out"
    code, _, err = run(capsys, "segment", files["image"], "--checkpoint", files["ckpt"],
                       "--box", "0,0,40,30", "--box", "30,20,96,72", "--rle", "-o", out)
    assert code == 0, err
    (out / "notes.txt").write_text("mine")
    (out / "mask_final.png").write_bytes(b"not ours")
    code, stdout, err = run(capsys, "segment", files["image"], "--checkpoint", files["ckpt"],
                            "--point", "40,30", "-o", out)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["mask.png", "mask_final.png", "notes.txt", "overlay.png"]
    assert stdout.count("removed stale") == 3


def test_segment_matches_the_predictor(files, capsys, tmp_path):
    """The CLI is a thin layer: its mask is the predictor's best mask for the same prompt."""
    from promptseg import SamPredictor

    out = tmp_path / "out"
    code, _, err = run(capsys, "segment", files["image"], "--checkpoint", files["ckpt"], "--point", "50,20", "-o", out)
    assert code == 0, err
    predictor = SamPredictor(load_sam(files["ckpt"]))
    predictor.set_image(io.read_image(files["image"]))
    masks, scores, _ = predictor.predict(np.array([[50.0, 20.0]]), np.array([1]), multimask_output=True)
    np.testing.assert_array_equal(io.read_mask_png(out / "mask.png"), masks[scores.argmax()])


# --------------------------------------------------------------------------------------------- convert / info
def test_convert_then_info(files, capsys, tmp_path):
    dst = tmp_path / "converted.safetensors"
    code, stdout, err = run(capsys, "convert", files["pth"], dst)
    assert code == 0, err
    assert "custom SAM" in stdout and "width 32" in stdout and "depth 2" in stdout
    original = torch.load(files["pth"], weights_only=True)
    converted = load_sam(dst).state_dict()
    assert set(converted) == set(original)
    for key, value in original.items():
        torch.testing.assert_close(converted[key], value, rtol=0, atol=0)

    code, stdout, err = run(capsys, "info", dst)
    assert code == 0, err
    count = sum(v.numel() for v in original.values())
    assert f"parameters: {count:,}" in stdout
    assert "config embedded in the file" in stdout and "float32" in stdout

    code, stdout, err = run(capsys, "info", files["pth"])
    assert code == 0, err
    assert f"parameters: {count:,}" in stdout and "inferred" in stdout

    code, stdout, err = run(capsys, "info", files["ckpt"], "--json")
    assert code == 0, err
    assert SamConfig.from_dict(json.loads(stdout)) == TINY


def test_convert_errors(files, capsys, tmp_path):
    code, _, err = run(capsys, "convert", files["pth"], tmp_path / "out.pth")
    assert code == 2 and ".safetensors" in err
    code, _, err = run(capsys, "convert", files["pth"], tmp_path / "out.safetensors", "--model-type", "vit_b")
    assert code == 2 and "vit_b" in err and "Traceback" not in err
    assert not (tmp_path / "out.safetensors").exists()
    code, _, err = run(capsys, "convert", tmp_path / "missing.pth", tmp_path / "out.safetensors")
    assert code == 2 and "missing.pth" in err


def test_a_checkpoint_with_an_invalid_embedded_config_is_a_user_error(files, capsys, tmp_path):
    """Valid JSON that is no SAM config: one line naming the file and status 2 from every command, no traceback."""
    from safetensors.torch import save_file

    from promptseg.checkpoint import CONFIG_KEY

    bad = tmp_path / "bad.safetensors"
    state = {k: v.contiguous() for k, v in load_sam(files["ckpt"]).state_dict().items()}
    save_file(state, str(bad), metadata={CONFIG_KEY: "[1, 2]"})
    for argv in (("convert", bad, tmp_path / "out.safetensors"),
                 ("average", bad, files["ckpt"], "-o", tmp_path / "out.safetensors"),
                 ("segment", files["image"], "--point", "5,5", "-o", tmp_path / "seg", "--checkpoint", bad)):
        code, _, err = run(capsys, *argv)
        assert code == 2 and "bad.safetensors" in err and "invalid embedded" in err, (argv[0], err)
    assert not (tmp_path / "out.safetensors").exists()
    torch.save({"model": state, "model_config": {"image_encoder": 5}}, tmp_path / "step_1.pt")  # training checkpoint
    for argv in (("info", tmp_path / "step_1.pt"), ("convert", tmp_path / "step_1.pt", tmp_path / "out.safetensors")):
        code, _, err = run(capsys, *argv)
        assert code == 2 and "step_1.pt" in err and "invalid embedded" in err, (argv[0], err)


def test_convert_to_a_finer_patch_size(files, capsys, tmp_path):
    dst = tmp_path / "p8.safetensors"
    code, stdout, err = run(capsys, "convert", files["ckpt"], dst, "--patch-size", "8")
    assert code == 0, err
    assert "config embedded in the file tiny.safetensors, resized to 8-px patches" in stdout
    assert "input 64×64, patch 8" in stdout
    assert load_sam(dst).config.image_encoder.patch_size == 8
    for bad in ("3", "0", "x"):
        code, _, err = run(capsys, "convert", files["ckpt"], tmp_path / f"bad{bad}.safetensors", "--patch-size", bad)
        assert code == 2 and "patch" in err and "Traceback" not in err
        assert not (tmp_path / f"bad{bad}.safetensors").exists()


def test_convert_inserting_encoder_blocks(files, capsys, tmp_path):
    dst = tmp_path / "deep.safetensors"
    code, stdout, err = run(capsys, "convert", files["ckpt"], dst, "--insert-blocks", "0,1")
    assert code == 0, err
    assert "2 identity-initialised encoder blocks inserted" in stdout
    enc = load_sam(dst).config.image_encoder
    assert enc.depth == 4 and enc.global_attn_indexes == (2,)
    for bad in ("2", "-2", "x", "0,,1"):
        out = tmp_path / f"bad{len(bad)}.safetensors"
        code, _, err = run(capsys, "convert", files["ckpt"], out, "--insert-blocks", bad)
        assert code == 2 and ("index" in err or "after" in err) and "Traceback" not in err, err
        assert not out.exists()


def test_average_writes_the_weighted_mean_and_checks_its_arguments(files, capsys, tmp_path):
    model = load_sam(files["ckpt"])
    with torch.no_grad():
        shifted = {k: v + 1.0 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save({"model": shifted, "model_config": model.config.to_dict()}, tmp_path / "step_00000002.pt")
    code, stdout, err = run(capsys, "info", tmp_path / "step_00000002.pt")
    assert code == 0 and "promptseg training checkpoint" in stdout and "embedded in the file" in stdout, err
    dst = tmp_path / "avg.safetensors"
    code, stdout, err = run(capsys, "average", files["ckpt"], tmp_path / "step_00000002.pt", "-o", dst,
                            "--weights", "3", "1")
    assert code == 0, err
    assert "averaged 2 checkpoints" in stdout and "0.7500" in stdout and "config from the sources" in stdout
    avg = load_sam(dst)
    assert avg.config == model.config
    for name, value in model.state_dict().items():
        expected = value + 0.25 if value.is_floating_point() else value
        assert torch.allclose(avg.state_dict()[name], expected, atol=1e-6), name
    for args, message in [
        ((files["ckpt"],), "at least two"),
        ((files["ckpt"], files["ckpt"], "--weights", "1"), "1 weights for 2"),
        ((files["ckpt"], files["ckpt"], "--weights", "1", "0"), "> 0"),
        ((files["ckpt"], tmp_path / "missing.pt"), "not found"),
    ]:
        out = tmp_path / "bad.safetensors"
        code, _, err = run(capsys, "average", *args, "-o", out)
        assert code == 2 and message in err and "Traceback" not in err, err
        assert not out.exists()
    code, _, err = run(capsys, "average", files["ckpt"], dst, "-o", dst)
    assert code == 2 and "one of the sources" in err
    # plain state dicts carry no architecture: --config-from names a file that does
    for name in ("a.pth", "b.pth"):
        torch.save(model.state_dict(), tmp_path / name)
    plain = [tmp_path / "a.pth", tmp_path / "b.pth"]
    code, stdout, err = run(capsys, "average", *plain, "-o", tmp_path / "c.safetensors", "--config-from", files["ckpt"])
    assert code == 0 and f"config of {files['ckpt']}" in stdout, err
    assert load_sam(tmp_path / "c.safetensors").config == model.config
    code, _, err = run(capsys, "average", *plain, "-o", tmp_path / "d.safetensors", "--config-from", plain[0])
    assert code == 2 and "embeds no architecture" in err and not (tmp_path / "d.safetensors").exists()
    code, _, err = run(capsys, "average", *plain, "-o", tmp_path / "d.safetensors", "--config-from", files["ckpt"],
                       "--model-type", "vit_b")
    assert code == 2 and "not allowed with" in err
    code, _, err = run(capsys, "average", files["ckpt"], dst, "-o", tmp_path / "avg.pth")
    assert code == 2 and ".safetensors" in err


# --------------------------------------------------------------------------------------------- eval
def test_eval_on_an_sa1b_folder_writes_a_report(files, capsys, tmp_path, disk_square_scenes):
    """The committed eval command of the model card, on two tiny SA-1B-layout images."""
    root = tmp_path / "data"
    disk_square_scenes(root, lambda disk, square, xx: (  # the window: a part of the square (Fig. 3's nesting)
        [disk, square, np.zeros_like(disk), square & (xx > 60) & (xx < 70)], [{}, {}, {}, {"parent": 2}]))
    report = tmp_path / "report.json"
    code, stdout, err = run(capsys, "eval", root, "--checkpoint", files["ckpt"], "--max-clicks", "3",
                            "--min-area-fraction", "0.01", "-o", report)
    assert code == 0, err
    assert "masks evaluated: 6" in stdout  # the empty masks are below the area floor
    for label in ("1-point mIoU (top-1)", "box mIoU", "filled-box baseline", "GrabCut baseline", "NoC@85",
                  "best over the clicks", "GT at the token grid", "box mask area / GT, median"):
        assert label in stdout
    doc = json.loads(report.read_text())
    assert doc["summary"]["masks"] == 6 and len(doc["records"]) == 6
    rec = doc["records"][1]  # the square: its filled box is itself
    assert rec["box_fill"] == 1.0 and len(rec["clicks_iou"]) == 3
    assert 0.7 < doc["records"][0]["box_fill"] < 0.85  # a disk fills π/4 of its box
    assert [(r["image_id"], r["mask_index"], r["part"]) for r in doc["records"]] == [
        ("0", 0, False), ("0", 1, False), ("0", 3, True), ("1", 0, False), ("1", 1, False), ("1", 3, True)]

    # the same masks again, compared mask by mask: every difference is 0
    code, stdout, err = run(capsys, "eval-compare", report, report, "--by", "part", "-o", tmp_path / "cmp.json")
    assert code == 0, err
    assert "paired (6 masks" in stdout and "part = part (2 masks" in stdout and "part = whole (4 masks" in stdout
    cmp = json.loads((tmp_path / "cmp.json").read_text())
    assert set(cmp["groups"]) == {"all", "whole", "part"}
    assert all(row["diff"] == 0.0 for rows in cmp["groups"].values() for row in rows)
    code, stdout, err = run(capsys, "eval-compare", report)  # one report: the box against its baselines
    assert code == 0, err
    assert "box mIoU vs GrabCut" in stdout and "box mIoU vs the filled box" in stdout
    assert "best click vs GT at the token grid" in stdout
    assert all(0.0 <= r["token_grid"] <= 1.0 for r in doc["records"]) and doc["records"][0]["token_grid"] > 0.5
    code, stdout, err = run(capsys, "eval-compare", report, "--by", "size")  # bins of the area fraction
    assert code == 0, err
    assert "size = " in stdout and "%: masks evaluated" in stdout
    assert "masks evaluated: 6" in stdout and "mIoU after 3 clicks" in stdout  # and its summary, as `eval` prints it
    other = tmp_path / "other.json"
    other.write_text(json.dumps(dict(doc, records=doc["records"][:5])))
    for argv, message in (((report, other), "different masks"), ((report, report, report), "one or two reports"),
                          ((tmp_path / "none.json",), "none.json"), ((report, "--by", "name"), "no 'name'")):
        code, _, err = run(capsys, "eval-compare", *argv)
        assert code == 2 and message in err and "Traceback" not in err
    code, _, err = run(capsys, "eval", tmp_path / "missing", "--checkpoint", files["ckpt"])
    assert code == 2 and "missing" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--max-masks", "0"], "--max-masks: expected an integer ≥ 1, got '0'"),
        (["--max-masks", "-1"], "--max-masks: expected an integer ≥ 1"),
        (["--max-clicks", "0"], "--max-clicks: expected an integer ≥ 1"),
        (["--min-area", "-1"], "--min-area: expected an integer ≥ 0"),
        (["--min-area-fraction", "nan"], "--min-area-fraction: expected a number ≥ 0, got 'nan'"),
        (["-o", "{tmp}"], "is a directory; give the path of a file"),
        (["-o", "{ckpt}/report.json"], "exists and is not a directory"),
    ],
)
def test_eval_user_errors_are_caught_before_the_evaluation(files, capsys, tmp_path, args, expected):
    args = [a.format(tmp=tmp_path, ckpt=files["ckpt"]) for a in args]
    code, stdout, err = run(capsys, "eval", tmp_path, "--checkpoint", files["ckpt"], *args)
    assert code == 2 and expected in err, err
    assert err.count("\n") == 1 and "Traceback" not in err and "masks evaluated" not in stdout
    report = tmp_path / "r.json"
    report.write_text(json.dumps({"records": [{"point_top1": 1, "point_oracle": 1, "box": 1, "clicks_iou": [1],
                                               "noc@85": 1, "noc@90": 1}]}))
    code, _, err = run(capsys, "eval-compare", report, "-o", tmp_path)
    assert code == 2 and "is a directory" in err


# --------------------------------------------------------------------------------------------- demo
def test_demo_writes_overlays(files, capsys, tmp_path):
    out = tmp_path / "demo"
    code, stdout, err = run(capsys, "demo", "-o", out, "--checkpoint", files["ckpt"], "--points-per-side", "4")
    assert code == 0, err
    photos = io.sample_images()
    assert len(photos) == 2
    for photo in photos:
        with Image.open(photo) as im:
            size = im.size
        for kind in ("point", "box", "auto"):
            path = out / f"{photo.stem}_{kind}.png"
            assert_png(path, size, "RGB")
            assert str(path) in stdout
    assert "automatic masks:" in stdout
    assert "6 overlays written" in stdout
    assert "photo" in err  # the progress bar


@pytest.mark.parametrize("flags,expected", [
    ([], {"pred_iou_thresh": 0.35, "stability_score_thresh": 0.35}),  # the bundled model: hub.DEFAULT_MODEL_AMG_FILTERS
    (["--stability-thresh", "0.5"], {"pred_iou_thresh": 0.35, "stability_score_thresh": 0.5}),
    (["--checkpoint", "CKPT"], {"pred_iou_thresh": 0.88, "stability_score_thresh": 0.95}),  # the reference's
])
def test_demo_automatic_mask_filters(files, capsys, tmp_path, monkeypatch, flags, expected):
    """0.35 suits the bundled model only; an official checkpoint given to the demo keeps the reference's filters."""
    import promptseg.amg

    seen = []

    class Recording(promptseg.amg.SamAutomaticMaskGenerator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.append({"pred_iou_thresh": self.pred_iou_thresh, "stability_score_thresh": self.stability_score_thresh})

    monkeypatch.setattr(promptseg.amg, "SamAutomaticMaskGenerator", Recording)
    flags = [files["ckpt"] if f == "CKPT" else f for f in flags]
    code, _, err = run(capsys, "demo", "-o", tmp_path / "demo", "--points-per-side", "2", *flags)
    assert code == 0, err
    assert seen == [expected]


# --------------------------------------------------------------------------------------------- user errors
def test_unusable_device(files, capsys, tmp_path):
    code, _, err = run(capsys, "segment", files["image"], "--point", "5,5", "--checkpoint", files["ckpt"],
                       "--device", "nonsense", "-o", tmp_path / "o")
    assert code == 2 and "--device nonsense cannot be used on this machine" in err and "Traceback" not in err


def test_no_default_model(files, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "default_model_path", lambda: None)
    code, stdout, err = run(capsys, "segment", files["image"], "--point", "5,5", "-o", tmp_path / "o")
    assert code == 2 and "no default model" in err and "--checkpoint" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    code, _, err = run(capsys, "demo", "-o", tmp_path / "d")
    assert code == 2 and "no default model" in err


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--point", "5;5"], "invalid point '5;5'"),
        (["--point", "5,5,7"], "LABEL must be 1"),
        (["--point", "a,b"], "invalid point 'a,b'"),
        (["--point", "500,5"], "--point 500,5 lies outside the image"),
        (["--point", "-5,5"], "expected one argument (a value starting with '-' must be attached: --point=X,Y)"),
        (["--point=-5,5"], "--point -5,5 lies outside the image"),
        (["--box", "-1,0,10,10"], "--box=X0,Y0,X1,Y1"),
        (["--box", "1,2,3"], "invalid box '1,2,3'"),
        (["--box", "50,50,10,10"], "X0 ≤ X1"),
        (["--box", "0,0,97,10"], "reaches outside the image"),
        (["--box", "0,0,10,10", "--box", "5,5,20,20", "--point", "3,3"], "at most one --box"),
        ([], "at least one --point"),
        (["--point", "5,5", "--single", "--multimask"], "not allowed with argument"),
        (["--point", "5,5", "--checkpoint", "{root}/absent.safetensors"], "checkpoint not found"),
        (["--point", "5,5", "--checkpoint", "{image}"], "cannot read checkpoint"),
        (["--point", "5,5", "--dtype", "float64"], "invalid choice"),
    ],
)
def test_segment_user_errors(files, capsys, tmp_path, args, expected):
    args = [a.format(root=files["root"], image=files["image"]) for a in args]
    checkpoint = [] if "--checkpoint" in args else ["--checkpoint", files["ckpt"]]
    code, stdout, err = run(capsys, "segment", files["image"], *checkpoint, *args, "-o", tmp_path / "o")
    assert code == 2
    assert expected in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "o" / "mask.png").exists()


def test_missing_or_bad_image(files, capsys, tmp_path):
    code, _, err = run(capsys, "segment", tmp_path / "nope.jpg", "--checkpoint", files["ckpt"], "--point", "1,1",
                       "-o", tmp_path / "o")
    assert code == 2 and "image file not found" in err and "nope.jpg" in err
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    code, _, err = run(capsys, "segment", bad, "--checkpoint", files["ckpt"], "--point", "1,1", "-o", tmp_path / "o")
    assert code == 2 and "bad.jpg" in err
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run(capsys, "segment", files["image"], "--checkpoint", files["ckpt"], "--point", "1,1",
                       "-o", blocker)
    assert code == 2 and "not a directory" in err


def test_info_missing_checkpoint_and_no_command(capsys, tmp_path):
    code, _, err = run(capsys, "info", tmp_path / "absent.pth")
    assert code == 2 and "checkpoint not found" in err and "absent.pth" in err
    assert main([]) == 2
    assert main(["--version"]) == 0
    assert "promptseg" in capsys.readouterr().out


def test_info_describes_a_seggpt_file(capsys, tmp_path):
    """``promptseg info`` reads SegGPT files too (it called their config an invalid SAM config)."""
    from promptseg.models.seggpt.build import build_seggpt
    from promptseg.models.seggpt.config import SegGptConfig
    from promptseg.models.seggpt.weights import save_seggpt

    config = SegGptConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=(64, 32),
                          merge_index=0, intermediate_hidden_state_indices=(0, 1), decoder_hidden_size=8)
    save_seggpt(build_seggpt(config), tmp_path / "tiny_seggpt.safetensors")
    code, out, err = run(capsys, "info", tmp_path / "tiny_seggpt.safetensors")
    assert code == 0, err
    assert "architecture: SegGPT" in out and "width 32, depth 2, 2 heads" in out and "input 64×32" in out
    code, out, _ = run(capsys, "info", "--json", tmp_path / "tiny_seggpt.safetensors")
    assert code == 0 and SegGptConfig.from_dict(json.loads(out)) == config


def _tiny_seggpt(path):
    from promptseg.models.seggpt.build import build_seggpt
    from promptseg.models.seggpt.config import SegGptConfig
    from promptseg.models.seggpt.weights import save_seggpt

    config = SegGptConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=(64, 32),
                          merge_index=0, intermediate_hidden_state_indices=(0, 1), decoder_hidden_size=8)
    save_seggpt(build_seggpt(config), path)
    return config


def test_info_reads_every_kind_of_file_whatever_the_suffix_case(files, capsys, tmp_path):
    """An upper-case .SAFETENSORS (read_state_dict reads it as safetensors) is described from its header
    like any other (it was called a training checkpoint; a SegGPT one an invalid SAM config), a SegGPT
    training checkpoint is described as SegGPT, and weights that are no SAM are named by their file."""
    from promptseg.checkpoint import read_state_dict

    shutil.copy(files["ckpt"], tmp_path / "TINY.SAFETENSORS")
    code, out, err = run(capsys, "info", tmp_path / "TINY.SAFETENSORS")
    assert code == 0 and "(promptseg safetensors," in out and "config embedded in the file" in out, err
    config = _tiny_seggpt(tmp_path / "SEG.SAFETENSORS")
    code, out, err = run(capsys, "info", tmp_path / "SEG.SAFETENSORS")
    assert code == 0 and "architecture: SegGPT" in out, err
    state, stored = read_state_dict(tmp_path / "SEG.SAFETENSORS")
    torch.save({"model": state, "model_config": stored}, tmp_path / "step_00000003.pt")  # a SegGPT training checkpoint
    code, out, err = run(capsys, "info", tmp_path / "step_00000003.pt")
    assert code == 0 and "(promptseg training checkpoint," in out and "architecture: SegGPT" in out, err
    code, out, _ = run(capsys, "info", "--json", tmp_path / "step_00000003.pt")
    assert code == 0 and json.loads(out) == config.to_dict() | {"image_size": [64, 32],
                                                               "intermediate_hidden_state_indices": [0, 1]}
    torch.save({"lin.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    code, _, err = run(capsys, "info", tmp_path / "other.pth")
    assert code == 2 and "other.pth" in err and "not a SAM checkpoint" in err


def test_average_config_from_a_seggpt_file_is_a_user_error(files, capsys, tmp_path):
    """--config-from a SegGPT file: one line and status 2 (it was an AttributeError traceback after averaging)."""
    _tiny_seggpt(tmp_path / "seg.safetensors")
    code, _, err = run(capsys, "average", files["pth"], files["pth"], "-o", tmp_path / "avg.safetensors",
                       "--config-from", tmp_path / "seg.safetensors")
    assert code == 2 and "--config-from" in err and "seg.safetensors" in err and "SegGPT" in err, err
    assert not (tmp_path / "avg.safetensors").exists()


def test_convert_help_states_the_token_factor_of_patch_size(capsys):
    """--patch-size N of a P-px model gives (P/N)² times the tokens (16 → 8: 4×), not N² (64×)."""
    code, out, _ = run(capsys, "convert", "--help")
    text = " ".join(out.split())
    assert code == 0 and "(P/N)² times as many image tokens" in text and "N²-times" not in text


# --------------------------------------------------------------------------------------------- console script
def _console_script():
    script = Path(sys.executable).parent / "promptseg"
    found = str(script) if script.is_file() else shutil.which("promptseg")
    if found is None:
        pytest.fail("the promptseg console script is not installed: pip install -e . (it is declared in pyproject.toml)")
    return found


def test_console_script_subprocess(files, tmp_path):
    script = _console_script()
    out = tmp_path / "out"
    done = subprocess.run(
        [script, "segment", files["image"], "--checkpoint", files["ckpt"], "--point", "40,30", "--rle", "-o", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "score" in done.stdout
    assert_png(out / "mask.png", (W, H))
    doc = json.loads((out / "masks.json").read_text())
    np.testing.assert_array_equal(io.rle_to_mask(doc["masks"][0]["segmentation"]), io.read_mask_png(out / "mask.png"))

    done = subprocess.run([script, "segment", files["image"], "--point", "40;30", "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "invalid point '40;30'" in done.stderr and "Traceback" not in done.stderr


def test_python_dash_m_promptseg_runs_the_command():
    """``python -m promptseg`` is the ``promptseg`` console script (where the script is not on PATH)."""
    from promptseg import __version__

    proc = subprocess.run([sys.executable, "-m", "promptseg", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and __version__ in proc.stdout + proc.stderr
