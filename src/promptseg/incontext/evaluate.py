"""Evaluation of in-context segmentation: one-shot mIoU on held-out categories, context ensembles, video J&F.

One-shot (few-shot) semantic segmentation (seggpt.txt §4.4, as FSS-1000 / COCO-20i): an **episode** is a
category, a target scene and ``k`` example scenes that all contain it; the target's ground truth is the
union of every (top-level) mask of the category in the target scene, each example's mask the same union in
its scene. The model is prompted with the examples and the *semantic* type token; the episode's score is
the IoU of the predicted foreground (any label) with the ground truth.

* :func:`oneshot_episodes` — deterministic episodes from a scene dataset with per-mask category ``names``
  (an SA-1B-layout folder written by ``promptseg data synth``, e.g. with ``--split heldout``: emoji
  categories never seen in training). Which scenes hold which category comes from
  :class:`promptseg.train.seggpt.pairs.SceneIndex` (the training pairs' definition of a category:
  top-level named masks, not the random shapes, not parts).
* :func:`evaluate_oneshot` — mIoU of one setting (an ensemble and a number of examples): the mean of the
  per-episode IoUs, and ``fss_mIoU``, the FSS-1000 / COCO-20i number (each category's intersection and
  union summed over its episodes, their ratio averaged over the categories).
* :func:`compare_ensembles` — the context-ensemble ablation (§3.2, Table 4a) on the same episodes: the
  first example alone, all ``k`` examples with the feature ensemble, all ``k`` with the spatial ensemble.
* :func:`evaluate_video` — first-frame propagation J&F (§4.4) on synthetic sequences of moving,
  occluding objects (:func:`~promptseg.incontext.synth_video.make_sequences`,
  :func:`~promptseg.incontext.video.evaluate_vos`).

The command line is ``promptseg incontext eval oneshot|video`` (:mod:`promptseg.incontext.eval_cli`).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from promptseg.eval.protocols import mask_iou  # noqa: F401 - re-exported, as before
from promptseg.eval.protocols import mask_overlap, overlap_iou  # one IoU for SAM and SegGPT evaluation

#: Settings of :func:`compare_ensembles`, in report order: key → (ensemble, use all ``k`` examples).
COMPARISON = (("one", "none", False), ("feature", "feature", True), ("spatial", "spatial", True))
DEFAULT_EXAMPLES = 4
DEFAULT_EPISODES = 300
#: A scene holds a category when one of its masks of that category has at least this many pixels.
DEFAULT_MIN_AREA = 16


# ================================================================================================ episodes
@dataclass(frozen=True)
class Episode:
    """A one-shot episode: scene indices of the target and of the examples, all holding ``category``."""

    category: str
    target: int
    examples: Tuple[int, ...]


@dataclass
class LoadedEpisode:
    """An episode's pixels: the target image and its ``H×W`` bool ground truth, and ``(image, mask)`` examples."""

    category: str
    target_image: np.ndarray
    target_mask: np.ndarray
    examples: List[Tuple[np.ndarray, np.ndarray]]


class OneShotEpisodes(Sequence[Episode]):
    """The episodes of :func:`oneshot_episodes` over ``dataset`` (a sequence of :class:`Episode`)."""

    def __init__(self, dataset: Any, episodes: Sequence[Episode], num_examples: int, seed: int, min_area: int) -> None:
        self.dataset = dataset
        self.episodes = list(episodes)
        self.num_examples = int(num_examples)
        self.seed = int(seed)
        self.min_area = int(min_area)

    def __len__(self) -> int:
        return len(self.episodes)

    def __getitem__(self, i: Any) -> Any:
        return self.episodes[i]

    @property
    def categories(self) -> List[str]:
        """The categories of the episodes, sorted."""
        return sorted({e.category for e in self.episodes})

    def scene_name(self, index: int) -> str:
        """A scene's name for reports: its annotation file's stem (``sa_123``) where known, else its index."""
        files = getattr(self.dataset, "annotation_files", None)
        return Path(files[index]).stem if files is not None else str(index)

    def load(self, i: int) -> LoadedEpisode:
        """Read episode ``i``'s scenes and the category's masks."""
        ep = self.episodes[i]
        target_image, target_mask = category_mask(self.dataset, ep.target, ep.category)
        return LoadedEpisode(ep.category, target_image, target_mask,
                             [category_mask(self.dataset, j, ep.category) for j in ep.examples])


def open_scenes(dataset: Any) -> Any:
    """A dataset object, or a folder path → :class:`~promptseg.data.sa1b.SA1BDataset`."""
    if isinstance(dataset, (str, Path)):
        from promptseg.data.sa1b import SA1BDataset

        return SA1BDataset(dataset)
    return dataset


def category_mask(dataset: Any, index: int, category: str) -> Tuple[np.ndarray, np.ndarray]:
    """``(image, mask)`` of scene ``index``: ``mask`` (``H×W`` bool) is the union of all its top-level masks
    named ``category``, whatever their size."""
    from promptseg.train.seggpt.pairs import PairConfig, mask_areas, mask_categories

    item = dataset[index]
    image = np.asarray(item["image"])
    masks = np.asarray(item["masks"]).astype(bool).reshape(-1, *image.shape[:2])
    groups = mask_categories(item.get("names"), item.get("parents"), mask_areas(masks), PairConfig(min_mask_area=0))
    chosen = groups.get(category, [])
    return image, masks[chosen].any(axis=0) if chosen else np.zeros(image.shape[:2], bool)


def oneshot_episodes(
    dataset: Any,
    num_examples: int = DEFAULT_EXAMPLES,
    seed: int = 0,
    num_episodes: Optional[int] = DEFAULT_EPISODES,
    min_area: int = DEFAULT_MIN_AREA,
) -> OneShotEpisodes:
    """Deterministic one-shot episodes (semantic task) over a dataset of named scenes.

    Args:
        dataset: an SA-1B-layout folder (``promptseg data synth``) or a dataset whose items have per-mask
            ``names`` (and ``parents``).
        num_examples: ``k``, the examples of each episode (other scenes holding the category).
        seed: the episodes are a function of the dataset, ``num_examples``, ``seed`` and ``min_area``.
        num_episodes: how many (None: every category × scene pair). Categories take turns, in a seeded
            order, so every eligible category gets an episode before any gets a second; fewer are returned
            when the dataset runs out of (category, target) pairs.
        min_area: a scene holds a category when one of its masks of the category has this many pixels.

    A category is eligible when at least ``num_examples + 1`` scenes hold it. Each of its episodes has a
    target scene not yet used for the category and ``num_examples`` other scenes as examples, all drawn
    without replacement. Raises ValueError when no category is eligible.
    """
    from promptseg.train.seggpt.pairs import PairConfig, SceneIndex

    if num_examples < 1:
        raise ValueError(f"num_examples must be ≥ 1, got {num_examples}")
    if num_episodes is not None and num_episodes < 1:
        raise ValueError(f"num_episodes must be ≥ 1, got {num_episodes}")
    dataset = open_scenes(dataset)
    index = SceneIndex.build(dataset, PairConfig(min_mask_area=max(0, int(min_area))))
    if not index.scenes_with:
        area = f" of at least min_area={int(min_area)} pixels" if int(min_area) > 0 else ""
        raise ValueError(f"no scene has a named category mask{area} (per-mask 'names', e.g. from `promptseg data "
                         "synth` with emoji): one-shot episodes need categories")
    eligible = sorted(c for c, v in index.scenes_with.items() if len(v) >= num_examples + 1)
    if not eligible:
        best = max(index.scenes_with, key=lambda c: (len(index.scenes_with[c]), c))
        raise ValueError(f"no category is held by {num_examples + 1} scenes (a target and {num_examples} examples); the "
                         f"most common, {best!r}, is in {len(index.scenes_with[best])}: use more scenes or fewer examples")
    rng = np.random.default_rng([int(seed), int(num_examples), 0x0E5])
    order = [eligible[i] for i in rng.permutation(len(eligible))]
    targets = {c: [int(s) for s in rng.permutation(index.scenes_with[c])] for c in order}
    limit = sum(len(v) for v in targets.values()) if num_episodes is None else int(num_episodes)
    episodes: List[Episode] = []
    for round_ in range(max(len(v) for v in targets.values())):
        for c in order:
            if len(episodes) == limit:
                break
            if round_ < len(targets[c]):
                target = targets[c][round_]
                others = np.array([s for s in index.scenes_with[c] if s != target])
                examples = tuple(int(s) for s in rng.choice(others, num_examples, replace=False))
                episodes.append(Episode(c, target, examples))
    return OneShotEpisodes(dataset, episodes, num_examples, seed, min_area)


# ================================================================================================ one-shot
def _foreground(result: Any) -> np.ndarray:
    """The predicted foreground of a prediction (any label)."""
    return np.asarray(result.labels) > 0


def _summary(overlaps: Sequence[Tuple[int, int]], categories: Sequence[str]) -> Dict[str, Any]:
    """The summary of one setting from its episodes' ``(intersection, union)`` counts, with ``"ious"``."""
    ious = [overlap_iou(i, u) for i, u in overlaps]
    per_category: Dict[str, List[float]] = {}
    totals: Dict[str, Tuple[int, int]] = {}
    for c, v, (i, u) in zip(categories, ious, overlaps):
        per_category.setdefault(c, []).append(v)
        ti, tu = totals.get(c, (0, 0))
        totals[c] = (ti + i, tu + u)  # FSS: intersection and union summed per category
    means = {c: float(np.mean(v)) for c, v in sorted(per_category.items())}
    fss = [overlap_iou(i, u) for i, u in totals.values()]
    return {
        "episodes": len(ious),
        "mIoU": float(np.mean(ious)) if len(ious) else float("nan"),
        "category_mIoU": float(np.mean(list(means.values()))) if means else float("nan"),
        "fss_mIoU": float(np.mean(fss)) if fss else float("nan"),
        "per_category": means,
        "ious": ious,
    }


def _run_settings(predictor: Any, episodes: OneShotEpisodes, settings: Sequence[Tuple[str, str, int]],
                  embedding_type: str, progress: bool) -> Dict[str, List[Tuple[int, int]]]:
    """``(intersection, union)`` pixel counts of every episode under every ``(key, ensemble, examples)``
    setting; each episode is read once."""
    from tqdm import tqdm

    for key, ensemble, count in settings:
        if not 1 <= count <= episodes.num_examples:
            raise ValueError(f"{key}: {count} example(s) asked but the episodes have {episodes.num_examples}")
        if ensemble == "none" and count != 1:
            raise ValueError(f"{key}: ensemble 'none' takes one example, not {count}")
    overlaps: Dict[str, List[Tuple[int, int]]] = {key: [] for key, _, _ in settings}
    for i in tqdm(range(len(episodes)), desc="one-shot", unit="episode", disable=not progress, file=sys.stderr):
        data = episodes.load(i)
        for key, ensemble, count in settings:
            result = predictor.predict(data.target_image, data.examples[:count], ensemble=ensemble,
                                       embedding_type=embedding_type)
            overlaps[key].append(mask_overlap(_foreground(result), data.target_mask))
    return overlaps


def evaluate_oneshot(
    predictor: Any,
    episodes: OneShotEpisodes,
    ensemble: str = "feature",
    embedding_type: str = "semantic",
    *,
    num_examples: Optional[int] = None,
    progress: bool = False,
) -> Dict[str, Any]:
    """mIoU of ``predictor`` on ``episodes`` with ``ensemble`` over the first ``num_examples`` examples of
    each episode (default: all; ``ensemble="none"``: the first only).

    ``predictor`` has :class:`~promptseg.incontext.predictor.SegGptPredictor`'s ``predict``. Returns
    ``{"ensemble", "examples", "episodes", "mIoU" (mean of the per-episode IoUs), "category_mIoU" (mean of
    the per-category means), "fss_mIoU" (the FSS-1000 / COCO-20i mIoU: per category, the intersections over
    its episodes summed and divided by the unions summed; mean over the categories), "per_category"
    {category: mean IoU}, "ious" (per episode, in order)}``.
    """
    count = 1 if ensemble == "none" else episodes.num_examples if num_examples is None else int(num_examples)
    overlaps = _run_settings(predictor, episodes, [(ensemble, ensemble, count)], embedding_type, progress)
    summary = _summary(overlaps[ensemble], [e.category for e in episodes])
    return {"ensemble": ensemble, "examples": count, **summary}


def compare_ensembles(
    predictor: Any,
    episodes: OneShotEpisodes,
    embedding_type: str = "semantic",
    *,
    progress: bool = False,
) -> Dict[str, Any]:
    """The context-ensemble comparison on the same episodes and targets (:data:`COMPARISON`): ``one`` (the
    first example only), ``feature`` and ``spatial`` (all ``k`` examples of each episode).

    Returns ``{"num_examples", "embedding_type", "num_episodes", "num_categories", "results": {key:
    summary as in evaluate_oneshot without "ious"}, "feature_gain" (feature − one mIoU),
    "feature_beats_one", "records": [{"category", "target", "examples", "iou": {key: IoU}}]}`` (scene names
    as :meth:`OneShotEpisodes.scene_name`).
    """
    k = episodes.num_examples
    settings = [(key, ensemble, k if all_examples else 1) for key, ensemble, all_examples in COMPARISON]
    overlaps = _run_settings(predictor, episodes, settings, embedding_type, progress)
    categories = [e.category for e in episodes]
    results = {key: {"ensemble": ensemble, "examples": count, **_summary(overlaps[key], categories)}
               for key, ensemble, count in settings}
    ious = {key: result.pop("ious") for key, result in results.items()}
    gain = results["feature"]["mIoU"] - results["one"]["mIoU"]
    records = [
        {"category": e.category, "target": episodes.scene_name(e.target),
         "examples": [episodes.scene_name(j) for j in e.examples], "iou": {key: ious[key][i] for key in ious}}
        for i, e in enumerate(episodes)
    ]
    return {
        "num_examples": k,
        "embedding_type": embedding_type,
        "num_episodes": len(episodes),
        "num_categories": len(set(categories)),
        "results": results,
        "feature_gain": gain,
        "feature_beats_one": bool(gain > 0),
        "records": records,
    }


def setting_label(key: str, examples: int) -> str:
    """Row label of a :data:`COMPARISON` setting."""
    if key == "one":
        return "1 example"
    return f"{examples} example{'s' if examples != 1 else ''}, {key} ensemble"


def format_oneshot(report: Mapping[str, Any]) -> str:
    """Fixed-order text table of a :func:`compare_ensembles` report."""
    lines = [f"one-shot segmentation ({report['embedding_type']}): {report['num_episodes']} episodes, "
             f"{report['num_categories']} categories, up to {report['num_examples']} examples",
             f"{'setting':34s} {'mIoU':>8s} {'category mIoU':>14s} {'FSS mIoU':>9s}"]
    for key, _, _ in COMPARISON:
        r = report["results"][key]
        lines.append(f"{setting_label(key, r['examples']):34s} {r['mIoU']:8.4f} {r['category_mIoU']:14.4f} "
                     f"{r['fss_mIoU']:9.4f}")
    verdict = "beats" if report["feature_beats_one"] else "does NOT beat"
    lines.append(f"feature ensemble {verdict} 1 example: {report['feature_gain']:+.4f} mIoU")
    return "\n".join(lines)


# ================================================================================================ video
def evaluate_video(
    predictor: Any,
    sequences: Optional[Sequence[Any]] = None,
    *,
    count: int = 20,
    seed: int = 0,
    num_frames: int = 16,
    size: Tuple[int, int] = (256, 256),
    num_objects: int = 3,
    fifo: Optional[int] = None,
    ensemble: str = "feature",
    progress: bool = False,
) -> Dict[str, Any]:
    """J&F of first-frame propagation (:func:`~promptseg.incontext.video.evaluate_vos`) on ``sequences``,
    by default ``count`` synthetic ones (:func:`~promptseg.incontext.synth_video.make_sequences` with
    ``seed``, ``num_frames``, ``size``, ``num_objects``: moving objects that cross and hide each other).

    Returns ``evaluate_vos``'s summary (``J_mean``, ``F_mean``, ``JF_mean``, recalls, decays, per-sequence
    values) plus ``"config"``: the options used.
    """
    from promptseg.incontext.synth_video import make_sequences
    from promptseg.incontext.video import DEFAULT_FIFO, evaluate_vos

    fifo = DEFAULT_FIFO if fifo is None else int(fifo)
    config: Dict[str, Any] = {"fifo": fifo, "ensemble": ensemble, "embedding_type": predictor.embedding_type}
    if sequences is None:
        sequences = make_sequences(count, seed, num_frames=num_frames, size=tuple(size), num_objects=num_objects)
        config.update(sequences=count, seed=seed, frames=num_frames, size=list(size), objects=num_objects)
    summary = evaluate_vos(predictor, sequences, fifo=fifo, ensemble=ensemble, progress=progress)
    return {**summary, "config": config}


def format_video(report: Mapping[str, Any]) -> str:
    """Fixed-order text table of an :func:`evaluate_video` report."""
    cfg = report["config"]
    head = f"video object segmentation: {len(report['sequences'])} sequences, {report['num_objects']} objects"
    if "frames" in cfg:
        head += f", {cfg['frames']} frames of {cfg['size'][0]}×{cfg['size'][1]}"
    lines = [head + f"; FIFO {cfg['fifo']}, {cfg['ensemble']} ensemble",
             f"{'measure':10s} {'mean':>8s} {'recall':>8s} {'decay':>8s}"]
    for key, label in (("J", "J"), ("F", "F")):
        lines.append(f"{label:10s} {report[f'{key}_mean']:8.4f} {report[f'{key}_recall']:8.4f} {report[f'{key}_decay']:8.4f}")
    lines.append(f"{'J&F':10s} {report['JF_mean']:8.4f}")
    return "\n".join(lines)


def json_ready(value: Any) -> Any:
    """``value`` with NaN/inf floats as None and numpy scalars as Python numbers (strict JSON)."""
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    return value
