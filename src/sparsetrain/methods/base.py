"""The contract every sparsity method follows, and the hook order, written down once.

Hook order and deferred updates: :mod:`sparsetrain.methods.hooks`.

Parameters a method trains itself
----------------------------------
A method never edits the user's optimizer: its groups (parameters and hyper-parameters) and
state layout are the same before and after ``attach``. OptG's scores, SCL's mask variables and
STR's thresholds are stepped by the method's own :class:`~sparsetrain.optim.Companion`, whose
groups take the LR of a user group (times a ratio) at every step, so any LR schedule reaches
them with nothing to register. Their gradients are formed in the step pre-hook from the user's
gradients, after a ``GradScaler`` has unscaled and checked those: under mixed precision they
behave exactly as the user's parameters. Where a method's recipe wants other hyper-parameters
for some of the model's parameters (ST-3: no weight decay on biases and normalisation), the
user builds the optimizer from :func:`sparsetrain.param_groups`; an optimizer built otherwise
is used as given (ST-3 warns once).

The step counter (``method.step``: optimizer steps completed) lives in the method because the
schedules count optimizer steps and must survive a resume; it is saved by ``state_dict()``.

Execution (``execution="dense" | "sparse" | "auto"``): see :mod:`sparsetrain.methods._execution`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from sparsetrain import distributed as _dist
from sparsetrain.checks import Check, integer, number, one_of
from sparsetrain.masking.structure import Structure
from sparsetrain.masking.targets import Target, select_targets
from sparsetrain.methods import lifecycle, structured
from sparsetrain.methods.diagnostics import (
    Plan,
    ScheduleWarning,
    build_report,
    short_run_message,
)
from sparsetrain.methods.hooks import StepHooks
from sparsetrain.methods.options import checks
from sparsetrain.methods.state import check_method_state, method_state
from sparsetrain.methods.weight_init import WEIGHT_INITS, draw_kaiming, sparse_init
from sparsetrain.optim import check_state, zero_preserving, zero_state
from sparsetrain.report import SparsityReport
from sparsetrain.schedules import ConstantRamp, Schedule
from sparsetrain.sparse.layers import SparseLinear

EXECUTIONS = ("dense", "sparse", "auto")
"""Values of the common ``execution`` option."""


class SparsityMethod(StepHooks):
    """Base class of all methods: targets, masks, hooks, state and diagnostics.

    Subclasses set the class attributes and override the ``_`` hooks they need. A method is
    created unattached (pure configuration), then bound to one model by :meth:`attach`.

    Args:
        sparsity: Target global sparsity over the masked tensors, in [0, 1) (default 0.9;
            with an N:M ``structure``, 1 − N/M, and another value is refused). Emergent
            methods (``sparsity_mode = "emergent"``: STR, SCL with a fixed λ) refuse it with a
            ``ValueError`` saying what sets their sparsity.
        structure: ``"unstructured"`` (default), an N:M pattern (``"2:4"``: exactly N live
            weights in every group of M consecutive inputs) or a block shape (``"block:4x4"``
            or ``(4, 4)``), for the methods whose ``supported_structures`` name it; how each
            method keeps it: :mod:`sparsetrain.methods.structured`.
        include: Globs of parameter names, or ``"type:<Class>"`` patterns, to sparsify
            (default: the weight matrices of Linear, Conv, ConvTranspose, MultiheadAttention
            and RNN/LSTM/GRU layers; see :mod:`sparsetrain.masking.targets`).
        exclude: Patterns of parameters to keep dense.
        dense_first: Keep the first layer dense.
        dense_last: Keep the last layer dense.
        total_steps: Optimizer steps of the whole run (schedules need it). It counts the
            optimizer steps actually taken, i.e. ``optimizer.step()`` calls that ran the hooks:
            with gradient accumulation that is batches / accumulation steps, and a step that
            ``GradScaler`` skips (inf/NaN gradients) does not count. :meth:`finish` warns
            (:class:`ScheduleWarning`) when the run ended before it.
        seed: Seed of every random mask decision; decisions are a function of
            (seed, step, tensor index), so they agree across processes.
        state_skip_keys: Optimizer state keys never masked: the way out when an optimizer
            keeps state that is not shaped like its parameter (masking raises a ``TypeError``
            naming the key otherwise).
        execution: ``"dense"`` (masked-dense, the default), ``"sparse"`` (every eligible Linear
            target on CSR kernels) or ``"auto"`` (sparse only where measured faster at
            ``execution_batch_size``). Details in the module docstring.
        execution_batch_size: Batch size to measure at for ``execution="auto"``.
        weight_init: Re-initialise the target weights at attach: ``"default"`` keeps the
            model's own init; ``"kaiming_normal"`` draws N(0, 2/fan_in) (fan_in mode, ReLU
            gain), as the OptG, ST-3 and STR code do; ``"sparse_layer_scaled"`` draws that and
            divides each tensor by √(its density at the first mask); ``"sparse_unit_scaled"``
            draws each live weight from N(0, 2/fan) with fan the live inputs of its output unit
            (the two sparsity-aware inits of RigL's code, Evci et al., "Gradient Flow in Sparse
            Neural Networks and How Lottery Tickets Win", AAAI 2022). Draws come from the
            method's ``seed``, so they agree across processes.
        rank_check: Under ``torch.distributed``, compare a checksum of the masks across
            processes at every topology update (see :mod:`sparsetrain.distributed`).
    """

    name: ClassVar[str] = "base"
    hard_mask: ClassVar[bool] = True
    sparsity_mode: ClassVar[str] = "target"
    emergent_sparsity_note: ClassVar[str] = ""
    """Emergent methods: what sets the sparsity instead, and the option that targets one if
    any; part of the error raised when ``sparsity=`` is given."""
    targets_sparsity: bool = False
    """An emergent method sets this before ``super().__init__`` when one of its options makes
    it reach a set sparsity (SCL's adaptive λ); ``sparsity`` is then that target."""
    decay_scope: str = "all"
    """Which parameters the method's recipe decays: ``"all"`` (the optimizer's own rule) or
    ``"weights"`` (Conv/Linear weights and targets only); read by
    :func:`sparsetrain.param_groups`, never applied to the user's optimizer."""
    supported_structures: ClassVar[tuple[str, ...]] = ("unstructured",)
    """Structure kinds the method can keep (``"unstructured"``, ``"nm"``, ``"block"``)."""
    structure_note: ClassVar[str] = "it selects no mask by ranking"
    """Why the kinds not in ``supported_structures`` are refused (part of the error)."""
    fsdp2_note: ClassVar[str | None] = (
        "its decisions or its state next to the weights are not sharded like the parameters"
    )
    """``None`` where the method serves FSDP2-sharded models; else why not (the error's text)."""
    supports_sparse_execution: ClassVar[bool] = False
    """Whether the method can run on sparse kernels (dense gradients on update steps at most)."""
    sparse_execution_note: ClassVar[str] = (
        "needs dense gradients or dense weights every step, so it keeps the dense path"
    )
    CHECKS: ClassVar[Mapping[str, Check]] = checks(
        sparsity=number(0, 1, high_open=True, optional=True),
        total_steps=integer(1, optional=True),
        seed=integer(),
        execution=one_of(EXECUTIONS),
        execution_batch_size=integer(1, optional=True),
        weight_init=one_of(WEIGHT_INITS),
    )
    """Declared checks of the options of *this class's* constructor, run by ``create_method``
    (see :mod:`~sparsetrain.methods.options`); each subclass declares its own."""

    def __init__(
        self,
        *,
        sparsity: float | None = None,
        structure: str | tuple[int, int] | Structure = "unstructured",
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        dense_first: bool = False,
        dense_last: bool = False,
        total_steps: int | None = None,
        seed: int = 0,
        state_skip_keys: Sequence[str] = (),
        execution: str = "dense",
        execution_batch_size: int | None = None,
        weight_init: str = "default",
        rank_check: bool = True,
    ) -> None:
        self.structure = structured.structure_option(
            self.name, structure, self.supported_structures, self.structure_note
        )
        emergent = self.sparsity_mode == "emergent"
        self.sparsity = structured.sparsity_option(self.name, self.structure, sparsity, emergent)
        # what the mask does over the run: a subclass with a schedule replaces this constant one
        self.schedule = Schedule(ConstantRamp(self.sparsity))
        if self.sparsity_mode == "emergent" and self.sparsity and not self.targets_sparsity:
            raise ValueError(
                f"{self.name}: does not take sparsity={sparsity!r}: its sparsity is emergent"
                + (f" ({self.emergent_sparsity_note})" if self.emergent_sparsity_note else "")
            )
        if weight_init.startswith("sparse_") and not self.hard_mask:
            raise ValueError(
                f"{self.name}: weight_init={weight_init!r} scales by the mask's density, which "
                f"{self.name!r} does not fix at attach; use 'kaiming_normal'"
            )
        self.weight_init = weight_init
        self.execution = execution
        self.execution_batch_size = execution_batch_size
        self.include, self.exclude = include, exclude
        self.dense_first, self.dense_last = dense_first, dense_last
        self.total_steps = total_steps
        self.seed = int(seed)
        self.state_skip_keys = tuple(state_skip_keys)
        self.model: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.targets: list[Target] = []
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self._hooks: list[Any] = []
        self._grads: dict[str, torch.Tensor] | None = None
        self._pending: int | None = None  # a deferred update step (see apply_pending)
        self._held: list[torch.Tensor] | None = None
        self._rezero = False
        # Fantastic Weights' released code: inactive weights take dense gradient steps (and keep
        # momentum) and are re-zeroed after every step (DST option inactive_grads="dense")
        self._dense_inactive = False
        # execution state: target name -> sparse layer; targets still masked densely
        self._sparse: dict[str, SparseLinear] = {}
        self._masked_targets: list[Target] = []
        self._in_backward = False
        self.execution_decisions: list[dict[str, Any]] = []
        self._dense_layers: dict[str, tuple[nn.Module, str]] = {}
        if not isinstance(rank_check, bool):
            raise ValueError(f"rank_check must be true or false, got {rank_check!r}")
        self.rank_check = rank_check
        self._rank_sync: _dist.RankCheck | None = None  # set by attach under torch.distributed

    # ------------------------------------------------------------------ lifecycle

    def attach(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        hook: bool = True,
    ) -> SparsityMethod:
        """Bind the method to ``model`` (and ``optimizer``) and set the initial masks.

        Validates everything first; should setting the masks still fail, the change is rolled
        back (target weights and their optimizer state are kept on the CPU while attaching), so
        on any error the model and optimizer are left unchanged.

        Args:
            model: The model to sparsify.
            optimizer: The optimizer holding the model's parameters; never changed (its groups,
                their hyper-parameters and its state layout stay as built). Parameters a method
                adds (scores, thresholds) are trained by a
                :class:`~sparsetrain.optim.Companion` following its LRs.
            hook: Register ``after_backward``/``after_optimizer_step`` as optimizer step hooks.

        Returns:
            ``self``.
        """
        if not isinstance(model, nn.Module):
            raise TypeError(f"attach() needs an nn.Module, got {type(model).__name__}")
        model = _dist.unwrap(model)  # DistributedDataParallel(model): attach to model
        _dist.check_supported(self, model)  # FSDP; sparse execution across processes
        if self.model is not None:
            raise ValueError(f"this {self.name!r} method is already attached to a model")
        lifecycle.check_inputs(self.name, model, optimizer)
        targets = self.select_targets(model)
        structured.check_targets(self.name, self.structure, targets)
        if optimizer is not None:
            lifecycle.check_optimizer_holds(targets, optimizer, self.state_skip_keys)
        self._check_execution()
        self._validate(targets, optimizer)
        saved = lifecycle.AttachSnapshot.take(targets, optimizer)
        history = list(self.history)
        self.model, self.optimizer, self.targets = model, optimizer, targets
        self._masked_targets = targets
        self._rezero = optimizer is not None and (
            self._dense_inactive or not zero_preserving(optimizer)
        )
        try:
            _dist.attach_prepare(self, model)  # several processes: rank 0's weights and seed
            if self.weight_init != "default":
                draw_kaiming(targets, self.generator)
            self._on_attach()
            if self.init_masks_ready():
                self.init_weights()
            if self.execution != "dense":
                self._setup_execution()
            self._rank_sync = _dist.attach_sync(self)  # rank 0's state; checked per update
        except Exception:
            self._rank_sync = None
            saved.restore(optimizer, [self._restore_dense_layers, self._on_detach])
            self.model, self.optimizer, self.targets = None, None, []
            self._masked_targets, self._sparse, self._dense_layers = [], {}, {}
            self.execution_decisions, self.history = [], history
            raise
        lifecycle.bind(model, self)
        for note in self.schedule_notes(self.total_steps) if self.total_steps else []:
            warnings.warn(note, ScheduleWarning, stacklevel=2)
        if self.defers_updates:
            modules = {id(m): m for m in [model, *(t.module for t in targets)]}
            pending = lifecycle.PendingHook(self)
            # FSDP2: before its own pre-forward, which all-gathers the shards
            first = _dist.is_fsdp2(model)
            self._hooks = [
                m.register_forward_pre_hook(pending, prepend=first) for m in modules.values()
            ]
        if hook and optimizer is not None:
            self._hooks += [
                optimizer.register_step_pre_hook(self._step_pre_hook),
                optimizer.register_step_post_hook(lambda *_: self.after_optimizer_step()),
            ]
        return self

    def select_targets(self, model: nn.Module) -> list[Target]:
        """The tensors this method masks in ``model``, by its include, exclude and dense options."""
        return select_targets(
            model,
            include=self.include,
            exclude=self.exclude,
            dense_first=self.dense_first,
            dense_last=self.dense_last,
        )

    def detach(self) -> nn.Module:
        """Remove the hooks and unbind; the model keeps its current (zeroed) weights.

        An update deferred to the next training forward (:meth:`apply_pending`) is dropped: no
        training follows it, so the model stays the one that trained.
        """
        model = self._require_attached()
        self._pending = self._grads = self._held = None
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self._restore_dense_layers()
        self._on_detach()
        lifecycle.unbind(model)
        self.model = None
        self.optimizer = None
        return model

    def squash(self) -> nn.Module:
        """Fold masks into plain weights, detach, and return the model (no sparsetrain left)."""
        self._require_attached()
        self._squash()
        return self.detach()

    # ------------------------------------------------------------------ subclass interface

    def _validate(self, targets: list[Target], optimizer: torch.optim.Optimizer | None) -> None:
        """Raise on anything wrong before the model is touched."""

    def _on_attach(self) -> None:
        """Set the initial masks (the default keeps everything) and apply them."""
        self.apply_masks()

    def _on_detach(self) -> None:
        """Undo model changes other than the zeroed weights (parametrizations, param groups)."""

    def _before_step(self, step: int) -> None:
        """Work in ``after_backward`` for the step about to be taken (1-based)."""

    def _after_step(self, step: int) -> None:
        """Work in ``after_optimizer_step`` for the step just taken (1-based)."""

    def _squash(self) -> None:
        self.apply_masks()

    def sparsity_at(self, step: int) -> float:
        """Planned global sparsity after ``step`` optimizer steps (``self.schedule``)."""
        return self.schedule.sparsity_at(step)

    def update_steps(self, total_steps: int) -> list[int]:
        """Steps at whose end the topology changes (``self.schedule``)."""
        return self.schedule.update_steps(total_steps)

    def is_update_step(self, step: int) -> bool:
        """Whether the hooks of optimizer step ``step`` (1-based) may change a mask."""
        return self.schedule.is_update(step)

    def needs_dense_grad(self, step: int) -> bool:
        """Whether the hooks of step ``step`` read the dense gradient (sparse execution arms it)."""
        return False

    def target_counts(self) -> dict[str, int] | None:
        """Per-tensor active counts the method must end at (``None``: no per-tensor target)."""
        return None

    def global_target_count(self) -> int | None:
        """Total active count the method must end at (``None``: emergent sparsity)."""
        if self.sparsity_mode != "target":
            return None
        return structured.global_count(self.structure, self.targets, self.sparsity)

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    # ------------------------------------------------------------------ mask helpers

    def blocks(self) -> dict[str, int]:
        """Target name to its stacked matrices (``Target.blocks``), for the ER/ERK allocations."""
        return {t.name: t.blocks for t in self.targets}

    def generator(self, step: int, index: int = 0) -> torch.Generator:
        """A generator seeded from (seed, step, tensor index): same decisions on every rank."""
        seed = int(np.random.SeedSequence([self.seed, step, index]).generate_state(1)[0])
        return torch.Generator().manual_seed(seed)

    def init_masks_ready(self) -> bool:
        """Whether the masks set at attach are the first real ones (static SNIP: not yet)."""
        return True

    def init_weights(self) -> None:
        """Apply the sparsity-aware part of ``weight_init`` once the first masks exist."""
        sparse_init(self.weight_init, self.targets, self.generator)

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Zero pruned weights and their optimizer state (hard-mask methods)."""
        for t in self._masked_targets:
            if self.hard_mask:
                t.param.mul_(t.mask.view(torch.uint8))
            if self.optimizer is not None:
                zero_state(self.optimizer, t.param, ~t.mask, skip_keys=self.state_skip_keys)

    @torch.no_grad()
    def set_mask(
        self, target: Target, new: torch.Tensor, grown: torch.Tensor | None = None
    ) -> None:
        """Replace ``target``'s mask; pruned and newly grown entries restart from zero.

        Zeroes the weight (hard-mask methods) and every parameter-shaped optimizer state entry at
        positions that are inactive in ``new`` or listed in ``grown``.
        """
        if target.name in self._sparse:
            target.mask.copy_(new)
            self._restructure(target, grown)
            return
        reset = ~new if grown is None else (~new | grown)
        if self.optimizer is not None:  # fail before anything changes
            check_state(self.optimizer, target.param, skip_keys=self.state_skip_keys)
        if self.hard_mask:
            target.param.masked_fill_(reset, 0)
        if self.optimizer is not None and not self._dense_inactive:
            zero_state(self.optimizer, target.param, reset, skip_keys=self.state_skip_keys)
        target.mask.copy_(new)

    def _require_attached(self) -> nn.Module:
        if self.model is None:
            raise RuntimeError(
                f"the {self.name!r} method is not attached; call attach(model, optimizer)"
            )
        return self.model

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue: step, masks, history and method-specific state."""
        self._require_attached()
        layout = None
        if self.execution != "dense":
            layout = {t.name: "sparse" if t.name in self._sparse else "dense" for t in self.targets}
        extra = self._extra_state()
        if self._pending is not None:  # the update waiting for the next training forward
            extra["pending"] = {"step": self._pending, "grads": self._grads, "held": self._held}
        return method_state(self.name, self.step, self.targets, self.history, extra, layout)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; strict about method, tensor names and shapes."""
        self._require_attached()
        check_method_state(self.name, self.targets, state)  # every check before any change
        for t in self.targets:
            t.mask.copy_(state["masks"][t.name].to(torch.bool))
        self.step = int(state["step"])
        self.history = list(state.get("history", []))
        extra = dict(state.get("extra", {}))
        pending = extra.pop("pending", None) or {}
        self._pending, self._grads, self._held = (
            pending.get("step"),
            pending.get("grads"),
            pending.get("held"),
        )
        self._load_extra_state(extra)
        if self.hard_mask:
            with torch.no_grad():
                for t in self._masked_targets:
                    t.param.mul_(t.mask.view(torch.uint8))
        self._load_execution(state)  # sparse execution: the checkpoint's layout and structures
        if self._rank_sync is not None:
            self._rank_sync.loaded()

    # ------------------------------------------------------------------ diagnostics

    def report(self) -> SparsityReport:
        """Per-tensor target vs actual sparsity, the global row, mask memory and churn."""
        self._require_attached()
        counts, total = self.target_counts(), self.global_target_count()
        return build_report(self.name, self.step, self.targets, counts, total, self.history)

    def finish(self) -> SparsityReport:
        """End-of-training check: the report, raising if a target is missed by > 1 weight.

        Warns with :class:`ScheduleWarning` first when fewer than ``total_steps`` optimizer steps
        were taken and the schedule still had topology updates or sparsity changes ahead.
        """
        message = short_run_message(self.name, self.schedule, self.step, self.total_steps)
        if message is not None:
            warnings.warn(message, ScheduleWarning, stacklevel=2)
        rep = self.report()
        if self.sparsity_mode == "target":
            rep.check()
        return rep

    def plan(self, total_steps: int | None = None, points: int = 11) -> Plan:
        """Dry run: the sparsity curve and topology-update steps over ``total_steps``."""
        total = total_steps or self.total_steps
        if not total or total <= 0:
            raise ValueError("plan() needs total_steps (argument or method option)")
        return Plan.of(self.name, self.schedule, total, points, self.schedule_notes(total))

    def schedule_notes(self, total_steps: int) -> list[str]:
        """Warnings about this method's schedule over a run of ``total_steps`` steps.

        ``plan()`` prints them and ``attach`` warns with each (:class:`ScheduleWarning`).
        """
        return []

    def __repr__(self) -> str:
        where = "attached" if self.model is not None else "unattached"
        return f"<{type(self).__name__} {self.name!r} sparsity={self.sparsity} {where}>"
