"""What the trainer callbacks share: building the method, checkpoint entries, log rows."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sparsetrain.methods import SparsityMethod, create_method, get_method_info, method_options

STATE_KEY = "sparsetrain"
"""Key of the method's entry in a trainer checkpoint."""


def build_method(
    method: str | SparsityMethod,
    options: dict[str, Any],
    total_steps: int,
    steps_per_epoch: int | None,
) -> SparsityMethod:
    """A ready method object, or one built by name with the trainer's step counts.

    ``total_steps`` (and ``steps_per_epoch`` for methods that take it, e.g. OptG) come from the
    trainer unless ``options`` sets them.
    """
    if isinstance(method, SparsityMethod):
        return method
    valid = method_options(get_method_info(method).factory)
    kwargs = dict(options)
    kwargs.setdefault("total_steps", total_steps)
    if "steps_per_epoch" in valid and steps_per_epoch is not None:
        kwargs.setdefault("steps_per_epoch", steps_per_epoch)
    return create_method(method, **kwargs)


def raw_buffer_names(method: SparsityMethod) -> list[str]:
    """Model state-dict keys of the raw-weight buffers of in-place methods (ST-3, OptG, ...)."""
    names = []
    for t in method.targets:
        key = f"{t.param_name}_raw"
        if key in t.module._buffers:
            names.append(t.name[: -len(t.param_name)] + key)
    return names


def checkpoint_entry(method: SparsityMethod, model_state: dict[str, Any]) -> dict[str, Any]:
    """The method's checkpoint entry; moves raw-weight buffers out of ``model_state``.

    The trainer's own model state then holds the effective (sparse) weights under the plain
    parameter names, so it loads into a fresh model, with or without sparsetrain.
    """
    raw = {}
    for name in raw_buffer_names(method):
        for key in [k for k in model_state if k == name or k.endswith("." + name)]:
            raw[name] = model_state.pop(key)
    return {"method": method.state_dict(), "raw": raw, "total_steps": method.total_steps}


@torch.no_grad()
def restore(
    method: SparsityMethod, model: nn.Module, weights: dict[str, torch.Tensor], entry: Any
) -> None:
    """Continue from a checkpoint entry after ``attach`` (the harness's restore order).

    ``weights`` is the model state restored by the trainer before ``attach`` (attach may have
    zeroed weights outside its initial masks); they go back, with the raw weights of in-place
    methods, and then the method's state.
    """
    state = {**weights, **entry.get("raw", {})}
    model.load_state_dict(state)
    method.load_state_dict(entry["method"])


def new_rows(method: SparsityMethod, seen: int) -> list[dict[str, float]]:
    """Numeric fields of the topology-update records after the first ``seen``."""
    return [
        {k: float(v) for k, v in row.items() if isinstance(v, int | float) and k != "step"}
        for row in method.history[seen:]
    ]


def sparsity(method: SparsityMethod) -> float:
    """Global sparsity of the masks."""
    numel = sum(t.numel for t in method.targets)
    return 1.0 - sum(t.nnz for t in method.targets) / numel if numel else 0.0
