"""What the automatic mask generator's records become on disk: SA-1B JSON, COCO results, label maps,
polygons, GeoJSON and overlays.

Everything here depends only on the record format of ``SamAutomaticMaskGenerator.generate`` (the reference
``segment_anything`` one and promptseg's): a list of dicts with ``segmentation`` (``H×W`` bool, or a COCO RLE
dict when the generator ran with ``output_mode="coco_rle"``), ``area``, ``bbox`` (XYWH), ``predicted_iou``,
``point_coords``, ``stability_score`` and ``crop_box`` (XYWH).

Conventions shared by every format:

* Annotation ``id`` = position in the generator's list + 1. The same number is the mask's value in the
  label map and the ``id`` of its GeoJSON feature, so the formats can be joined.
* ``bbox`` and ``crop_box`` are ``[x, y, width, height]`` from the top-left corner, in pixels.
* Polygon coordinates lie on pixel *edges*: pixel ``(row i, column j)`` is the unit square
  ``[j, j+1] × [i, i+1]``, so the polygons of a mask enclose exactly its pixels (at tolerance 0) and a GDAL
  geotransform, which maps the top-left *corner* of the image to ``(GT[0], GT[3])``, applies unchanged.

Writers (``write_*``) are atomic (:func:`promptseg.fileio.atomic_write`) and, with ``durable=True``, flush the
file to disk (``fsync``) before the rename — the batch runner relies on that for its completion markers.
OpenCV (``promptseg[cv]``) is needed for polygons only; pycocotools (``promptseg[coco]``) for RLE only.
"""

from __future__ import annotations

import io as _stdio
import json
import math
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

PathLike = Union[str, "os.PathLike[str]"]
Record = Mapping[str, Any]
Polygon = Dict[str, Any]  # {"exterior": [[x, y], ...], "holes": [[[x, y], ...], ...]}
GeoTransform = Tuple[float, float, float, float, float, float]

#: The output formats, in the order they are written (the batch runner writes its completion marker last).
FORMATS: Tuple[str, ...] = ("sa1b", "coco", "png", "geojson", "overlay")

#: File name suffix of each format (appended to the image's output key, see :mod:`promptseg.amg.batch`).
SUFFIXES: Dict[str, str] = {
    "sa1b": ".json",
    "coco": ".coco.json",
    "png": ".labels.png",
    "geojson": ".geojson",
    "overlay": ".overlay.png",
}


def _cv2() -> Any:
    from promptseg.io import import_cv2

    return import_cv2("polygons and GeoJSON")


# --------------------------------------------------------------------------------------------- records
def record_mask(record: Record) -> np.ndarray:
    """The ``H×W`` bool mask of a record (its ``segmentation`` is a bool array or a COCO RLE dict)."""
    seg = record["segmentation"]
    if isinstance(seg, dict):
        from promptseg.io import rle_to_mask

        return rle_to_mask(seg)
    arr = np.asarray(seg)
    if arr.ndim != 2:
        raise ValueError(f"record segmentation must be an H×W mask or a COCO RLE dict, got shape {arr.shape}")
    return arr if arr.dtype == np.bool_ else arr > 0


def record_rle(record: Record) -> Dict[str, Any]:
    """The record's mask as COCO compressed RLE with ``str`` counts (encoded unless it already is RLE)."""
    seg = record["segmentation"]
    if isinstance(seg, dict):
        counts = seg["counts"]
        if isinstance(counts, list):  # uncompressed RLE: compress it
            from promptseg.io import mask_to_rle, rle_to_mask

            return mask_to_rle(rle_to_mask(seg))
        return {
            "size": [int(s) for s in seg["size"]],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else str(counts),
        }
    from promptseg.io import mask_to_rle

    return mask_to_rle(record_mask(record))


def record_size(record: Record) -> Tuple[int, int]:
    """``(H, W)`` of a record's mask."""
    seg = record["segmentation"]
    if isinstance(seg, dict):
        h, w = seg["size"]
        return int(h), int(w)
    h, w = np.shape(seg)
    return int(h), int(w)


def _check_sizes(records: Sequence[Record], height: int, width: int) -> None:
    for k, record in enumerate(records):
        if record_size(record) != (height, width):
            raise ValueError(
                f"mask {k} has size {record_size(record)}, the image {(height, width)}: records and image disagree"
            )


def _ints(values: Iterable[Any]) -> List[int]:
    return [int(round(float(v))) for v in values]


def _floats(values: Iterable[Any]) -> List[float]:
    return [float(v) for v in values]


def _score(value: Any) -> Optional[float]:
    """A score as a JSON number, or None (``null``) when it is not finite: the stability score of an empty
    mask is 0 / 0 = NaN (kept by the generator when its stability filter is off, as in the reference)."""
    value = float(value)
    return value if math.isfinite(value) else None


def _points(value: Any) -> List[List[float]]:
    arr = np.asarray(value, dtype=np.float64).reshape(-1, 2)
    return [[float(x), float(y)] for x, y in arr]


# --------------------------------------------------------------------------------------------- SA-1B, COCO
def sa1b_annotations(records: Sequence[Record], first_id: int = 1) -> List[Dict[str, Any]]:
    """SA-1B annotation dicts (official key set and order) for ``records``; ids ``first_id, first_id+1, …``."""
    out = []
    for k, r in enumerate(records):
        out.append({
            "id": first_id + k,
            "segmentation": record_rle(r),
            "area": int(r["area"]),
            "bbox": _ints(r["bbox"]),
            "predicted_iou": _score(r["predicted_iou"]),
            "point_coords": _points(r["point_coords"]),
            "stability_score": _score(r["stability_score"]),
            "crop_box": _ints(r["crop_box"]),
        })
    return out


def sa1b_json(
    records: Sequence[Record], *, image_id: int, width: int, height: int, file_name: str, first_id: int = 1
) -> Dict[str, Any]:
    """The SA-1B per-image document::

        {"image": {"image_id", "width", "height", "file_name"},
         "annotations": [{"id", "segmentation": {"size": [H, W], "counts": str}, "area", "bbox",
                          "predicted_iou", "point_coords", "stability_score", "crop_box"}, ...]}

    It is what the released SA-1B ``sa_N.json`` files hold, and what :class:`promptseg.data.sa1b.SA1BDataset`
    reads (put the image next to the JSON file).
    """
    _check_sizes(records, height, width)
    return {
        "image": {"image_id": int(image_id), "width": int(width), "height": int(height), "file_name": str(file_name)},
        "annotations": sa1b_annotations(records, first_id),
    }


def coco_results(records: Sequence[Record], *, image_id: int, category_id: int = 1) -> List[Dict[str, Any]]:
    """COCO results entries (the format ``COCO.loadRes`` and the COCO evaluation read), class-agnostic.

    ``score`` is the model's predicted IoU; every mask gets ``category_id`` (default 1). ``bbox`` is COCO's
    box of the mask (``pycocotools.mask.toBbox``: width = columns covered), not the record's ``bbox``, whose
    width is one less (SAM's ``x_max - x_min`` of the inclusive pixel box: 0 for a one-pixel mask).
    """
    out = []
    for i, r in enumerate(records):
        score = float(r["predicted_iou"])
        if not math.isfinite(score):  # COCO evaluation ranks by score: no null to write, unlike the SA-1B JSON
            raise ValueError(f"record {i}: predicted_iou is {score}, which COCO results cannot hold as a score "
                             "(a model producing non-finite outputs?); leave the coco format out to keep the rest")
        rle = record_rle(r)
        out.append({
            "image_id": int(image_id),
            "category_id": int(category_id),
            "segmentation": rle,
            "score": score,
            "bbox": _rle_bbox(rle),
            "area": int(r["area"]),
        })
    return out


def _rle_bbox(rle: Mapping[str, Any]) -> List[int]:
    """COCO ``[x, y, width, height]`` of a compressed RLE with ``str`` counts (zeros when empty)."""
    from promptseg.amg.helpers import pycocotools_mask

    box = pycocotools_mask().toBbox({"size": list(rle["size"]), "counts": rle["counts"].encode("ascii")})
    return _ints(box)


# --------------------------------------------------------------------------------------------- label map
def label_map(records: Sequence[Record], height: int, width: int) -> np.ndarray:
    """``H×W`` map of annotation ids: 0 = no mask, ``k+1`` = ``records[k]`` (the SA-1B/GeoJSON id).

    Masks overlap (a part and its whole object), so one pixel can belong to several. Rule: masks are drawn
    from the largest area to the smallest (ties: lower id first) and a later mask overwrites an earlier one,
    so every pixel shows the **smallest** mask that covers it and small masks stay visible inside the large
    ones. ``uint8`` for up to 255 masks, ``uint16`` above (up to 65535).
    """
    _check_sizes(records, height, width)
    k = len(records)
    if k > 65535:
        raise ValueError(f"a label map holds at most 65535 masks (16-bit PNG), got {k}")
    out = np.zeros((height, width), dtype=np.uint8 if k <= 255 else np.uint16)
    areas = [int(record_mask(r).sum()) if "area" not in r else int(r["area"]) for r in records]
    for i in sorted(range(k), key=lambda i: (-areas[i], i)):
        out[record_mask(records[i])] = i + 1
    return out


# --------------------------------------------------------------------------------------------- polygons
def _shift(p: np.ndarray, k: int) -> np.ndarray:
    """``np.roll(p, k, axis=0)`` for k = ±1, without its overhead (called per ring)."""
    return np.concatenate((p[-1:], p[:-1])) if k == 1 else np.concatenate((p[1:], p[:1]))


def _shoelace(ring: np.ndarray) -> float:
    """Signed area of an open ring (positive = counter-clockwise in a y-up frame)."""
    x, y = ring[:, 0].astype(np.float64), ring[:, 1].astype(np.float64)
    nx, ny = _shift(x, -1), _shift(y, -1)
    return 0.5 * float(np.dot(x, ny) - np.dot(nx, y))


def _clean_ring(points: np.ndarray) -> np.ndarray:
    """Drop repeated and collinear vertices of an open ring (axis-aligned pixel-edge rings)."""
    p = points
    if len(p) < 2:
        return p
    keep = (p != _shift(p, 1)).any(axis=1)
    p = p[keep] if keep.any() else p[:1]
    for _ in range(2):  # removing a vertex can make its neighbours collinear only once more at most
        if len(p) < 3:
            break
        prev, nxt = _shift(p, 1), _shift(p, -1)
        d1, d2 = p - prev, nxt - p
        keep = d1[:, 0] * d2[:, 1] != d1[:, 1] * d2[:, 0]
        if keep.all() or keep.sum() < 3:
            break
        p = p[keep]
    return p


def _simplify(ring: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas–Peucker of a simple ring. A result that crosses or touches itself (Douglas–Peucker does not
    keep a ring simple) is redone at half, then a quarter of the tolerance, and the exact ring kept when
    that fails too; a collapsed result (< 3 vertices or no area) is returned as is, to be dropped."""
    if tolerance <= 0 or len(ring) < 4:
        return ring
    cv2 = _cv2()
    contour = np.ascontiguousarray(ring.reshape(-1, 1, 2), dtype=np.int32)
    for eps in (tolerance, tolerance / 2, tolerance / 4):
        out = cv2.approxPolyDP(contour, float(eps), True).reshape(-1, 2).astype(np.int64)
        if len(out) < 3 or _shoelace(out) == 0 or _is_simple(out):
            return out
    return ring


def _side(p: np.ndarray, q: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Sign of the turn ``p → q → r`` per row of ``N×2`` points: 1 left, -1 right, 0 collinear."""
    return np.sign((q[:, 0] - p[:, 0]) * (r[:, 1] - p[:, 1]) - (q[:, 1] - p[:, 1]) * (r[:, 0] - p[:, 0]))


def _is_simple(ring: np.ndarray) -> bool:
    """Whether an open ring of integer vertices is simple: no repeated vertex, no spike, and no two
    non-adjacent edges that meet (cross or touch). Edges are paired only where their x-extents overlap."""
    a = np.asarray(ring, dtype=np.int64)
    n = len(a)
    if n < 3 or len(np.unique(a, axis=0)) != n:
        return False
    b = _shift(a, -1)
    d1, d2 = b - a, _shift(b, -1) - b
    if ((d1[:, 0] * d2[:, 1] == d1[:, 1] * d2[:, 0]) & ((d1 * d2).sum(axis=1) < 0)).any():
        return False  # an edge that turns back along the previous one
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    order = np.argsort(lo[:, 0], kind="stable")
    ends = np.searchsorted(lo[order, 0], hi[order, 0], side="right")  # sorted edges starting within each one
    for start in range(0, n, 512):
        idx = np.arange(start, min(n, start + 512))
        cnt = np.maximum(ends[idx] - idx - 1, 0)
        if cnt.sum() == 0:
            continue
        first = np.repeat(idx, cnt)
        second = first + 1 + np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        i, j = np.minimum(order[first], order[second]), np.maximum(order[first], order[second])
        keep = (j - i != 1) & ~((i == 0) & (j == n - 1))  # adjacent edges share a vertex
        keep &= (lo[i, 1] <= hi[j, 1]) & (lo[j, 1] <= hi[i, 1])
        i, j = i[keep], j[keep]
        # extents overlap, so two collinear edges meet as well
        apart_i = _side(a[i], b[i], a[j]) * _side(a[i], b[i], b[j]) > 0  # edge j on one side of edge i's line
        apart_j = _side(a[j], b[j], a[i]) * _side(a[j], b[j], b[i]) > 0
        if not (apart_i | apart_j).all():
            return False
    return True


def mask_to_polygons(mask: np.ndarray, tolerance: float = 0.0) -> List[Polygon]:
    """Polygons of a mask that keep every part and every hole.

    Returns one ``{"exterior": [[x, y], ...], "holes": [[[x, y], ...], ...]}`` per part, parts in raster order
    of their first pixel. Rings are open (the first vertex is not repeated), integer pixel-edge coordinates
    (see the module docstring), exteriors counter-clockwise and holes clockwise by the shoelace formula on
    ``(x, y)`` as numbers (that is clockwise / counter-clockwise on screen, where ``y`` points down).

    Parts are the 4-connected components of the mask (two pixels touching only at a corner are two parts that
    share a vertex), so every ring is simple and, at ``tolerance=0``, the polygons enclose exactly the mask's
    pixels (:func:`polygons_to_mask` gives the mask back). A part inside a hole of another part is its own
    polygon. ``tolerance`` > 0 simplifies each ring with Douglas–Peucker (``cv2.approxPolyDP``, maximum
    distance in pixels); rings that collapse below 3 vertices are dropped (a dropped exterior drops its
    part), and simplified rings of neighbouring parts or holes may cross — as with any per-ring simplifier.
    Each ring stays simple: one that Douglas–Peucker would make cross or touch itself is simplified with
    half, then a quarter of the tolerance, and kept exact when that fails too.
    """
    cv2 = _cv2()
    if not (tolerance >= 0 and math.isfinite(tolerance)):
        raise ValueError(f"tolerance must be a finite number ≥ 0 pixels, got {tolerance}")
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be a 2-D H×W array, got shape {m.shape}")
    m = m if m.dtype == np.bool_ else m > 0
    if not m.any():
        return []
    a, b, c, d = m[:-1, :-1], m[1:, 1:], m[:-1, 1:], m[1:, :-1]
    falling, rising = a & b & ~c & ~d, c & d & ~a & ~b  # pixels that touch only at a corner
    if not (falling.any() or rising.any()):
        # 4- and 8-connectivity agree: trace the whole mask at once.
        return _sorted_parts(_trace(m, tolerance))
    # OpenCV traces 8-connected shapes. Give 4-connected components that touch at a corner different
    # colours (greedy graph colouring) and trace each colour on its own: a few passes, not one per part.
    count, labels = cv2.connectedComponents(m.astype(np.uint8), connectivity=4)
    pairs = np.concatenate([
        np.stack([a_lab[f], b_lab[f]], axis=1)
        for a_lab, b_lab, f in ((labels[:-1, :-1], labels[1:, 1:], falling), (labels[:-1, 1:], labels[1:, :-1], rising))
    ])
    pairs = np.unique(np.sort(pairs[pairs[:, 0] != pairs[:, 1]], axis=1), axis=0)
    neighbours: Dict[int, List[int]] = {}
    for u, v in pairs.tolist():
        neighbours.setdefault(u, []).append(v)
        neighbours.setdefault(v, []).append(u)
    colour = np.zeros(count, dtype=np.int64)
    colour[0] = -1  # background
    for u in sorted(neighbours):
        taken = {int(colour[v]) for v in neighbours[u] if v < u}
        colour[u] = next(k for k in range(len(taken) + 1) if k not in taken)
    polygons: List[Polygon] = []
    pixel_colour = colour[labels]
    for k in range(int(colour.max()) + 1):
        polygons += _trace(pixel_colour == k, tolerance)
    return _sorted_parts(polygons)


def _sorted_parts(polygons: List[Polygon]) -> List[Polygon]:
    """Parts in raster order of their top-left vertex (the first pixel's corner at tolerance 0)."""
    return sorted(polygons, key=lambda p: min((pt[1], pt[0]) for pt in p["exterior"]))


def _trace(mask: np.ndarray, tolerance: float) -> List[Polygon]:
    """Polygons of a mask in which no two pixels touch only at a corner, so that OpenCV's 8-connected
    tracing gives its 4-connected parts."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return []
    y, x = int(rows[0]), int(cols[0])
    part = mask[y : rows[-1] + 1, x : cols[-1] + 1]
    cv2 = _cv2()
    h, w = part.shape
    padded = np.zeros((h + 2, w + 2), dtype=np.uint8)  # one pixel of background all round
    padded[1:-1, 1:-1] = part
    # Trace at twice the resolution: the centres of the doubled boundary pixels then map to the pixel
    # corners of the original by (u + 1) // 2, for outer and hole boundaries alike.
    big = np.repeat(np.repeat(padded, 2, axis=0), 2, axis=1)
    contours, hierarchy = cv2.findContours(big, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    if hierarchy is None:
        return []
    offset = np.array([x - 1, y - 1], dtype=np.int64)
    rings = [_clean_ring((c.reshape(-1, 2).astype(np.int64) + 1) // 2 + offset) for c in contours]
    parents = hierarchy.reshape(-1, 4)[:, 3]
    polygons: List[Polygon] = []
    for i in np.flatnonzero(parents == -1):
        exterior = _oriented(_simplify(rings[i], tolerance), +1)
        if exterior is None:
            continue
        holes = [h for h in (_oriented(_simplify(rings[j], tolerance), -1) for j in np.flatnonzero(parents == i))
                 if h is not None]
        polygons.append({"exterior": exterior, "holes": holes})
    return polygons


def _oriented(ring: np.ndarray, sign: int) -> Optional[List[List[int]]]:
    """The ring as a list with the orientation ``sign`` (+1 counter-clockwise), None when degenerate."""
    if len(ring) < 3:
        return None
    area = _shoelace(ring)
    if area == 0:
        return None
    return (ring if area * sign > 0 else ring[::-1]).tolist()


def polygon_area(polygon: Polygon) -> float:
    """Area enclosed by a polygon (exterior minus holes), in square pixels."""
    ext = abs(_shoelace(np.asarray(polygon["exterior"], dtype=np.float64)))
    return ext - sum(abs(_shoelace(np.asarray(h, dtype=np.float64))) for h in polygon.get("holes", []))


def _open(ring: Any) -> np.ndarray:
    p = np.asarray(ring, dtype=np.float64).reshape(-1, 2)
    if len(p) > 1 and np.array_equal(p[0], p[-1]):
        p = p[:-1]
    return p


def _fill_rings(rings: Sequence[Any], height: int, width: int) -> np.ndarray:
    """Even–odd fill of rings in pixel-edge coordinates: a pixel is inside when its centre is."""
    crossings = np.zeros((height, width + 1), dtype=np.int32)
    for ring in rings:
        p = _open(ring)
        if len(p) < 3:
            continue
        q = np.roll(p, -1, axis=0)
        sloped = p[:, 1] != q[:, 1]
        (x0, y0), (x1, y1) = p[sloped].T, q[sloped].T
        lo, hi = np.minimum(y0, y1), np.maximum(y0, y1)
        first = np.clip(np.ceil(lo - 0.5), 0, height).astype(np.int64)  # rows whose centre i+0.5 is in [lo, hi)
        stop = np.clip(np.ceil(hi - 0.5), 0, height).astype(np.int64)
        n = np.maximum(stop - first, 0)
        if n.sum() == 0:
            continue
        edge = np.repeat(np.arange(len(n)), n)
        rows = first[edge] + (np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n))
        t = (rows + 0.5 - y0[edge]) / (y1[edge] - y0[edge])
        xc = x0[edge] + t * (x1[edge] - x0[edge])
        cols = np.clip(np.ceil(xc - 0.5), 0, width).astype(np.int64)
        np.add.at(crossings, (rows, cols), 1)
    return (np.cumsum(crossings, axis=1)[:, :width] % 2).astype(bool)


def polygons_to_mask(polygons: Sequence[Polygon], height: int, width: int) -> np.ndarray:
    """Rasterise polygons (pixel-edge coordinates, rings open or closed) → ``H×W`` bool mask.

    A pixel is inside when its centre is inside a polygon's exterior and outside its holes; polygons are
    united. ``polygons_to_mask(mask_to_polygons(m), *m.shape)`` equals ``m``.
    """
    out = np.zeros((height, width), dtype=bool)
    for poly in polygons:
        out |= _fill_rings([poly["exterior"], *poly.get("holes", [])], height, width)
    return out


# --------------------------------------------------------------------------------------------- GeoJSON
def apply_geotransform(points: Any, geotransform: Sequence[float]) -> np.ndarray:
    """Pixel-edge ``(x, y)`` → world coordinates with a GDAL geotransform
    ``(GT0, GT1, GT2, GT3, GT4, GT5)``: ``X = GT0 + x·GT1 + y·GT2``, ``Y = GT3 + x·GT4 + y·GT5``."""
    gt = _geotransform(geotransform)
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return np.stack([gt[0] + p[:, 0] * gt[1] + p[:, 1] * gt[2], gt[3] + p[:, 0] * gt[4] + p[:, 1] * gt[5]], axis=1)


def _geotransform(geotransform: Sequence[float]) -> GeoTransform:
    gt = tuple(float(v) for v in geotransform)
    if len(gt) != 6 or not all(math.isfinite(v) for v in gt):
        raise ValueError(f"a geotransform is 6 finite numbers (GDAL order GT0..GT5), got {geotransform!r}")
    if gt[1] * gt[5] - gt[2] * gt[4] == 0:
        raise ValueError(f"geotransform {gt} is singular (GT1·GT5 − GT2·GT4 = 0)")
    return gt  # type: ignore[return-value]


def _geo_ring(ring: Any, gt: Optional[GeoTransform], flip: bool) -> List[List[float]]:
    p = np.asarray(ring, dtype=np.int64 if gt is None else np.float64)
    if gt is not None:
        p = apply_geotransform(p, gt)
    if flip:
        p = p[::-1]
    closed = np.concatenate([p, p[:1]])
    return closed.tolist()


def polygons_to_geometry(
    polygons: Sequence[Polygon], geotransform: Optional[Sequence[float]] = None
) -> Optional[Dict[str, Any]]:
    """GeoJSON geometry: ``Polygon`` for one part, ``MultiPolygon`` for several, ``None`` for none.

    Rings are closed, holes are interior rings, and winding follows RFC 7946 (exterior counter-clockwise,
    holes clockwise) in the output coordinates; a geotransform whose determinant is negative (north-up
    rasters) mirrors the pixel frame, so rings are reversed after mapping.
    """
    gt = None if geotransform is None else _geotransform(geotransform)
    flip = gt is not None and gt[1] * gt[5] - gt[2] * gt[4] < 0
    coords = [
        [_geo_ring(poly["exterior"], gt, flip)] + [_geo_ring(h, gt, flip) for h in poly.get("holes", [])]
        for poly in polygons
    ]
    if not coords:
        return None
    if len(coords) == 1:
        return {"type": "Polygon", "coordinates": coords[0]}
    return {"type": "MultiPolygon", "coordinates": coords}


def geojson(
    records: Sequence[Record],
    *,
    tolerance: float = 1.0,
    geotransform: Optional[Sequence[float]] = None,
    crs: Optional[str] = None,
    name: Optional[str] = None,
    first_id: int = 1,
) -> Dict[str, Any]:
    """GeoJSON ``FeatureCollection`` with one feature per mask.

    Geometry from :func:`mask_to_polygons` (``tolerance`` in pixels) mapped through ``geotransform`` when
    given, else in pixel coordinates (x right, y down; not WGS 84, so not for web maps as is). Properties:
    ``id`` (the annotation id), ``score`` (predicted IoU), ``stability`` (stability score), ``area`` (pixels)
    and ``bbox`` (pixel XYWH). A mask whose polygons all vanish under simplification keeps its feature with
    a ``null`` geometry. ``crs`` (e.g. ``"EPSG:32633"``) is written as the pre-RFC-7946 ``crs`` member that
    GDAL/QGIS read; ``name`` as GDAL's ``name`` member.
    """
    features = []
    for k, r in enumerate(records):
        geometry = polygons_to_geometry(mask_to_polygons(record_mask(r), tolerance), geotransform)
        features.append({
            "type": "Feature",
            "id": first_id + k,
            "geometry": geometry,
            "properties": {
                "id": first_id + k,
                "score": _score(r["predicted_iou"]),
                "stability": _score(r["stability_score"]),
                "area": int(r["area"]),
                "bbox": _ints(r["bbox"]),
            },
        })
    doc: Dict[str, Any] = {"type": "FeatureCollection"}
    if name is not None:
        doc["name"] = str(name)
    if crs:
        doc["crs"] = {"type": "name", "properties": {"name": _crs_urn(crs)}}
    doc["features"] = features
    return doc


def _crs_urn(crs: str) -> str:
    if crs.upper().startswith("EPSG:"):
        return f"urn:ogc:def:crs:EPSG::{crs.split(':', 1)[1]}"
    return crs


def read_georeference(image_path: PathLike) -> Tuple[Optional[GeoTransform], Optional[str]]:
    """``(geotransform, crs)`` of an image from a world file next to it or from GeoTIFF tags.

    World files: ``photo.jgw``/``photo.jpgw`` for ``photo.jpg`` (``.pgw``, ``.tfw``, … likewise) or
    ``photo.wld``; their 6 lines are ``A, D, B, E, C, F`` with ``(C, F)`` the *centre* of the top-left
    pixel, converted to GDAL's corner-based order. GeoTIFF: ``ModelTransformationTag`` or
    ``ModelPixelScaleTag`` + ``ModelTiepointTag``, and the EPSG code of ``GeoKeyDirectoryTag`` when present;
    a ``PixelIsPoint`` raster (``GTRasterTypeGeoKey`` = 2) is shifted by half a pixel, as GDAL does.
    Returns ``(None, None)`` when the image carries no georeference.
    """
    path = Path(image_path)
    ext = path.suffix.lower().lstrip(".")
    candidates = []
    if ext:
        candidates += [path.with_suffix(f".{ext[0]}{ext[-1]}w"), path.with_suffix(f".{ext}w")]
    candidates.append(path.with_suffix(".wld"))
    for world in candidates:
        for cand in (world, world.with_suffix(world.suffix.upper())):
            if cand.is_file():
                values = [float(v) for v in cand.read_text(encoding="utf-8", errors="replace").split()[:6]]
                if len(values) != 6:
                    raise ValueError(f"world file {cand} must hold 6 numbers, got {len(values)}")
                a, d, b, e, c, f = values
                return _geotransform((c - a / 2 - b / 2, a, b, f - d / 2 - e / 2, d, e)), None
    if ext in ("tif", "tiff"):
        return _geotiff_georeference(path)
    return None, None


def _geotiff_georeference(path: Path) -> Tuple[Optional[GeoTransform], Optional[str]]:
    from PIL import Image

    with Image.open(path) as im:
        tags = dict(getattr(im, "tag_v2", {}) or {})
    crs = None
    pixel_is_point = False
    keys = tags.get(34735)  # GeoKeyDirectoryTag: header of 4 shorts, then (id, location, count, value) rows
    if keys is not None and len(keys) >= 4:
        rows = np.asarray(keys[4 : 4 + 4 * int(keys[3])]).reshape(-1, 4)
        for key_id in (3072, 2048):  # ProjectedCSTypeGeoKey, then GeographicTypeGeoKey
            hit = rows[(rows[:, 0] == key_id) & (rows[:, 1] == 0)]
            if len(hit) and 1024 <= int(hit[0, 3]) < 32767:
                crs = f"EPSG:{int(hit[0, 3])}"
                break
        raster_type = rows[(rows[:, 0] == 1025) & (rows[:, 1] == 0)]  # GTRasterTypeGeoKey
        pixel_is_point = bool(len(raster_type)) and int(raster_type[0, 3]) == 2  # RasterPixelIsPoint
    gt = None
    matrix = tags.get(34264)
    if matrix is not None and len(matrix) >= 8:
        m = [float(v) for v in matrix]
        gt = (m[3], m[0], m[1], m[7], m[4], m[5])
    scale, tie = tags.get(33550), tags.get(33922)
    if gt is None and scale is not None and tie is not None and len(scale) >= 2 and len(tie) >= 6:
        sx, sy = float(scale[0]), float(scale[1])
        i, j, x, y = float(tie[0]), float(tie[1]), float(tie[3]), float(tie[4])
        gt = (x - i * sx, sx, 0.0, y + j * sy, 0.0, -sy)
    if gt is None:
        return None, crs
    if pixel_is_point:  # the tie point / matrix map pixel centres: move the origin to the pixel's corner (RFC 33)
        gt = (gt[0] - (gt[1] + gt[2]) / 2, gt[1], gt[2], gt[3] - (gt[4] + gt[5]) / 2, gt[4], gt[5])
    return _geotransform(gt), crs


# --------------------------------------------------------------------------------------------- overlay
def render_masks_overlay(image: np.ndarray, records: Sequence[Record]) -> np.ndarray:
    """All masks on ``image`` (``H×W×3`` uint8) with :func:`promptseg.io.render_overlay`: one colour per mask,
    largest filled first so small ones stay visible, outlines on top."""
    from promptseg.io import render_overlay

    h, w = np.asarray(image).shape[:2]
    _check_sizes(records, h, w)
    stack = np.zeros((len(records), h, w), dtype=bool)
    for k, r in enumerate(records):
        stack[k] = record_mask(r)
    return render_overlay(image, stack)


# --------------------------------------------------------------------------------------------- writing
def dumps(obj: Any) -> str:
    """Compact, deterministic JSON text (UTF-8, no NaN) — byte-identical for equal inputs.

    Lone surrogates (a file name that is not valid UTF-8, as ``os.fsdecode`` gives it) are written as
    ``\\uXXXX`` escapes, which ``json.loads`` reads back to the same name; UTF-8 cannot encode them."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False) + "\n"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def write_bytes(data: bytes, path: PathLike, *, durable: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically; ``durable`` also fsyncs the file before the rename."""
    from promptseg.fileio import atomic_write

    path = Path(path)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), durable=durable)
    return path


def write_json(obj: Any, path: PathLike, *, durable: bool = False) -> Path:
    """Write ``obj`` as compact JSON (:func:`dumps`), atomically."""
    return write_bytes(dumps(obj).encode("utf-8"), path, durable=durable)


def png_bytes(array: np.ndarray) -> bytes:
    """PNG encoding of a ``uint8`` (grey or RGB) or ``uint16`` (grey, 16-bit) array."""
    from PIL import Image

    arr = np.ascontiguousarray(array)
    if arr.dtype == np.uint16:
        image = Image.fromarray(arr, mode="I;16") if _pil_needs_mode() else Image.fromarray(arr)
    else:
        image = Image.fromarray(arr)
    buf = _stdio.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _pil_needs_mode() -> bool:
    import PIL

    return int(PIL.__version__.split(".")[0]) < 10  # older Pillow reads uint16 arrays as 32-bit "I"


def write_png(array: np.ndarray, path: PathLike, *, durable: bool = False) -> Path:
    """Write an array as PNG (see :func:`png_bytes`), atomically."""
    return write_bytes(png_bytes(array), path, durable=durable)


def read_label_map(path: PathLike) -> np.ndarray:
    """Read a label map PNG written by the batch runner → ``H×W`` ``uint8`` or ``uint16``."""
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im)
    if arr.dtype != np.uint8:
        arr = arr.astype(np.uint16)
    return arr


def write_formats(
    records: Sequence[Record],
    image: np.ndarray,
    paths: Mapping[str, PathLike],
    *,
    image_id: int,
    file_name: str,
    polygon_tolerance: float = 1.0,
    geotransform: Optional[Sequence[float]] = None,
    crs: Optional[str] = None,
    durable: bool = False,
) -> Dict[str, Path]:
    """Write each format named in ``paths`` (``{"sa1b": path, "png": path, ...}``) in :data:`FORMATS` order."""
    unknown = set(paths) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown output format(s) {sorted(unknown)}; choose from {', '.join(FORMATS)}")
    h, w = np.asarray(image).shape[:2]
    _check_sizes(records, h, w)
    written: Dict[str, Path] = {}
    for fmt in FORMATS:
        if fmt not in paths:
            continue
        path = paths[fmt]
        if fmt == "sa1b":
            doc = sa1b_json(records, image_id=image_id, width=w, height=h, file_name=file_name)
            written[fmt] = write_json(doc, path, durable=durable)
        elif fmt == "coco":
            written[fmt] = write_json(coco_results(records, image_id=image_id), path, durable=durable)
        elif fmt == "png":
            written[fmt] = write_png(label_map(records, h, w), path, durable=durable)
        elif fmt == "geojson":
            doc = geojson(records, tolerance=polygon_tolerance, geotransform=geotransform, crs=crs, name=file_name)
            written[fmt] = write_json(doc, path, durable=durable)
        elif fmt == "overlay":
            written[fmt] = write_png(render_masks_overlay(image, records), path, durable=durable)
    return written
