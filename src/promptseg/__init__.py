"""promptseg — promptable segmentation: SAM (and SEEM, SegGPT) with training, evaluation and tools.

``from promptseg import sam_model_registry, SamPredictor`` is a drop-in for ``segment_anything``.
Nothing heavy happens at import: submodules load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from promptseg._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "sam_model_registry": "promptseg.models.sam.build",
    "build_sam": "promptseg.models.sam.build",
    "build_sam_vit_h": "promptseg.models.sam.build",
    "build_sam_vit_l": "promptseg.models.sam.build",
    "build_sam_vit_b": "promptseg.models.sam.build",
    "Sam": "promptseg.models.sam.sam",
    "SamConfig": "promptseg.models.sam.config",
    "SamPredictor": "promptseg.predictor",
    "SamAutomaticMaskGenerator": "promptseg.amg.generator",
    "load_sam": "promptseg.models.sam.weights",
    "save_sam": "promptseg.models.sam.weights",
    "load_model": "promptseg.hub",
    "CheckpointError": "promptseg.checkpoint",
    "ResizeLongestSide": "promptseg.transforms",
    "use_attention_backend": "promptseg.layers.attention",
    "set_attention_backend": "promptseg.layers.attention",
}

__all__ = sorted(_EXPORTS) + ["__version__"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, extra=["__version__"])


if TYPE_CHECKING:  # pragma: no cover
    from promptseg.checkpoint import CheckpointError
    from promptseg.hub import load_model
    from promptseg.layers.attention import set_attention_backend, use_attention_backend
    from promptseg.models.sam.build import (
        build_sam,
        build_sam_vit_b,
        build_sam_vit_h,
        build_sam_vit_l,
        sam_model_registry,
    )
    from promptseg.models.sam.config import SamConfig
    from promptseg.models.sam.sam import Sam
    from promptseg.models.sam.weights import load_sam, save_sam
    from promptseg.predictor import SamPredictor
    from promptseg.transforms import ResizeLongestSide
