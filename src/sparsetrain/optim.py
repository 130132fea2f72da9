"""Optimizer-state surgery that works for any ``torch.optim.Optimizer``.

Every state tensor shaped like a masked parameter (SGD ``momentum_buffer``, Adam/AdamW
``exp_avg``/``exp_avg_sq``/``max_exp_avg_sq``, RMSprop ``square_avg``/``grad_avg``/
``momentum_buffer``, Adagrad ``sum``, ...) is zeroed at pruned positions, and newly grown
positions start from zero state. Scalars (``step``) are left alone. A state tensor of another
non-scalar shape (a factored or quantised layout) raises a ``TypeError`` naming the key, unless
the key is listed in ``skip_keys``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

STATE_POLICIES = ("zero", "keep")


def param_ids(optimizer: torch.optim.Optimizer) -> set[int]:
    """Ids of all parameters an optimizer holds."""
    return {id(p) for group in optimizer.param_groups for p in group["params"]}


def _masked_state(
    optimizer: torch.optim.Optimizer, param: torch.Tensor, skip_keys: Iterable[str]
) -> Iterator[torch.Tensor]:
    """The parameter-shaped state tensors of ``param``; raises on other non-scalar layouts."""
    skip = set(skip_keys)
    for key, value in optimizer.state.get(param, {}).items():
        if key in skip or not isinstance(value, torch.Tensor) or value.dim() == 0:
            continue
        if value.shape != param.shape:
            raise TypeError(
                f"optimizer state {key!r} has shape {tuple(value.shape)}, not the parameter's "
                f"{tuple(param.shape)}; sparsetrain cannot mask it. Pass state_skip_keys="
                f"[{key!r}] to leave it alone (policies: {', '.join(STATE_POLICIES)})"
            )
        yield value


def check_state(
    optimizer: torch.optim.Optimizer, param: torch.Tensor, *, skip_keys: Iterable[str] = ()
) -> None:
    """Raise ``TypeError`` now if ``param``'s optimizer state has a layout we cannot mask."""
    for _ in _masked_state(optimizer, param, skip_keys):
        pass


def zero_state(
    optimizer: torch.optim.Optimizer,
    param: torch.Tensor,
    zero_where: torch.Tensor,
    *,
    skip_keys: Iterable[str] = (),
) -> None:
    """Zero every parameter-shaped optimizer state entry of ``param`` where ``zero_where`` is set.

    Args:
        optimizer: Any optimizer.
        param: The parameter whose state to edit.
        zero_where: ``bool`` tensor of ``param``'s shape.
        skip_keys: State keys to leave untouched (per-state opt-out).

    Raises:
        TypeError: A non-scalar state tensor whose shape differs from the parameter's.
    """
    for value in list(_masked_state(optimizer, param, skip_keys)):  # check every key first
        value.masked_fill_(zero_where, 0)


def zero_state_at(
    optimizer: torch.optim.Optimizer,
    param: torch.Tensor,
    flat_index: torch.Tensor,
    *,
    skip_keys: Iterable[str] = (),
) -> None:
    """Like :func:`zero_state`, at the flat indices ``flat_index`` (cheap for few positions)."""
    for value in list(_masked_state(optimizer, param, skip_keys)):  # check every key first
        fill_at(value, flat_index)


def fill_at(x: torch.Tensor, flat_index: torch.Tensor, value: float = 0.0) -> None:
    """Set ``x`` to ``value`` at logical (row-major) flat indices, whatever its memory format."""
    if x.is_contiguous():
        x.view(-1).index_fill_(0, flat_index, value)
    else:  # e.g. channels_last conv weights
        where = torch.zeros(x.numel(), dtype=torch.bool, device=x.device)
        where[flat_index] = True
        x.masked_fill_(where.view(x.shape), value)


def momentum_of(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> torch.Tensor | None:
    """The momentum signal of ``param`` for momentum growth.

    SGD's ``momentum_buffer``, or Adam's ``exp_avg / (sqrt(exp_avg_sq) + eps)``; ``None`` if the
    optimizer keeps neither.
    """
    state = optimizer.state.get(param, {})
    if "momentum_buffer" in state and state["momentum_buffer"] is not None:
        return state["momentum_buffer"]
    if "exp_avg" in state and "exp_avg_sq" in state:
        return state["exp_avg"] / (state["exp_avg_sq"].sqrt() + 1e-8)
    return None


def zero_preserving(optimizer: torch.optim.Optimizer) -> bool:
    """Whether a weight with zero value, zero gradient and zero state stays exactly zero.

    True for every optimizer shipped in ``torch.optim`` (their updates are products of the
    gradient, the state and the weight itself). Optimizers from elsewhere are not trusted: the
    hard-mask methods re-apply the mask to the weights after each of their steps.
    """
    return type(optimizer).__module__.startswith("torch.optim")


def remove_params(optimizer: torch.optim.Optimizer, params: Iterable[torch.Tensor]) -> None:
    """Take ``params`` out of ``optimizer``: out of every group, groups left empty, their state.

    Undoes what a method added at ``attach`` (scores, mask variables, thresholds), whether it
    joined an existing group or got its own.
    """
    ids = {id(p) for p in params}
    for group in optimizer.param_groups:
        group["params"][:] = [p for p in group["params"] if id(p) not in ids]
    optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]
    for p in [p for p in optimizer.state if id(p) in ids]:
        del optimizer.state[p]
