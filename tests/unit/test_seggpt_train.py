"""SegGPT training pieces: in-context pair sampling, augmentation, model inputs, config, optimiser groups."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from promptseg.data import make_item
from promptseg.incontext.predictor import normalize
from promptseg.train.seggpt.config import SegGptTrainConfig
from promptseg.train.seggpt.pairs import (
    PALETTE_PAD,
    PairConfig,
    PairDataset,
    augment_view,
    block_mask,
    collate_pairs,
    paint_labels,
    random_resized_crop_box,
)
from promptseg.train.seggpt.trainer import SegGptTrainingModel, build_optimizer_for, colour_miou, seggpt_layer_id

REPO = Path(__file__).resolve().parents[2]
#: Category → the hue of its objects; every object gets its own brightness, so the image colour at a pixel
#: tells both the category and the instance.
HUES = {"red thing": (1.0, 0.1, 0.1), "green thing": (0.1, 1.0, 0.1), "blue thing": (0.1, 0.1, 1.0)}
BACKGROUND = (128, 128, 128)


class ToyScenes:
    """Scenes of axis-aligned rectangles named by category (plus a part and an unnamed-category shape)."""

    def __init__(self, num: int = 8, size: int = 48, seed: int = 0) -> None:
        self.items = []
        names = sorted(HUES)
        for i in range(num):
            rng = np.random.default_rng([seed, i])
            image = np.empty((size, size, 3), np.uint8)
            image[:] = BACKGROUND
            masks, labels, parents = [], [], []
            cats = [names[i % 3], names[(i + 1) % 3]] if i % 4 else [names[i % 3]] * 2  # some scenes: 2 of one kind
            for j, cat in enumerate(cats + ["polygon"]):
                y0, x0 = (j // 2) * size // 2 + 2, (j % 2) * size // 2 + 2
                h, w = int(rng.integers(12, size // 2 - 3)), int(rng.integers(12, size // 2 - 3))
                mask = np.zeros((size, size), bool)
                mask[y0 : y0 + h, x0 : x0 + w] = True
                shade = 0.55 + 0.15 * j
                image[mask] = np.round(np.array(HUES.get(cat, (0.3, 0.3, 0.3))) * 255 * shade).astype(np.uint8)
                masks.append(mask)
                labels.append(cat)
                parents.append(-1)
            part = np.zeros((size, size), bool)  # a part of the first object: never a category
            part[2:8, 2:8] = True
            masks.append(part)
            labels.append(f"part of {cats[0]}")
            parents.append(0)
            self.items.append(make_item(image, np.stack(masks), f"toy{i}", labels, parents))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]


NO_JITTER = dict(jitter_prob=0.0, hflip_prob=0.5)


def pairs(**changes) -> PairDataset:
    return PairDataset(ToyScenes(), PairConfig(**{**NO_JITTER, **changes}), (32, 32), 8, seed=0)


def interior(labels: np.ndarray, radius: int = 2) -> np.ndarray:
    """Pixels whose label is constant over a (2·radius+1)² window (away from every boundary)."""
    h, w = labels.shape
    pad = np.pad(labels, radius, mode="edge")
    same = np.ones((h, w), bool)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            same &= pad[dy : dy + h, dx : dx + w] == labels
    return same


def hue_of(rgb: np.ndarray) -> str:
    """The category of a pixel's colour: its dominant channel (grey: none)."""
    if np.ptp(rgb.astype(int)) < 30:
        return "grey"
    return ("red thing", "green thing", "blue thing")[int(np.argmax(rgb))]


# ================================================================================================ pairs
def test_semantic_pairs_share_the_category_and_differ_in_scene():
    data = pairs(semantic_prob=1.0, same_image_prob=0.0, max_categories=2)
    seen_two = False
    for index in range(len(data)):
        for epoch in range(3):
            s = data.sample(index, np.random.default_rng([epoch, index]))
            assert s.embedding_type == "semantic" and not s.mixed
            (p,), (t,) = s.prompt_scenes, s.target_scenes
            assert t == index and p != t  # another scene…
            anchor = s.keys[0]
            assert anchor in data.index.categories[p] and anchor in data.index.categories[t]  # …with the category
            assert all(k in data.index.categories[p] for k in s.keys)  # every colour is a category of the prompt
            assert all(k in HUES for k in s.keys)  # never "polygon" nor a part
            seen_two |= len(s.keys) == 2
            # every confidently labelled pixel shows its category, in both images
            for image, labels in ((s.prompt_image, s.prompt_labels), (s.target_image, s.target_labels)):
                inside = interior(labels, 1)
                for k, key in enumerate(s.keys, start=1):
                    ys, xs = np.nonzero(inside & (labels == k))
                    assert all(hue_of(image[y, x]) == key for y, x in zip(ys, xs))
                ys, xs = np.nonzero(inside & (labels == 0))
                assert all(hue_of(image[y, x]) not in s.keys for y, x in zip(ys, xs))
            assert s.prompt_labels.any()  # the prompt shows what to segment
    assert seen_two  # several categories in one pair, each its own colour


def test_semantic_categories_obey_the_mask_area_limits():
    """Like instances, a named mask that is empty or covers more than max_mask_area of its scene is never a
    category: not in the scene index, never coloured."""
    size = 32
    image = np.full((size, size, 3), 100, np.uint8)
    small = np.zeros((size, size), bool)
    small[4:12, 4:12] = True
    huge, empty = ~small, np.zeros((size, size), bool)
    scenes = [make_item(image, np.stack([huge, small, empty]), f"s{i}", ["sky", "cat", "ghost"], [-1, -1, -1])
              for i in range(3)]
    data = PairDataset(scenes, PairConfig(semantic_prob=1.0, min_mask_area=0, max_mask_area=0.9, jitter_prob=0.0),
                       (32, 32), 8)
    assert data.index.categories == [("cat",)] * 3
    for i in range(8):
        s = data.sample(i % 3, np.random.default_rng(i))
        assert s.embedding_type == "semantic" and s.keys == ["cat"] and s.prompt_labels.any()


def test_scenes_whose_masks_are_not_the_image_size_are_refused():
    """A mask of another H×W with the same pixel count (here transposed) was reshaped to the image's size
    and trained on as scrambled labels; now the scene is named."""
    image = np.zeros((48, 64, 3), np.uint8)
    mask = np.zeros((48, 64), bool)
    mask[5:20, 5:30] = True
    data = PairDataset([{"image": image, "masks": mask.T[None].copy()}] * 2, PairConfig(semantic_prob=0.0), (32, 32), 8)
    with pytest.raises(ValueError, match=r"scene 0: 'masks' must be K×H×W with the image's H×W \(48, 64\)"):
        data.sample(0, np.random.default_rng(0))
    grey = PairDataset([{"image": image[..., 0], "masks": mask[None]}] * 2, PairConfig(semantic_prob=0.0), (32, 32), 8)
    with pytest.raises(ValueError, match="scene 0: 'image' must be H×W×3 uint8"):
        grey.sample(0, np.random.default_rng(0))
    ok = PairDataset([{"image": image, "masks": mask[None]}] * 2, PairConfig(semantic_prob=0.0), (32, 32), 8)
    assert ok.sample(0, np.random.default_rng(0)).target_labels.any()


def test_scene_index_from_sa1b_json_agrees_with_the_reader(tmp_path):
    """The JSON-only index read parents as the reader does: an annotation without an id is known by its
    position in the file (before the min_area filter), and a mask that names itself as parent is top-level."""
    from promptseg.data.sa1b import SA1BDataset, write_sa1b_json
    from PIL import Image

    from promptseg.train.seggpt.pairs import SceneIndex, mask_areas, mask_categories

    size = 32
    masks = np.zeros((4, size, size), bool)
    masks[0, :2, :2] = True  # 4 px: dropped by min_area
    masks[1, 4:10, 4:10] = True  # "dog": a part of annotation 3 (by position, no ids)
    masks[2, 22:30, 22:30] = True  # "owl": its own parent (top-level for the reader)
    masks[3, 2:20, 2:20] = True  # "cat"
    extra = [{"name": "ant", "parent": -1}, {"name": "dog", "parent": 3}, {"name": "owl", "parent": 2},
             {"name": "cat", "parent": -1}]
    Image.fromarray(np.full((size, size, 3), 90, np.uint8)).save(tmp_path / "sa_1.jpg")
    path = write_sa1b_json(tmp_path / "sa_1.json", 1, "sa_1.jpg", list(masks), extra, ids=[0, 1, 2, 3])
    doc = json.loads(path.read_text())
    for ann in doc["annotations"]:
        del ann["id"]
    path.write_text(json.dumps(doc))
    data = SA1BDataset(tmp_path, min_area=10)
    config = PairConfig(min_mask_area=0)
    item = data[0]
    loaded = mask_categories(item["names"], item["parents"], mask_areas(item["masks"]), config, size * size)
    assert sorted(loaded) == ["cat", "owl"]
    assert SceneIndex.build(data, config).categories == [("cat", "owl")]


def test_semantic_pairs_with_the_same_scene_and_the_type_mix():
    data = pairs(semantic_prob=1.0, same_image_prob=1.0)
    s = data.sample(3, np.random.default_rng(0))
    assert s.prompt_scenes == s.target_scenes == [3] and s.embedding_type == "semantic"
    kinds = {pairs(semantic_prob=0.5).sample(i, np.random.default_rng(i)).embedding_type for i in range(8)}
    assert kinds == {"semantic", "instance"}


def test_instance_pairs_show_the_same_objects_in_two_views():
    data = pairs(semantic_prob=0.0, max_instances=3)
    for index in range(len(data)):
        s = data.sample(index, np.random.default_rng(index))
        assert s.embedding_type == "instance" and s.prompt_scenes == s.target_scenes == [index]
        assert all(k.startswith(f"{index}:") for k in s.keys) and len(set(s.keys)) == len(s.keys) <= 3
        masks = data.scenes[index]["masks"]
        for k, key in enumerate(s.keys, start=1):
            obj = int(key.split(":")[1])
            region = masks[obj] if obj == len(masks) - 1 else masks[obj] & ~masks[-1]
            colour = data.scenes[index]["image"][region][0]  # the object's own colour (a part: its object's)
            for image, labels in ((s.prompt_image, s.prompt_labels), (s.target_image, s.target_labels)):
                ys, xs = np.nonzero(interior(labels, 2) & (labels == k))  # beyond the bicubic kernel's reach
                assert all(np.abs(image[y, x].astype(int) - colour).max() <= 3 for y, x in zip(ys, xs))
        assert s.prompt_labels.any() and s.target_labels.any()


@pytest.mark.parametrize("semantic_prob", [0.0, 1.0])
def test_target_needs_prompt_colours_only_what_the_prompt_shows(semantic_prob):
    free = pairs(semantic_prob=semantic_prob, crop_scale=(0.1, 0.3), max_instances=4)
    tied = pairs(semantic_prob=semantic_prob, crop_scale=(0.1, 0.3), max_instances=4, target_needs_prompt=True)
    unseen = 0
    for index in range(len(free)):
        a, b = free.sample(index, np.random.default_rng(index)), tied.sample(index, np.random.default_rng(index))
        unseen += bool(set(np.unique(a.target_labels)) - set(np.unique(a.prompt_labels)))
        assert set(np.unique(b.target_labels)) <= set(np.unique(b.prompt_labels))
        assert (a.prompt_labels == b.prompt_labels).all()  # only the target's colouring changes
    assert unseen > 0  # small independent crops do miss objects: the option matters here


def test_target_needs_prompt_holds_for_mix_context():
    """Stitched instance tiles: the shared crop (or the downscaling of the canvas) can drop a label from the
    prompt canvas only, which left it coloured in the target although the option promises otherwise."""
    changes = dict(semantic_prob=0.0, mix_prob=1.0, mix_grid=(2, 2), mix_scale=(0.5, 1.0), crop_scale=(0.2, 0.5))
    free, tied = pairs(**changes), pairs(target_needs_prompt=True, **changes)
    unseen = 0
    for i in range(24):
        a, b = free.sample(i % 8, np.random.default_rng(i)), tied.sample(i % 8, np.random.default_rng(i))
        assert a.mixed and b.mixed
        unseen += bool(set(np.unique(a.target_labels)) - set(np.unique(a.prompt_labels)))
        assert set(np.unique(b.target_labels)) <= set(np.unique(b.prompt_labels))
    assert unseen > 0  # the option matters here


def test_same_view_repeats_the_prompt_view_for_one_scene():
    data = pairs(semantic_prob=0.5, same_view_prob=1.0, crop_scale=(0.2, 0.6))
    for index in range(len(data)):
        s = data.sample(index, np.random.default_rng(index))
        if s.prompt_scenes == s.target_scenes:
            assert (s.prompt_image == s.target_image).all() and (s.prompt_labels == s.target_labels).all()
        else:  # a semantic pair across scenes: two scenes, two views
            assert s.embedding_type == "semantic"
    off = pairs(semantic_prob=0.0, crop_scale=(0.2, 0.6))
    assert any((off.sample(i, np.random.default_rng(i)).prompt_image != off.sample(i, np.random.default_rng(i)).target_image).any()
               for i in range(len(off)))


def test_fixed_palette_prob_colours_with_the_inference_palette():
    from promptseg.incontext.palette import default_palette

    fixed = pairs(semantic_prob=0.5, fixed_palette_prob=1.0)
    for index in range(len(fixed)):
        s = fixed.sample(index, np.random.default_rng(index))
        assert (s.palette == default_palette(len(s.keys))).all()
    mixed = pairs(semantic_prob=0.5, fixed_palette_prob=0.5)
    kinds = {bool((s.palette == default_palette(len(s.keys))).all())
             for s in (mixed.sample(i, np.random.default_rng(i)) for i in range(len(mixed)))}
    assert kinds == {True, False}
    with pytest.raises(ValueError, match="fixed_palette_prob"):
        PairConfig(fixed_palette_prob=1.5)


def test_random_colour_mapping_is_shared_by_prompt_and_target():
    data = pairs()
    palettes = []
    for index in range(len(data)):
        s = data.sample(index, np.random.default_rng(index))
        assert s.palette.shape == (len(s.keys), 3) and s.palette.dtype == np.uint8
        assert not (s.palette == 0).all(axis=1).any() and len(np.unique(s.palette, axis=0)) == len(s.palette)
        table = np.vstack([np.zeros((1, 3), np.uint8), s.palette])
        assert np.array_equal(s.prompt_mask, table[s.prompt_labels])
        assert np.array_equal(s.target_mask, table[s.target_labels])
        palettes.append(s.palette[0].tolist())
    assert len({tuple(p) for p in palettes}) == len(palettes)  # random, not a fixed palette


def test_samples_are_a_function_of_their_key():
    data = pairs(mix_prob=0.5, jitter_prob=0.8)
    a, b, c = data[(0, 5)], data[(0, 5)], data[(1, 5)]
    for key in ("pixel_values", "prompt_masks", "labels", "bool_masked_pos"):
        assert np.array_equal(a[key], b[key])
    assert not np.array_equal(a["pixel_values"], c["pixel_values"])


def test_mix_context_stitches_pairs_with_one_colour_mapping():
    data = pairs(mix_prob=1.0, mix_grid=(1, 2), semantic_prob=1.0, same_image_prob=0.0, mix_scale=(1.0, 1.0))
    s = data.sample(1, np.random.default_rng(0))
    assert s.mixed and len(s.prompt_scenes) == len(s.target_scenes) == 2
    assert all(s.keys[0] in data.index.categories[t] for t in s.target_scenes)  # one category across tiles
    assert s.prompt_image.shape == (32, 32, 3) and s.prompt_labels.max() <= len(s.keys) == len(s.palette)
    # full-canvas crop: the left half is tile 0, the right half tile 1, at half the width
    left, right = s.target_labels[:, :16], s.target_labels[:, 16:]
    assert (left == 1).any() or (right == 1).any()
    inst = pairs(mix_prob=1.0, mix_grid=(2, 2), semantic_prob=0.0).sample(2, np.random.default_rng(1))
    assert inst.mixed and len(inst.prompt_scenes) == 4 and inst.embedding_type == "instance"
    assert len(inst.keys) == len(set(inst.keys)) == len(inst.palette)


# ================================================================================================ augmentation
def test_augmentation_keeps_image_and_mask_aligned():
    rng = np.random.default_rng(0)
    labels = np.zeros((64, 80), np.int32)
    for k in range(1, 6):
        y, x = rng.integers(0, 48), rng.integers(0, 64)
        labels[y : y + 16, x : x + 18] = k
    colours = np.array([[0, 0, 0], [250, 20, 20], [20, 250, 20], [20, 20, 250], [250, 250, 20], [20, 250, 250]], np.uint8)
    image = colours[labels]
    cfg = PairConfig(jitter_prob=0.0, hflip_prob=0.5, crop_scale=(0.2, 1.0))
    for _ in range(20):
        img, lab = augment_view(image, labels, (40, 48), cfg, rng)
        assert img.shape == (40, 48, 3) and lab.shape == (40, 48) and lab.dtype == labels.dtype
        assert set(np.unique(lab)) <= set(range(6))  # nearest neighbour: no new labels
        inside = interior(lab, 2)
        assert np.abs(img[inside].astype(int) - colours[lab[inside]]).max() <= 3
    # the flip and the crop move both: a left-right mirrored image still agrees with its labels
    img, lab = augment_view(image, labels, (64, 80), PairConfig(jitter_prob=0.0, hflip_prob=1.0, crop_scale=(1.0, 1.0),
                                                                crop_ratio=(1.25, 1.25)), rng)
    assert np.array_equal(lab, labels[:, ::-1]) and np.array_equal(img, image[:, ::-1])
    # colour jitter changes the image only; a strength whose saturation factor 1 ± 1.5·s can be negative
    # (hues inverted, not jittered) is refused
    for strength in (0.7, 0.99):
        with pytest.raises(ValueError, match="jitter_strength must be in"):
            PairConfig(jitter_strength=strength)
    assert PairConfig(jitter_strength=2 / 3).jitter_strength == 2 / 3
    img, lab = augment_view(image, labels, (64, 80), PairConfig(jitter_prob=1.0, hflip_prob=0.0, crop_scale=(1.0, 1.0),
                                                                crop_ratio=(1.25, 1.25)), rng)
    assert np.array_equal(lab, labels) and not np.array_equal(img, image)


def test_random_resized_crop_box_and_painting():
    rng = np.random.default_rng(0)
    for _ in range(50):
        y0, x0, h, w = random_resized_crop_box(30, 50, (0.3, 1.0), (0.75, 4 / 3), rng)
        assert 0 <= y0 and y0 + h <= 30 and 0 <= x0 and x0 + w <= 50 and h * w >= 0.25 * 1500
    assert random_resized_crop_box(10, 100, (0.9, 1.0), (1.0, 1.0), rng) == (0, 45, 10, 10)  # fallback: centre
    masks = np.zeros((3, 8, 8), bool)
    masks[0, :6, :6] = True
    masks[1, 1:3, 1:3] = True  # a part on object 0
    masks[2, 6:, 6:] = True
    labels = paint_labels(masks, [[0], [1], [2]], (8, 8))
    assert labels[1, 1] == 2 and labels[4, 4] == 1 and labels[7, 7] == 3 and labels[7, 0] == 0


# ================================================================================================ model inputs
def test_model_inputs_and_masked_positions():
    data = pairs()
    item = data[(0, 2)]
    s = data.sample(2, np.random.default_rng([0, 0, 2]))
    assert item["pixel_values"].shape == item["prompt_masks"].shape == item["labels"].shape == (3, 32, 32)
    assert np.allclose(item["labels"], normalize(s.target_mask)) and np.allclose(item["prompt_masks"], normalize(s.prompt_mask))
    assert np.allclose(item["pixel_values"], normalize(s.target_image))
    assert np.allclose(item["prompt_pixel_values"], normalize(s.prompt_image))
    hide = item["bool_masked_pos"]  # stacked 64×32 pair, 8 px patches: 8×4 grid, the target half hidden
    assert hide.dtype == bool and hide.shape == (32,) and not hide[:16].any() and hide[16:].all()

    random_masks = np.stack([pairs(half_mask_prob=0.0, random_mask_ratio=0.5)[(0, i)]["bool_masked_pos"] for i in range(8)])
    assert (random_masks.sum(1) >= 1).all() and (random_masks.sum(1) <= 16).all()
    assert random_masks[:, :16].any() and random_masks[:, 16:].any()  # blocks anywhere, the prompt half too
    grid = block_mask((16, 8), 64, np.random.default_rng(0), min_block=8, max_block=32)
    assert 40 <= grid.sum() <= 64

    batch = collate_pairs([data[(0, i)] for i in range(4)])
    assert batch["pixel_values"].shape == (4, 3, 32, 32) and batch["bool_masked_pos"].shape == (4, 32)
    assert batch["semantic"].dtype == torch.bool and batch["target_labels"].shape == (4, 32, 32)
    k = batch["palettes"].shape[1]
    for i in range(4):
        n = len(data[(0, i)]["palette"])
        assert (batch["palettes"][i, n:] == PALETTE_PAD).all() and n <= k


def test_training_module_loss_and_colour_miou():
    import dataclasses

    from promptseg.models.seggpt import SEGGPT_PRESETS, build_seggpt

    data = pairs(semantic_prob=0.5)
    batch = collate_pairs([data[(0, i)] for i in range(6)])
    assert 0 < int(batch["semantic"].sum()) < 6  # both embedding types in one batch
    torch.manual_seed(0)
    # no stochastic depth: the two forward passes below must see the same network
    model = build_seggpt(dataclasses.replace(SEGGPT_PRESETS["tiny"], drop_path_rate=0.0)).train()
    out = SegGptTrainingModel(model)(**batch)
    rows = batch["semantic"].nonzero().flatten()
    ref = model(batch["pixel_values"][rows], batch["prompt_pixel_values"][rows], batch["prompt_masks"][rows],
                bool_masked_pos=batch["bool_masked_pos"][rows], embedding_type="semantic", labels=batch["labels"][rows])
    rest = (~batch["semantic"]).nonzero().flatten()
    ref2 = model(batch["pixel_values"][rest], batch["prompt_pixel_values"][rest], batch["prompt_masks"][rest],
                 bool_masked_pos=batch["bool_masked_pos"][rest], embedding_type="instance", labels=batch["labels"][rest])
    expected = (ref.loss * len(rows) + ref2.loss * len(rest)) / 6
    assert torch.allclose(out["loss"], expected, atol=1e-6)
    out["loss"].backward()
    assert model.embeddings.type_token_semantic.grad is not None and model.embeddings.type_token_instance.grad is not None

    # a perfect colouring decodes to the target labels: mIoU 1; a black one: 0
    assert colour_miou(batch["labels"], batch["palettes"], batch["target_labels"]).item() == pytest.approx(1.0)
    black = torch.from_numpy(normalize(np.zeros((32, 32, 3), np.uint8)))[None].expand(6, -1, -1, -1)
    assert colour_miou(black, batch["palettes"], batch["target_labels"]).item() == 0.0


def test_fg_weight_up_weights_coloured_pixels():
    import dataclasses

    from promptseg.models.seggpt import SEGGPT_PRESETS, build_seggpt
    from promptseg.models.seggpt.model import seggpt_loss

    data = pairs(semantic_prob=0.0)
    batch = collate_pairs([data[(0, i)] for i in range(3)])
    torch.manual_seed(0)
    model = build_seggpt(dataclasses.replace(SEGGPT_PRESETS["tiny"], drop_path_rate=0.0)).train()
    plain = SegGptTrainingModel(model)(**batch)["loss"]
    assert torch.allclose(SegGptTrainingModel(model, fg_weight=1.0)(**batch)["loss"], plain)
    weighted = SegGptTrainingModel(model, fg_weight=5.0)(**batch)["loss"]

    # by hand: weight 5 where the stacked target is coloured, 1 where it is black, over the hidden pixels
    out = model(batch["pixel_values"], batch["prompt_pixel_values"], batch["prompt_masks"],
                bool_masked_pos=batch["bool_masked_pos"], embedding_type="instance", labels=batch["labels"])
    target = torch.cat((batch["prompt_masks"], batch["labels"]), dim=2)
    black = torch.from_numpy(normalize(np.zeros((1, 1, 3), np.uint8))).view(1, 3, 1, 1)
    coloured = ((target - black).abs().amax(dim=1, keepdim=True) > 1e-3).float()
    assert 0 < coloured[:, :, 32:].mean() < 1  # the target halves hold both
    hide = batch["bool_masked_pos"].view(3, 8, 1, 4, 1).expand(3, 8, 8, 4, 8).reshape(3, 1, 64, 32).float()
    err = torch.nn.functional.smooth_l1_loss(out.pred_masks, target, reduction="none", beta=0.01)
    w = hide * (1 + 4 * coloured)
    assert torch.allclose(weighted, (err * w).sum() / (w.sum() * 3), atol=1e-6)
    assert torch.allclose(seggpt_loss(out.pred_masks, batch["prompt_masks"], batch["labels"], batch["bool_masked_pos"],
                                      8, 0.01, pixel_weight=torch.ones_like(coloured)), plain, atol=1e-6)
    with pytest.raises(ValueError, match="fg_weight"):
        SegGptTrainConfig.from_dict(base_config(fg_weight=0))


def test_layer_decay_and_no_decay_groups():
    from promptseg.models.seggpt import build_seggpt

    model = build_seggpt("tiny")
    cfg = SegGptTrainConfig.from_dict({"model": {"preset": "tiny"}, "dataset": {"type": "synth-scenes"},
                                        "lr": 1e-3, "layer_decay": 0.5, "weight_decay": 0.05})
    groups = build_optimizer_for(model, cfg).param_groups
    lookup = {n: (g["lr"], g["weight_decay"]) for g in groups for n in g["param_names"]}
    assert len(lookup) == sum(1 for _ in model.parameters())
    depth = 4
    assert lookup["embeddings.patch_embeddings.proj.weight"] == (pytest.approx(1e-3 * 0.5 ** (depth + 1)), 0.05)
    for token in ("mask_token", "type_token_semantic", "segment_token_prompt", "position_embeddings"):
        assert lookup[f"embeddings.{token}"] == (pytest.approx(1e-3 * 0.5 ** (depth + 1)), 0.0)
    assert lookup["encoder.layers.2.attention.qkv.weight"] == (pytest.approx(1e-3 * 0.5 ** (depth - 2)), 0.05)
    assert lookup["encoder.layers.2.attention.rel_pos_h"][1] == 0.0
    assert lookup["decoder.decoder_embed.weight"] == (pytest.approx(1e-3), 0.05)
    assert seggpt_layer_id("encoder.layernorm.weight", depth) == depth + 1


# ================================================================================================ config
def base_config(**changes) -> dict:
    data = {"model": {"preset": "tiny"}, "dataset": {"type": "synth-scenes", "num_scenes": 4, "size": 64}}
    data.update(changes)
    return data


@pytest.mark.parametrize("bad", [
    {"lrr": 1},
    {"pairs": {"semantic_probability": 0.5}},
    {"model": {"preset": "tiny", "depth": 3}},
    {"model": {"config": {"hidden_size": 48, "num_layers": 2}}},
    {"dataset": {"type": "synth-scenes", "num_scenes": 4, "colour": "red"}},
    {"dataset": {"type": "no-such-dataset"}},
])
def test_config_unknown_keys_raise(bad):
    with pytest.raises(ValueError, match="unknown|unexpected"):
        SegGptTrainConfig.from_dict(base_config(**bad))


def test_config_values_are_checked_and_round_trip(tmp_path):
    for bad in ({"pairs": {"semantic_prob": 1.5}}, {"batch_size": 0}, {"model": {"preset": "huge"}},
                {"pairs": {"crop_scale": [0.5, 0.2]}}, {"model": {}}):
        with pytest.raises(ValueError):
            SegGptTrainConfig.from_dict(base_config(**bad))
    for bad, message in (({"pairs": {"semantic_prob": "high"}}, "pairs: semantic_prob must be a finite number"),
                         ({"batch_size": "8"}, "batch_size must be an integer, got '8'"),
                         ({"seed": -1}, r"seed must be in \[0, 2\*\*64\)"), ({"seed": 2**64}, "seed must be in")):
        with pytest.raises(ValueError, match=message):
            SegGptTrainConfig.from_dict(base_config(**bad))
    cfg = SegGptTrainConfig.from_dict(base_config(pairs={"mix_prob": 0.3, "mix_grid": [1, 2]}, milestones=[5, 9]))
    assert cfg.pairs.mix_grid == (1, 2) and cfg.milestones == (5, 9)
    path = tmp_path / "cfg.json"
    path.write_text(cfg.to_json())
    assert SegGptTrainConfig.from_json(path) == cfg
    assert cfg.replace(max_steps=7).max_steps == 7


@pytest.mark.parametrize("model, message", [
    ({"preset": "tiny", "checkpoint": 3}, "model: checkpoint must be a string or null, got 3"),
    ({"preset": "tiny", "init_encoder_from_sam": True}, "model: init_encoder_from_sam must be a string or null"),
])
def test_model_section_value_types_are_checked(model, message):
    """A number or a bool for a path passed the config and was a TypeError traceback when the model was built."""
    with pytest.raises(ValueError, match=message):
        SegGptTrainConfig.from_dict(base_config(model=model))


@pytest.mark.parametrize("option, message", [
    ({"num_scenes": "3"}, "num_scenes must be an integer, got '3'"),
    ({"seed": 1.5}, "seed must be an integer, got 1.5"),
    ({"max_objects": "5"}, "max_objects must be an integer, got '5'"),
    ({"use_photos": "no"}, "use_photos must be true or false"),
])
def test_synth_scenes_option_types_are_checked_when_the_config_is_read(option, message):
    """The synth-scenes factory takes ``**options``: their types were not checked, so a string count was a
    TypeError traceback (not a config error) when the scenes were built, and a fractional seed was used."""
    with pytest.raises(ValueError, match=rf"dataset \('synth-scenes'\): {message}"):
        SegGptTrainConfig.from_dict(base_config(dataset={"type": "synth-scenes", "size": 64, **option}))


@pytest.mark.parametrize("name", ["seggpt_tiny_debug.json", "default_seggpt_synth.json", "default_seggpt_cpu.json",
                                  "default_seggpt_cpu_stage2.json"])
def test_committed_configs_parse(name):
    cfg = SegGptTrainConfig.from_json(REPO / "configs" / name)
    arch = cfg.model.seggpt_config()
    if name.startswith("default") and arch is not None:  # stage 2 takes its architecture from stage 1's file
        from promptseg.models.seggpt import build_seggpt

        params = sum(p.numel() for p in build_seggpt(arch).parameters())
        assert params * 4 <= 40e6  # float32 safetensors of the future default model: at most 40 MB
        assert json.loads((REPO / "configs" / name).read_text())["dataset"]["type"] == "sa1b"
