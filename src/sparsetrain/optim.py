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
from typing import Any

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
        local = value.to_local() if hasattr(value, "to_local") else value  # FSDP2: a DTensor
        fill_at(local, flat_index)  # the index is into the local shard


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


def group_of(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> dict[str, Any]:
    """The parameter group of ``optimizer`` that holds ``param``.

    Raises:
        ValueError: ``param`` is in no group.
    """
    for group in optimizer.param_groups:
        if any(p is param for p in group["params"]):
            return group
    raise ValueError("the optimizer does not hold this parameter")


_CTOR_SKIP = {"params", "initial_lr", "lr_scale"}


class Companion:
    """The optimizer a method keeps for its own parameters, following the user's LR schedule.

    Why: a method that adds parameters (OptG's scores, SCL's mask variables, STR's thresholds) never
    adds a parameter group to the user's optimizer, nor moves a parameter out of it. A group added
    at ``attach`` would surprise every LR scheduler built before it (PyTorch's schedulers zip their
    ``base_lrs`` with the groups, strictly) and would be missed by any code that captured the
    groups' LRs. Instead, each companion group is *linked* to a parameter of the user's optimizer
    (its anchor): before every companion step its LR is set to the anchor group's current LR times
    the group's ``scale``. Whatever drives the user's LR (the harness, a
    ``torch.optim.lr_scheduler`` built before or after ``attach``, Lightning, the Hugging Face
    Trainer) therefore drives these groups too, with nothing to register.

    The companion is either plain SGD (``kind="sgd"``: OptG's released supermask optimizer,
    SCL's mask SGD) or an optimizer of the user's class built from the anchor group's
    hyper-parameters (``kind="like"``), so a group in it updates exactly as the same group inside
    the user's optimizer would. Its state is saved by the method's ``state_dict``.

    Mixed precision: the companion's parameters never get a gradient from autograd. The method
    forms their gradients in the step pre-hook from the user's parameters' gradients, which a
    ``GradScaler`` has unscaled and checked for inf/NaN by then, and steps them inside the user's
    ``optimizer.step()``: so they are unscaled before their step, and a step the scaler skips
    steps none of them (tested for every method in ``tests/test_user_optimizer.py``).

    Args:
        user: The user's optimizer (holds the anchors).
        kind: ``"sgd"`` or ``"like"``.
    """

    def __init__(self, user: torch.optim.Optimizer, kind: str = "like") -> None:
        if kind not in ("sgd", "like"):
            raise ValueError(f"unknown companion kind {kind!r}; valid: sgd, like")
        self.user, self.kind = user, kind
        self.opt: torch.optim.Optimizer | None = None
        self._anchors: list[torch.Tensor] = []

    def add(
        self,
        params: list[torch.Tensor],
        anchor: torch.Tensor,
        *,
        scale: float = 1.0,
        **overrides: Any,
    ) -> int:
        """Add a group over ``params`` following ``anchor``'s group; returns its index.

        Args:
            params: The parameters to train.
            anchor: A parameter of the user's optimizer whose group's LR this group follows
                (and, for ``kind="like"``, whose hyper-parameters it copies).
            scale: LR of this group / LR of the anchor's group (change with :meth:`set_scale`).
            **overrides: Hyper-parameters that differ from the anchor group's (or SGD's).
        """
        home = group_of(self.user, anchor)
        hp = {k: v for k, v in home.items() if k not in _CTOR_SKIP} if self.kind == "like" else {}
        hp = hp | overrides | {"lr": float(home["lr"]) * scale}
        group = {"params": list(params), **hp, "lr_scale": scale}
        if self.opt is None:
            cls = torch.optim.SGD if self.kind == "sgd" else type(self.user)
            try:
                self.opt = cls([group])
            except TypeError as exc:
                raise TypeError(
                    f"cannot build a {cls.__name__} for the method's own parameters ({exc}); "
                    "use the method's 'sgd' optimizer option"
                ) from None
        else:
            self.opt.add_param_group(group)
        self._anchors.append(anchor)
        return len(self._anchors) - 1

    @property
    def groups(self) -> list[dict[str, Any]]:
        """The companion's parameter groups (``[]`` before the first :meth:`add`)."""
        return [] if self.opt is None else self.opt.param_groups

    def set_scale(self, index: int, scale: float) -> None:
        """Set group ``index``'s LR / anchor LR ratio (from the next :meth:`sync_lr` on)."""
        self.groups[index]["lr_scale"] = float(scale)

    def sync_lr(self) -> None:
        """Set every group's LR to its anchor group's current LR times its scale."""
        for group, anchor in zip(self.groups, self._anchors, strict=True):
            group["lr"] = float(group_of(self.user, anchor)["lr"]) * group["lr_scale"]

    def step(self) -> None:
        """:meth:`sync_lr`, then one update of every group with a gradient."""
        if self.opt is None:
            return
        self.sync_lr()
        self.opt.step()

    def zero_grad(self) -> None:
        """Drop the gradients of the companion's parameters (``set_to_none``)."""
        if self.opt is not None:
            self.opt.zero_grad(set_to_none=True)

    def release(self) -> None:
        """Drop the companion's groups and state (at ``detach``)."""
        self._anchors, self.opt = [], None

    def state_dict(self) -> dict[str, Any]:
        return {} if self.opt is None else self.opt.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.opt is not None and state:
            self.opt.load_state_dict(state)
