"""In-context segmentation with SegGPT (seggpt.txt): examples in, masks out — images, videos, tuned prompts.

* :class:`SegGptPredictor` — ``predict(targets, examples=[(image, mask), ...], ensemble=...)``;
* :mod:`~promptseg.incontext.palette` — label maps ↔ colour-coded masks (several objects per call);
* :func:`segment_video` / :func:`run_video` — first-frame mask propagation (§4.4);
* :func:`tune_prompt` / :class:`TunedPrompt` — in-context tuning (§4.6);
* :func:`make_sequences` and :func:`evaluate_vos` — synthetic videos and their J&F;
* :func:`oneshot_episodes`, :func:`compare_ensembles` — one-shot mIoU with 1 vs k examples (§3.2).

These modules import only numpy at import time; torch, PIL, OpenCV and the model load on first use.
"""

from __future__ import annotations

from promptseg.incontext.palette import (
    decode_colors,
    default_palette,
    encode_labels,
    random_palette,
    read_label_png,
    save_label_png,
)
from promptseg.incontext.evaluate import compare_ensembles, evaluate_oneshot, evaluate_video, oneshot_episodes
from promptseg.incontext.predictor import (
    InContextPrediction,
    NoDefaultSegGptError,
    SegGptPredictor,
    default_seggpt_path,
    load_model,
)
from promptseg.incontext.synth_video import SyntheticSequence, make_sequence, make_sequences
from promptseg.incontext.tuning import TunedPrompt, TuningResult, tune_prompt
from promptseg.incontext.video import evaluate_vos, open_frames, run_video, segment_video

__all__ = [
    "SegGptPredictor", "InContextPrediction", "NoDefaultSegGptError", "default_seggpt_path", "load_model",
    "default_palette", "random_palette", "encode_labels", "decode_colors", "read_label_png", "save_label_png",
    "segment_video", "run_video", "open_frames", "evaluate_vos",
    "TunedPrompt", "TuningResult", "tune_prompt",
    "SyntheticSequence", "make_sequence", "make_sequences",
    "oneshot_episodes", "evaluate_oneshot", "compare_ensembles", "evaluate_video",
]
