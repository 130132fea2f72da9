"""A method's checkpoint: the dict ``method.state_dict()`` writes and ``load_state_dict`` checks.

Layout (``format_version`` 1): ``method`` (registry name), ``step`` (optimizer steps done),
``masks`` (target name → ``bool`` tensor), ``history`` (one dict per topology update),
``extra`` (the method's own state: scores, thresholds, their optimizer, ...) and, for
``execution`` other than ``"dense"``, ``execution`` (target name → ``"sparse"`` or ``"dense"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sparsetrain.masking.targets import Target

FORMAT_VERSION = 1


def method_state(
    name: str,
    step: int,
    targets: Sequence[Target],
    history: Sequence[dict[str, Any]],
    extra: dict[str, Any],
    execution: dict[str, str] | None,
) -> dict[str, Any]:
    """The state dict of a method (masks cloned, history copied)."""
    state = {
        "format_version": FORMAT_VERSION,
        "method": name,
        "step": step,
        "masks": {t.name: t.mask.clone() for t in targets},
        "history": list(history),
        "extra": extra,
    }
    if execution is not None:
        state["execution"] = execution
    return state


def check_method_state(name: str, targets: Sequence[Target], state: Any) -> None:
    """Raise ``ValueError`` unless ``state`` is a state of method ``name`` with these targets."""
    if not isinstance(state, dict) or "masks" not in state:
        raise ValueError("not a sparsetrain method state (no 'masks' entry)")
    if state.get("method") != name:
        raise ValueError(f"state is for method {state.get('method')!r}, not {name!r}")
    masks = state["masks"]
    names = [t.name for t in targets]
    missing = [n for n in names if n not in masks]
    unexpected = [n for n in masks if n not in names]
    if missing or unexpected:
        raise ValueError(f"mask keys do not match: missing {missing}, unexpected {unexpected}")
    for t in targets:
        shape = tuple(getattr(masks[t.name], "shape", ()))
        if shape != t.shape:
            raise ValueError(f"mask {t.name!r} has shape {shape}, expected {t.shape}")
