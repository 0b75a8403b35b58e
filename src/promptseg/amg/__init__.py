"""Automatic mask generation (segment-anything.txt §4 "Fully automatic stage", §B).

``from promptseg.amg import SamAutomaticMaskGenerator`` (also ``from promptseg import ...``). Nothing
heavy is imported until first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "SamAutomaticMaskGenerator": "promptseg.amg.generator",
    "PRESETS": "promptseg.amg.generator",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'promptseg.amg' has no attribute {name!r}")


if TYPE_CHECKING:  # pragma: no cover
    from promptseg.amg.generator import PRESETS, SamAutomaticMaskGenerator
