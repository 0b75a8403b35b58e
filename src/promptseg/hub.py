"""Where models come from: a checkpoint the user names, or the default model bundled with promptseg."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Dict, Mapping, Optional, Union

import torch

from promptseg.checkpoint import PathLike

DEFAULT_MODEL_FILE = "sam_default.safetensors"

#: Automatic-mask filters for the bundled default model. Its predicted-IoU and stability scores are calibrated
#: on synthetic scenes only, so on photos the reference's 0.88 / 0.95 (fit for the official models) keep next
#: to nothing (docs/default_model.md, "Limits"); ``promptseg demo`` and ``promptseg amg`` use these instead
#: when no checkpoint is given and the user sets no filter.
DEFAULT_MODEL_AMG_FILTERS: Dict[str, float] = {"pred_iou_thresh": 0.35, "stability_score_thresh": 0.35}


def default_model_amg_filters(checkpoint: Optional[PathLike], options: Mapping[str, object]) -> Dict[str, float]:
    """The :data:`DEFAULT_MODEL_AMG_FILTERS` that generator ``options`` (those the user set) leave to choose,
    when ``checkpoint`` is None (the bundled model); none for a checkpoint of the user's."""
    if checkpoint is not None:
        return {}
    return {k: v for k, v in DEFAULT_MODEL_AMG_FILTERS.items() if k not in options}


class NoDefaultModelError(FileNotFoundError):
    """No checkpoint was given and this installation bundles no default model."""


def default_model_path() -> Optional[Path]:
    """Path of the bundled default SAM, or None when this build ships none."""
    path = Path(str(resources.files("promptseg") / "weights" / DEFAULT_MODEL_FILE))
    return path if path.is_file() else None


def usable_device(name: Union[str, torch.device], option: str = "--device") -> torch.device:
    """``name`` as a ``torch.device`` this machine can allocate on (a 0-element tensor proves it), else a
    ``ValueError`` naming ``option`` and the reason: unknown names, CUDA/MPS/XPU absent, a missing GPU index."""
    try:
        device = torch.device(name)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError, NotImplementedError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        reason = reason if len(reason) <= 120 else reason[:119] + "…"
        raise ValueError(f"{option} {name} cannot be used on this machine ({reason}); use e.g. {option} cpu") from None
    return device


def precisions(dtype: str = "float32", encoder_dtype: Optional[str] = None,
               transformer_dtype: Optional[str] = None) -> Dict[str, torch.dtype]:
    """Precision names (``"bfloat16"``, …; what the CLI and serialisable configs carry) → the ``dtype``,
    ``encoder_dtype`` and ``transformer_dtype`` keyword arguments of :func:`load_model` (unset parts
    left out). An unknown name is a ``ValueError`` naming its option."""
    out: Dict[str, torch.dtype] = {}
    for option, name in (("dtype", dtype), ("encoder_dtype", encoder_dtype), ("transformer_dtype", transformer_dtype)):
        if name is None:
            continue
        value = getattr(torch, str(name), None)
        if not isinstance(value, torch.dtype) or not value.is_floating_point or value.itemsize < 2:  # no float8 kernels
            raise ValueError(f"{option}: unknown floating-point dtype {name!r} (e.g. float32, bfloat16, float16)")
        out[option] = value
    return out


def load_model(
    checkpoint: Optional[PathLike] = None,
    *,
    device: Union[str, torch.device] = "cpu",
    dtype: torch.dtype = torch.float32,
    encoder_dtype: Optional[torch.dtype] = None,
    transformer_dtype: Optional[torch.dtype] = None,
):
    """Load a SAM: ``checkpoint`` (official ``.pth`` or promptseg ``.safetensors``) or the bundled default.

    ``dtype`` is the model's precision; ``encoder_dtype`` and ``transformer_dtype`` (default ``dtype``)
    those of the image encoder and of the decoder's two-way transformer alone (see
    :func:`promptseg.models.sam.weights.load_sam`). Without a checkpoint and without a bundled model this
    raises :class:`NoDefaultModelError` explaining what to pass — it never runs random weights as if they were a model.
    """
    from promptseg.models.sam.weights import load_sam

    if checkpoint is None:
        checkpoint = default_model_path()
        if checkpoint is None:
            raise NoDefaultModelError(
                "no checkpoint given and this promptseg build bundles no default model yet; pass a SAM "
                "checkpoint, e.g. --checkpoint sam_vit_b_01ec64.pth (official) or a promptseg .safetensors file"
            )
    return load_sam(
        checkpoint, device=device, dtype=dtype, encoder_dtype=encoder_dtype, transformer_dtype=transformer_dtype
    )
