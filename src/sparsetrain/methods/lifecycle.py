"""What ``attach`` checks before it touches anything, and how a failed attach is rolled back.

Every check here runs before the model or the optimizer changes; :class:`AttachSnapshot` keeps
(on the CPU) what attaching may change, so that an error while the first masks are set leaves
the model and the optimizer exactly as they were.
"""

from __future__ import annotations

import contextlib
import inspect
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sparsetrain import distributed as _dist
from sparsetrain.masking.targets import Target
from sparsetrain.optim import check_state, param_ids

_ATTACHED: weakref.WeakKeyDictionary[nn.Module, Any] = weakref.WeakKeyDictionary()


def attached_method(model: nn.Module) -> Any:
    """The method attached to ``model`` (or to the module a DDP wrapper holds), if any."""
    return _ATTACHED.get(_dist.unwrap(model))


def bind(model: nn.Module, method: Any) -> None:
    """Record that ``method`` is attached to ``model`` (one method per model)."""
    _ATTACHED[model] = method


def unbind(model: nn.Module) -> None:
    """Forget the method attached to ``model``."""
    _ATTACHED.pop(model, None)


class PendingHook:
    """Forward pre-hook that runs a method's deferred update at the next training forward.

    It holds the method weakly, and a copy or a pickle of the model carries an inert hook: a
    deep-copied model (an evaluation copy, an export) never drives the method.
    """

    def __init__(self, method: Any = None) -> None:
        self._method = None if method is None else weakref.ref(method)

    def __call__(self, module: nn.Module, args: Any) -> None:
        method = self._method() if self._method is not None else None
        due = method is not None and method._pending is not None
        if due and module.training and torch.is_grad_enabled():
            method.apply_pending()

    def __deepcopy__(self, memo: dict[int, Any]) -> PendingHook:
        return PendingHook()

    def __reduce__(self) -> tuple[type, tuple[()]]:
        return PendingHook, ()


def check_inputs(name: str, model: nn.Module, optimizer: Any) -> None:
    """Raise on a model that has a method already, or an optimizer ``attach`` cannot serve."""
    if model in _ATTACHED:
        raise ValueError(
            f"model already has a {_ATTACHED[model].name!r} method attached; detach() it first"
        )
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    if optimizer is not None and needs_closure(optimizer):
        raise TypeError(
            f"{type(optimizer).__name__} needs step(closure), which re-evaluates the model "
            "inside the step with dense gradients, after the method has masked them; "
            "sparsetrain supports optimizers stepped as loss.backward(); optimizer.step()"
        )


def needs_closure(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step`` requires a closure (LBFGS and the like)."""
    if isinstance(optimizer, torch.optim.LBFGS):
        return True
    try:
        closure = inspect.signature(type(optimizer).step).parameters.get("closure")
    except (TypeError, ValueError):  # a builtin or wrapped step without a signature
        return False
    return closure is not None and closure.default is inspect.Parameter.empty


def check_optimizer_holds(
    targets: Sequence[Target], optimizer: torch.optim.Optimizer, skip_keys: Sequence[str]
) -> None:
    """Raise unless ``optimizer`` holds every target and can have its state masked."""
    held = param_ids(optimizer)
    missing = [t.name for t in targets if id(t.param) not in held]
    if missing:
        hint = (
            "build the optimizer from model.parameters()"
            if len(missing) == len(targets)
            else f"keep them dense with exclude={missing!r}, or add them to the optimizer"
        )
        raise ValueError(
            f"the optimizer does not hold the model parameter {missing[0]!r} "
            f"({len(missing)} of {len(targets)} targets missing); {hint}"
        )
    for t in targets:
        check_state(optimizer, t.param, skip_keys=skip_keys)


_Kept = dict[str, tuple[Any, torch.Tensor | None]]


@dataclass
class AttachSnapshot:
    """What ``attach`` may change: the targets' weights and optimizer state, on the CPU."""

    weights: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor]]
    state: list[tuple[torch.Tensor, _Kept | None]]

    @classmethod
    def take(
        cls, targets: Sequence[Target], optimizer: torch.optim.Optimizer | None
    ) -> AttachSnapshot:
        def cpu(x: torch.Tensor) -> torch.Tensor:
            return x.detach().to("cpu", copy=True)

        weights = [(t.param, t.param.data, cpu(t.param)) for t in targets]
        state: list[tuple[torch.Tensor, _Kept | None]] = []
        for t in targets if optimizer is not None else []:
            entry = optimizer.state.get(t.param)  # type: ignore[union-attr]
            kept = None
            if entry is not None:
                kept = {
                    k: (v, cpu(v) if isinstance(v, torch.Tensor) else None)
                    for k, v in entry.items()
                }
            state.append((t.param, kept))
        return cls(weights, state)

    @torch.no_grad()
    def restore(
        self, optimizer: torch.optim.Optimizer | None, undo: Sequence[Callable[[], None]]
    ) -> None:
        """Run ``undo`` (errors ignored), then put the weights and optimizer state back."""
        for step in undo:
            with contextlib.suppress(Exception):
                step()
        for param, data, values in self.weights:
            param.data = data
            data.copy_(values)
        for param, kept in self.state if optimizer is not None else []:
            if kept is None:
                optimizer.state.pop(param, None)
                continue
            for value, values in kept.values():
                if values is not None:
                    value.copy_(values)
            optimizer.state[param] = {k: value for k, (value, _) in kept.items()}
