"""The config's sections as typed frozen dataclasses, and :func:`load_config`."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sparsetrain.config.overrides import apply_overrides, read_yaml
from sparsetrain.config.values import ConfigError, check_type, did_you_mean, plain


@dataclass(frozen=True)
class DataConfig:
    """The dataset (see ``sparsetrain list datasets``).

    Attributes:
        name: Registry name of the dataset.
        data_dir: Folder with the dataset files (``--data-dir`` on the CLI overrides it).
        val_fraction: Fraction of the training set held out for validation (0: none).
        augment: Apply the dataset's training augmentation.
        train_size: Keep only this many training examples (seeded subset; ``null``: all).
        options: Dataset-specific options (written flat beside ``name`` in YAML).
    """

    name: str
    data_dir: str | None = None
    val_fraction: float = 0.1
    augment: bool = True
    train_size: int | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelConfig:
    """The model (see ``sparsetrain list models``).

    Attributes:
        name: Registry name of the model.
        options: Model options (written flat beside ``name`` in YAML).
    """

    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodConfig:
    """The sparsity method (see ``sparsetrain list methods``).

    Attributes:
        name: Registry name of the method.
        options: Method options such as ``sparsity`` (written flat beside ``name`` in YAML).
    """

    name: str = "dense"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer, learning-rate schedule and loss.

    Attributes:
        name: ``sgd`` (momentum, optional Nesterov) or ``adamw``.
        lr: Peak learning rate.
        momentum: SGD momentum.
        nesterov: SGD Nesterov momentum (needs ``momentum > 0``).
        weight_decay: Weight decay (L2 for SGD, decoupled for AdamW), on all parameters.
        betas: AdamW betas.
        eps: AdamW epsilon.
        schedule: ``constant``, ``cosine`` (linear warmup, then cosine to ``min_lr``) or
            ``multistep`` (×``gamma`` at each of ``milestones``).
        schedule_unit: ``step``: the LR changes every optimizer step (milestones at the first
            step of their epoch); ``epoch``: the LR is held constant within an epoch and computed
            from the epoch index, as ``MultiStepLR.step()`` once per epoch does.
        warmup_epochs: Linear warmup from 0 (cosine only); may be fractional with unit ``step``.
        min_lr: Final learning rate of the cosine schedule.
        milestones: Epochs at which ``multistep`` multiplies the LR by ``gamma``; default
            ``[epochs // 2, 3 * epochs // 4]`` (the Fantastic Weights setup).
        gamma: ``multistep`` factor.
        label_smoothing: Label smoothing of the cross-entropy loss.
        grad_clip: Clip the global gradient norm to this value (None: no clipping).
    """

    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    schedule: Literal["constant", "cosine", "multistep"] = "cosine"
    schedule_unit: Literal["step", "epoch"] = "step"
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    milestones: tuple[int, ...] | None = None
    gamma: float = 0.1
    label_smoothing: float = 0.0
    grad_clip: float | None = None


@dataclass(frozen=True)
class TrainConfig:
    """Training length, batching, seeding and outputs.

    Attributes:
        epochs: Training epochs.
        batch_size: Examples per micro-batch.
        eval_batch_size: Examples per evaluation batch.
        grad_accum: Micro-batches per optimizer step (an epoch's last step may use fewer).
        seed: Seed of model init, data order, augmentation, validation split and the method.
        device: Torch device, e.g. ``cpu`` or ``cuda``.
        deterministic: ``torch.use_deterministic_algorithms`` (warn-only) during training.
        channels_last: ``auto`` (conv models that benefit, see ``uses_channels_last``), ``on``
            or ``off``.
        select: ``best_val``: the headline test accuracy is the one at the best-validation
            epoch (the Fantastic Weights protocol; needs ``data.val_fraction > 0``), counting
            only epochs whose model is at the run's final sparsity (a gradual method's dense
            epochs never count; emergent methods: the last epoch only); ``final``:
            the last epoch's. Both are always recorded in ``summary.json``.
        log_every: Optimizer steps between rows of ``steps.csv``.
        plots: Write PNG plots at the end (skipped with a note if matplotlib is missing).
        label: Name of the run's method in reports (default: the method's registry name);
            suites set it to their variant name, e.g. ``snip-gradient``.
        report_sparsity: Sparsity reports group the run under (default: the method's
            ``sparsity``); suites set it for emergent-sparsity methods tuned per target, e.g.
            STR with a threshold weight decay chosen to land near 90%.
    """

    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 1000
    grad_accum: int = 1
    seed: int = 0
    device: str = "cpu"
    deterministic: bool = True
    channels_last: Literal["auto", "on", "off"] = "auto"
    select: Literal["best_val", "final"] = "best_val"
    log_every: int = 10
    plots: bool = True
    label: str | None = None
    report_sparsity: float | None = None


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "method": MethodConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
}
_FLAT = {"data", "model", "method"}  # sections with registry options written beside `name`


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole experiment; build it with :func:`load_config` or :meth:`from_dict`."""

    data: DataConfig
    model: ModelConfig
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ExperimentConfig:
        """Validate a nested dict (as read from YAML) into a config.

        Raises:
            ConfigError: Unknown or missing key, wrong type, or a value out of range.
        """
        if not isinstance(raw, Mapping):
            raise ConfigError(f"a config must be a mapping of sections, got {type(raw).__name__}")
        for key in raw:
            if key not in SECTIONS:
                raise ConfigError(
                    f"unknown config section {key!r}{did_you_mean(str(key), list(SECTIONS))} "
                    f"(valid: {', '.join(SECTIONS)})"
                )
        for required in ("data", "model"):
            if not raw.get(required):
                raise ConfigError(f"missing config section {required!r} (it needs at least a name)")
        parts = {name: _build_section(name, raw.get(name) or {}) for name in SECTIONS}
        cfg = cls(**parts)
        cfg._check()
        return cfg

    def _check(self) -> None:
        o, t = self.optim, self.train
        _positive("train.epochs", t.epochs)
        if t.report_sparsity is not None and not 0.0 <= t.report_sparsity < 1.0:
            raise ConfigError(f"train.report_sparsity must be in [0, 1), got {t.report_sparsity}")
        _positive("train.batch_size", t.batch_size)
        _positive("train.eval_batch_size", t.eval_batch_size)
        _positive("train.grad_accum", t.grad_accum)
        _positive("train.log_every", t.log_every)
        if not 0.0 <= self.data.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {self.data.val_fraction}")
        if t.select == "best_val" and self.data.val_fraction == 0:
            raise ConfigError(
                "train.select=best_val needs a validation split: set data.val_fraction > 0 "
                "or train.select=final"
            )
        if o.lr <= 0:
            raise ConfigError(f"optim.lr must be > 0, got {o.lr}")
        for key, val in (("weight_decay", o.weight_decay), ("momentum", o.momentum)):
            if val < 0:
                raise ConfigError(f"optim.{key} must be >= 0, got {val}")
        if o.nesterov and o.name == "sgd" and o.momentum == 0:
            raise ConfigError("optim.nesterov=true needs optim.momentum > 0")
        if not 0.0 <= o.label_smoothing < 1.0:
            raise ConfigError(f"optim.label_smoothing must be in [0, 1), got {o.label_smoothing}")
        if o.grad_clip is not None and o.grad_clip <= 0:
            raise ConfigError(f"optim.grad_clip must be > 0 or null, got {o.grad_clip}")
        if not 0.0 <= o.warmup_epochs <= t.epochs:
            raise ConfigError(
                f"optim.warmup_epochs must be in [0, train.epochs], got {o.warmup_epochs}"
            )
        if o.milestones is not None and any(m < 0 for m in o.milestones):
            raise ConfigError(f"optim.milestones must be epochs >= 0, got {list(o.milestones)}")
        sparsity = self.method.options.get("sparsity")
        if sparsity is not None:
            sparsity = check_type("method.sparsity", sparsity, float)
        if sparsity is not None and not 0.0 <= sparsity < 1.0:
            raise ConfigError(f"method.sparsity must be in [0, 1), got {sparsity}")

    def to_dict(self) -> dict[str, Any]:
        """The config as a nested dict of plain types (registry options flat beside ``name``)."""
        out: dict[str, Any] = {}
        for name in SECTIONS:
            section = getattr(self, name)
            d = {f.name: plain(getattr(section, f.name)) for f in dataclasses.fields(section)}
            if name in _FLAT:
                d.update(plain(d.pop("options")))
            out[name] = d
        return out

    def to_yaml(self) -> str:
        """The resolved config as YAML (what ``config.yaml`` in the run directory holds)."""
        import yaml  # optional: the `cli` extra

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def with_overrides(self, overrides: Sequence[str]) -> ExperimentConfig:
        """A copy with ``section.key=value`` overrides applied (and validated)."""
        return ExperimentConfig.from_dict(apply_overrides(self.to_dict(), overrides))


def _positive(key: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{key} must be >= 1, got {value}")


def _build_section(name: str, raw: Any) -> Any:
    cls = SECTIONS[name]
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config section {name!r} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls) if f.name != "options"]
    kwargs: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for key, value in raw.items():
        key = str(key)
        if key in fields:
            kwargs[key] = check_type(f"{name}.{key}", value, hints[key])
        elif name in _FLAT:
            options[key] = value
        else:
            raise ConfigError(
                f"unknown key {name}.{key}{did_you_mean(key, fields)} (valid: {', '.join(fields)})"
            )
    if name in _FLAT:
        if "name" not in kwargs and name != "method":
            raise ConfigError(f"missing {name}.name (see `sparsetrain list`)")
        kwargs["options"] = options
    return cls(**kwargs)


def load_config(
    path: str | Path, overrides: Sequence[str] = (), notes: list[str] | None = None
) -> ExperimentConfig:
    """Load a YAML config, apply dotted overrides and validate.

    Registry names and their options are validated later, by
    :func:`sparsetrain.train.build.resolve_config` (which imports the registries).

    Args:
        path: YAML file.
        overrides: ``section.key=value`` strings (see :func:`apply_overrides`).
        notes: Receives one line per change the overrides implied (options dropped when
            ``method.name`` switches to another method).

    Raises:
        ConfigError: Naming the offending key.
    """
    return ExperimentConfig.from_dict(apply_overrides(read_yaml(path), overrides, notes))
