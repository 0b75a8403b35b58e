"""Dataset statistics in the style of the paper's §5 (Figs. 5 and 6).

For every mask: its centre (mean pixel position, normalised to [0, 1] by the image width and height; an
empty mask has none and is left out of the centre statistics), its relative size ``sqrt(mask area /
image area)`` and its concavity ``1 − mask area / convex hull area`` (the hull of all the mask's contour
points, rasterised, so both areas are pixel counts; OpenCV). Per image: the number of masks.
:func:`write_report` draws the four figures with matplotlib (imported on use) and writes a JSON summary.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np

PathLike = Union[str, "os.PathLike[str]"]

#: Bins of the masks-per-image histogram, as in the paper's Fig. 6 (left).
MASK_COUNT_BINS = ((1, 10), (11, 50), (51, 100), (101, 200), (201, None))
FIGURES = ("mask_centers.png", "masks_per_image.png", "relative_mask_size.png", "concavity.png")
SUMMARY = "stats.json"


def concavity(mask: np.ndarray) -> float:
    """``1 − area / convex hull area`` of a bool mask (0 for a convex shape; 0 for an empty mask)."""
    from promptseg.io import import_cv2

    cv2 = import_cv2("concavity")

    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return 0.0
    y0, x0 = ys.min(), xs.min()
    crop = np.ascontiguousarray(mask[y0 : ys.max() + 1, x0 : xs.max() + 1]).astype(np.uint8)
    contours, _ = cv2.findContours(crop, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    points = np.concatenate([c.reshape(-1, 2) for c in contours])
    hull = cv2.convexHull(points)
    canvas = np.zeros_like(crop)
    cv2.fillConvexPoly(canvas, hull, 1)
    hull_area = int(np.count_nonzero(canvas | crop))
    return float(max(0.0, 1.0 - ys.size / hull_area))


def mask_properties(masks: np.ndarray) -> Dict[str, np.ndarray]:
    """``{"centers": K×2 (x, y) in [0, 1], "relative_size": K, "concavity": K}`` for K×H×W bool masks (an
    empty mask has no centre: NaN)."""
    k = len(masks)
    if k == 0:
        return {"centers": np.zeros((0, 2)), "relative_size": np.zeros(0), "concavity": np.zeros(0)}
    h, w = masks.shape[1:]
    centers, sizes, conc = np.full((k, 2), np.nan), np.zeros(k), np.zeros(k)
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        if ys.size:
            centers[i] = ((xs.mean() + 0.5) / w, (ys.mean() + 0.5) / h)
        sizes[i] = np.sqrt(ys.size / (h * w))
        conc[i] = concavity(m)
    return {"centers": centers, "relative_size": sizes, "concavity": conc}


def compute_stats(dataset: Any, max_images: Optional[int] = None, progress: bool = False) -> Dict[str, Any]:
    """Collect the per-mask and per-image statistics of a promptseg dataset (any reader of
    :mod:`promptseg.data`; ``dataset.load_masks(i)`` is used when present so images are not decoded)."""
    from tqdm import tqdm

    n = len(dataset) if max_images is None else min(len(dataset), int(max_images))
    centers: List[np.ndarray] = []
    sizes: List[np.ndarray] = []
    conc: List[np.ndarray] = []
    counts: List[int] = []
    parts = 0
    names: Counter = Counter()
    for i in tqdm(range(n), desc="stats", unit="img", disable=not progress, dynamic_ncols=True):
        if hasattr(dataset, "load_masks"):
            masks, item_names, parents = dataset.load_masks(i)
        else:
            item = dataset[i]
            masks, item_names, parents = item["masks"], item.get("names"), item.get("parents")
        props = mask_properties(masks)
        centers.append(props["centers"][~np.isnan(props["centers"][:, 0])])  # empty masks have no centre
        sizes.append(props["relative_size"])
        conc.append(props["concavity"])
        counts.append(len(masks))
        if parents is not None:
            parts += sum(1 for p in parents if p >= 0)
        if item_names is not None:
            names.update(n for n in item_names if n)
    return {
        "centers": np.concatenate(centers) if centers else np.zeros((0, 2)),
        "relative_size": np.concatenate(sizes) if sizes else np.zeros(0),
        "concavity": np.concatenate(conc) if conc else np.zeros(0),
        "masks_per_image": np.asarray(counts, dtype=np.int64),
        "num_nested": parts,
        "names": names,
    }


def _describe(values: np.ndarray) -> Dict[str, float]:
    if values.size == 0:
        return {"mean": 0.0, "median": 0.0, "p10": 0.0, "p90": 0.0, "min": 0.0, "max": 0.0}
    p10, med, p90 = np.percentile(values, [10, 50, 90])
    return {"mean": round(float(values.mean()), 6), "median": round(float(med), 6), "p10": round(float(p10), 6),
            "p90": round(float(p90), 6), "min": round(float(values.min()), 6), "max": round(float(values.max()), 6)}


def _count_bins(counts: np.ndarray) -> Dict[str, int]:
    out = {"0": int((counts == 0).sum())}
    for lo, hi in MASK_COUNT_BINS:
        label = f"{lo}-{hi}" if hi is not None else f">{lo - 1}"
        out[label] = int(((counts >= lo) & (counts <= (hi if hi is not None else np.iinfo(np.int64).max))).sum())
    return out


def summarize(stats: Dict[str, Any]) -> Dict[str, Any]:
    """JSON-ready summary of :func:`compute_stats` output (with histogram counts)."""
    rel, conc, counts = stats["relative_size"], stats["concavity"], stats["masks_per_image"]
    size_edges = np.linspace(0, 1, 26)
    conc_edges = np.linspace(0, 1, 21)
    heat, _, _ = np.histogram2d(stats["centers"][:, 1], stats["centers"][:, 0], bins=8, range=[[0, 1], [0, 1]])
    return {
        "images": int(counts.size),
        "masks": int(counts.sum()),
        "nested_masks": int(stats["num_nested"]),
        "masks_per_image": {**_describe(counts.astype(np.float64)), "bins": _count_bins(counts)},
        "relative_mask_size": {**_describe(rel), "histogram": {"edges": [round(float(e), 4) for e in size_edges],
                                                                 "counts": np.histogram(rel, size_edges)[0].tolist()}},
        "concavity": {**_describe(conc), "histogram": {"edges": [round(float(e), 4) for e in conc_edges],
                                                       "counts": np.histogram(conc, conc_edges)[0].tolist()}},
        "center_heatmap_8x8": heat.astype(int).tolist(),
        "top_names": [[n, c] for n, c in sorted(stats["names"].items(), key=lambda t: (-t[1], t[0]))[:20]],
    }


def _matplotlib() -> Any:
    from promptseg.io import optional_import

    figure = optional_import("matplotlib.figure", "drawing dataset figures", "matplotlib", "train")
    agg = optional_import("matplotlib.backends.backend_agg", "drawing dataset figures", "matplotlib", "train")
    return figure.Figure, agg.FigureCanvasAgg


def _save(fig: Any, canvas_cls: Any, path: Path) -> None:
    from promptseg.fileio import atomic_write

    canvas_cls(fig)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None}))


def write_report(stats: Dict[str, Any], outdir: PathLike, title: str = "") -> Dict[str, Any]:
    """Draw the four figures and write ``stats.json`` into ``outdir``; returns the summary."""
    from promptseg.io import save_json

    Figure, Canvas = _matplotlib()
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    summary = summarize(stats)
    suffix = f" — {title}" if title else ""
    n_img, n_masks = summary["images"], summary["masks"]
    legend = f"{n_img} images, {n_masks} masks"

    fig = Figure(figsize=(5, 4.5))
    ax = fig.add_subplot()
    c = stats["centers"]
    heat, _, _ = np.histogram2d(c[:, 1], c[:, 0], bins=40, range=[[0, 1], [0, 1]])
    im = ax.imshow(heat / max(1, len(c)), extent=(0, 1, 1, 0), cmap="viridis", interpolation="bilinear")
    fig.colorbar(im, ax=ax, label="fraction of masks")
    ax.set_xlabel("x (normalised)")
    ax.set_ylabel("y (normalised)")
    ax.set_title(f"Mask centres{suffix}\n{legend}", fontsize=10)
    _save(fig, Canvas, outdir / FIGURES[0])

    fig = Figure(figsize=(5, 4))
    ax = fig.add_subplot()
    bins = summary["masks_per_image"]["bins"]
    labels = [k for k in bins if k != "0" or bins["0"]]
    ax.bar(labels, [100.0 * bins[k] / max(1, n_img) for k in labels], color="tab:blue")
    ax.set_xlabel("number of masks per image")
    ax.set_ylabel("percent of images")
    ax.set_title(f"Masks per image{suffix}\n{legend}, mean {summary['masks_per_image']['mean']:.1f}", fontsize=10)
    _save(fig, Canvas, outdir / FIGURES[1])

    for name, key, xlabel, edges in (
        (FIGURES[2], "relative_size", "relative mask size  sqrt(mask area / image area)", np.linspace(0, 1, 26)),
        (FIGURES[3], "concavity", "concavity  1 − mask area / convex hull area", np.linspace(0, 1, 21)),
    ):
        values = stats[key]
        fig = Figure(figsize=(5, 4))
        ax = fig.add_subplot()
        hist, _ = np.histogram(values, edges)
        ax.bar(edges[:-1], 100.0 * hist / max(1, values.size), width=np.diff(edges), align="edge",
               color="tab:orange" if key == "concavity" else "tab:green", edgecolor="white")
        ax.set_xlim(0, 1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("percent of masks")
        ax.set_title(f"{'Concavity' if key == 'concavity' else 'Relative mask size'}{suffix}\n{legend}", fontsize=10)
        _save(fig, Canvas, outdir / name)

    save_json(summary, outdir / SUMMARY)
    return summary


def open_dataset(path: PathLike, fmt: str, annotations: Optional[PathLike] = None, images: Optional[PathLike] = None,
                 masks: Optional[PathLike] = None) -> Any:
    """Open a dataset folder as ``sa1b``, ``coco`` (needs ``annotations``) or ``folder`` (``images`` and
    ``masks`` default to ``path/images`` and ``path/masks``)."""
    path = Path(path)
    if fmt == "sa1b":
        from promptseg.data.sa1b import SA1BDataset

        return SA1BDataset(path)
    if fmt == "coco":
        from promptseg.data.coco import CocoInstancesDataset

        if annotations is None:
            default = path / "annotations.json"
            if not default.is_file():
                raise FileNotFoundError(f"COCO format needs --annotations FILE (no {default})")
            annotations = default
        return CocoInstancesDataset(images if images is not None else path, annotations)
    if fmt == "folder":
        from promptseg.data.folder import MaskFolderDataset

        return MaskFolderDataset(images if images is not None else path / "images",
                                 masks if masks is not None else path / "masks")
    raise ValueError(f"unknown dataset format {fmt!r}: expected sa1b, coco or folder")
