"""Experiment configuration: typed frozen dataclasses, YAML loading and dotted overrides.

A config has five sections. ``data``, ``model`` and ``method`` name a registry entry and take that
entry's own keyword options flat beside ``name`` (validated against the registry); ``optim`` and
``train`` are fixed dataclasses::

    data:   {name: mnist1d, val_fraction: 0.1}          # + dataset options (e.g. n_train)
    model:  {name: mlp}                                  # + model options
    method: {name: rigl, sparsity: 0.9}                  # + method options (see `list methods`)
    optim:  {name: sgd, lr: 0.1, schedule: cosine}
    train:  {epochs: 10, batch_size: 128, seed: 0}

Overrides on the command line are ``section.key=value`` with the value read as a YAML scalar
(``train.epochs=3``, ``method.sparsity=0.95``, ``optim.milestones=[5,8]``). Every error is a
:class:`ConfigError` (a ``ValueError``) that names the offending key and the valid choices.

The harness derives ``total_steps`` and ``steps_per_epoch`` of the method from the data and
``train.epochs``; they cannot be set in the config. The method's ``seed`` defaults to
``train.seed``.

YAML is imported lazily (``import sparsetrain`` stays light); configs never refer to module paths,
only to registry names (the torchtune rule: a refactor never breaks a user's config).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

HARNESS_METHOD_KEYS = ("total_steps", "steps_per_epoch")


class ConfigError(ValueError):
    """A config value or key is invalid; the message names the key and the valid options."""


def _closest(name: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


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
                    f"unknown config section {key!r}{_closest(str(key), list(SECTIONS))} "
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
            d = {f.name: _plain(getattr(section, f.name)) for f in dataclasses.fields(section)}
            if name in _FLAT:
                d.update(_plain(d.pop("options")))
            out[name] = d
        return out

    def to_yaml(self) -> str:
        """The resolved config as YAML (what ``config.yaml`` in the run directory holds)."""
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def with_overrides(self, overrides: Sequence[str]) -> ExperimentConfig:
        """A copy with ``section.key=value`` overrides applied (and validated)."""
        return ExperimentConfig.from_dict(apply_overrides(self.to_dict(), overrides))


def _positive(key: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{key} must be >= 1, got {value}")


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


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
                f"unknown key {name}.{key}{_closest(key, fields)} (valid: {', '.join(fields)})"
            )
    if name in _FLAT:
        if "name" not in kwargs and name != "method":
            raise ConfigError(f"missing {name}.name (see `sparsetrain list`)")
        kwargs["options"] = options
    return cls(**kwargs)


def check_type(key: str, value: Any, typ: Any) -> Any:
    """Check ``value`` against a type hint and return it (lists become tuples where hinted).

    Ints are accepted for floats, and strings such as ``5e-4`` (which YAML 1.1 reads as strings)
    are read as floats where a float is expected.

    Raises:
        ConfigError: Naming ``key``, the expected type and the value.
    """
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return check_type(key, value, inner[0]) if len(inner) == 1 else value
    if origin is Literal:
        if value not in args:
            raise ConfigError(
                f"invalid {key}={value!r}{_closest(str(value), [str(a) for a in args])} "
                f"(valid: {', '.join(map(str, args))})"
            )
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(check_type(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key} must be a list of {len(args)} values, got {value!r}")
        return tuple(
            check_type(f"{key}[{i}]", v, a)
            for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if typ is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    return value


def check_option(key: str, value: Any, default: Any) -> Any:
    """Check a registry option against the type of its default (None default: anything)."""
    if default is None or default is inspect.Parameter.empty:
        return value
    for typ in (bool, int, float, str):  # bool first: it is a subclass of int
        if isinstance(default, typ):
            return check_type(key, value, typ)
    if isinstance(default, tuple | list):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return tuple(value) if isinstance(default, tuple) else list(value)
    return value


def check_registry_options(
    section: str, entry: str, options: Mapping[str, Any], valid: Mapping[str, Any]
) -> dict[str, Any]:
    """Validate ``options`` of registry entry ``entry`` against ``valid`` (name → default).

    Raises:
        ConfigError: An unknown key (with close matches and the valid keys) or a wrong type.
    """
    out: dict[str, Any] = {}
    for key, value in options.items():
        if key not in valid:
            raise ConfigError(
                f"unknown key {section}.{key} for {section} {entry!r}"
                f"{_closest(key, list(valid))} (valid: {', '.join(valid) or 'none'})"
            )
        out[key] = check_option(f"{section}.{key}", value, valid[key])
    return out


# --------------------------------------------------------------------------- YAML and overrides


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from ``path``.

    Raises:
        ConfigError: The file is missing, is not valid YAML, or is not a mapping.
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{p}{where}: invalid YAML ({problem})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: a config must be a mapping of sections, got {type(raw).__name__}")
    return raw


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``"a.b=value"`` into ``(["a", "b"], value)``, the value read as a YAML scalar.

    >>> parse_override("method.sparsity=0.95")
    (['method', 'sparsity'], 0.95)
    """
    import yaml

    key, sep, value = text.partition("=")
    path = key.strip().split(".")
    if not sep or len(path) < 2 or not all(path):
        raise ConfigError(f"bad override {text!r}: expected section.key=value, e.g. train.epochs=3")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value  # not valid YAML on its own: keep the raw string
    return path, parsed


def apply_overrides(
    raw: Mapping[str, Any], overrides: Sequence[str], notes: list[str] | None = None
) -> dict[str, Any]:
    """A deep copy of ``raw`` with each ``section.key=value`` override set.

    ``section.key=null`` removes the key, so its default applies. Setting ``method.name`` (or
    ``data.name``, ``model.name``) to another entry drops the section's options the new entry
    does not take, and those left at the old entry's default where the new one's differs (see
    :func:`sparsetrain.train.build.switch_entry`); options given on the same command line are
    kept and validated strictly. What was dropped is described in ``notes``, one line each.

    Raises:
        ConfigError: Malformed override or unknown section (with close matches).
    """
    out = _deepcopy(raw)
    given: dict[str, set[str]] = {}
    for text in overrides:
        path, value = parse_override(text)
        if value is None:
            _remove_dotted(out, path)
        else:
            set_dotted(out, ".".join(path), value, what=f"override {text!r}")
        given.setdefault(path[0], set()).add(".".join(path[1:]))
    for section in ("data", "model", "method"):
        old, new = _entry(raw, section), _entry(out, section)
        if old is None or new is None or old == new:
            continue
        from sparsetrain.train.build import switch_entry

        dropped, reset = switch_entry(out[section], section, old, new, given.get(section, ()))
        what = [f"dropped {_keys(section, dropped)} (not an option of {new})"] if dropped else []
        what += [f"{_keys(section, reset)} back to {new}'s defaults"] if reset else []
        if what and notes is not None:
            notes.append(f"{section}.name {old} -> {new}: {'; '.join(what)}")
    return out


def _entry(raw: Mapping[str, Any], section: str) -> str | None:
    part = raw.get(section)
    name = part.get("name", "dense" if section == "method" else None) if part else None
    return name if isinstance(name, str) else None


def _keys(section: str, keys: Sequence[str]) -> str:
    return ", ".join(f"{section}.{k}" for k in keys)


def _remove_dotted(raw: dict[str, Any], path: Sequence[str]) -> None:
    """Remove ``raw[a][b]`` for ``path = [a, b]`` if present (``a.b=null`` on the command line)."""
    if path[0] not in SECTIONS:
        set_dotted(raw, ".".join(path), None)  # raises: unknown section, with close matches
    node: Any = raw
    for part in path[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(path[-1], None)


def set_dotted(raw: dict[str, Any], key: str, value: Any, *, what: str | None = None) -> None:
    """Set ``raw[a][b] = value`` for ``key = "a.b"`` in place, creating sections as needed.

    Raises:
        ConfigError: Unknown section (with close matches) or a path through a non-mapping.
    """
    what = what or f"key {key!r}"
    path = key.split(".")
    if len(path) < 2 or not all(path):
        raise ConfigError(f"bad {what}: expected section.key, e.g. train.epochs")
    if path[0] not in SECTIONS:
        raise ConfigError(
            f"bad {what}: unknown section {path[0]!r}"
            f"{_closest(path[0], list(SECTIONS))} (valid: {', '.join(SECTIONS)})"
        )
    node = raw
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"bad {what}: {part!r} is not a section")
        node = child
    node[path[-1]] = value


def _deepcopy(raw: Any) -> Any:
    if isinstance(raw, Mapping):
        return {k: _deepcopy(v) for k, v in raw.items()}
    if isinstance(raw, list | tuple):
        return [_deepcopy(v) for v in raw]
    return raw


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


def diff_configs(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts (sorted)."""
    keys = sorted(set(a) | set(b))
    out: list[str] = []
    for k in keys:
        va, vb = a.get(k), b.get(k)
        name = f"{prefix}{k}"
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            out += diff_configs(va, vb, f"{name}.")
        elif _plain(va) != _plain(vb):
            out.append(name)
    return out
