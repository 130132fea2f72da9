"""Which options a registry entry takes, and refitting a section's options to another entry.

The config's ``data``, ``model`` and ``method`` sections name a registry entry and take its
options flat beside ``name``; these functions read those options off the registries (methods,
models, datasets) so that overrides and suites can switch ``method.name`` and keep a valid config.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sparsetrain.data import get_dataset_info
from sparsetrain.methods import get_method_info, method_options
from sparsetrain.models import get_model_info

HARNESS_METHOD_KEYS = ("total_steps", "steps_per_epoch")  # set by the harness, never by a config


def takes_sparsity(method: str) -> bool:
    """Whether ``method`` reaches a set ``sparsity`` (not ``dense``, not an emergent method)."""
    try:
        info = get_method_info(method)
    except (ValueError, TypeError):
        return True  # unknown names are reported by the config check, with close matches
    return method != "dense" and info.sparsity_mode == "target"


def sparsity_is_option(method: str) -> bool:
    """Whether ``sparsity`` is one of ``method``'s options.

    True for target methods, and for an emergent method that can aim at a target in one of its
    modes (SCL's adaptive λ), which declares ``sparsity`` itself with default ``None`` (no
    target); ``dense`` and purely emergent methods (STR) refuse it.
    """
    if takes_sparsity(method):
        return True
    try:
        options = method_options(get_method_info(method).factory)
    except (ValueError, TypeError):
        return False
    return method != "dense" and "sparsity" in options and options["sparsity"] is None


def entry_defaults(section: str, name: str) -> dict[str, Any] | None:
    """The options a config may set beside ``name`` in ``section``, with their defaults.

    For ``method``: the constructor's options without those the harness sets
    (``total_steps``, ``steps_per_epoch``, ``seed``, which defaults to ``train.seed``) and without
    ``sparsity`` for methods that take no target. ``None`` for an unknown name.
    """
    try:
        if section == "data":
            return get_dataset_info(name).options()
        if section == "model":
            return get_model_info(name).options()
        options = method_options(get_method_info(name).factory)
    except (ValueError, TypeError):
        return None
    skip = {*HARNESS_METHOD_KEYS, "seed", *(() if sparsity_is_option(name) else ("sparsity",))}
    return {k: v for k, v in options.items() if k not in skip}


def switch_entry(
    options: dict[str, Any], section: str, old: str, new: str, keep: Collection[str] = ()
) -> tuple[list[str], list[str]]:
    """Fit the options written for entry ``old`` of ``section`` to entry ``new``, in place.

    Removes the options ``new`` does not take, and those still at ``old``'s default where
    ``new``'s default differs (so a resolved ``config.yaml`` switched to another method gets
    that method's defaults, e.g. RigL's drop fraction is not carried over to SET). Keys in
    ``keep`` (set explicitly for ``new``) stay and are validated strictly.

    Returns:
        ``(dropped, reset)``: the keys removed for each reason.
    """
    valid = entry_defaults(section, new)
    if valid is None or old == new:
        return [], []
    before = entry_defaults(section, old) or {}
    if section == "method" and not takes_sparsity(new):  # SCL: a target only when asked for
        valid = {k: v for k, v in valid.items() if k != "sparsity"}
    dropped, reset = [], []
    for key in [k for k in options if k != "name" and k not in keep]:
        if key not in valid:
            dropped.append(key)
        elif (
            key in before
            and _same(options[key], before[key])
            and not _same(before[key], valid[key])
        ):
            reset.append(key)
    for key in (*dropped, *reset):
        del options[key]
    return dropped, reset


def _same(a: Any, b: Any) -> bool:
    def plain(v: Any) -> Any:
        return list(v) if isinstance(v, tuple | list) else v

    return bool(plain(a) == plain(b))
