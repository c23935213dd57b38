"""Typed, frozen configuration objects built from TOML tables.

A section is a frozen dataclass. Each field may carry metadata that the loader enforces:

    max_order_notional: float = field(default=5_000.0, metadata={
        "doc": "largest notional of one order, quote currency", "min": 0.0, "exclusive_min": True})

Keys: `doc` (str), `min`/`max` (inclusive bounds), `exclusive_min`/`exclusive_max` (bool),
`choices` (allowed values), `unit` (shown in errors). A section may also define
`check(self) -> None` raising `ConfigError` for rules that span several fields.

Errors name the dotted key, the value given and what is allowed, so the CLI can print one line.
Nothing here knows about tradingd's own sections: modules in `risk/` declare theirs with plain
`dataclasses.field` metadata and never import this module.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is unusable. `str()` is the one line shown to the user."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key} = {value!r}: {allowed}")


def load(cls: type[T], data: Mapping[str, Any], path: str = "") -> T:
    """Build dataclass `cls` from `data`, rejecting unknown keys, wrong types and bad ranges."""
    if not isinstance(data, Mapping):
        raise ConfigError(path or "<root>", data, "must be a table")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    for key in data:
        if key not in fields:
            allowed = ", ".join(sorted(fields)) or "no keys"
            raise ConfigError(_join(path, key), data[key], f"unknown key; allowed here: {allowed}")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key = _join(path, name)
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(key, None, "is required")
            continue
        value = _coerce(hints[name], data[name], key)
        _check_bounds(f.metadata, value, key)
        kwargs[name] = value
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if callable(check):
        try:
            check()
        except ConfigError as exc:
            if path and not exc.key.startswith(path + "."):
                raise ConfigError(_join(path, exc.key), exc.value, exc.allowed) from None
            raise
    return obj


def describe(cls: type) -> list[tuple[str, Any, str]]:
    """(name, default, doc) for each field: used to document the defaults."""
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        out.append((f.name, default, f.metadata.get("doc", "")))
    return out


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError as exc:
                errors.append(exc.allowed)
        raise ConfigError(key, value, " or ".join(errors))
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(key, value, "must be one of " + ", ".join(repr(c) for c in choices))
        return value
    if dataclasses.is_dataclass(tp):
        return load(typing.cast(type, tp), value, key)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(key, value, "must be a list")
        args = get_args(tp)
        item_tp = args[0] if args else Any
        items = [_coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(key, value, "must be a table")
        args = get_args(tp)
        val_tp = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(val_tp, v, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, value, "must be true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, value, "must be an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, value, "must be a number")
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(key, value, "must be a finite number")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, value, "must be a string")
        return value
    raise ConfigError(key, value, f"unsupported setting type {_type_name(tp)}")


def _check_bounds(meta: Mapping[str, Any], value: Any, key: str) -> None:
    if value is None:
        return
    unit = f" {meta['unit']}" if "unit" in meta else ""
    choices = meta.get("choices")
    if choices is not None:
        values = value if isinstance(value, list | tuple) else [value]
        for v in values:
            if v not in choices:
                raise ConfigError(key, value, "must be one of " + ", ".join(map(repr, choices)))
    numbers = value if isinstance(value, list | tuple) else [value]
    if isinstance(value, Mapping):
        numbers = list(value.values())
    for v in numbers:
        if not isinstance(v, int | float) or isinstance(v, bool):
            continue
        lo, hi = meta.get("min"), meta.get("max")
        if lo is not None:
            if meta.get("exclusive_min") and not v > lo:
                raise ConfigError(key, value, f"must be > {lo}{unit}")
            if v < lo:
                raise ConfigError(key, value, f"must be >= {lo}{unit}")
        if hi is not None:
            if meta.get("exclusive_max") and not v < hi:
                raise ConfigError(key, value, f"must be < {hi}{unit}")
            if v > hi:
                raise ConfigError(key, value, f"must be <= {hi}{unit}")
