"""Reading YAML and applying ``section.key=value`` overrides to a raw config dict.

Values are read as YAML scalars (``train.epochs=3``, ``optim.milestones=[5,8]``); switching
``method.name`` (or ``data.name``, ``model.name``) refits that section's options to the new entry
(:func:`~sparsetrain.config.entries.switch_entry`). YAML is imported lazily: ``pyyaml`` is the
``cli`` extra.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sparsetrain.config.entries import switch_entry
from sparsetrain.config.values import SECTION_NAMES, ConfigError, deep_copy, did_you_mean


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from ``path``.

    Raises:
        ConfigError: The file is missing, is not valid YAML, or is not a mapping.
    """
    import yaml  # optional: the `cli` extra

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{p}{where}: invalid YAML ({problem})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: a config must be a mapping of sections, got {type(raw).__name__}")
    return raw


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``"a.b=value"`` into ``(["a", "b"], value)``, the value read as a YAML scalar.

    >>> parse_override("method.sparsity=0.95")
    (['method', 'sparsity'], 0.95)
    """
    import yaml  # optional: the `cli` extra

    key, sep, value = text.partition("=")
    path = key.strip().split(".")
    if not sep or len(path) < 2 or not all(path):
        raise ConfigError(f"bad override {text!r}: expected section.key=value, e.g. train.epochs=3")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value  # not valid YAML on its own: keep the raw string
    return path, parsed


def apply_overrides(
    raw: Mapping[str, Any], overrides: Sequence[str], notes: list[str] | None = None
) -> dict[str, Any]:
    """A deep copy of ``raw`` with each ``section.key=value`` override set.

    ``section.key=null`` removes the key, so its default applies. Setting ``method.name`` (or
    ``data.name``, ``model.name``) to another entry drops the section's options the new entry
    does not take, and those left at the old entry's default where the new one's differs (see
    :func:`~sparsetrain.config.entries.switch_entry`); options given on the same command line are
    kept and validated strictly. What was dropped is described in ``notes``, one line each.

    Raises:
        ConfigError: Malformed override or unknown section (with close matches).
    """
    out = deep_copy(raw)
    given: dict[str, set[str]] = {}
    for text in overrides:
        path, value = parse_override(text)
        if value is None:
            _remove_dotted(out, path)
        else:
            set_dotted(out, ".".join(path), value, what=f"override {text!r}")
        given.setdefault(path[0], set()).add(".".join(path[1:]))
    for section in ("data", "model", "method"):
        old, new = _entry(raw, section), _entry(out, section)
        if old is None or new is None or old == new:
            continue
        dropped, reset = switch_entry(out[section], section, old, new, given.get(section, ()))
        what = [f"dropped {_keys(section, dropped)} (not an option of {new})"] if dropped else []
        what += [f"{_keys(section, reset)} back to {new}'s defaults"] if reset else []
        if what and notes is not None:
            notes.append(f"{section}.name {old} -> {new}: {'; '.join(what)}")
    return out


def _entry(raw: Mapping[str, Any], section: str) -> str | None:
    part = raw.get(section)
    name = part.get("name", "dense" if section == "method" else None) if part else None
    return name if isinstance(name, str) else None


def _keys(section: str, keys: Sequence[str]) -> str:
    return ", ".join(f"{section}.{k}" for k in keys)


def _remove_dotted(raw: dict[str, Any], path: Sequence[str]) -> None:
    """Remove ``raw[a][b]`` for ``path = [a, b]`` if present (``a.b=null`` on the command line)."""
    if path[0] not in SECTION_NAMES:
        set_dotted(raw, ".".join(path), None)  # raises: unknown section, with close matches
    node: Any = raw
    for part in path[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(path[-1], None)


def set_dotted(raw: dict[str, Any], key: str, value: Any, *, what: str | None = None) -> None:
    """Set ``raw[a][b] = value`` for ``key = "a.b"`` in place, creating sections as needed.

    Raises:
        ConfigError: Unknown section (with close matches) or a path through a non-mapping.
    """
    what = what or f"key {key!r}"
    path = key.split(".")
    if len(path) < 2 or not all(path):
        raise ConfigError(f"bad {what}: expected section.key, e.g. train.epochs")
    if path[0] not in SECTION_NAMES:
        raise ConfigError(
            f"bad {what}: unknown section {path[0]!r}"
            f"{did_you_mean(path[0], list(SECTION_NAMES))} (valid: {', '.join(SECTION_NAMES)})"
        )
    node = raw
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"bad {what}: {part!r} is not a section")
        node = child
    node[path[-1]] = value
