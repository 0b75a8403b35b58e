"""Automatic mask generation (segment-anything.txt §4 "Fully automatic stage", §B).

``from promptseg.amg import SamAutomaticMaskGenerator`` (also ``from promptseg import ...``). Nothing
heavy is imported until first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from promptseg._lazy import lazy_exports

_EXPORTS = {
    "SamAutomaticMaskGenerator": "promptseg.amg.generator",
    "PRESETS": "promptseg.amg.generator",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:  # pragma: no cover
    from promptseg.amg.generator import PRESETS, SamAutomaticMaskGenerator
