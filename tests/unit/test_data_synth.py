"""Synthetic scenes: SA-1B round trip, determinism, nesting and occlusion invariants, splits."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from promptseg.data import synth
from promptseg.data.sa1b import SA1BDataset
from promptseg.data.synth import SynthConfig, emoji_font_available, generate_dataset, generate_scene

NO_FONT = "Noto Color Emoji font not installed: apt-get install fonts-noto-color-emoji"
needs_font = pytest.mark.skipif(not emoji_font_available(), reason=NO_FONT)

SIZE, NUM, SEED = 256, 5, 7
CONFIG = SynthConfig(size=SIZE)
SHAPES = SynthConfig(size=128, emoji=False, max_objects=6)


def files(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Five 256-px emoji scenes on disk and as generated in memory."""
    if not emoji_font_available():
        pytest.skip(NO_FONT)
    out = tmp_path_factory.mktemp("synth")
    generate_dataset(out, NUM, seed=SEED, config=CONFIG)
    res = synth.load_resources(CONFIG)
    return out, [generate_scene(i, SEED, CONFIG, res) for i in range(NUM)]


def check_invariants(scene, min_area, part_min):
    masks, parents = scene.masks, scene.parents
    k = len(masks)
    assert masks.dtype == np.bool_ and masks.shape[1:] == scene.image.shape[:2]
    assert len(scene.names) == len(parents) == len(scene.kinds) == k
    top = [i for i in range(k) if parents[i] == -1]
    # occlusion: visible masks of distinct objects never overlap
    count = masks[top].sum(axis=0)
    assert count.max(initial=0) <= 1
    for i in range(k):
        area = int(masks[i].sum())
        if parents[i] == -1:
            assert area >= min_area
        else:
            p = parents[i]
            assert p < i, "parents come before their parts"
            assert area >= part_min
            assert not (masks[i] & ~masks[p]).any(), "a part leaks out of its parent"
            assert area < masks[p].sum()
            assert scene.kinds[i] == "part" and scene.names[i] == f"part of {scene.names[top_ancestor(parents, i)]}"
    for p in set(parents):
        siblings = [i for i in range(k) if parents[i] == p]
        if p >= 0 and len(siblings) > 1:
            assert masks[siblings].sum(axis=0).max() <= 1, "sibling parts overlap"


def top_ancestor(parents, i):
    while parents[i] != -1:
        i = parents[i]
    return i


@needs_font
def test_sa1b_round_trip(scenes):
    out, generated = scenes
    ds = SA1BDataset(out)
    assert len(ds) == NUM
    for i, scene in enumerate(generated):
        item = ds[i]
        assert item["image_id"] == str(i)
        assert item["image"].shape == (SIZE, SIZE, 3) and item["image"].dtype == np.uint8
        np.testing.assert_array_equal(item["masks"], scene.masks)
        assert item["names"] == scene.names
        assert item["parents"] == scene.parents
        # JPEG: close to the generated pixels, not equal
        assert np.abs(item["image"].astype(int) - scene.image.astype(int)).mean() < 6
    doc = json.loads((out / "sa_0.json").read_text())
    ann = doc["annotations"][0]
    assert set(ann) >= {"id", "segmentation", "bbox", "area", "predicted_iou", "stability_score", "point_coords",
                        "crop_box", "name", "parent"}
    assert doc["image"] == {"image_id": 0, "width": SIZE, "height": SIZE, "file_name": "sa_0.jpg"}
    x, y = ann["point_coords"][0]
    assert generated[0].masks[0][int(y), int(x)], "point_coords lies inside its mask"


@needs_font
def test_invariants_and_content(scenes):
    _, generated = scenes
    n_parts = n_emoji = n_shapes = 0
    for scene in generated:
        check_invariants(scene, CONFIG.mask_min_area, CONFIG.part_min_area)
        n_parts += sum(p >= 0 for p in scene.parents)
        n_emoji += scene.kinds.count("emoji")
        n_shapes += sum(k in ("polygon", "blob", "stroke") for k in scene.kinds)
    assert n_parts > 0 and n_emoji > 0 and n_shapes > 0


@needs_font
def test_same_seed_same_bytes(scenes, tmp_path):
    out, _ = scenes
    generate_dataset(tmp_path / "again", NUM, seed=SEED, config=CONFIG)
    assert files(tmp_path / "again") == files(out)
    other = generate_scene(0, SEED + 1, CONFIG)
    assert other.image.shape == (SIZE, SIZE, 3)
    assert not np.array_equal(other.image, generate_scene(0, SEED, CONFIG).image)


def test_workers_do_not_change_the_files(tmp_path):
    generate_dataset(tmp_path / "one", 3, seed=1, config=SHAPES, workers=1)
    generate_dataset(tmp_path / "two", 3, seed=1, config=SHAPES, workers=2)
    assert files(tmp_path / "one") == files(tmp_path / "two")


def test_shapes_only_without_font(tmp_path, monkeypatch):
    monkeypatch.setattr(synth, "_FONT_CANDIDATES", (tmp_path / "missing.ttf",))
    monkeypatch.delenv("PROMPTSEG_EMOJI_FONT", raising=False)
    with pytest.raises(synth.EmojiFontNotFoundError, match="apt-get install fonts-noto-color-emoji"):
        generate_dataset(tmp_path / "x", 1, config=SynthConfig(size=64))
    scene = generate_scene(3, 0, SHAPES)
    check_invariants(scene, SHAPES.mask_min_area, SHAPES.part_min_area)
    assert set(scene.kinds) <= {"polygon", "blob", "stroke"}
    assert all(p == -1 for p in scene.parents)


def test_heavy_occlusion_threshold():
    """With max_occlusion 0 an object must be fully visible, so nothing kept is hidden at all."""
    cfg = replace(SHAPES, max_objects=10, min_objects=10, max_occlusion=0.0, object_scale=(0.3, 0.6))
    scene = generate_scene(0, 5, cfg)
    check_invariants(scene, cfg.mask_min_area, cfg.part_min_area)
    assert 0 < len(scene.masks) < 10 + cfg.crowd_count[1]


@needs_font
def test_heldout_split_by_category(tmp_path):
    base = SynthConfig(size=128)
    train, font = synth.emoji_pool(replace(base, split="train"))
    held, _ = synth.emoji_pool(replace(base, split="heldout"))
    everything = synth.emoji_codepoints(font)
    assert set(train).isdisjoint(held) and set(train) | set(held) == set(everything)
    assert 0.03 < len(held) / len(everything) < 0.2  # one bucket of ten
    assert all(synth.category_bucket(synth.emoji_name(cp)) == 0 for cp in held)
    cfg = replace(base, split="heldout", kind_weights={"emoji": 1.0}, crowd_prob=0.0, parts=False)
    names = {synth.emoji_name(cp) for cp in held}
    scene = generate_scene(0, 0, cfg)
    assert scene.names and set(scene.names) <= names

    listing = tmp_path / "cats.txt"
    listing.write_text("# a comment\n\U0001F600\nU+1F436\nRed Apple\n", encoding="utf-8")
    cps = synth.read_categories_file(listing, everything)
    assert cps == (0x1F600, 0x1F436, 0x1F34E)
    scene = generate_scene(1, 0, replace(cfg, split="all", categories=cps))
    assert scene.names and set(scene.names) <= {"grinning face", "dog face", "red apple"}
    listing.write_text("not an emoji name\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"cats.txt, line 1"):
        synth.read_categories_file(listing, everything)


@needs_font
def test_emoji_enumeration_and_parts():
    font = synth.emoji_pool(SynthConfig())[1]
    cps = synth.emoji_codepoints(font)
    assert len(cps) > 1000 and 0x1F600 in cps
    assert 0x200D not in cps and 0x1F1E6 not in cps and 0x1F3FB not in cps  # joiner, flag letter, skin tone
    rgba, parts = synth.emoji_sprite(0x1F600, font)  # grinning face: eyes and mouth
    assert rgba.shape[2] == 4 and len(parts) >= 3
    opaque = rgba[..., 3] >= 128
    for mask, parent in parts:
        assert not (mask & ~opaque).any()
        if parent >= 0:
            assert not (mask & ~parts[parent][0]).any()
    # whole / part / subpart: some emoji have parts inside parts (alarm clock, yin yang, …)
    assert any(parent >= 0 for cp in cps[:60] for _, parent in synth.emoji_sprite(cp, font)[1])


# ---------------------------------------------------------------------------------------------------
# The "synth" training dataset: the same scenes, generated on the fly


@needs_font
def test_on_the_fly_synth_dataset_equals_the_written_set_read_back(tmp_path):
    """Item i of ``{"type": "synth", ...}`` is scene ``start + i`` exactly as ``data synth`` writes it and
    the ``sa1b`` reader reads it (same JPEG bytes, same masks)."""
    import pickle

    from promptseg.train.datasets import build_dataset

    options = {"num_images": 3, "seed": 4, "start": 20, "size": 96, "split": "train", "config": {"max_objects": 6}}
    live = build_dataset("synth", options)
    generate_dataset(tmp_path, 3, seed=4, start=20, config=SynthConfig(size=96, split="train", max_objects=6))
    written = SA1BDataset(tmp_path)
    assert len(live) == 3
    for i in range(3):
        got, ref = live[i], written[i]
        assert np.array_equal(got["image"], ref["image"])
        assert np.array_equal(got["masks"], np.asarray(ref["masks"]))
    clone = pickle.loads(pickle.dumps(live))  # what a spawned DataLoader worker receives: no resources
    assert clone._resources is None and np.array_equal(clone[1]["image"], live[1]["image"])


def test_synth_dataset_options_are_checked_when_the_config_is_read():
    from promptseg.train.datasets import build_dataset

    with pytest.raises(ValueError, match="bogus"):
        build_dataset("synth", {"num_images": 2, "config": {"bogus": 1}})
    with pytest.raises(ValueError, match="size"):
        build_dataset("synth", {"num_images": 2, "config": {"size": 64}})
    with pytest.raises(ValueError, match="num_images"):
        build_dataset("synth", {"num_images": 0})
    with pytest.raises(ValueError, match="split"):
        build_dataset("synth", {"num_images": 2, "split": "validation"})
    with pytest.raises(ValueError, match="unexpected keyword|got an unexpected"):
        build_dataset("synth", {"num_images": 2, "root": "x"})


@needs_font
def test_synth_dataset_index_out_of_range():
    from promptseg.train.datasets import build_dataset

    ds = build_dataset("synth", {"num_images": 1, "size": 64})
    with pytest.raises(IndexError):
        ds[1]


def test_config_rejects_options_that_would_fail_or_mislabel_later():
    """Bad knobs are named when the config is validated, not at the first scene (or never: an unknown kind was
    drawn as a stroke and labelled with the unknown name)."""
    for bad, message in (({"kind_weights": {"circle": 1.0}}, "kind_weights"), ({"kind_weights": {"blob": -1.0}}, "kind_weights"),
                         ({"kind_weights": {"blob": "x"}}, "kind_weights"),
                         ({"emoji": False, "kind_weights": {"emoji": 1.0}}, "kind_weights"),
                         ({"crowd_count": (10, 5)}, "crowd_count"), ({"jpeg_quality": (95, 75)}, "jpeg_quality"),
                         ({"jpeg_quality": (0, 90)}, "jpeg_quality"), ({"crowd_prob": 1.5}, "crowd_prob"),
                         ({"crowd_scale": (0.0, 0.0)}, "crowd_scale"), ({"num_buckets": 0}, "num_buckets"),
                         ({"heldout_buckets": (12,)}, "heldout_buckets")):
        with pytest.raises(ValueError, match=message):
            replace(SHAPES, **bad).validate()
    SynthConfig().validate()
    replace(SHAPES, kind_weights={"emoji": 1.0, "blob": 0.5}).validate()


def test_photo_smaller_than_a_crop_is_used_whole():
    """A photo under 8 px on a side (e.g. from --photos) made the crop larger than the photo: 'high <= 0'."""
    tiny = np.random.default_rng(0).integers(0, 255, (6, 40, 3), dtype=np.uint8)
    for seed in range(5):
        crop = synth._photo_crop(32, 48, np.random.default_rng(seed), [tiny], (0.35, 1.0))
        assert crop.shape == (32, 48, 3) and crop.dtype == np.float32


def test_generate_dataset_leaves_the_callers_opencv_threads(tmp_path):
    """In-process generation set OpenCV to one thread for the rest of the caller's process and kept the
    photos referenced in a module global."""
    cv2 = pytest.importorskip("cv2")
    before = cv2.getNumThreads()
    cv2.setNumThreads(3)
    try:
        generate_dataset(tmp_path, 1, config=SHAPES)
        assert cv2.getNumThreads() == 3
        assert not synth._WORKER
    finally:
        cv2.setNumThreads(before)


def test_generate_dataset_without_opencv_names_the_extra_and_writes_nothing(tmp_path, monkeypatch):
    """Without OpenCV, generation wrote synth_meta.json and then failed with a bare ModuleNotFoundError
    (docs/data.md: a missing dependency is reported with the command to install it)."""
    import sys

    from promptseg.io import MissingDependencyError

    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(MissingDependencyError, match=r"^scene generation needs OpenCV, .*promptseg\[cv\]$"):
        generate_dataset(tmp_path / "out", 1, config=SHAPES)
    assert not (tmp_path / "out").exists()


def test_an_interrupted_run_leaves_no_image_without_its_annotations(tmp_path, monkeypatch):
    """Ctrl-C (or a full disk) between a scene's JPEG and its JSON left sa_<i>.jpg alone, and SA1BDataset
    then refused the whole folder ("annotation file not found"); the scenes written before stay readable."""
    from promptseg.data import sa1b

    write = sa1b.write_sa1b_json
    calls = []

    def interrupted(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return write(path, *args, **kwargs)

    monkeypatch.setattr(sa1b, "write_sa1b_json", interrupted)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(tmp_path, 3, seed=0, config=SHAPES)
    assert sorted(p.name for p in tmp_path.glob("sa_*")) == ["sa_0.jpg", "sa_0.json"]
    assert len(SA1BDataset(tmp_path)) == 1
    monkeypatch.setattr(sa1b, "write_sa1b_json", write)
    generate_dataset(tmp_path, 3, seed=0, config=SHAPES)  # the same run again completes the folder
    monkeypatch.setattr(sa1b, "write_sa1b_json", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):  # rewriting a complete scene keeps its image
        generate_dataset(tmp_path, 1, seed=0, config=SHAPES, start=1)
    assert len(SA1BDataset(tmp_path)) == 3


def test_a_folder_is_extended_only_by_runs_of_the_same_settings(tmp_path):
    """Runs of one seed and config may fill other index ranges of a folder (synth_meta.json lists them all);
    another seed or config was mixed in silently, the meta file then describing only the last run."""
    from promptseg.data.sa1b import read_json

    generate_dataset(tmp_path, 2, seed=3, config=SHAPES)
    generate_dataset(tmp_path, 1, seed=3, config=SHAPES, start=5)
    generate_dataset(tmp_path, 2, seed=3, config=SHAPES, start=1)  # overlapping: the same scenes again
    assert read_json(tmp_path / "synth_meta.json")["ranges"] == [[0, 3], [5, 6]]
    for other in ({"seed": 9}, {"config": replace(SHAPES, crowd_prob=0.0)}):
        with pytest.raises(ValueError, match="another synth run"):
            generate_dataset(tmp_path, 1, **{"seed": 3, "config": SHAPES, "start": 7, **other})
    assert not (tmp_path / "sa_7.json").exists()
