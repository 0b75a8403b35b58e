"""Mask-by-mask comparison of ``promptseg eval`` reports.

Two checkpoints evaluated on the same masks differ by much less than the spread of IoU over masks, so
comparing their summary means says little; the *paired* difference (candidate − baseline on each mask,
its mean and standard error) is what decides whether a change helped. The same pairing compares the
model's box masks with the GrabCut and filled-box baselines of one report (issue #3's "beats GrabCut").

* :func:`load_report` — read and check a report written by ``promptseg eval -o``;
* :func:`paired` — mean ± s.e. of the per-mask difference of every metric, with win/loss counts;
* :func:`baseline_pairs` — the model against the baselines recorded in the same report: its box IoU against
  GrabCut and the filled box, its best IoU over the clicks against the ground truth at the token grid;
* :func:`split_records`, :func:`groups` — the records grouped by a per-mask field (``part``: emoji parts vs
  whole objects; ``size``: bins of the mask's area fraction, doubling from 1 %).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

Record = Dict[str, Any]
REQUIRED = ("point_top1", "point_oracle", "box", "clicks_iou", "noc@85", "noc@90")  # in every record of a report
Getter = Callable[[Record], float]


@dataclass(frozen=True)
class Metric:
    """A per-mask quantity: its report key, how to read it from a record, and its direction."""

    key: str
    label: str
    get: Getter
    higher_is_better: bool = True


def _field(name: str) -> Getter:
    return lambda r: float(r[name])


def _after_clicks(n: int) -> Getter:
    return lambda r: float(r["clicks_iou"][n - 1])


def _best(r: Record) -> float:
    return float(max(r["clicks_iou"]))


def _curve(r: Record) -> float:
    ious = r["clicks_iou"]
    return float(sum(ious)) / len(ious)


def metrics(records: Sequence[Record], clicks: Sequence[int] = (2, 3, 5, 9)) -> List[Metric]:
    """The metrics present in ``records``: 1-point top-1 / oracle, box, IoU after ``clicks`` and after the
    last click, the best IoU over the clicks, the mean of the click curve, NoC at each recorded threshold
    (lower is better)."""
    if not records:
        raise ValueError("records is empty: no masks to compare")
    first = records[0]
    out = [Metric(k, label, _field(k)) for k, label in
           (("point_top1", "1-point mIoU (top-1)"), ("point_oracle", "1-point mIoU (oracle)"), ("box", "box mIoU"))
           if k in first]
    if "clicks_iou" in first:
        most = min(len(r["clicks_iou"]) for r in records)
        out += [Metric(f"clicks@{n}", f"mIoU after {n} clicks", _after_clicks(n)) for n in clicks if n < most]
        out.append(Metric(f"clicks@{most}", f"mIoU after {most} clicks", _after_clicks(most)))
        out.append(Metric("clicks_best", "best mIoU over the clicks", _best))
        out.append(Metric("curve", f"mean mIoU over clicks 1-{most}", _curve))
    nocs = sorted(k for k in first if k.startswith("noc@"))
    out += [Metric(k, k.replace("noc@", "NoC@"), _field(k), higher_is_better=False) for k in nocs]
    return out


@dataclass(frozen=True)
class Paired:
    """One metric's comparison over ``n`` masks: the two means, the mean per-mask difference
    (candidate − baseline) and its standard error, and how many masks got better / worse."""

    metric: str
    label: str
    n: int
    baseline: float
    candidate: float
    diff: float
    stderr: float
    better: int
    worse: int

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


def pair_values(base: Sequence[float], cand: Sequence[float], key: str = "value", label: str = "value",
                higher_is_better: bool = True) -> Paired:
    """Paired comparison of two per-mask lists of one quantity, mask ``i`` of ``base`` against mask ``i`` of
    ``cand``: their means, the mean difference (cand − base) with its standard error, and how many masks got
    better / worse (by ``higher_is_better``)."""
    n = len(base)
    if n == 0 or len(cand) != n:
        raise ValueError(f"base and cand must be non-empty and of one length (got {n} and {len(cand)} values)")
    d = [c - b for b, c in zip(base, cand)]
    mean = sum(d) / n
    var = sum((v - mean) ** 2 for v in d) / (n - 1) if n > 1 else 0.0
    sign = 1 if higher_is_better else -1
    return Paired(
        metric=key, label=label, n=n, baseline=sum(base) / n, candidate=sum(cand) / n,
        diff=mean, stderr=math.sqrt(var / n),
        better=sum(1 for v in d if sign * v > 0), worse=sum(1 for v in d if sign * v < 0),
    )


def _pair(metric: Metric, base: Sequence[float], cand: Sequence[float]) -> Paired:
    return pair_values(base, cand, metric.key, metric.label, metric.higher_is_better)


def _mask_keys(records: Sequence[Record]) -> Optional[List[Tuple[Any, ...]]]:
    """Each record's identity: ``(image_id, mask_index)``, or ``(image_id,)`` for reports written before
    records carried ``mask_index``; ``None`` when the records do not say."""
    if all("mask_index" in r for r in records):
        return [(r.get("image_id"), r["mask_index"]) for r in records]
    if all("image_id" in r for r in records):
        return [(r.get("image_id"),) for r in records]
    return None


def _check_same_masks(baseline: Sequence[Record], candidate: Sequence[Record]) -> None:
    """``ValueError`` unless both evaluate the same masks, in the same order, with the same clicks."""
    if len(baseline) != len(candidate):
        raise ValueError(f"the reports evaluate different masks: {len(baseline)} records in the baseline, "
                         f"{len(candidate)} in the candidate")
    kb, kc = _mask_keys(baseline), _mask_keys(candidate)
    if kb and kc:
        width = min(len(kb[0]), len(kc[0]))
        for i, (a, b) in enumerate(zip(kb, kc)):
            if a[:width] != b[:width]:
                raise ValueError(f"the reports evaluate different masks: record {i} is mask {a} of the baseline "
                                 f"but {b} of the candidate (same dataset, filters and --max-masks needed)")
    for i, (a, b) in enumerate(zip(baseline, candidate)):  # same ids, other pixels: another dataset
        if "area_fraction" in a and "area_fraction" in b and not math.isclose(
                float(a["area_fraction"]), float(b["area_fraction"]), rel_tol=1e-9, abs_tol=1e-12):
            raise ValueError(f"the reports evaluate different masks: record {i} covers {a['area_fraction']:.6g} of "
                             f"its image in the baseline but {b['area_fraction']:.6g} in the candidate (another "
                             "dataset?)")
    depth = [{len(r["clicks_iou"]) for r in recs if "clicks_iou" in r} for recs in (baseline, candidate)]
    if depth[0] != depth[1]:
        raise ValueError(f"the reports ran different numbers of clicks ({sorted(depth[0])} vs {sorted(depth[1])}): "
                         "evaluate both with the same --max-clicks")


def paired(
    baseline: Sequence[Record], candidate: Sequence[Record], clicks: Sequence[int] = (2, 3, 5, 9)
) -> List[Paired]:
    """Per-mask differences candidate − baseline of every metric both reports hold.

    The two reports must evaluate the same masks in the same order (same dataset, filters,
    ``--max-masks`` and ``--max-clicks``): checked by count, by each record's ``image_id`` (and
    ``mask_index`` when both have it) and by the clicks recorded; a mismatch raises ``ValueError``.
    """
    _check_same_masks(baseline, candidate)
    common = {m.key for m in metrics(candidate, clicks)}
    return [_pair(m, [m.get(r) for r in baseline], [m.get(r) for r in candidate])
            for m in metrics(baseline, clicks) if m.key in common]


def baseline_pairs(records: Sequence[Record]) -> List[Paired]:
    """The model (candidate) against the baselines of the same records, mask by mask: its box IoU against
    each box baseline (``grabcut_box``, ``box_fill``), then — when the records hold ``token_grid`` — its best
    IoU over the clicks against the ground truth drawn at the encoder's token grid."""
    if not records:
        raise ValueError("records is empty: no masks to compare")
    if "box" not in records[0]:
        raise ValueError("the report has no 'box' metric to compare with its baselines")
    model = [float(r["box"]) for r in records]
    out = []
    for key, label in (("grabcut_box", "box mIoU vs GrabCut"), ("box_fill", "box mIoU vs the filled box")):
        if all(key in r for r in records):
            out.append(_pair(Metric(key, label, _field(key)), [float(r[key]) for r in records], model))
    if not out:
        raise ValueError("the report has no box baseline (it was written with --no-grabcut by an old version?)")
    if all("token_grid" in r and "clicks_iou" in r for r in records):
        out.append(_pair(Metric("token_grid", "best click vs GT at the token grid", _field("token_grid")),
                         [float(r["token_grid"]) for r in records], [_best(r) for r in records]))
    return out


SIZE_BINS = (0.01, 0.02, 0.04, 0.08, 0.16)  # ``--by size``: area fractions, each bin twice the one before


def size_bin(fraction: float) -> str:
    """The ``--by size`` group of a mask covering ``fraction`` of its image: ``"<1%"``, ``"1-2%"``, …,
    ``"≥16%"``."""
    edges = [f"{100 * e:g}" for e in SIZE_BINS]
    for i, edge in enumerate(SIZE_BINS):
        if fraction < edge:
            return f"<{edges[0]}%" if i == 0 else f"{edges[i - 1]}-{edges[i]}%"
    return f"≥{edges[-1]}%"


def split_records(records: Sequence[Record], field: str) -> Dict[str, List[int]]:
    """Indices of ``records`` grouped by ``field`` (``part`` → ``"whole"`` / ``"part"``; ``size`` → the
    :func:`size_bin` of ``area_fraction``, smallest first; any other field by its value, in first-seen
    order)."""
    key = "area_fraction" if field == "size" else field
    missing = [i for i, r in enumerate(records) if key not in r]
    if missing:
        raise ValueError(f"--by {field}: record {missing[0]} has no {key!r} field (reports record 'part' "
                         "when the dataset gives parents, e.g. SA-1B-layout synthetic scenes, and "
                         "'area_fraction' since the version that recorded mask_index)")
    groups: Dict[str, List[int]] = {}
    for i, r in enumerate(records):
        value = r[key]
        if field == "part":
            name = "part" if value else "whole"
        elif field == "size":
            name = size_bin(float(value))
        else:
            name = str(value)
        groups.setdefault(name, []).append(i)
    if field == "size":
        order = [size_bin(0.0)] + [size_bin(e) for e in SIZE_BINS]
        groups = {name: groups[name] for name in order if name in groups}
    return groups


def groups(baseline: Sequence[Record], candidate: Optional[Sequence[Record]] = None,
           by: Optional[str] = None) -> Dict[str, List[int]]:
    """Record indices to compare: ``"all"``, then each group of ``by`` (:func:`split_records`). With a
    ``candidate``, first checks that it holds the same masks, grouped the same way (``ValueError``)."""
    if candidate is not None:
        _check_same_masks(baseline, candidate)
    out = {"all": list(range(len(baseline)))}
    if by:
        split = split_records(baseline, by)
        if candidate is not None and split_records(candidate, by) != split:
            raise ValueError(f"--by {by}: the two reports group their masks differently")
        out.update(split)
    return out


def load_report(path: Union[str, Path]) -> Dict[str, Any]:
    """A report written by ``promptseg eval -o``; ``ValueError`` naming the file when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"eval report not found: {path}")
    try:
        doc = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a JSON eval report: {exc}") from None
    records = doc.get("records") if isinstance(doc, dict) else None
    if not isinstance(records, list) or not records or not all(isinstance(r, dict) for r in records):
        raise ValueError(f"{path} is not an eval report: expected a non-empty 'records' list "
                         "(written by `promptseg eval ... -o FILE`)")
    for i, r in enumerate(records):
        missing = [k for k in REQUIRED if k not in r]
        if missing or not isinstance(r["clicks_iou"], list) or not r["clicks_iou"]:
            raise ValueError(f"{path}: record {i} is not a per-mask eval record "
                             f"(missing {missing or ['a non-empty clicks_iou list']})")
    return doc


def format_pairs(rows: Sequence[Paired], title: str, names: Tuple[str, str] = ("baseline", "candidate")) -> str:
    """A text table of :class:`Paired` rows."""
    n = rows[0].n if rows else 0
    lines = [f"{title} ({n} masks; difference = {names[1]} − {names[0]}, mean ± standard error)",
             f"{'metric':32s} {names[0]:>10s} {names[1]:>10s} {'difference':>19s} {'better':>7s} {'worse':>7s}"]
    for r in rows:
        lines.append(f"{r.label:32s} {r.baseline:10.4f} {r.candidate:10.4f} {r.diff:+10.4f} ± {r.stderr:.4f} "
                     f"{r.better:7d} {r.worse:7d}")
    return "\n".join(lines)
