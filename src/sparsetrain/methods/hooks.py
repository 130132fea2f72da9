"""The hooks that drive a method from the user's ``optimizer.step()``, in order.

Hook order (the executable form is ``examples/train_loop.py``)
---------------------------------------------------------------
``method.attach(model, optimizer)`` registers two hooks on the optimizer, so an unchanged
training loop drives the method through its own ``optimizer.step()`` calls::

    for x, y in loader:
        loss = loss_fn(model(x), y)        # 1. forward (masks / effective weights already set)
        optimizer.zero_grad()
        loss.backward()                    # 2. backward: p.grad is the *dense* gradient
        optimizer.step()                   # 3. step pre-hook  -> method.after_backward()
                                           # 4. the optimizer's own update
                                           # 5. step post-hook -> method.after_optimizer_step()

- ``after_backward()``: on a topology-update step, methods that need the dense gradient read it
  here (RigL growth, SNIP, MEST, ...); DST with ``order="pre_step"`` (the gradient-based
  criteria under ``"auto"``) updates the topology here, on pre-step weights. Hard-mask methods
  then zero the gradients of pruned entries, so neither momentum nor weight decay can revive
  them.
- ``after_optimizer_step()``: the step counter advances; on an update step with
  ``order="post_step"`` the topology update is decided by the post-step weights and this
  batch's gradient, and takes effect before the next training forward (deferred updates,
  below); methods with a forward-pass function (ST-3, DNW, STR, SCL) prepare the next step's
  mask here.
  Hard-mask methods end every step with pruned weights and their optimizer state exactly zero.

Pass ``hook=False`` to ``attach`` to call the two hooks yourself (e.g. around a fused optimizer
that bypasses ``step()`` hooks). A step skipped by ``GradScaler`` runs no hook and counts no step.
``optimizer.step(closure)`` is refused (``TypeError``, before anything changes), and so are
optimizers that need a closure (LBFGS) at attach: the closure re-runs forward and backward inside
the step, after the pre-hook has masked the gradients, so the update would use dense gradients.

Deferred updates
----------------
Methods with periodic topology updates (``defers_updates``: the DST family, GMP, GraNet, OptG)
decide an update from the state of its step but let it take effect at the next training forward
(a forward in train mode with gradients on, seen by a forward pre-hook on the model and on each
target's module; ``after_backward`` runs it too, for loops whose forward runs no such hook). An
evaluation between two steps, such as the end-of-epoch one, then scores the model that trained,
as in the official codes that re-select at the start of an epoch; training is unchanged (the
update reads nothing that changes between a step and the next forward). ``state_dict`` saves a
pending update, so a checkpoint taken in between resumes exactly; an update at ``total_steps``
is applied at once. Methods whose masks follow the weights at every step (ST-3, DNW, STR, SCL)
keep updating in the post-step hook.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import torch

from sparsetrain.methods._execution import SparseExecution
from sparsetrain.methods.diagnostics import SparsityTargetWarning


class StepHooks(SparseExecution):
    """The step hooks of :class:`~sparsetrain.methods.base.SparsityMethod` (a mixin of it)."""

    defers_updates: ClassVar[bool] = False
    """Periodic topology updates take effect at the next training forward, not in the post-step
    hook of their step (see the module docstring and :meth:`apply_pending`)."""

    def _step_pre_hook(self, optimizer: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        # torch passes step's own arguments, the optimizer first: step(self, closure=None)
        closure = args[1] if len(args) > 1 else kwargs.get("closure")
        if closure is not None:  # raise before the method or the optimizer changes anything
            raise TypeError(
                f"{self.name}: optimizer.step(closure) is not supported: the closure re-runs "
                "forward and backward inside the step, after the method has masked the "
                "gradients; call loss.backward() and then optimizer.step() without a closure"
            )
        self.after_backward()

    def after_backward(self) -> None:
        """Hook between ``loss.backward()`` and the optimizer's update (see module docstring)."""
        self._require_attached()
        self.apply_pending()  # a loop whose forward ran no hook of the model (see attach)
        upcoming = self.step + 1
        if self._rank_sync is not None:  # FSDP2: the shards still hold the last decision
            self._rank_sync.before(upcoming)
        if self._sparse:
            self._sparse_hook(upcoming, backward=True)
        else:
            self._before_step(upcoming)
        if self.hard_mask and not self._dense_inactive:
            for t in self._masked_targets:
                if t.param.grad is not None:
                    t.param.grad.mul_(t.mask.view(torch.uint8))

    def after_optimizer_step(self) -> None:
        """Hook right after the optimizer's update (see module docstring)."""
        self._require_attached()
        self.step += 1
        if self.defers_updates and self.is_update_step(self.step) and not self._last_step():
            self._pending = self.step  # the topology changes before the next training forward
            self._hold_step()
        else:
            self._finish_step(self.step)
        if self._last_step():
            missed = self.report().misses() if self.sparsity_mode == "target" else []
            if missed:
                warnings.warn(
                    f"{self.name}: training ended off target: {'; '.join(missed)}",
                    SparsityTargetWarning,
                    stacklevel=2,
                )

    def _last_step(self) -> bool:
        return self.total_steps is not None and self.step == self.total_steps

    def _finish_step(self, step: int) -> None:
        """The post-step work of ``step``: its topology update, masking, the rank check."""
        if self._sparse:
            self._sparse_hook(step, backward=False)
        else:
            self._after_step(step)
        self._grads = None
        if self.hard_mask and self._rezero:
            with torch.no_grad():
                if self._held is not None:  # the deferred step's off-mask values, put back
                    for t, held in zip(self._masked_targets, self._held, strict=True):
                        t.param.add_(held)
                    self._held = None
                for t in self._masked_targets:
                    t.param.mul_(t.mask.view(torch.uint8))
        if self._rank_sync is not None:
            self._rank_sync(step)

    def _hold_step(self) -> None:
        """A deferred update step: the model between steps is the one that trained on it."""
        if self._sparse:
            self._arm(self.step + 1)
        if self.hard_mask and self._rezero:  # mask it, keeping what the update will read
            with torch.no_grad():
                self._held = [t.param * ~t.mask for t in self._masked_targets]
                for t in self._masked_targets:
                    t.param.mul_(t.mask.view(torch.uint8))
        if self._rank_sync is not None:  # the masks that trained agree (the new ones: later)
            self._rank_sync(self.step)

    def apply_pending(self) -> None:
        """Run the topology update deferred from the last step, if any (called automatically).

        Methods with ``defers_updates`` (periodic topology changes: the DST family, GMP, GraNet,
        OptG) decide an update from the state of its step and make it take effect at the next
        training forward (a forward in train mode with gradients enabled), as the official
        codes do when they re-select at the start of an epoch: an evaluation between two steps
        sees the model that trained, and training is unchanged. An update at ``total_steps`` is
        applied at once (no training follows it).
        """
        step, self._pending = self._pending, None
        if step is not None:
            self._apply_deferred(step)

    def _apply_deferred(self, step: int) -> None:
        self._finish_step(step)
