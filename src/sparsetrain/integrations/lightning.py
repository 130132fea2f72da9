"""PyTorch Lightning: ``SparsityCallback`` sparsifies a LightningModule during ``fit``.

    from sparsetrain.integrations.lightning import SparsityCallback
    trainer = L.Trainer(max_epochs=10, callbacks=[SparsityCallback("rigl", sparsity=0.9)])

When fitting starts (after ``configure_optimizers``, and after Lightning has wrapped the model for
``strategy="ddp"``) the callback builds the method with ``total_steps`` =
``trainer.estimated_stepping_batches`` (and ``steps_per_epoch`` for methods that take it) and
attaches it to the LightningModule and its first optimizer, never changing it (build it in
``configure_optimizers`` from ``sparsetrain.param_groups(self, "st3", weight_decay=...)`` for a
method whose recipe has its own groups). Lightning runs the forward and backward pass inside
``optimizer.step(closure)``, so a step pre-hook would come before the backward pass:
``after_backward`` runs in ``on_before_optimizer_step`` instead (after the backward pass and the
gradient all-reduce, before gradient clipping), ``after_optimizer_step`` in a step post-hook of the
optimizer. With a gradient scaler (``precision="16-mixed"`` on CUDA, or a ``MixedPrecision`` plugin
given a ``GradScaler``) Lightning runs the closure first and then ``scaler.step(optimizer)``, which
skips steps with inf/NaN gradients: ``after_backward`` then runs in a step pre-hook of the optimizer
(after unscaling and clipping), so a skipped step runs no hook of the method, exactly as in a plain
loop with a ``GradScaler``. The method's state rides in every Lightning checkpoint (key
``"sparsetrain"``); the checkpoint's ``state_dict`` holds the effective sparse weights under the
plain names, so ``load_from_checkpoint`` gives the sparse model. ``fit(ckpt_path=...)`` continues
the method where it stopped (with the total steps of the original run). Sparsity is logged every
epoch (``self.log``) and the numeric fields of every topology update (churn, pruned, grown, ...) go
to the trainer's loggers as ``sparsetrain/<field>`` at the update's step. At fit end the sparsity
report is printed on rank 0 and kept in :attr:`SparsityCallback.report`. The method stays attached
after ``fit`` (``callback.method.squash()`` gives a plain sparse model).

Not supported: more than one optimizer (the method follows the first), and strategies that shard the
model (FSDP, DeepSpeed): refused at attach.
"""

from __future__ import annotations

from typing import Any

try:
    import lightning.pytorch as pl
except ImportError as exc:  # pragma: no cover - the extra is part of the dev install
    raise ImportError(
        "sparsetrain.integrations.lightning needs PyTorch Lightning: "
        "pip install 'sparsetrain[lightning]'"
    ) from exc

from sparsetrain.integrations import _common
from sparsetrain.methods import SparsityMethod
from sparsetrain.report import SparsityReport


class SparsityCallback(pl.Callback):
    """Train a LightningModule sparse with a sparsetrain method.

    Args:
        method: A registry name (``"rigl"``, ``"gmp"``, ... see ``sparsetrain list methods``)
            or a ready, unattached :class:`~sparsetrain.methods.base.SparsityMethod` (it must
            then have its own ``total_steps``).
        **options: Options of the method built by name (e.g. ``sparsity=0.9``);
            ``total_steps`` and ``steps_per_epoch`` default to the trainer's.

    >>> SparsityCallback("rigl", sparsity=0.9).method_name
    'rigl'
    """

    def __init__(self, method: str | SparsityMethod, **options: Any) -> None:
        if isinstance(method, SparsityMethod) and options:
            raise TypeError("options given with a ready method object; pass one or the other")
        if not isinstance(method, str | SparsityMethod):
            raise TypeError(
                f"method must be a name or a SparsityMethod, got {type(method).__name__}"
            )
        self._spec, self._options = method, dict(options)
        self.method: SparsityMethod | None = method if isinstance(method, SparsityMethod) else None
        self.report: SparsityReport | None = None
        self._pending: dict[str, Any] | None = None  # checkpoint entry to continue from
        self._hooks: list[Any] = []
        self._scaled = False  # a GradScaler steps the optimizer: after_backward in a pre-hook
        self._seen = 0

    @property
    def method_name(self) -> str:
        """Registry name of the method."""
        return self._spec if isinstance(self._spec, str) else self._spec.name

    # ------------------------------------------------------------------ fit

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.optimizers:
            raise ValueError("SparsityCallback needs an optimizer (configure_optimizers)")
        optimizer = trainer.optimizers[0]
        total = trainer.estimated_stepping_batches
        if self._pending is not None and self._pending.get("total_steps"):
            total = self._pending["total_steps"]  # the plan of the run being continued
        if not isinstance(total, int) or total <= 0:
            raise ValueError(
                f"SparsityCallback needs a finite number of optimizer steps, got {total!r}; "
                "set max_epochs or max_steps"
            )
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        per_epoch = -(-total // epochs) if epochs else None
        if self.method is not None and self.method.model is not None:
            self.method.detach()  # a second fit() with the same callback attaches anew
        self.method = _common.build_method(self._spec, self._options, total, per_epoch)
        weights = None
        if self._pending is not None:
            weights = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        self.method.attach(pl_module, optimizer, hook=False)
        self._scaled = getattr(trainer.precision_plugin, "scaler", None) is not None
        self._hooks = [optimizer.register_step_post_hook(self._after_step)]
        if self._scaled:
            self._hooks.append(optimizer.register_step_pre_hook(self._before_step))
        if self._pending is not None and weights is not None:
            _common.restore(self.method, pl_module, weights, self._pending)
            self._pending = None
        self._seen = len(self.method.history)

    def _before_step(self, *_: Any) -> None:
        if self.method is not None and self.method.model is not None:
            self.method.after_backward()

    def _after_step(self, *_: Any) -> None:
        if self.method is not None and self.method.model is not None:
            self.method.after_optimizer_step()

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        if self.method is not None and optimizer is self.method.optimizer and not self._scaled:
            self.method.after_backward()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        if self.method is None or len(self.method.history) == self._seen:
            return
        records = self.method.history[self._seen :]
        for row, record in zip(_common.new_rows(self.method, self._seen), records, strict=True):
            step = int(record.get("step", trainer.global_step))  # the update's own step
            for logger in trainer.loggers:  # rare: straight to the loggers
                metrics = {f"sparsetrain/{k}": v for k, v in row.items()}
                logger.log_metrics(metrics, step=step)
        self._seen = len(self.method.history)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.method is not None:
            value = _common.sparsity(self.method)  # the same on every rank
            pl_module.log("sparsetrain/sparsity", value, on_epoch=True, sync_dist=True)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.method is None or self.method.model is None:
            return
        self.report = self.method.report()
        if trainer.is_global_zero:
            print(self.report, flush=True)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    # ------------------------------------------------------------------ checkpoints

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self.method is not None and self.method.model is not None:
            model_state = checkpoint.get("state_dict", {})
            checkpoint[_common.STATE_KEY] = _common.checkpoint_entry(self.method, model_state)

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        entry = checkpoint.get(_common.STATE_KEY)
        if entry is None:
            return
        if self.method is not None and self.method.model is pl_module:
            raise ValueError(
                "SparsityCallback: the checkpoint was restored after the method was attached "
                "(a strategy that restores after setup, e.g. FSDP or DeepSpeed, is not supported)"
            )
        self._pending = entry


__all__ = ["SparsityCallback"]
