"""Typed configs from JSON-like mappings: frozen dataclasses whose unknown keys are errors.

A typo in a config file must fail loudly, not be ignored. Used by the SAM, SegGPT and training configs;
imports nothing heavy (no torch).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Mapping, TypeVar

import numpy as np

T = TypeVar("T")


def is_integer(value: Any) -> bool:
    """A whole-number option or argument: a Python or numpy integer, not a bool (``True`` is no count)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_unknown_keys(cls: type, data: Mapping[str, Any], where: str) -> None:
    """``ValueError`` naming the keys of ``data`` that are not fields of the dataclass ``cls``."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown key(s) in {where}: {unknown}; expected some of {sorted(names)}")


def missing_keys(config: Any, data: Mapping[str, Any], prefix: str = "") -> list:
    """The fields of the dataclass instance ``config`` (built from ``data``) that ``data`` does not give, as
    dotted names: this level's first, then those of each section (a dataclass-valued field), given or not."""
    fields = dataclasses.fields(config)
    missing = [f"{prefix}{f.name}" for f in fields if f.name not in data]
    for f in fields:
        value, section = getattr(config, f.name), data.get(f.name, {})
        if dataclasses.is_dataclass(value) and isinstance(section, Mapping):
            missing += missing_keys(value, section, f"{prefix}{f.name}.")
    return missing


def fits(value: Any, annotation: Any) -> bool:
    """Whether the JSON ``value`` fits the type ``annotation``: ``int`` (not a bool), ``float`` (a finite
    number), ``bool``, ``str``, ``Optional``/``Union``, ``Tuple``/``List`` (their items), ``Dict``; any other
    annotation (a config section, ``Any``) is left to its own parser."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union or origin is getattr(types, "UnionType", None):
        return any(fits(value, a) for a in args)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if annotation is str:
        return isinstance(value, str)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        if (len(args) == 2 and args[1] is Ellipsis) or origin is list:
            return not args or all(fits(v, args[0]) for v in value)
        return not args or (len(value) == len(args) and all(fits(v, a) for v, a in zip(value, args)))
    if origin is dict:
        return isinstance(value, Mapping)
    return True


def describe_type(annotation: Any) -> str:
    """``annotation`` in words, for :func:`check_value_types`' messages."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union or origin is getattr(types, "UnionType", None):
        return " or ".join("null" if a is type(None) else describe_type(a) for a in args)
    plural = {bool: "booleans", int: "integers", float: "finite numbers", str: "strings"}
    if origin in (tuple, list):
        if not args:
            return "a list"
        what = plural.get(args[0], describe_type(args[0]))
        if (len(args) == 2 and args[1] is Ellipsis) or origin is list:
            return f"a list of {what}"
        return f"a list of {len(args)} {what}"
    names = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string", dict: "an object"}
    return names.get(origin or annotation, getattr(annotation, "__name__", str(annotation)))


def check_value_types(hints: Mapping[str, Any], data: Mapping[str, Any], where: str) -> None:
    """``ValueError`` naming the first key of ``data`` whose value does not fit its type in ``hints`` (see
    :func:`fits`): a string where a number belongs, NaN, a fraction for a count, …"""
    for key, value in data.items():
        if key in hints and not fits(value, hints[key]):
            raise ValueError(f"{where}: {key} must be {describe_type(hints[key])}, got {value!r}")


def config_from_dict(cls: type[T], data: Mapping[str, Any], where: str) -> T:
    """The frozen dataclass ``cls`` from a mapping: unknown keys rejected, lists made tuples."""
    if not isinstance(data, Mapping):
        raise TypeError(f"{where} must be a mapping, got {type(data).__name__}")
    check_unknown_keys(cls, data, where)
    check_value_types(typing.get_type_hints(cls), data, where)
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**kwargs)
