"""Output formats of the automatic mask generator (promptseg.amg.outputs), from hand-made records."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("cv2")
pytest.importorskip("pycocotools")

from promptseg.amg import outputs as O  # noqa: E402
from promptseg.io import mask_bbox, mask_to_rle, rle_to_mask  # noqa: E402

H, W = 40, 60


def _ring_with_hole() -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[5:25, 5:30] = True
    m[10:18, 12:20] = False  # the hole
    return m


def _two_parts() -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[2:8, 40:50] = True
    m[20:35, 45:58] = True
    return m


def _small_inside() -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[20:23, 20:24] = True  # inside the ring's area, drawn over it in the label map
    return m


def _record(mask: np.ndarray, k: int, rle: bool = False) -> dict:
    return {
        "segmentation": mask_to_rle(mask) if rle else mask,
        "area": int(mask.sum()),
        "bbox": mask_bbox(mask),
        "predicted_iou": np.float32(0.9 - 0.1 * k),  # numpy scalars as a generator may return them
        "point_coords": [[float(10 + k), 12.5]],
        "stability_score": 0.95 - 0.01 * k,
        "crop_box": [0, 0, W, H],
    }


@pytest.fixture()
def masks():
    return [_ring_with_hole(), _two_parts(), _small_inside()]


@pytest.fixture()
def records(masks):
    return [_record(m, k) for k, m in enumerate(masks)]


def _shoelace(ring) -> float:
    p = np.asarray(ring, float)
    if np.array_equal(p[0], p[-1]):
        p = p[:-1]
    x, y = p[:, 0], p[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


# --------------------------------------------------------------------------------------------- SA-1B / COCO
def test_sa1b_json_schema_and_rle_round_trip(records, masks):
    doc = O.sa1b_json(records, image_id=7, width=W, height=H, file_name="sa_7.jpg")
    doc = json.loads(O.dumps(doc))  # JSON-serialisable (numpy scalars converted)
    assert doc["image"] == {"image_id": 7, "width": W, "height": H, "file_name": "sa_7.jpg"}
    assert len(doc["annotations"]) == 3
    keys = ["id", "segmentation", "area", "bbox", "predicted_iou", "point_coords", "stability_score", "crop_box"]
    for k, (ann, mask) in enumerate(zip(doc["annotations"], masks)):
        assert list(ann) == keys
        assert ann["id"] == k + 1
        seg = ann["segmentation"]
        assert seg["size"] == [H, W] and isinstance(seg["counts"], str)
        np.testing.assert_array_equal(rle_to_mask(seg), mask)
        assert ann["area"] == int(mask.sum())
        assert ann["bbox"] == mask_bbox(mask)  # XYWH from the top-left corner
        assert isinstance(ann["predicted_iou"], float) and isinstance(ann["stability_score"], float)
        assert ann["point_coords"] == [[10.0 + k, 12.5]]
        assert ann["crop_box"] == [0, 0, W, H]
    assert doc["annotations"][0]["bbox"] == [5, 5, 25, 20]


def test_sa1b_json_is_read_by_the_sa1b_dataset(tmp_path, records, masks):
    from PIL import Image

    from promptseg.data.sa1b import SA1BDataset

    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "sa_7.jpg")
    O.write_json(O.sa1b_json(records, image_id=7, width=W, height=H, file_name="sa_7.jpg"), tmp_path / "sa_7.json")
    item = SA1BDataset(tmp_path).load(0)
    got = np.asarray(item["masks"] if isinstance(item, dict) else item.masks)
    np.testing.assert_array_equal(got.astype(bool), np.stack(masks))


def test_records_with_rle_segmentation(masks):
    records = [_record(m, k, rle=True) for k, m in enumerate(masks)]
    doc = O.sa1b_json(records, image_id=1, width=W, height=H, file_name="x.png")
    for ann, mask in zip(doc["annotations"], masks):
        np.testing.assert_array_equal(rle_to_mask(ann["segmentation"]), mask)
    np.testing.assert_array_equal(O.label_map(records, H, W), O.label_map([_record(m, 0) for m in masks], H, W))


def test_coco_results_schema(records, masks):
    res = json.loads(O.dumps(O.coco_results(records, image_id=397133)))
    assert len(res) == 3
    for r, rec, mask in zip(res, records, masks):
        assert set(r) == {"image_id", "category_id", "segmentation", "score", "bbox", "area"}
        assert r["image_id"] == 397133 and r["category_id"] == 1
        assert r["score"] == pytest.approx(float(rec["predicted_iou"]))
        np.testing.assert_array_equal(rle_to_mask(r["segmentation"]), mask)
        assert r["bbox"] == mask_bbox(mask) and r["area"] == int(mask.sum())
    bad = [dict(rec) for rec in records]
    bad[1]["predicted_iou"] = float("nan")  # was "Out of range float values are not JSON compliant" from dumps
    with pytest.raises(ValueError, match="record 1: predicted_iou is nan"):
        O.coco_results(bad, image_id=1)



def test_coco_results_bbox_is_cocos_box_of_the_mask():
    """The generator's ``bbox`` is SAM's ``[x0, y0, x1 - x0, y1 - y0]`` of the inclusive pixel box (one short
    of COCO's width/height: 0 × 0 for one pixel); the COCO results carry COCO's box of the mask."""
    from pycocotools import mask as mask_utils

    one, block = np.zeros((H, W), bool), np.zeros((H, W), bool)
    one[7, 9] = True
    block[10:20, 30:45] = True
    records = [dict(_record(m, 0), bbox=bbox) for m, bbox in ((one, [9, 7, 0, 0]), (block, [30, 10, 14, 9]))]
    res = O.coco_results(records, image_id=1)
    assert [r["bbox"] for r in res] == [[9, 7, 1, 1], [30, 10, 15, 10]]
    for r in res:
        rle = {"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"].encode()}
        assert r["bbox"] == [int(v) for v in mask_utils.toBbox(rle)]
    assert O.sa1b_json(records, image_id=1, width=W, height=H, file_name="x")["annotations"][1]["bbox"] == [30, 10, 14, 9]



def test_empty_mask_with_nan_stability_is_written(tmp_path):
    """With the stability filter off (the edges/proposals presets) an empty mask survives with a stability
    score of 0 / 0 = NaN; the JSON formats write it as null instead of failing the whole image."""
    empty = dict(_record(np.zeros((H, W), bool), 0), stability_score=float("nan"), bbox=[0, 0, 0, 0])
    paths = {fmt: tmp_path / f"x{suffix}" for fmt, suffix in O.SUFFIXES.items()}
    O.write_formats([empty], np.zeros((H, W, 3), np.uint8), paths, image_id=1, file_name="x.png")
    ann = json.loads(paths["sa1b"].read_text())["annotations"][0]
    assert ann["stability_score"] is None and ann["area"] == 0
    feature = json.loads(paths["geojson"].read_text())["features"][0]
    assert feature["geometry"] is None and feature["properties"]["stability"] is None


def test_json_formats_take_a_file_name_that_is_not_utf8(tmp_path, records):
    """On Linux a file name need not be UTF-8: Python gives its odd bytes as lone surrogates, which UTF-8
    cannot encode (every JSON write failed, and run_batch's summary with it). They are written as escapes
    that read back to the same name, in a file that is valid UTF-8."""
    import os

    name = os.fsdecode(b"caf\xe9 \xc3\xa9t\xe9.png")  # 'caf\udce9 ét\udce9.png'
    paths = {fmt: tmp_path / f"x{suffix}" for fmt, suffix in O.SUFFIXES.items() if fmt in ("sa1b", "geojson")}
    O.write_formats(records, np.zeros((H, W, 3), np.uint8), paths, image_id=1, file_name=name)
    sa1b = json.loads(paths["sa1b"].read_bytes().decode("utf-8"))
    assert sa1b["image"]["file_name"] == name and os.fsencode(sa1b["image"]["file_name"]) == b"caf\xe9 \xc3\xa9t\xe9.png"
    assert json.loads(paths["geojson"].read_bytes().decode("utf-8"))["name"] == name
    assert O.dumps({"a": "é"}) == '{"a":"é"}\n'  # valid text is written as before


def test_size_mismatch_is_an_error(records):
    with pytest.raises(ValueError, match="size"):
        O.sa1b_json(records, image_id=1, width=W + 1, height=H, file_name="x")


# --------------------------------------------------------------------------------------------- label map
def test_label_map_small_masks_stay_visible(tmp_path, records, masks):
    labels = O.label_map(records, H, W)
    assert labels.dtype == np.uint8
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    # The small mask (id 3) lies inside the large ring (id 1) and wins there.
    assert (labels[masks[2]] == 3).all()
    assert (labels[masks[0] & ~masks[2]] == 1).all()
    assert (labels[masks[1]] == 2).all()
    assert (labels[~(masks[0] | masks[1] | masks[2])] == 0).all()
    # Order does not matter: the rule is by area, not by position in the list.
    reordered = [records[2], records[0], records[1]]
    relabelled = O.label_map(reordered, H, W)
    assert (relabelled[masks[2]] == 1).all() and (relabelled[masks[0] & ~masks[2]] == 2).all()
    path = O.write_png(labels, tmp_path / "x.labels.png")
    np.testing.assert_array_equal(O.read_label_map(path), labels)


def test_label_map_uint16_above_255_masks(tmp_path):
    rng = np.random.default_rng(0)
    records = []
    for k in range(300):
        m = np.zeros((H, W), bool)
        y, x = rng.integers(0, H - 3), rng.integers(0, W - 3)
        m[y : y + 3, x : x + 3] = True
        records.append(_record(m, 0))
    labels = O.label_map(records, H, W)
    assert labels.dtype == np.uint16 and labels.max() > 255
    back = O.read_label_map(O.write_png(labels, tmp_path / "many.labels.png"))
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, labels)


# --------------------------------------------------------------------------------------------- polygons
def test_polygons_keep_holes_and_parts(masks):
    ring, two, _ = masks
    polys = O.mask_to_polygons(ring, tolerance=0)
    assert len(polys) == 1 and len(polys[0]["holes"]) == 1
    assert sorted(map(tuple, polys[0]["exterior"])) == sorted([(5, 5), (30, 5), (30, 25), (5, 25)])
    assert sorted(map(tuple, polys[0]["holes"][0])) == sorted([(12, 10), (20, 10), (20, 18), (12, 18)])
    assert _shoelace(polys[0]["exterior"]) > 0 and _shoelace(polys[0]["holes"][0]) < 0
    assert O.polygon_area(polys[0]) == ring.sum()

    parts = O.mask_to_polygons(two, tolerance=0)
    assert len(parts) == 2 and all(not p["holes"] for p in parts)
    assert sum(O.polygon_area(p) for p in parts) == two.sum()


def test_polygons_island_in_hole_and_corner_contact():
    m = np.zeros((20, 20), bool)
    m[2:18, 2:18] = True
    m[5:15, 5:15] = False
    m[8:12, 8:12] = True  # an island inside the hole: its own part
    m[0, 0] = m[1, 1] = True  # two pixels touching at a corner only: two parts (4-connectivity)
    polys = O.mask_to_polygons(m, tolerance=0)
    assert len(polys) == 4
    assert sum(len(p["holes"]) for p in polys) == 1
    np.testing.assert_array_equal(O.polygons_to_mask(polys, 20, 20), m)


@pytest.mark.parametrize("seed", range(6))
def test_polygon_round_trip_is_exact_at_tolerance_0(seed):
    import cv2

    rng = np.random.default_rng(seed)
    h, w = rng.integers(8, 50, 2)
    noise = rng.random((h, w)).astype(np.float32)
    m = cv2.GaussianBlur(noise, (0, 0), 1.5 + seed % 3) > 0.5 if seed % 2 else noise < 0.5
    polys = O.mask_to_polygons(m, tolerance=0)
    back = O.polygons_to_mask(polys, h, w)
    iou = (back & m).sum() / max(1, (back | m).sum())
    assert iou >= 0.98
    np.testing.assert_array_equal(back, m)  # in fact exact
    assert sum(O.polygon_area(p) for p in polys) == m.sum()
    for p in polys:  # simple rings: no vertex visited twice
        for ring in [p["exterior"], *p["holes"]]:
            assert len({tuple(v) for v in ring}) == len(ring)


def test_tolerance_simplifies():
    yy, xx = np.mgrid[:200, :200]
    disk = (yy - 100) ** 2 + (xx - 100) ** 2 < 80**2
    exact = O.mask_to_polygons(disk, tolerance=0)
    simple = O.mask_to_polygons(disk, tolerance=1.0)
    coarse = O.mask_to_polygons(disk, tolerance=5.0)
    n = [len(p[0]["exterior"]) for p in (exact, simple, coarse)]
    assert n[0] > n[1] > n[2] >= 3
    back = O.polygons_to_mask(simple, 200, 200)
    assert (back & disk).sum() / (back | disk).sum() > 0.98
    assert O.mask_to_polygons(np.zeros((5, 5), bool)) == []
    with pytest.raises(ValueError):
        O.mask_to_polygons(disk, tolerance=-1)


def _ring_is_simple(ring) -> bool:
    """Brute force: no repeated vertex, no spike, and no two non-adjacent edges that cross or touch."""
    p = [tuple(v) for v in ring]
    n = len(p)
    if len(set(p)) != n:
        return False

    def side(a, b, c):
        return np.sign((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]))

    def meet(a, b, c, d):
        if side(a, b, c) == side(a, b, d) == side(c, d, a) == side(c, d, b) == 0:  # collinear: extents overlap
            return all(min(a[k], b[k]) <= max(c[k], d[k]) and min(c[k], d[k]) <= max(a[k], b[k]) for k in (0, 1))
        return side(a, b, c) * side(a, b, d) <= 0 and side(c, d, a) * side(c, d, b) <= 0

    for i in range(n):
        a, b, c = p[i], p[(i + 1) % n], p[(i + 2) % n]
        if side(a, b, c) == 0 and (b[0] - a[0]) * (c[0] - b[0]) + (b[1] - a[1]) * (c[1] - b[1]) < 0:
            return False  # spike
        for j in range(i + 2, n - (i == 0)):
            if meet(a, b, p[j], p[(j + 1) % n]):
                return False
    return True


def test_simplified_rings_do_not_cross_themselves():
    """Douglas–Peucker can turn a simple ring into a self-crossing one (this part's exterior became a bow tie
    at tolerance 2): such a ring is simplified again with a smaller tolerance, so every ring stays simple."""
    rows = [
        ".....XXX..........",
        ".....XXXXX........",
        ".....X...XX.......",
        "X....X...XXX......",
        "XX.......XXXXX....",
        "XX.......XXXXX....",
        "X.................",
        "..............XXXX",
        "XXX..............X",
        "XXX...............",
    ]
    m = np.array([[c == "X" for c in row] for row in rows])
    masks = [m]
    for seed in (1676, 2128):  # blobs with a self-touching ring at tolerance 1
        import cv2

        rng = np.random.default_rng(seed)
        h, w = rng.integers(10, 40, 2)
        masks.append(cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 1.5) > 0.5)
    for mask in masks:
        for tolerance in (1.0, 2.0, 3.0):
            polys = O.mask_to_polygons(mask, tolerance)
            for p in polys:
                assert _shoelace(p["exterior"]) > 0 and all(_shoelace(h) < 0 for h in p["holes"])
                for ring in [p["exterior"], *p["holes"]]:
                    assert _ring_is_simple(ring), (tolerance, ring)
    top = O.mask_to_polygons(m, 2.0)  # the bow tie's part, simplified at tolerance 1 instead
    assert len(top) == 1 and O.polygon_area(top[0]) == 23.5


# --------------------------------------------------------------------------------------------- GeoJSON
def _rings(geometry):
    if geometry["type"] == "Polygon":
        return [geometry["coordinates"]]
    return geometry["coordinates"]


def test_geojson_is_valid(records, masks):
    doc = json.loads(O.dumps(O.geojson(records, tolerance=0, name="x.png")))
    assert doc["type"] == "FeatureCollection" and doc["name"] == "x.png" and len(doc["features"]) == 3
    ring_f, parts_f, small_f = doc["features"]
    assert ring_f["geometry"]["type"] == "Polygon"
    assert parts_f["geometry"]["type"] == "MultiPolygon" and len(parts_f["geometry"]["coordinates"]) == 2
    assert len(ring_f["geometry"]["coordinates"]) == 2  # exterior + one interior ring (the hole)
    for feature, mask, rec in zip(doc["features"], masks, records):
        assert feature["type"] == "Feature"
        props = feature["properties"]
        assert props["score"] == pytest.approx(float(rec["predicted_iou"]))
        assert props["stability"] == pytest.approx(rec["stability_score"])
        assert props["area"] == int(mask.sum())
        area = 0.0
        for polygon in _rings(feature["geometry"]):
            for r, ring in enumerate(polygon):
                assert len(ring) >= 4 and ring[0] == ring[-1]  # closed rings
                assert (_shoelace(ring) > 0) == (r == 0)  # RFC 7946: exterior CCW, holes CW
                area += _shoelace(ring)
        assert area == mask.sum()


def test_geojson_geotransform():
    m = np.zeros((H, W), bool)
    m[10:20, 30:40] = True
    gt = (500000.0, 0.5, 0.0, 4100000.0, 0.0, -0.5)  # north-up, 0.5 m pixels
    doc = O.geojson([_record(m, 0)], tolerance=0, geotransform=gt, crs="EPSG:32633")
    assert doc["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32633"
    ring = doc["features"][0]["geometry"]["coordinates"][0]
    xs, ys = sorted({p[0] for p in ring}), sorted({p[1] for p in ring})
    assert xs == [500000.0 + 30 * 0.5, 500000.0 + 40 * 0.5]
    assert ys == [4100000.0 - 20 * 0.5, 4100000.0 - 10 * 0.5]
    assert _shoelace(ring) == pytest.approx(10 * 10 * 0.25)  # CCW in world coordinates
    np.testing.assert_allclose(O.apply_geotransform([[0, 0], [2, 4]], (1, 2, 3, 4, 5, 6)), [[1, 4], [17, 38]])
    with pytest.raises(ValueError):
        O.geojson([_record(m, 0)], geotransform=(0, 1, 0, 0, 0))


def test_geojson_null_geometry_when_simplified_away():
    m = np.zeros((H, W), bool)
    m[3, 3] = True
    doc = O.geojson([_record(m, 0)], tolerance=3.0)
    assert doc["features"][0]["geometry"] is None and doc["features"][0]["properties"]["area"] == 1


def test_world_file_georeference(tmp_path):
    image = tmp_path / "tile.png"
    image.write_bytes(b"")
    (tmp_path / "tile.pgw").write_text("0.5\n0\n0\n-0.5\n500000.25\n4100000.0\n")
    gt, crs = O.read_georeference(image)
    assert gt == (500000.0, 0.5, 0.0, 4100000.25, 0.0, -0.5) and crs is None
    assert O.read_georeference(tmp_path / "other.png") == (None, None)



@pytest.mark.parametrize("raster_type, origin", [(1, (500000.0, 4100000.0)), (2, (499999.0, 4100001.0))])
def test_geotiff_georeference_pixel_is_point(tmp_path, raster_type, origin):
    """GeoTIFF tie point + pixel scale; with ``GTRasterTypeGeoKey`` = PixelIsPoint the tie point is a pixel
    centre, so the corner-based geotransform is half a pixel up-left of it (as GDAL reads it)."""
    from PIL import Image, TiffImagePlugin

    ifd = TiffImagePlugin.ImageFileDirectory_v2()
    ifd[33550], ifd.tagtype[33550] = (2.0, 2.0, 0.0), 12  # ModelPixelScaleTag, doubles
    ifd[33922], ifd.tagtype[33922] = (0.0, 0.0, 0.0, 500000.0, 4100000.0, 0.0), 12  # ModelTiepointTag
    ifd[34735] = (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, raster_type, 3072, 0, 1, 32633)  # GeoKeyDirectory
    ifd.tagtype[34735] = 3
    path = tmp_path / "tile.tif"
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(path, tiffinfo=ifd)
    gt, crs = O.read_georeference(path)
    assert gt == (origin[0], 2.0, 0.0, origin[1], 0.0, -2.0) and crs == "EPSG:32633"


# --------------------------------------------------------------------------------------------- overlay, writing
def test_overlay_and_write_formats(tmp_path, records):
    from PIL import Image

    image = np.full((H, W, 3), 100, np.uint8)
    overlay = O.render_masks_overlay(image, records)
    assert overlay.shape == (H, W, 3) and overlay.dtype == np.uint8
    assert (overlay[6, 6] != 100).any() and (overlay[0, 0] == 100).all()
    paths = {fmt: tmp_path / f"x{suffix}" for fmt, suffix in O.SUFFIXES.items()}
    written = O.write_formats(records, image, paths, image_id=3, file_name="x.png", durable=True)
    assert set(written) == set(O.FORMATS)
    for fmt, path in written.items():
        if path.suffix == ".png":
            with Image.open(path) as im:
                im.verify()
        else:
            json.loads(path.read_text())
    assert not list(tmp_path.glob(".*.tmp"))
