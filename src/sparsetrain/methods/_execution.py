"""Sparse execution of a method's Linear targets (``execution="sparse"`` or ``"auto"``).

A mixin of :class:`~sparsetrain.methods.base.SparsityMethod`, kept apart so the base stays
readable. For a sparse target the ``bool`` mask in ``Target.mask`` stays the one home of the
mask and the ``SparseLinear`` layer's CSR structure is kept equal to it. Between topology
updates the layer trains on sparse kernels; on an update step that needs the dense gradient
(armed by the previous step's post-hook), the dense weight and gradient are materialised into
the original parameter for the hooks, the structure is rebuilt, and the optimizer state follows
the weights that stay. Methods needing dense gradients every step keep the dense path.

Methods whose masks start dense and only shrink between regrowths (GMP, GraNet) set
``sparse_from_density``: a Linear target stays masked-dense while CSR kernels would be slower,
and moves to sparse kernels at the end of the first topology update that leaves its density at
or below that value (``execution="auto"``: measured from :data:`AUTO_FROM_DENSITY` on, and moved
only where faster). The swap replaces the module in the model and the weight's ``Parameter`` in
the optimizer (same index, state gathered), as at attach.

Only plain ``nn.Linear`` targets can run sparse. Conv, ConvTranspose, attention in-projections,
recurrent weights, embeddings and other tensors keep the masked-dense path, and so do a weight
tied to another name (an output head tied to an embedding) and a Linear registered under
several names: the swap replaces one module under one name, and the other names would read a
placeholder. Each such target's row in ``execution_report()`` says why it stayed dense.

Resume. A sparse layer saves the plain ``nn.Linear``'s ``weight`` (dense, zeros at pruned
positions) and ``bias`` (see ``sparsetrain.sparse.layers``), so a model checkpoint loads in any
execution. The optimizer state of a sparse layer is ordered by its structure, which is the
checkpoint's mask, known only once the method state is loaded: ``load_state_dict`` therefore
first gives each target the checkpoint's execution (:meth:`SparseExecution.adopt_execution`),
then rebuilds each sparse layer whose structure differs from its loaded mask, taking the weights
from the model state loaded before it, and keeping the optimizer state as it is when the
optimizer was loaded since (a load hook on the optimizer tells). The README's order (model,
optimizer, method), the method first, or the optimizer first all continue bit for bit.

Execution (``execution="dense" | "sparse" | "auto"``)
-----------------------------------------------------
``"dense"`` (the default) is masked-dense execution and adds no per-step work. ``"sparse"``
swaps every eligible target ``nn.Linear`` for a :class:`~sparsetrain.sparse.SparseLinear` at
attach (CSR values + structure, optimizer state sized to the live values); ``"auto"`` first
times each layer dense vs sparse at ``execution_batch_size`` (``plan_layers``) and swaps only
the layers measured faster. Conv and other non-Linear targets, and weights tied or shared with
another layer, stay dense (reported with the reason).

For a sparse target, ``Target.mask`` stays the one home of the mask and the layer's structure is
kept equal to it. ``Target.param`` and ``Target.module`` keep naming the original dense
``Parameter`` and ``nn.Linear``, now outside the model: the parameter holds a zero-memory
placeholder of the weight's shape, and holds the dense weight view (``layer.to_dense()``, with
the captured dense gradient in ``.grad``) only while the method's hooks run on an update step,
so every criterion reads weights exactly as in dense mode. A mask change calls
``layer.set_structure``: kept weights keep their value and optimizer state, dropped ones vanish,
grown ones start at zero. The post-step hook of step ``t - 1`` arms ``capture_dense_grad`` when
step ``t`` needs the dense gradient (RigL growth, SNIP), so it is computed for that step only.
Only methods with ``supports_sparse_execution`` (static, the DST family, GMP and GraNet, whose
layers move to sparse kernels once pruned far enough) accept it; the others need dense
gradients every step and keep the dense path. ``detach``/``squash`` put the original
``nn.Linear`` modules back (original names, zeros at pruned positions).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from sparsetrain.masking.targets import Target
from sparsetrain.optim import momentum_of
from sparsetrain.sparse import bench
from sparsetrain.sparse.convert import replace_param, scatter_state, swap_to_sparse
from sparsetrain.sparse.layers import SparseLinear

if TYPE_CHECKING:
    from torch.utils.hooks import RemovableHandle


AUTO_FROM_DENSITY = 0.5
"""``execution="auto"`` with a deferred switch: layers are measured from this density on."""


class SparseExecution:
    """Sparse-execution behaviour mixed into ``SparsityMethod`` (see the module docstring)."""

    sparse_from_density: ClassVar[float | None] = None
    """Density at or below which a dense-started Linear target moves to sparse kernels (GMP,
    GraNet); ``None``: every eligible target is decided once, at attach."""

    @property
    def _deferred(self) -> list[tuple[Target, str]]:
        """Eligible targets still masked-dense that may move to sparse kernels later."""
        return self.__dict__.setdefault("_deferred_targets", [])

    @property
    def _state_loaded(self) -> set[str]:
        """Sparse targets whose optimizer state was loaded since their structure last changed."""
        return self.__dict__.setdefault("_state_loaded_targets", set())

    def _check_execution(self) -> None:
        """Raise before attach if this method cannot run with its ``execution`` option."""
        if self.execution == "dense":
            return
        if not self.supports_sparse_execution:
            raise ValueError(
                f"method {self.name!r} {self.sparse_execution_note}; execution="
                f"{self.execution!r} is not available for it (use execution='dense')"
            )
        if self.execution == "auto" and self.execution_batch_size is None:
            raise ValueError(
                "execution='auto' measures each layer at the run's batch size; set "
                "execution_batch_size (or use execution='sparse' or 'dense')"
            )

    def _setup_execution(self) -> None:
        """Choose dense or sparse per target and swap the sparse Linear layers in (attach)."""
        model = self._require_attached()
        if self.optimizer is not None:
            self._optimizer_hook = self.optimizer.register_load_state_dict_post_hook(
                self._optimizer_loaded
            )
        names = {id(m): n for n, m in model.named_modules()}
        batch = self.execution_batch_size
        rows: dict[str, dict[str, Any]] = {}
        eligible: list[tuple[Target, str]] = []
        for t in self.targets:
            mod_name = names.get(id(t.module), "")
            density = t.nnz / t.numel if t.numel else 0.0
            row = {
                "layer": t.name,
                "shape": t.shape,
                "density": density,
                "batch": batch,
                "dense_ms": math.nan,
                "sparse_ms": math.nan,
                "decision": "dense",
                "note": "",
            }
            rows[t.name] = row
            why = _ineligible(t, mod_name)
            if why:
                row["note"] = why
            else:
                eligible.append((t, mod_name))
        chosen: list[tuple[Target, str]] = []
        self._deferred.clear()
        limit = self._switch_density()
        if limit is not None:  # dense-started masks: layers above the limit wait
            for t, mn in eligible:
                if t.nnz / t.numel > limit:
                    self._deferred.append((t, mn))
                    rows[t.name]["note"] = f"dense until density <= {limit:g}"
            eligible = [e for e in eligible if e not in self._deferred]
        if self.execution == "sparse":
            chosen = eligible
            for t, _ in eligible:
                rows[t.name].update(decision="sparse", note="forced (execution='sparse')")
        elif eligible:
            sub = nn.ModuleDict({mn.replace(".", "/"): t.module for t, mn in eligible})
            masks = {f"{mn.replace('.', '/')}.weight": t.mask for t, mn in eligible}
            decisions = bench.plan_layers(sub, batch or 1, mode="train", masks=masks, repeats=10)
            for (t, mn), d in zip(eligible, decisions, strict=True):
                rows[t.name].update(
                    dense_ms=d.dense_ms, sparse_ms=d.sparse_ms, decision=d.choice, note="measured"
                )
                if d.choice == "sparse":
                    chosen.append((t, mn))
        for t, mod_name in chosen:
            self._swap_in(t, mod_name)
        self.execution_decisions = [rows[t.name] for t in self.targets]
        self._arm(self.step + 1)

    def _swap_in(self, t: Target, mod_name: str) -> None:
        """Replace target ``t``'s ``nn.Linear`` by a :class:`SparseLinear` (optimizer included)."""
        model = self._require_attached()
        t.param.grad = None  # the optimizer holds the layer's values from now on
        layer = swap_to_sparse(model, mod_name, t.mask, self.optimizer)
        self._sparse[t.name] = layer
        self._dense_layers[t.name] = (t.module, mod_name)
        t.param.data = _placeholder(t.param)
        self._masked_targets = [t for t in self.targets if t.name not in self._sparse]

    def _optimizer_loaded(self, optimizer: torch.optim.Optimizer) -> None:
        """Optimizer load hook: the sparse layers' state is now the checkpoint's, in its order."""
        self._state_loaded.update(self._sparse)

    def _switch_density(self) -> float | None:
        """Density from which deferred layers are considered (``None``: no deferral)."""
        limit = self.sparse_from_density
        if limit is None or self.execution == "dense":
            return None
        return max(limit, AUTO_FROM_DENSITY) if self.execution == "auto" else limit

    def switch_shrunk_layers(self, step: int) -> None:
        """Move deferred targets whose density fell to the limit onto sparse kernels.

        Called by methods with ``sparse_from_density`` at the end of their post-step work on a
        topology update (GMP, GraNet); a no-op in dense execution or with nothing deferred.
        """
        limit = self._switch_density()
        if limit is None or not self._deferred:
            return
        ready = [(t, mn) for t, mn in self._deferred if t.nnz / t.numel <= limit]
        if not ready:
            return
        rows = {r["layer"]: r for r in self.execution_decisions}
        chosen = ready
        if self.execution == "auto":
            sub = nn.ModuleDict({mn.replace(".", "/"): t.module for t, mn in ready})
            masks = {f"{mn.replace('.', '/')}.weight": t.mask for t, mn in ready}
            with torch.enable_grad():  # the measurement trains copies of the layers
                decisions = bench.plan_layers(
                    sub, self.execution_batch_size or 1, mode="train", masks=masks, repeats=10
                )
            chosen = []
            for (t, mn), d in zip(ready, decisions, strict=True):
                rows[t.name].update(dense_ms=d.dense_ms, sparse_ms=d.sparse_ms)
                if d.choice == "sparse":
                    chosen.append((t, mn))
                else:
                    rows[t.name]["note"] = f"measured dense at step {step}"
        for t, mn in chosen:
            self._swap_in(t, mn)
            self._deferred.remove((t, mn))
            rows[t.name].update(
                density=t.nnz / t.numel,
                decision="sparse",
                note=f"sparse from step {step} (density {t.nnz / t.numel:.4f})",
            )
        if chosen:
            self._arm(step + 1)

    def _sparse_hook(self, step: int, *, backward: bool) -> None:
        """The subclass hook of ``step``, with dense views of sparse targets on update steps."""
        update = self.is_update_step(step)
        if update:
            self._materialize(grads=backward)
        self._in_backward = backward
        try:
            if backward:
                self._before_step(step)
            else:
                self._after_step(step)
        finally:
            self._in_backward = False
            if update:
                self._release()
            if backward:
                for layer in self._sparse.values():
                    layer.dense_grad = None
                    layer.capture_dense_grad = False
            else:
                self._arm(step + 1)

    def _arm(self, step: int) -> None:
        """Let sparse layers compute the dense gradient in step ``step`` iff the method reads it."""
        need = self.needs_dense_grad(step)
        for layer in self._sparse.values():
            layer.capture_dense_grad = need
            layer.dense_grad = None

    @torch.no_grad()
    def _materialize(self, *, grads: bool) -> None:
        for t in self.targets:
            layer = self._sparse.get(t.name)
            if layer is not None:
                t.param.data = layer.to_dense()
                g = layer.dense_grad if grads else None
                t.param.grad = None if g is None else g.detach()

    def _release(self) -> None:
        for t in self.targets:
            if t.name in self._sparse:
                t.param.grad = None
                t.param.data = _placeholder(t.param)

    @torch.no_grad()
    def _restructure(self, target: Target, grown: torch.Tensor | None) -> None:
        """Make the sparse layer of ``target`` follow ``target.mask`` (grown entries at zero)."""
        layer = self._sparse[target.name]
        dense_grad = layer.dense_grad if self._in_backward else None
        self._state_loaded.discard(target.name)  # a training step: the state is the layer's
        layer.set_structure(target.mask, self.optimizer, reset=grown)
        if dense_grad is not None:  # this step's update still applies to the new structure
            layer.values.grad = dense_grad.reshape(-1)[layer.flat_indices()].clone()
            layer.dense_grad = dense_grad

    def dense_momentum(self, target: Target) -> torch.Tensor | None:
        """The momentum signal of ``target`` as a dense tensor (see ``optim.momentum_of``)."""
        if self.optimizer is None:
            return None
        layer = self._sparse.get(target.name)
        if layer is None:
            return momentum_of(self.optimizer, target.param)
        mom = momentum_of(self.optimizer, layer.values)
        if mom is None:
            return None
        full = mom.new_zeros(target.numel)
        full[layer.flat_indices()] = mom
        return full.view(target.shape)

    def sparse_layers(self) -> dict[str, SparseLinear]:
        """The sparse layers in use, by target name (empty in dense execution)."""
        return dict(self._sparse)

    def execution_report(self) -> str:
        """A Markdown table of the per-layer execution decisions (and their measurements)."""
        lines = [
            f"execution={self.execution!r} for {self.name!r}",
            "| layer | shape | density | batch | dense ms | sparse ms | decision | note |",
            "|---|---|---:|---:|---:|---:|---|---|",
        ]
        for r in self.execution_decisions:
            shape = "x".join(map(str, r["shape"]))
            batch = "-" if r["batch"] is None else r["batch"]
            dense_ms = "-" if math.isnan(r["dense_ms"]) else f"{r['dense_ms']:.3f}"
            sparse_ms = "-" if math.isnan(r["sparse_ms"]) else f"{r['sparse_ms']:.3f}"
            lines.append(
                f"| {r['layer']} | {shape} | {r['density']:.4f} | {batch} | {dense_ms} | "
                f"{sparse_ms} | {r['decision']} | {r['note']} |"
            )
        return "\n".join(lines)

    def adopt_execution(self, state: dict[str, Any]) -> None:
        """Give each target the execution recorded in a method ``state_dict``.

        :meth:`load_state_dict` calls it; calling it before loading the model and optimizer
        too (as ``sparsetrain train --resume`` does) builds each sparse layer on the
        checkpoint's mask from the start.
        """
        model = self._require_attached()
        layout = state.get("execution") if isinstance(state, dict) else None
        if not layout or self.execution == "dense":
            return
        for t in self.targets:
            want, has = layout.get(t.name, "dense"), t.name in self._sparse
            if want == "sparse" and not has:
                names = {id(m): n for n, m in model.named_modules()}
                mod_name = names.get(id(t.module), "")
                why = _ineligible(t, mod_name)
                if why:
                    raise ValueError(f"{t.name!r} cannot run sparse in this model: {why}")
                mask = state["masks"][t.name].to(device=t.mask.device, dtype=torch.bool)
                t.mask.copy_(mask)
                self._swap_in(t, mod_name)
                self._deferred[:] = [d for d in self._deferred if d[0] is not t]
            elif want == "dense" and has:
                self._restore_dense_layers([t.name])
                if self._switch_density() is not None:
                    names = {id(m): n for n, m in model.named_modules()}
                    self._deferred.append((t, names.get(id(t.module), "")))
            row = next((r for r in self.execution_decisions if r["layer"] == t.name), None)
            if row is not None and row["decision"] != want:
                row.update(decision=want, note="from checkpoint")
        self._masked_targets = [t for t in self.targets if t.name not in self._sparse]

    def _load_execution(self, state: dict[str, Any]) -> None:
        """After ``load_state_dict`` set the masks: the checkpoint's execution and structures."""
        self.adopt_execution(state)
        self.sync_sparse_layers()
        if self._sparse:
            self._arm(self.step + 1)

    def sync_sparse_layers(self) -> None:
        """Rebuild each sparse layer whose structure differs from its target's mask.

        For code that sets ``Target.mask`` directly (``load_state_dict`` calls it). Weights come
        from a model state loaded just before (positions outside the old structure included),
        else from the layer's values; optimizer state loaded since the structure last changed
        is kept as it is (it follows the checkpoint's mask), other state is remapped.
        """
        loaded = self._state_loaded
        for t in self.targets:
            layer = self._sparse.get(t.name)
            if layer is not None and not torch.equal(layer.mask(), t.mask):
                layer.set_structure(t.mask, self.optimizer, keep_state=t.name in loaded)
        loaded.clear()

    def _restore_dense_layers(self, names: Sequence[str] | None = None) -> None:
        """Put the original ``nn.Linear`` back for sparse targets (all, or ``names``).

        All (``names=None``: detach, or undoing a failed attach) also removes the optimizer
        load hook of sparse execution.
        """
        if names is None:
            hook: RemovableHandle | None = self.__dict__.pop("_optimizer_hook", None)
            if hook is not None:
                hook.remove()
        if not self._sparse:
            return
        model = self._require_attached()
        for t in self.targets:
            if t.name not in self._sparse or (names is not None and t.name not in names):
                continue
            layer = self._sparse.pop(t.name)
            self._state_loaded.discard(t.name)
            linear, mod_name = self._dense_layers.pop(t.name)
            loaded = layer.loaded_weight()  # a model state loaded before: all its weights
            with torch.no_grad():
                t.param.data = (layer.to_dense() if loaded is None else loaded).clone()
            t.param.grad = None
            t.param.requires_grad_(layer.values.requires_grad)
            if self.optimizer is not None:
                replace_param(self.optimizer, layer.values, t.param)
                scatter_state(self.optimizer, layer.values, t.param, layer.flat_indices())
            linear.train(layer.training)
            parent_name, _, attr = mod_name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, linear)
        self._masked_targets = [t for t in self.targets if t.name not in self._sparse]


def _ineligible(t: Target, mod_name: str) -> str:
    """Why target ``t`` (of the module named ``mod_name``) keeps the dense path; ``""`` if not."""
    if type(t.module) is not nn.Linear or t.param_name != "weight":
        return f"{type(t.module).__name__}: no sparse training kernel"
    if t.aliases:  # swapping the layer would leave the other names reading a placeholder
        names = ", ".join(map(repr, t.aliases))
        return f"tied or shared (also {names}): a sparse layer would replace one name only"
    if parametrize.is_parametrized(t.module) or not mod_name:
        return "parametrized or root module"
    return ""


def _placeholder(param: torch.Tensor) -> torch.Tensor:
    """A zero-memory stand-in of ``param``'s shape (a sparse target's dense weight is not kept)."""
    return torch.zeros((), dtype=param.dtype, device=param.device).expand(param.shape)
