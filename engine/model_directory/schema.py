"""The machinery behind model.json's dataclasses (engine.model_directory.config): parsing JSON
into typed, frozen dataclasses and writing them back, with every error naming its dotted key.

A section is a frozen dataclass deriving from `Section`: its fields' type hints say how each
JSON value is read (int, float, str, bool, dict, tuple[X, ...], tuple[X, Y], X | None, or
another Section), `check()` holds the ranges and relations between fields, and `to_json()`
writes it back (a field made with `convention(default)` is left out while it holds that
default). `Invalid` names the dotted key at fault.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import field


def convention(default, kw_only: bool = False):
    """A field for one of model.json's conventions (engine.model_directory.config): left out
    of model.json while it holds its default (torchvision's behaviour), so directories of
    torchvision models read and write as they always have."""
    return field(default=default, kw_only=kw_only, metadata={"omit_default": True})


class Invalid(ValueError):
    """A value that does not fit the schema; `where` is its dotted key. A ValueError for code
    that builds a config (the exporter); ModelConfig.from_json turns it into a ModelDirError."""

    def __init__(self, where: str, problem: str):
        super().__init__(f"{where} {problem}")
        self.where, self.problem = where, problem


def require(condition: bool, where: str, problem: str) -> None:
    if not condition:
        raise Invalid(where, problem)


def fraction(value: float, where: str) -> None:
    require(0.0 <= value <= 1.0, where, f"must be in [0, 1], got {value!r}")


def one_of(value: str, choices: tuple, where: str) -> None:
    require(value in choices, where, f"must be one of {list(choices)}, got {value!r}")


def positive(values, where: str) -> None:
    for i, value in enumerate(values if isinstance(values, tuple) else (values,)):
        require(value > 0, where if not isinstance(values, tuple) else f"{where}[{i}]",
                 f"must be positive, got {value!r}")


class Section:
    """Parsing and writing for model.json's dataclasses (fields typed with the hints handled in _convert)."""

    def check(self) -> None:
        """Ranges and relations between fields; raises Invalid with the field's name."""

    def __post_init__(self):
        # Constructed in code (the exporter) or parsed: either way the ranges hold.
        self.check()

    @classmethod
    def parse(cls, data, where: str):
        require(isinstance(data, dict), where, f"must be an object, got {kind(data)}")
        hints = typing.get_type_hints(cls)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)  # a typo is an error, not a silently ignored key
        require(not unknown, f"{where}.{unknown[0]}" if unknown else where, "is not a known key")
        values = {}
        for f in dataclasses.fields(cls):
            key = f"{where}.{f.name}" if where else f.name
            if f.name in data:
                values[f.name] = _convert(data[f.name], hints[f.name], key)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise Invalid(key, "is missing")
        try:
            return cls(**values)
        except Invalid as exc:  # check() names the field; prefix the section
            raise Invalid(f"{where}.{exc.where}" if where else exc.where, exc.problem) from None

    def to_json(self) -> dict:
        """A JSON-ready dict (tuples become lists when dumped); None-valued optional sections left out."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if (value is None and f.default is None) or (f.metadata.get("omit_default") and value == f.default):
                continue
            out[f.name] = _to_json(value)
        return out


def _to_json(value):
    if isinstance(value, Section):
        return value.to_json()
    if isinstance(value, tuple):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    return value


def kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), f"{type(value).__name__} {value!r}")


def _convert(value, hint, where: str):
    """`value` from JSON as the type `hint` says: int, float, str, bool, dict, tuple[X, ...],
    tuple[X, Y], X | None, or a Section subclass."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner, where)
    if isinstance(hint, type) and issubclass(hint, Section):
        return hint.parse(value, where)
    if hint is bool:
        require(isinstance(value, bool), where, f"must be true or false, got {kind(value)}")
        return value
    if hint is int:
        require(isinstance(value, int) and not isinstance(value, bool), where, f"must be an integer, got {kind(value)}")
        return value
    if hint is float:
        require(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
                 where, f"must be a finite number, got {kind(value)}")
        return float(value)
    if hint is str:
        require(isinstance(value, str), where, f"must be a string, got {kind(value)}")
        return value
    if origin is dict or hint is dict:
        require(isinstance(value, dict), where, f"must be an object, got {kind(value)}")
        return dict(value)
    if origin is tuple:
        require(isinstance(value, list), where, f"must be a list, got {kind(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        require(len(value) == len(args), where, f"must have {len(args)} entries, got {len(value)}")
        return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    raise TypeError(f"no JSON conversion for {hint!r} ({where})")  # a schema bug, not a user error
