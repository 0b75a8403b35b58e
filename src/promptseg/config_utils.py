"""Typed configs from JSON-like mappings: frozen dataclasses whose unknown keys are errors.

A typo in a config file must fail loudly, not be ignored. Used by the SAM, SegGPT and training configs;
imports nothing heavy (no torch).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, TypeVar

T = TypeVar("T")


def check_unknown_keys(cls: type, data: Mapping[str, Any], where: str) -> None:
    """``ValueError`` naming the keys of ``data`` that are not fields of the dataclass ``cls``."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown key(s) in {where}: {unknown}; expected some of {sorted(names)}")


def config_from_dict(cls: type[T], data: Mapping[str, Any], where: str) -> T:
    """The frozen dataclass ``cls`` from a mapping: unknown keys rejected, lists made tuples."""
    if not isinstance(data, Mapping):
        raise TypeError(f"{where} must be a mapping, got {type(data).__name__}")
    check_unknown_keys(cls, data, where)
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**kwargs)
