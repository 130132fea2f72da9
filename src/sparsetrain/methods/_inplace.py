"""Base for methods whose forward uses a function of the weights, kept in place (ST-3, DNW, STR).

Between optimizer steps each target's ``weight`` holds the effective weight Q, so the forward and
backward passes are exactly the dense ones (no parametrization, no extra op) and ``weight.grad``
is g = ∂L/∂Q, the dense gradient. The raw weight W lives in a buffer ``<name>_raw`` registered on
the same module, so ``model.state_dict()`` carries both and a checkpoint restores them in any
order. The step pre-hook turns g into the raw weights' gradient (identity for a straight-through
estimator) and swaps W into the parameter (a pointer swap, no copy) for the optimizer's update; the
post-hook recomputes Q from the updated W into a spare buffer and swaps it back. Where Q = W (a
dense or frozen phase) the buffer aliases the parameter and nothing is swapped, except for a
tied tensor (``Target.aliases``): ``load_state_dict`` writes it under each of its names, the
last one after the buffer, so it always keeps W in a buffer of its own (one copy per step).

Why not ``torch.nn.utils.parametrize``: on the project's CPU a parametrized
mask multiply alone costs ~1.2x a dense LeNet-300-100 step; this costs nothing in the forward or
backward. Caveats: ``optimizer.step()`` must run the hooks (``attach(..., hook=True)``, the
default); CUDA graphs that capture parameter addresses are not supported.
"""

from __future__ import annotations

from typing import Any

import torch

from sparsetrain.methods.base import SparsityMethod


class InPlaceMethod(SparsityMethod):
    """A method whose parameters hold Q = f(W, state) between steps and W during the update.

    Subclasses implement :meth:`refresh` (recompute their state from the raw weights) and
    :meth:`effective` (write Q), and may override :meth:`grad_transform`.
    """

    hard_mask = False
    fsdp2_note = (
        "its forward uses a function of the raw weights, which it keeps in a buffer next to "
        "the parameter, and FSDP2 shards parameters only"
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._spare: list[torch.Tensor | None] = []
        self._is_q: list[bool] = []

    # ------------------------------------------------------------------ subclass interface

    def refresh(self, step: int) -> None:
        """Recompute thresholds and masks from the raw weights (``t.param`` holds W here)."""

    def effective(self, index: int, raw: torch.Tensor, out: torch.Tensor) -> bool:
        """Write Q of target ``index`` into ``out`` and return ``True``; ``False`` if Q = W."""
        return False

    def grad_transform(self) -> None:
        """Turn ``t.param.grad`` (∂L/∂Q, with Q in ``t.param``) into the raw weights' gradient."""

    # ------------------------------------------------------------------ mechanics

    def _buffer_name(self, index: int) -> str:
        return f"{self.targets[index].param_name}_raw"

    def raw_weight(self, index: int) -> torch.Tensor:
        """The raw weight W of target ``index`` (outside an optimizer step)."""
        t = self.targets[index]
        return t.module._buffers[self._buffer_name(index)]  # type: ignore[return-value]

    def _on_attach(self) -> None:
        for i, t in enumerate(self.targets):
            name = self._buffer_name(i)
            if hasattr(t.module, name):
                raise ValueError(f"module of {t.name!r} already has an attribute {name!r}")
        for i, t in enumerate(self.targets):
            t.module.register_buffer(self._buffer_name(i), t.param.data)
        self._spare = [None] * len(self.targets)
        self._is_q = [False] * len(self.targets)
        self.refresh(0)
        self.publish()

    @torch.no_grad()
    def publish(self) -> None:
        """With W in the parameters: compute Q and swap it in (W stays in the ``_raw`` buffer)."""
        for i, t in enumerate(self.targets):
            raw = t.param.data
            spare = self._spare[i]
            if spare is None or spare.shape != raw.shape or spare.device != raw.device:
                spare = torch.empty_like(raw)
            t.module._buffers[self._buffer_name(i)] = raw
            if self.effective(i, raw, spare):
                t.param.data, self._spare[i], self._is_q[i] = spare, None, True
            elif t.aliases:  # Q = W, but a tied tensor's buffer must not alias it (docstring)
                t.param.data, self._spare[i], self._is_q[i] = spare.copy_(raw), None, True
            else:
                self._spare[i], self._is_q[i] = spare, False

    @torch.no_grad()
    def unpublish(self) -> None:
        """Swap W back into the parameters (Q's storage becomes the spare)."""
        for i, t in enumerate(self.targets):
            if self._is_q[i]:
                q = t.param.data
                t.param.data = t.module._buffers[self._buffer_name(i)]  # type: ignore[assignment]
                self._spare[i], self._is_q[i] = q, False

    def _before_step(self, step: int) -> None:
        self.grad_transform()
        self.unpublish()

    def _after_step(self, step: int) -> None:
        self.refresh(step)
        self.publish()

    @torch.no_grad()
    def unshare(self) -> None:
        """Give every parameter that aliases its ``_raw`` buffer (Q = W) a copy of its own.

        For writers that refuse tensors sharing memory (safetensors, in the Hugging Face
        ``Trainer``'s checkpoints); the next step swaps W back in as usual.
        """
        for i, t in enumerate(self.targets):
            if not self._is_q[i]:
                t.param.data, self._spare[i], self._is_q[i] = t.param.data.clone(), None, True

    def _hold_step(self) -> None:
        self.publish()  # Q of the updated W under the masks of the step that trained
        super()._hold_step()

    def _apply_deferred(self, step: int) -> None:
        self.unpublish()
        super()._apply_deferred(step)  # refresh(step) from W, then Q published

    def _squash(self) -> None:
        self._remove_buffers()  # the parameters already hold Q

    def _on_detach(self) -> None:
        self.unpublish()
        self._remove_buffers()

    def _remove_buffers(self) -> None:
        for i, t in enumerate(self.targets):
            t.module._buffers.pop(self._buffer_name(i), None)
        self._spare = [None] * len(self.targets)
        self._is_q = [False] * len(self.targets)

    def republish(self) -> None:
        """Recompute Q from the current W and state (after loading a state dict)."""
        self.unpublish()
        self.publish()
