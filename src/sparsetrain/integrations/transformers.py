"""Hugging Face ``Trainer``: ``SparsityCallback`` sparsifies a transformer while it trains.

    from sparsetrain.integrations.transformers import SparsityCallback
    Trainer(model, args, train_dataset=ds, callbacks=[SparsityCallback("rigl", sparsity=0.9)])

At ``on_train_begin`` the Trainer has built (and on resume, loaded) its optimizer; the callback
builds the method with ``total_steps = state.max_steps`` (and ``steps_per_epoch`` for methods
that take it) and attaches it to the model and the underlying ``torch.optim`` optimizer, whose
step hooks then drive it (the Trainer clips gradients before ``optimizer.step()``, so clipping
sees the unmasked gradient). Default targets are the attention and MLP projections: the
weights of the ``nn.Linear`` layers inside the model's numbered layer blocks
(``encoder.layer.0.attention.self.query``, ``layers.3.mlp.up_proj``, ...). Embeddings, norms,
poolers, classifier and LM heads stay dense unless ``include`` names them (``include`` /
``exclude`` are globs over parameter names, as for every method).

Each Trainer checkpoint gets a ``sparsetrain.pt`` next to the model (method state and the raw
weights of in-place methods); ``trainer.train(resume_from_checkpoint=...)`` continues the
method from the ``checkpoint-<step>`` folder of ``args.output_dir`` for the resumed step (or
from ``resume_from`` if given). Every Trainer log row gets ``sparsetrain/sparsity`` and, after
a topology update, ``sparsetrain/churn``; they are in ``trainer.state.log_history`` and in the
loggers that come after the callback (the ``report_to`` loggers come before callbacks given to
the Trainer: insert it first with ``trainer.callback_handler.callbacks.insert(0, cb)`` to
have them there too). At the end of training the sparsity report is printed by the main
process and kept in :attr:`SparsityCallback.report`.

The Trainer's optimizer is never changed. For a method whose recipe has its own parameter
groups (ST-3: no weight decay on biases, norms and embeddings), build the optimizer with
:func:`recipe_optimizer` and pass it as ``Trainer(..., optimizers=(optimizer, None))``; the
Trainer's own optimizer (decay on everything but biases and LayerNorm weights) is used as given
otherwise. Parameters a method trains itself (STR's thresholds, OptG's scores, SCL's masks) never
join the Trainer's optimizer (see :class:`sparsetrain.optim.Companion`): their optimizer state is
part of the method's state file, so every method resumes; their gradients come from the model's
after accelerate's ``GradScaler`` has unscaled them, and a step it skips runs no hook (fp16 on
CUDA). Not supported: FSDP and DeepSpeed (refused at attach).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

try:
    from transformers import Trainer, TrainerCallback, TrainingArguments
except ImportError as exc:  # pragma: no cover - the extra is part of the dev install
    raise ImportError(
        "sparsetrain.integrations.transformers needs Hugging Face transformers: "
        "pip install 'sparsetrain[transformers]'"
    ) from exc

from sparsetrain.integrations import _common
from sparsetrain.methods import SparsityMethod, param_groups
from sparsetrain.methods._inplace import InPlaceMethod
from sparsetrain.report import SparsityReport

STATE_FILE = "sparsetrain.pt"
"""Name of the method's file inside each Trainer checkpoint folder."""


def recipe_optimizer(
    model: nn.Module, args: TrainingArguments, method: str | SparsityMethod
) -> torch.optim.Optimizer:
    """The optimizer ``args`` asks for (class, LR, betas, ...), in ``method``'s recipe groups.

    Pass it as ``Trainer(..., optimizers=(recipe_optimizer(model, args, "st3"), None))``: the
    groups are :func:`sparsetrain.param_groups` with ``args.weight_decay``, so the callback's
    method finds the groups its recipe wants and changes nothing.
    """
    cls, options = Trainer.get_optimizer_cls_and_kwargs(args, model)
    include = default_targets(model) if isinstance(method, str) else None  # as the callback
    groups = param_groups(model, method, weight_decay=args.weight_decay, include=include)
    return cls(groups, **options)


def default_targets(model: nn.Module) -> list[str]:
    """Names of the attention and MLP projection weights in numbered layer blocks.

    The weights of ``nn.Linear`` layers and of transformers' ``Conv1D`` (GPT-2 style
    projections, weight stored as (in, out)) whose module path has a layer number; embeddings,
    norms, poolers and heads are outside the blocks and stay dense.

    Raises:
        ValueError: No such layer.
    """
    names = [
        f"{name}.weight"
        for name, module in model.named_modules()
        if (type(module) is nn.Linear or type(module).__name__ == "Conv1D")
        and any(part.isdigit() for part in name.split("."))
    ]
    if not names:
        raise ValueError(
            f"no default sparsity targets in {type(model).__name__}: no Linear or Conv1D layer "
            "sits inside a numbered layer block; name the weights with include=[...] (globs "
            "over parameter names)"
        )
    return names


def _torch_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The ``torch.optim`` optimizer inside accelerate's wrapper."""
    while not type(optimizer).__module__.startswith("torch.optim") and isinstance(
        getattr(optimizer, "optimizer", None), torch.optim.Optimizer
    ):
        optimizer = optimizer.optimizer
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"SparsityCallback needs a torch optimizer, got {type(optimizer).__name__}")
    return optimizer


class SparsityCallback(TrainerCallback):
    """Train a Hugging Face model sparse with a sparsetrain method.

    Args:
        method: A registry name (``"rigl"``, ``"gmp"``, ... see ``sparsetrain list methods``)
            or a ready, unattached method (its own targets and ``total_steps`` then).
        resume_from: Checkpoint folder to take the method's state from when resuming (default:
            ``<output_dir>/checkpoint-<step>`` of the resumed step).
        **options: Options of the method built by name (e.g. ``sparsity=0.9``); ``include``
            defaults to :func:`default_targets`, ``total_steps`` to ``state.max_steps``.
    """

    def __init__(
        self, method: str | SparsityMethod, *, resume_from: str | Path | None = None, **options: Any
    ) -> None:
        if isinstance(method, SparsityMethod) and options:
            raise TypeError("options given with a ready method object; pass one or the other")
        if not isinstance(method, str | SparsityMethod):
            kind = type(method).__name__
            raise TypeError(f"method must be a name or a SparsityMethod, got {kind}")
        self._spec, self._options = method, dict(options)
        self.resume_from = None if resume_from is None else Path(resume_from)
        self.method: SparsityMethod | None = method if isinstance(method, SparsityMethod) else None
        self.report: SparsityReport | None = None
        self._seen = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        model, optimizer = kwargs.get("model"), kwargs.get("optimizer")
        if model is None or optimizer is None:
            raise ValueError("SparsityCallback needs the Trainer's model and optimizer")
        optimizer = _torch_optimizer(optimizer)
        entry = self._checkpoint_entry(args, state)
        total = int(entry["total_steps"]) if entry and entry.get("total_steps") else state.max_steps
        epochs = getattr(state, "num_train_epochs", 0) or 0
        per_epoch = math.ceil(total / epochs) if epochs > 0 else None
        options = dict(self._options)
        if isinstance(self._spec, str) and "include" not in options:
            options["include"] = default_targets(model)
        if self.method is not None and self.method.model is not None:
            self.method.detach()  # a second train() with the same callback attaches anew
        self.method = _common.build_method(self._spec, options, total, per_epoch)
        if entry is None:
            self.method.attach(model, optimizer)
        else:  # weights and optimizer state were loaded by the Trainer: keep them
            weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            opt_state = copy.deepcopy(optimizer.state_dict())
            self.method.attach(model, optimizer)
            _common.restore(self.method, model, weights, entry)
            optimizer.load_state_dict(opt_state)
        self._seen = len(self.method.history)

    def _checkpoint_entry(self, args: Any, state: Any) -> dict[str, Any] | None:
        """The method's state to resume from, or ``None`` for a fresh run."""
        if self.resume_from is None and not state.global_step:
            return None
        folder = self.resume_from or Path(args.output_dir) / f"checkpoint-{state.global_step}"
        path = folder / STATE_FILE
        if not path.is_file():
            raise ValueError(
                f"resuming at step {state.global_step} but {path} does not exist; pass the "
                "checkpoint folder written with SparsityCallback as resume_from=..."
            )
        return torch.load(path, map_location="cpu", weights_only=True)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if control.should_save and isinstance(self.method, InPlaceMethod):
            self.method.unshare()  # safetensors refuses a buffer that aliases its parameter

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.method is None or self.method.model is None or not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            model_state = {k: v for k, v in self.method.model.state_dict().items()}
            torch.save(_common.checkpoint_entry(self.method, model_state), folder / STATE_FILE)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        if self.method is None or self.method.model is None or logs is None:
            return
        extra = {"sparsetrain/sparsity": _common.sparsity(self.method)}
        rows = [r for r in _common.new_rows(self.method, self._seen) if "churn" in r]
        if rows:
            extra["sparsetrain/churn"] = rows[-1]["churn"]
        self._seen = len(self.method.history)
        logs.update(extra)
        if state.log_history:
            state.log_history[-1].update(extra)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.method is None or self.method.model is None:
            return
        self.report = self.method.report()
        if state.is_world_process_zero:
            print(self.report, flush=True)


__all__ = ["STATE_FILE", "SparsityCallback", "default_targets", "recipe_optimizer"]
