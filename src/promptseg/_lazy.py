"""Lazy package exports: ``from promptseg.x import Name`` imports the defining module on first use only.

A package lists ``{name: module}`` and gets the module-level ``__getattr__`` / ``__dir__`` of PEP 562:

    __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, List, Mapping, Sequence, Tuple


def lazy_exports(
    package: str, exports: Mapping[str, str], extra: Sequence[str] = ()
) -> Tuple[Callable[[str], Any], Callable[[], List[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: each name of ``exports`` is looked up in its module on
    first access and then cached in the package; ``extra`` names (defined eagerly) are listed too."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
            setattr(sys.modules[package], name, value)
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> List[str]:
        return sorted(exports) + list(extra)

    return __getattr__, __dir__
