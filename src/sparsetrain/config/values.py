"""Checking config values against type hints and registry defaults; plain-dict helpers.

Every error is a :class:`ConfigError` (a ``ValueError``) naming the key and the valid choices.
"""

from __future__ import annotations

import difflib
import inspect
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal

SECTION_NAMES = ("data", "model", "method", "optim", "train")  # a config's sections, in order


class ConfigError(ValueError):
    """A config value or key is invalid; the message names the key and the valid options."""


def did_you_mean(name: str, options: Sequence[str]) -> str:
    """``"; did you mean 'a', 'b'?"`` for up to three close matches of ``name`` (else ``""``)."""
    close = difflib.get_close_matches(name, list(options), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def check_type(key: str, value: Any, typ: Any) -> Any:
    """Check ``value`` against a type hint and return it (lists become tuples where hinted).

    Ints are accepted for floats, and strings such as ``5e-4`` (which YAML 1.1 reads as strings)
    are read as floats where a float is expected.

    Raises:
        ConfigError: Naming ``key``, the expected type and the value.
    """
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return check_type(key, value, inner[0]) if len(inner) == 1 else value
    if origin is Literal:
        if value not in args:
            raise ConfigError(
                f"invalid {key}={value!r}{did_you_mean(str(value), [str(a) for a in args])} "
                f"(valid: {', '.join(map(str, args))})"
            )
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(check_type(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key} must be a list of {len(args)} values, got {value!r}")
        return tuple(
            check_type(f"{key}[{i}]", v, a)
            for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if typ is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    return value


def check_option(key: str, value: Any, default: Any) -> Any:
    """Check a registry option against the type of its default (None default: anything)."""
    if default is None or default is inspect.Parameter.empty:
        return value
    for typ in (bool, int, float, str):  # bool first: it is a subclass of int
        if isinstance(default, typ):
            return check_type(key, value, typ)
    if isinstance(default, tuple | list):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return tuple(value) if isinstance(default, tuple) else list(value)
    return value


def check_registry_options(
    section: str, entry: str, options: Mapping[str, Any], valid: Mapping[str, Any]
) -> dict[str, Any]:
    """Validate ``options`` of registry entry ``entry`` against ``valid`` (name → default).

    Raises:
        ConfigError: An unknown key (with close matches and the valid keys) or a wrong type.
    """
    out: dict[str, Any] = {}
    for key, value in options.items():
        if key not in valid:
            raise ConfigError(
                f"unknown key {section}.{key} for {section} {entry!r}"
                f"{did_you_mean(key, list(valid))} (valid: {', '.join(valid) or 'none'})"
            )
        out[key] = check_option(f"{section}.{key}", value, valid[key])
    return out


def plain(value: Any) -> Any:
    """``value`` with tuples as lists and mapping keys as strings (as YAML writes them)."""
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    return value


def deep_copy(raw: Any) -> Any:
    """A copy of nested mappings and lists (lists and tuples become lists)."""
    if isinstance(raw, Mapping):
        return {k: deep_copy(v) for k, v in raw.items()}
    if isinstance(raw, list | tuple):
        return [deep_copy(v) for v in raw]
    return raw


def diff_configs(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts (sorted)."""
    keys = sorted(set(a) | set(b))
    out: list[str] = []
    for k in keys:
        va, vb = a.get(k), b.get(k)
        name = f"{prefix}{k}"
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            out += diff_configs(va, vb, f"{name}.")
        elif plain(va) != plain(vb):
            out.append(name)
    return out
