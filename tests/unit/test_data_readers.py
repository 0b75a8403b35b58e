"""Dataset readers: SA-1B, COCO instances, mask folders; the item format; errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from promptseg.data import make_item, select_masks, validate_item
from promptseg.data.coco import CocoInstancesDataset
from promptseg.data.folder import MaskFolderDataset
from promptseg.data.sa1b import SA1BDataset, rle_counts, write_sa1b_json
from promptseg.io import mask_to_rle

H, W = 30, 40


def image(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def rect(y0, y1, x0, x1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def write_png(path: Path, array) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array)).save(path)
    return path


# ------------------------------------------------------------------------------------------- SA-1B
@pytest.fixture
def sa1b(tmp_path):
    masks = [rect(2, 20, 3, 30), rect(5, 10, 5, 12), rect(22, 28, 0, 40)]
    Image.fromarray(image()).save(tmp_path / "sa_1.png", format="PNG")  # lossless, then renamed
    (tmp_path / "sa_1.png").rename(tmp_path / "sa_1.jpg")
    extra = [{"name": "table", "parent": -1}, {"name": "cup", "parent": 11}, {"name": "floor", "parent": -1}]
    write_sa1b_json(tmp_path / "sa_1.json", 1, "sa_1.jpg", masks, extra, ids=[11, 12, 13])
    Image.fromarray(image(1)).save(tmp_path / "sa_2.jpg", format="PNG")
    write_sa1b_json(tmp_path / "sa_2.json", 2, "sa_2.jpg", [rect(0, 5, 0, 5)])
    return tmp_path, masks


def test_sa1b_reads_masks_names_parents(sa1b):
    root, masks = sa1b
    ds = SA1BDataset(root)
    assert len(ds) == 2
    item = ds[0]
    validate_item(item)
    np.testing.assert_array_equal(item["image"], image())
    np.testing.assert_array_equal(item["masks"], np.stack(masks))
    assert item["image_id"] == "1"
    assert item["names"] == ["table", "cup", "floor"]
    assert item["parents"] == [-1, 0, -1]
    plain = ds[-1]
    assert plain["names"] is None and plain["parents"] is None and plain["masks"].shape == (1, H, W)
    m, names, parents = ds.load_masks(0)
    np.testing.assert_array_equal(m, np.stack(masks))
    assert SA1BDataset(root, transform=lambda it: {**it, "seen": True})[0]["seen"]
    with pytest.raises(IndexError):
        ds[2]


def test_sa1b_png_image_without_file_name(sa1b):
    """The constructor accepts ``sa_N.png`` beside ``sa_N.json``; loading finds it when the JSON names no file."""
    import json

    root, masks = sa1b
    (root / "sa_1.jpg").rename(root / "sa_1.png")
    doc = json.loads((root / "sa_1.json").read_text())
    del doc["image"]["file_name"]
    (root / "sa_1.json").write_text(json.dumps(doc))
    np.testing.assert_array_equal(SA1BDataset(root)[0]["image"], image())


def test_sa1b_missing_files(sa1b):
    root, _ = sa1b
    (root / "sa_2.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"sa_2\.jpg"):
        SA1BDataset(root)
    (root / "sa_1.json").unlink()
    Image.fromarray(image()).save(root / "sa_2.jpg", format="PNG")
    with pytest.raises(FileNotFoundError, match=r"sa_1\.json"):
        SA1BDataset(root)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        SA1BDataset(root / "nowhere")


def edit_json(path: Path, fn):
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize(
    "counts, message",
    [("", "empty RLE"), ("0", "sum to 0"), ("garbage!!", "broken RLE"), ("\u00e9", "broken RLE"), ("P", "middle")],
)
def test_sa1b_broken_rle_names_file_and_annotation(sa1b, counts, message):
    root, _ = sa1b
    edit_json(root / "sa_1.json", lambda d: d["annotations"][1]["segmentation"].update(counts=counts))
    with pytest.raises(ValueError, match=rf"sa_1\.json, annotation id 12: .*{message}"):
        SA1BDataset(root)[0]


def test_sa1b_size_mismatch_and_bad_json(sa1b):
    root, _ = sa1b
    small = mask_to_rle(np.ones((H - 1, W), bool))
    edit_json(root / "sa_1.json", lambda d: d["annotations"][0].update(segmentation=small))
    with pytest.raises(ValueError, match=r"sa_1\.json, annotation id 11: mask size 29×40 differs from the image size 30×40"):
        SA1BDataset(root)[0]
    edit_json(root / "sa_2.json", lambda d: d["image"].update(width=41))
    with pytest.raises(ValueError, match=r"sa_2\.jpg is 30×40 but .*sa_2\.json says 30×41"):
        SA1BDataset(root)[1]
    (root / "sa_2.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"cannot parse JSON file .*sa_2\.json"):
        SA1BDataset(root)[1]


@pytest.mark.parametrize("counts", [[-5, 1205], [600.5, 599.5], [True, 1199]])
def test_sa1b_uncompressed_rle_must_hold_non_negative_integers(sa1b, counts):
    root, _ = sa1b  # pycocotools casts to uint32: -5 overflowed with no file named, 600.5 was truncated
    edit_json(root / "sa_1.json", lambda d: d["annotations"][1].update(segmentation={"size": [H, W], "counts": counts}))
    with pytest.raises(ValueError, match=r"sa_1\.json, annotation id 12: broken RLE: uncompressed counts must be non-negative"):
        SA1BDataset(root)[0]


def test_write_sa1b_json_checks_mask_shapes_and_lengths(tmp_path):
    with pytest.raises(ValueError, match=r"mask 1 has shape \(20, 20\)"):
        write_sa1b_json(tmp_path / "sa_1.json", 1, "sa_1.jpg", [rect(0, 5, 0, 5), np.ones((20, 20), bool)])
    with pytest.raises(ValueError, match="1 extra entries for 2 masks"):
        write_sa1b_json(tmp_path / "sa_1.json", 1, "sa_1.jpg", [rect(0, 5, 0, 5)] * 2, extra=[{}])
    with pytest.raises(ValueError, match="2 ids entries for 1 masks"):
        write_sa1b_json(tmp_path / "sa_1.json", 1, "sa_1.jpg", [rect(0, 5, 0, 5)], ids=[1, 2])
    assert not list(tmp_path.iterdir())


def test_rle_counts_matches_pycocotools():
    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = rng.integers(1, 40, 2)
        m = rng.random((h, w)) < rng.random()
        counts = rle_counts(mask_to_rle(m)["counts"])
        flat = m.T.reshape(-1)
        change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
        bounds = np.concatenate([[0], change, [flat.size]])
        runs = np.diff(bounds).tolist()
        if flat[0]:
            runs = [0] + runs
        assert counts.tolist() == runs


# ------------------------------------------------------------------------------------------- COCO
@pytest.fixture
def coco(tmp_path):
    images = tmp_path / "images"
    write_png(images / "a.png", image())
    write_png(images / "b.png", image(1))
    crowd = rect(20, 30, 0, 10)
    crowd_rle = {"size": [H, W], "counts": [int(c) for c in rle_counts(mask_to_rle(crowd)["counts"])]}
    doc = {
        "images": [{"id": 1, "file_name": "a.png", "height": H, "width": W},
                   {"id": 2, "file_name": "b.png", "height": H, "width": W},
                   {"id": 3, "file_name": "empty.png", "height": H, "width": W}],
        "annotations": [
            {"id": 5, "image_id": 1, "category_id": 7, "iscrowd": 0,
             "segmentation": [[10.0, 5.0, 30.0, 5.0, 30.0, 25.0, 10.0, 25.0]], "area": 400, "bbox": [10, 5, 20, 20]},
            {"id": 6, "image_id": 1, "category_id": 8, "iscrowd": 0, "segmentation": mask_to_rle(rect(0, 4, 0, 8)),
             "area": 32, "bbox": [0, 0, 8, 4]},
            {"id": 7, "image_id": 1, "category_id": 7, "iscrowd": 1, "segmentation": crowd_rle, "area": 100,
             "bbox": [0, 20, 10, 10]},
            {"id": 8, "image_id": 2, "category_id": 8, "iscrowd": 0,
             "segmentation": [[0.0, 0.0, 20.0, 0.0, 0.0, 20.0]], "area": 200, "bbox": [0, 0, 20, 20]},
        ],
        "categories": [{"id": 7, "name": "box"}, {"id": 8, "name": "corner"}],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(doc))
    return images, path, crowd


def test_coco_polygon_rle_and_crowd(coco):
    images, path, crowd = coco
    ds = CocoInstancesDataset(images, path)
    assert len(ds) == 2  # the image without annotations is skipped
    item = ds[0]
    validate_item(item)
    assert item["image_id"] == "1" and item["names"] == ["box", "corner"] and item["parents"] is None
    poly, rle = item["masks"]
    assert poly[6:24, 11:29].all() and not poly[:4].any() and not poly[:, :9].any()
    assert abs(int(poly.sum()) - 400) <= 40
    np.testing.assert_array_equal(rle, rect(0, 4, 0, 8))
    with_crowd = CocoInstancesDataset(images, path, include_crowd=True)[0]
    assert len(with_crowd["masks"]) == 3
    np.testing.assert_array_equal(with_crowd["masks"][2], crowd)
    assert ds.load_masks(1)[0].shape == (1, H, W)


def test_coco_errors(coco, tmp_path):
    images, path, _ = coco
    with pytest.raises(FileNotFoundError, match="nope.json"):
        CocoInstancesDataset(images, tmp_path / "nope.json")
    doc = json.loads(path.read_text())
    doc["annotations"][0]["segmentation"] = mask_to_rle(np.ones((H, W + 1), bool))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"bad\.json, annotation id 5: mask size 30×41 differs"):
        CocoInstancesDataset(images, bad)[0]
    doc["annotations"][0]["segmentation"] = [[1.0, 2.0]]
    bad.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"bad\.json, annotation id 5: a polygon"):
        CocoInstancesDataset(images, bad)[0]
    (images / "b.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"b\.png"):
        CocoInstancesDataset(images, path)[1]



@pytest.mark.parametrize(
    "edit, message",
    [
        # pycocotools rasterises whatever extent it is given: these crashed or exhausted memory
        (lambda d: d["annotations"][0].update(segmentation=[[10.0, 5.0, float("nan"), 5.0, 30.0, 25.0]]), "polygon coordinates"),
        (lambda d: d["annotations"][0].update(segmentation=[[10.0, 5.0, 1e12, 5.0, 30.0, 25.0]]), "polygon coordinates"),
        (lambda d: d["annotations"][0].update(category_id="box"), "'category_id' must be an integer"),
        (lambda d: d["images"][0].update(height="abc"), "'height' must be a positive integer"),
        (lambda d: d["annotations"][1].update(segmentation={"size": [H, W], "counts": [-5, 1205]}), "uncompressed counts"),
    ],
)
def test_coco_bad_values_name_the_file(coco, tmp_path, edit, message):
    images, path, _ = coco
    doc = json.loads(path.read_text())
    edit(doc)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=rf"bad\.json.*{message}"):
        CocoInstancesDataset(images, bad)[0]
    doc["categories"][0]["id"] = "box"
    bad.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"bad\.json: every category needs an integer 'id'"):
        CocoInstancesDataset(images, bad)


# ------------------------------------------------------------------------------------------- folder
def test_folder_both_layouts(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    write_png(images / "one.png", image())
    write_png(images / "two.jpg", image(1))
    write_png(masks / "one" / "b_cup.png", rect(0, 5, 0, 5).astype(np.uint8) * 255)
    write_png(masks / "one" / "a_table.png", rect(10, 20, 0, 40).astype(np.uint8) * 255)
    labels = np.zeros((H, W), np.uint8)
    labels[0:10, 0:10] = 3
    labels[20:30, 20:40] = 9
    write_png(masks / "two.png", labels)
    ds = MaskFolderDataset(images, masks)
    assert len(ds) == 2
    one, two = ds[0], ds[1]
    validate_item(one)
    validate_item(two)
    assert one["image_id"] == "one" and one["names"] == ["a_table", "b_cup"]
    np.testing.assert_array_equal(one["masks"], np.stack([rect(10, 20, 0, 40), rect(0, 5, 0, 5)]))
    assert two["names"] == ["3", "9"]
    np.testing.assert_array_equal(two["masks"], np.stack([labels == 3, labels == 9]))
    assert ds.load_masks(1)[1] == ["3", "9"]


def test_folder_errors(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    write_png(images / "one.png", image())
    masks.mkdir()
    with pytest.raises(FileNotFoundError, match=r"no masks for image .*one\.png"):
        MaskFolderDataset(images, masks)
    (masks / "one.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(ValueError, match=r"cannot read mask PNG .*masks/one\.png"):
        MaskFolderDataset(images, masks)[0]
    write_png(masks / "one.png", np.zeros((H + 1, W), np.uint8))
    with pytest.raises(ValueError, match=r"label PNG .*one\.png is 31×40 but image .*one\.png is 30×40"):
        MaskFolderDataset(images, masks)[0]
    write_png(masks / "one" / "m.png", np.zeros((H, W - 1), np.uint8))
    with pytest.raises(ValueError, match=r"mask .*one/m\.png is 30×39"):
        MaskFolderDataset(images, masks)[0]



def test_folder_truncated_mask_png_does_not_keep_the_file_open(tmp_path):
    """A PNG whose header reads but whose pixels do not: the ValueError must not hold the file open (it
    did for as long as the exception lived: a ResourceWarning, a descriptor per bad mask while kept)."""
    import gc
    import io
    import os
    import warnings

    images, masks = tmp_path / "images", tmp_path / "masks"
    write_png(images / "one.png", image())
    buf = io.BytesIO()
    Image.fromarray(rect(0, 5, 0, 5).astype(np.uint8) * 255).save(buf, format="PNG")
    data = buf.getvalue()
    (masks / "one").mkdir(parents=True)
    (masks / "one" / "m.png").write_bytes(data[: len(data) // 2 + 10])
    (masks / "two.png").write_bytes(data[: len(data) // 2 + 10])
    write_png(images / "two.png", image(1))
    ds = MaskFolderDataset(images, masks)
    gc.collect()
    before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    kept = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        for index in (0, 1):
            with pytest.raises(ValueError, match=r"cannot read mask PNG") as info:
                ds[index]
            kept.append(info.value)
        if before is not None:
            assert len(os.listdir("/proc/self/fd")) == before
        kept.clear()
        gc.collect()


def test_folder_without_mask_pngs_fails_on_load_too(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    write_png(images / "one.png", image())
    write_png(masks / "one" / "m.jpg", rect(0, 5, 0, 5).astype(np.uint8) * 255)  # not a PNG: ignored
    ds = MaskFolderDataset(images, masks)
    for load in (lambda: ds[0], lambda: ds.load_masks(0)):  # ds[0] used to give an item without masks
        with pytest.raises(ValueError, match=r"mask folder .*masks/one holds no PNG files"):
            load()


def test_folder_rgba_label_png_transparent_background(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    write_png(images / "one.png", image())
    labels = np.zeros((H, W, 4), np.uint8)
    labels[..., :3] = 255  # transparent white, as image editors often save an empty layer
    labels[0:5, 0:5] = (255, 0, 0, 255)
    labels[10:15, 0:5] = (0, 128, 0, 255)
    write_png(masks / "one.png", labels)
    item = MaskFolderDataset(images, masks)[0]
    assert item["names"] == ["#008000", "#ff0000"]
    np.testing.assert_array_equal(item["masks"], np.stack([rect(10, 15, 0, 5), rect(0, 5, 0, 5)]))


# ------------------------------------------------------------------------------------------- item helpers
def test_select_masks_reattaches_to_kept_ancestor():
    masks = np.zeros((4, 2, 2), bool)
    item = make_item(np.zeros((2, 2, 3), np.uint8), masks, 5, ["a", "b", "c", "d"], [-1, 0, 1, -1])
    out = select_masks(item, [3, 2, 0])
    assert out["names"] == ["d", "c", "a"] and out["parents"] == [-1, 2, -1]
    validate_item(out)
    with pytest.raises(ValueError, match="parents"):
        validate_item({**item, "parents": [0, 0, 0, 0]})


# ------------------------------------------------------------------------------------------- audit: fidelity
def test_index_must_be_an_integer_and_errors_name_the_given_index(sa1b):
    root, _ = sa1b
    ds = SA1BDataset(root)
    assert ds[np.int64(1)]["image_id"] == "2" and ds[-2]["image_id"] == "1"
    with pytest.raises(TypeError, match="dataset index must be an integer, got float"):
        ds[1.7]  # was truncated to ds[1]
    with pytest.raises(TypeError, match="dataset index must be an integer"):
        ds.load_masks(0.5)
    with pytest.raises(IndexError, match="index -3 out of range for a dataset of 2 items"):
        ds[-3]  # said "index -1"


def test_sa1b_order_of_numerically_equal_names_does_not_depend_on_listing_order(sa1b, monkeypatch):
    root, _ = sa1b
    (root / "sa_2.json").rename(root / "sa_01.json")
    (root / "sa_2.jpg").rename(root / "sa_01.jpg")
    glob = Path.glob
    orders = []
    for reverse in (False, True):
        monkeypatch.setattr(Path, "glob", lambda self, p, r=reverse: sorted(glob(self, p), reverse=r))
        orders.append([p.name for p in SA1BDataset(root).annotation_files])
    assert orders[0] == orders[1] == ["sa_01.json", "sa_1.json"]


def test_coco_duplicate_annotation_ids_keep_each_annotation_on_its_image(coco, tmp_path):
    """pycocotools maps an id to the last annotation holding it: image 1 lost both of its masks and got
    image 2's mask twice (converters that number annotations per image write such files)."""
    images, path, _ = coco
    doc = json.loads(path.read_text())
    for ann in doc["annotations"]:
        ann["id"] = 1
    bad = tmp_path / "dup_ann.json"
    bad.write_text(json.dumps(doc))
    ds = CocoInstancesDataset(images, bad)
    first, second = ds[0], ds[1]
    assert first["names"] == ["box", "corner"] and second["names"] == ["corner"]
    np.testing.assert_array_equal(first["masks"][1], rect(0, 4, 0, 8))
    np.testing.assert_array_equal(second["masks"], CocoInstancesDataset(images, path)[1]["masks"])


def test_coco_duplicate_image_ids_are_refused(coco, tmp_path):
    """pycocotools keeps the last image of an id and gives it the other's annotations: a.png vanished and its
    masks were served on b.png."""
    images, path, _ = coco
    doc = json.loads(path.read_text())
    doc["images"][1]["id"] = 1
    bad = tmp_path / "dup_img.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"dup_img\.json: image id 1 is used twice \('a\.png' and 'b\.png'\)"):
        CocoInstancesDataset(images, bad)


def test_folder_images_sharing_a_stem_are_refused(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    write_png(images / "one.png", image())
    write_png(images / "one.jpg", image(1))  # both got masks/one.png and image_id "one"
    write_png(masks / "one.png", rect(0, 5, 0, 5).astype(np.uint8))
    with pytest.raises(ValueError, match=r"one\.jpg and .*one\.png share the stem 'one'"):
        MaskFolderDataset(images, masks)


def test_folder_grayscale_alpha_label_png_transparent_background(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    write_png(images / "one.png", image())
    labels = np.zeros((H, W, 2), np.uint8)
    labels[..., 0] = 9  # transparent grey: was one mask "9" over the whole image
    labels[0:5, 0:5] = (3, 255)
    Image.fromarray(labels, mode="LA").save(masks.mkdir() or masks / "one.png")
    item = MaskFolderDataset(images, masks)[0]
    assert item["names"] == ["3"]
    np.testing.assert_array_equal(item["masks"], rect(0, 5, 0, 5)[None])


@pytest.mark.parametrize("parent", [[11], {"id": 11}])
def test_sa1b_parent_must_be_an_id(sa1b, parent):
    root, _ = sa1b  # was "TypeError: unhashable type" naming no file
    edit_json(root / "sa_1.json", lambda d: d["annotations"][1].update(parent=parent))
    with pytest.raises(ValueError, match=r"sa_1\.json, annotation id 12: 'parent' must be the id of another annotation"):
        SA1BDataset(root)[0]
