"""Typed config from plain data: build nested dataclasses from a (Hydra) mapping, checking every key once.

``from_dict(cls, data)`` rejects unknown and missing keys, coerces values to the annotated types (an int where a
float is declared, a list where a tuple is) and runs each dataclass's ``__post_init__`` checks; any error comes back
as one ``ConfigError`` naming the full dotted key, e.g. ``trainer.grpo.lr must be > 0, got -1.0``.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from typing import Any


class ConfigError(ValueError):
    """A config value that cannot work; the message starts with its dotted key."""


def need(ok: bool, key: str, msg: str) -> None:
    """ConfigError ``"<key> <msg>"`` unless ``ok``; ``from_dict`` prefixes the path of the enclosing groups."""
    if not ok:
        raise ConfigError(f"{key} {msg}")


def positive(obj, *keys: str, allow_zero: bool = False, integer: bool = False) -> None:
    """Each of ``keys`` on ``obj`` is a finite number > 0 (>= 0 with ``allow_zero``), an integer if ``integer``.

    >>> from types import SimpleNamespace as NS
    >>> positive(NS(lr=-1.0), "lr")
    Traceback (most recent call last):
    ...
    stepentropy_rl.typed.ConfigError: lr must be a finite number > 0, got -1.0
    """
    for key in keys:
        v = getattr(obj, key)
        kind = "an integer" if integer else "a finite number"
        ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) \
            and (v >= 0 if allow_zero else v > 0) and (not integer or float(v).is_integer())
        need(ok, key, f"must be {kind} {'>=' if allow_zero else '>'} 0, got {v!r}")


def one_of(obj, key: str, choices) -> None:
    """``getattr(obj, key)`` is one of ``choices``, else ConfigError listing them."""
    v = getattr(obj, key)
    need(v in tuple(choices), key, f"must be one of {tuple(choices)}, got {v!r}")


def from_dict(cls, data: Any, path: str = ""):
    """An instance of dataclass ``cls`` from the mapping ``data`` (see the module docstring).

    >>> @dataclasses.dataclass
    ... class Optim:
    ...     lr: float = 1e-3
    ...     betas: tuple = (0.9, 0.99)
    ...     def __post_init__(self): positive(self, "lr")
    >>> from_dict(Optim, {"lr": 1, "betas": [0.9, 0.95]})
    Optim(lr=1.0, betas=(0.9, 0.95))
    >>> from_dict(Optim, {"lr": 0}, "trainer.optim")
    Traceback (most recent call last):
    ...
    stepentropy_rl.typed.ConfigError: trainer.optim.lr must be a finite number > 0, got 0.0
    >>> from_dict(Optim, {"lrr": 1e-3}, "trainer.optim")
    Traceback (most recent call last):
    ...
    stepentropy_rl.typed.ConfigError: trainer.optim.lrr is not a known key; known: betas, lr
    """
    where = f"{path}." if path else ""
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            raise ConfigError(f"{where}{key} is not a known key; known: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], where + name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}{name} is missing")
    try:
        return cls(**kwargs)
    except ValueError as e:  # ConfigError, or a ValueError from a dataclass's own checks
        raise ConfigError(f"{where}{e}") from None


def _coerce(tp, v, key: str):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if v is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{key} must be set, got null")
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # Optional[X]: X's own error names the key that is wrong inside it
            return _coerce(options[0], v, key)
        for arg in options:
            try:
                return _coerce(arg, v, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key} must be {' or '.join(_name(a) for a in args)}, got {v!r}")
    if tp is Any:
        return v
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, v, key)
    if tp is bool:
        if isinstance(v, bool):
            return v
    elif tp is int:
        if isinstance(v, numbers.Integral) and not isinstance(v, bool):
            return int(v)
    elif tp is float:
        if isinstance(v, numbers.Real) and not isinstance(v, bool):
            return float(v)
    elif tp is str:
        if isinstance(v, str):
            return v
    elif (origin or tp) in (list, tuple):
        if isinstance(v, (list, tuple)):
            inner = args[0] if args else Any  # list[X] or tuple[X, ...]
            items = [_coerce(inner, x, f"{key}[{i}]") for i, x in enumerate(v)]
            return tuple(items) if (origin or tp) is tuple else items
    elif (origin or tp) is dict:
        if isinstance(v, dict):
            inner = args[1] if args else Any
            return {k: _coerce(inner, x, f"{key}.{k}") for k, x in v.items()}
    else:
        raise TypeError(f"{key}: unsupported config type {tp!r}")
    if v is None:
        raise ConfigError(f"{key} must be set, got null")
    raise ConfigError(f"{key} must be {_name(tp)}, got {v!r}")


def _name(tp) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))
