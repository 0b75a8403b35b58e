"""Video object segmentation with SegGPT (seggpt.txt §4.4): the first frame's mask is propagated.

The first frame and its mask (a label map: several objects at once, each its own colour) are the first
in-context example. Every later frame is predicted from that example plus the previous ``K`` frames and
their *predicted* masks, kept in a FIFO queue, combined with the feature ensemble (§3.2); the prediction
then enters the queue. Frames whose prediction is empty are not queued (they would show nothing).

* :func:`segment_video` — frames (arrays) + first mask → label maps, lazily;
* :func:`open_frames` — a folder of frames (natural sort: ``f2`` before ``f10``) or a video file (OpenCV);
* :func:`run_video` — the two together, writing ``OUTDIR/<frame>.png`` label maps (0 = background,
  ``k`` = object ``k``; atomic writes) and optional ``OUTDIR/overlays/<frame>.png``, with a progress bar;
* :func:`evaluate_vos` — J, F and J&F (:mod:`promptseg.eval.vos`) of the propagation on labelled
  sequences, e.g. :func:`promptseg.incontext.synth_video.make_sequences`.
"""

from __future__ import annotations

import itertools
import os
import re
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from promptseg.incontext.palette import (
    MAX_LABELS,
    as_label_map,
    as_palette,
    default_palette,
    relabel_to_palette,
    save_label_png,
)

PathLike = Union[str, "os.PathLike[str]"]
#: First frame + 7 previous ones: the best number of frames (8) of the paper's Table 4b.
DEFAULT_FIFO = 7
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


# --------------------------------------------------------------------------------------------- frames
def _natural_key(path: Path) -> List[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def list_frame_files(folder: PathLike) -> List[Path]:
    """Image files directly in ``folder`` (hidden files skipped), in natural order (``2`` before ``10``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"not a folder of frames: {folder}")
    files = [p for p in folder.iterdir()
             if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES and not p.name.startswith(".")]
    return sorted(files, key=_natural_key)


@dataclass
class FrameSource:
    """Frames of a folder or a video file: ``len()`` (approximate for some video files) and iteration
    over ``(name, frame)`` with ``frame`` ``H×W×3`` RGB uint8 and ``name`` the file stem or ``00000``…"""

    path: Path
    files: Optional[List[Path]] = None

    def __len__(self) -> int:
        if self.files is not None:
            return len(self.files)
        import cv2

        cap = cv2.VideoCapture(str(self.path))
        try:
            return max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT)))
        finally:
            cap.release()

    def __iter__(self) -> Iterator[Tuple[str, np.ndarray]]:
        if self.files is not None:
            from promptseg.io import read_image

            for f in self.files:
                yield f.stem, read_image(f)
            return
        import cv2

        cap = cv2.VideoCapture(str(self.path))
        try:
            index = 0
            while True:
                ok, bgr = cap.read()
                if not ok:
                    break
                yield f"{index:05d}", np.ascontiguousarray(bgr[..., ::-1])  # OpenCV gives BGR
                index += 1
        finally:
            cap.release()


def open_frames(source: PathLike) -> FrameSource:
    """A folder of frame images or a video file (read with OpenCV) → :class:`FrameSource`."""
    path = Path(source)
    if path.is_dir():
        files = list_frame_files(path)
        if not files:
            raise ValueError(f"no frame images ({', '.join(FRAME_SUFFIXES)}) in folder {path}")
        return FrameSource(path, files)
    if not path.is_file():
        raise FileNotFoundError(f"video or frame folder not found: {path}")
    from promptseg.io import import_cv2

    cv2 = import_cv2("reading video files (or pass a folder of frames)")
    cap = cv2.VideoCapture(str(path))
    ok = cap.isOpened() and cap.read()[0]
    cap.release()
    if not ok:
        raise ValueError(f"cannot read video {path}: not a video file OpenCV can decode")
    return FrameSource(path)


# --------------------------------------------------------------------------------------------- propagation
def segment_video(
    predictor: Any,
    frames: Iterable[np.ndarray],
    first_mask: np.ndarray,
    *,
    fifo: int = DEFAULT_FIFO,
    ensemble: str = "feature",
    palette: Optional[np.ndarray] = None,
    embedding_type: Optional[str] = None,
    max_distance: Optional[float] = None,
) -> Iterator[np.ndarray]:
    """Propagate ``first_mask`` through ``frames`` → one ``H×W`` int32 label map per frame (lazily).

    Args:
        predictor: a :class:`~promptseg.incontext.predictor.SegGptPredictor`.
        frames: ``H×W×3`` images; the first is the annotated one (its output is ``first_mask`` itself).
        first_mask: the first frame's label map ``H×W`` (0 = background, ``k`` = object ``k``), a bool
            mask (one object) or an ``H×W×3`` colour mask (each colour an object, sorted RGB order).
        fifo: ``K``, the previous frames used as extra examples (0: the first frame only).
        ensemble: ``"feature"`` (the paper's choice) or ``"spatial"``.
        palette: colours of labels ``1..K`` in the prompts (default: the fixed palette).
    """
    if fifo < 0:
        raise ValueError(f"fifo must be ≥ 0, got {fifo}")
    if ensemble not in ("feature", "spatial"):
        raise ValueError(f"ensemble must be 'feature' or 'spatial' for video, got {ensemble!r}")
    labels0, colors = as_label_map(first_mask, "first_mask")
    if not (labels0 > 0).any():
        raise ValueError("first_mask is empty: it marks no object to follow")
    if palette is not None:
        given = as_palette(palette)
        if colors is not None:  # a colour mask: a palette fixes the numbering, as in SegGptPredictor.predict
            labels0 = relabel_to_palette(labels0, colors, given, "first_mask")
        elif int(labels0.max()) > len(given):
            raise ValueError(f"first_mask has labels up to {int(labels0.max())} but the palette has only {len(given)} colours")
        colors = given
    elif colors is None:
        if int(labels0.max()) > MAX_LABELS:
            raise ValueError(f"first_mask has labels up to {int(labels0.max())} but the fixed palette holds at most {MAX_LABELS}")
        colors = default_palette(int(labels0.max()))
    labels0 = labels0.astype(np.int32)
    iterator = iter(frames)
    try:
        first = next(iterator)
    except StopIteration:
        raise ValueError("frames is empty") from None
    first = np.array(first)  # copies: the examples must not change when the caller reuses or edits arrays
    if first.shape[:2] != labels0.shape:
        raise ValueError(
            f"first_mask is {labels0.shape[0]}×{labels0.shape[1]} but the first frame is {first.shape[0]}×{first.shape[1]}"
        )
    yield labels0.copy()
    queue: deque = deque(maxlen=fifo)
    for frame in iterator:
        examples = [(first, labels0)] + list(queue)
        result = predictor.predict(np.asarray(frame), examples, ensemble=ensemble, palette=colors,
                                   embedding_type=embedding_type, max_distance=max_distance)
        labels = result.labels
        if fifo and (labels > 0).any():
            queue.append((np.array(frame), labels.copy()))
        yield labels


@dataclass
class VideoRun:
    """What :func:`run_video` wrote: ``masks`` and ``overlays`` paths, one per frame (overlays may be empty)."""

    outdir: Path
    masks: List[Path]
    overlays: List[Path]


def run_video(
    predictor: Any,
    source: Union[PathLike, FrameSource],
    first_mask: np.ndarray,
    outdir: PathLike,
    *,
    fifo: int = DEFAULT_FIFO,
    ensemble: str = "feature",
    overlay: bool = True,
    progress: bool = True,
    embedding_type: Optional[str] = None,
    max_distance: Optional[float] = None,
) -> VideoRun:
    """Segment a folder of frames or a video file and write ``OUTDIR/<frame>.png`` label maps (and
    ``OUTDIR/overlays/<frame>.png`` with ``overlay``); see :func:`segment_video` for the options."""
    from tqdm import tqdm

    from promptseg.io import save_overlay_png

    frames = source if isinstance(source, FrameSource) else open_frames(source)
    out = Path(outdir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {out} exists and is not a directory")
    if frames.files is not None and out.resolve() == frames.path.resolve():
        raise ValueError(f"output folder {out} is the frames folder: its masks would overwrite the frames")
    if frames.files is not None:
        seen: Dict[str, Path] = {}
        for f in frames.files:
            if f.stem in seen:
                raise ValueError(f"frames {seen[f.stem].name} and {f.name} would both be written to {out / (f.stem + '.png')}; "
                                 f"keep one file per frame name in {frames.path}")
            seen[f.stem] = f
    decoded = iter(frames)
    ours, theirs = itertools.tee(decoded)  # one decode of the video: tee keeps one frame of lag
    run = VideoRun(out, [], [])
    bar = tqdm(total=len(frames) or None, desc="segmenting frames", unit="frame", disable=not progress, file=sys.stderr)
    try:
        propagated = segment_video(predictor, (image for _, image in theirs), first_mask, fifo=fifo,
                                   ensemble=ensemble, embedding_type=embedding_type, max_distance=max_distance)
        for (name, image), labels in zip(ours, propagated):
            run.masks.append(save_label_png(labels, out / f"{name}.png"))
            if overlay:
                k = max(1, int(labels.max()))
                stack = labels[None] == np.arange(1, k + 1)[:, None, None]
                path = out / "overlays" / f"{name}.png"
                save_overlay_png(image, stack, path)
                run.overlays.append(path)
            bar.update(1)
    finally:
        close = getattr(decoded, "close", None)
        if close is not None:  # a failed or interrupted run releases the video now, not when garbage-collected
            close()
        bar.close()
    return run


# --------------------------------------------------------------------------------------------- evaluation
def _sequence_parts(seq: Any, index: int) -> Tuple[str, Sequence[np.ndarray], Sequence[np.ndarray]]:
    if hasattr(seq, "frames") and hasattr(seq, "labels"):
        return getattr(seq, "name", f"seq{index}"), seq.frames, seq.labels
    if isinstance(seq, dict):
        return seq.get("name", f"seq{index}"), seq["frames"], seq["labels"]
    if isinstance(seq, (tuple, list)) and len(seq) == 3:
        return seq[0], seq[1], seq[2]
    raise TypeError(f"sequences[{index}] must have frames and labels (e.g. a SyntheticSequence), got {type(seq).__name__}")


def evaluate_vos(
    predictor: Any,
    sequences: Iterable[Any],
    *,
    fifo: int = DEFAULT_FIFO,
    ensemble: str = "feature",
    exclude_first_last: bool = True,
    progress: bool = False,
) -> Dict[str, Any]:
    """J, F and J&F of first-frame propagation over labelled ``sequences``.

    Each sequence is a :class:`~promptseg.incontext.synth_video.SyntheticSequence`, a dict with
    ``frames``/``labels`` (and ``name``) or a ``(name, frames, labels)`` tuple. The first ground-truth
    label map is the given annotation; objects are scored in its own ids (a 0/255 map's object is 255).
    Returns :func:`promptseg.eval.vos.summarize`'s dict: ``J_mean``, ``F_mean``, ``JF_mean`` (means over all
    objects), recalls, decays and per-sequence values.
    """
    from tqdm import tqdm

    from promptseg.eval.vos import evaluate_sequence, summarize

    scored: Dict[str, Dict[str, Any]] = {}
    for i, seq in enumerate(tqdm(list(sequences), desc="VOS", unit="seq", disable=not progress, file=sys.stderr)):
        name, frames, gt = _sequence_parts(seq, i)
        if len(frames) != len(gt):
            raise ValueError(f"sequence {name!r} has {len(frames)} frames but {len(gt)} label maps")
        if len(gt) == 0:
            raise ValueError(f"sequence {name!r} has no frames")
        first = np.asarray(gt[0])
        pred = list(segment_video(predictor, frames, first, fifo=fifo, ensemble=ensemble))
        if first.shape == pred[0].shape:  # (given label, gt id) pairs of the annotated frame
            given = np.unique(np.stack([pred[0].ravel(), first.ravel().astype(np.int64)]), axis=1)
            if (given[0] != given[1]).any():  # the annotation was renumbered (a 0/255 map is label 1): gt's ids
                lut = np.arange(max(int(p.max()) for p in pred) + 1, dtype=np.int64)
                lut[given[0]] = given[1]
                pred = [lut[p] for p in pred]
        scored[str(name)] = evaluate_sequence(pred, gt, exclude_first_last=exclude_first_last)
    if not scored:
        raise ValueError("sequences is empty")
    return summarize(scored)
