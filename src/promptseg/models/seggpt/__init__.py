"""SegGPT: segmenting everything in context (seggpt.txt)."""

from promptseg.models.seggpt.build import build_seggpt, build_seggpt_vit_l, seggpt_model_registry
from promptseg.models.seggpt.config import EMBEDDING_TYPES, SEGGPT_PRESETS, SegGptConfig
from promptseg.models.seggpt.model import SegGpt, SegGptOutput
from promptseg.models.seggpt.weights import (
    convert_seggpt,
    load_seggpt,
    save_seggpt,
    to_hf_state_dict,
    to_painter_state_dict,
)

__all__ = [
    "SegGpt",
    "SegGptConfig",
    "SegGptOutput",
    "SEGGPT_PRESETS",
    "EMBEDDING_TYPES",
    "build_seggpt",
    "build_seggpt_vit_l",
    "seggpt_model_registry",
    "load_seggpt",
    "save_seggpt",
    "convert_seggpt",
    "to_painter_state_dict",
    "to_hf_state_dict",
]
