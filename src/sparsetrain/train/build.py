"""Builders: a validated config becomes flat kwargs for the registries, the optimizer and the LR.

Configs never enter library classes (the torchtune rule): this module turns each section into
keyword arguments and calls the registry, so every method, model and dataset stays usable from
plain Python. Every user error is a :class:`~sparsetrain.config.ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from sparsetrain.config import (
    HARNESS_METHOD_KEYS,
    ConfigError,
    ExperimentConfig,
    OptimConfig,
    check_registry_options,
    entry_defaults,
)
from sparsetrain.data import get_dataset_info
from sparsetrain.methods import (
    SparsityMethod,
    create_method,
    get_method_info,
    method_options,
    param_groups,
)
from sparsetrain.models import count_parameters, create_model, get_model_info


def _registry_error(section: str, exc: Exception) -> ConfigError:
    return ConfigError(f"{section}.name: {exc}")


def check_method(cfg: ExperimentConfig) -> dict[str, Any]:
    """Validate the method name and options; return the user's options, type-checked.

    Raises:
        ConfigError: Unknown method (with close matches), unknown or reserved key, wrong type.
    """
    try:
        info = get_method_info(cfg.method.name)
    except (ValueError, TypeError) as exc:
        raise _registry_error("method", exc) from None
    valid = {k: v for k, v in method_options(info.factory).items() if k not in HARNESS_METHOD_KEYS}
    options = dict(cfg.method.options)
    for key in HARNESS_METHOD_KEYS:
        if key in options:
            raise ConfigError(
                f"method.{key} is set by the harness from the data and train.epochs; remove it"
            )
    return check_registry_options("method", info.name, options, valid)


def method_kwargs(cfg: ExperimentConfig, steps_per_epoch: int) -> dict[str, Any]:
    """Keyword arguments of the method: the user's options plus what the harness derives.

    ``total_steps = epochs * steps_per_epoch``; ``steps_per_epoch`` and ``seed`` (default
    ``train.seed``) are passed when the method accepts them.
    """
    kwargs = check_method(cfg)
    valid = method_options(get_method_info(cfg.method.name).factory)
    kwargs["total_steps"] = cfg.train.epochs * steps_per_epoch
    if "steps_per_epoch" in valid:
        kwargs["steps_per_epoch"] = steps_per_epoch
    if "seed" in valid:
        kwargs.setdefault("seed", cfg.train.seed)
    return kwargs


def build_method(cfg: ExperimentConfig, steps_per_epoch: int) -> SparsityMethod:
    """Create the (unattached) method; its constructor's ValueErrors become ConfigErrors."""
    kwargs = method_kwargs(cfg, steps_per_epoch)
    try:
        return create_method(cfg.method.name, **kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"method {cfg.method.name!r}: {exc}") from None


def check_data(cfg: ExperimentConfig) -> None:
    """Validate the dataset name and its options (without loading anything)."""
    try:
        info = get_dataset_info(cfg.data.name)
    except (ValueError, TypeError) as exc:
        raise _registry_error("data", exc) from None
    check_registry_options("data", info.name, cfg.data.options, info.options())


def check_model(cfg: ExperimentConfig) -> dict[str, Any]:
    """Validate the model name and options; return the options, type-checked."""
    try:
        info = get_model_info(cfg.model.name)
    except (ValueError, TypeError) as exc:
        raise _registry_error("model", exc) from None
    return check_registry_options("model", info.name, cfg.model.options, info.options())


def check_config(cfg: ExperimentConfig) -> None:
    """Validate every registry name and option of ``cfg`` without loading or building anything.

    Raises:
        ConfigError: The first problem found, naming its key.
    """
    check_data(cfg)
    check_model(cfg)
    check_method(cfg)


def resolved_dict(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` (a saved config) with every registry default written out.

    As ``config.yaml`` is written now; ``raw`` itself when it no longer validates (then
    compared as saved). A config saved before an option existed then compares equal to one that
    holds the option's default (resume checks, report pooling).
    """
    try:
        return resolve_config(ExperimentConfig.from_dict(raw)).to_dict()
    except ConfigError:
        return raw


def resolve_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` validated, with every data, model and method option's default written out.

    This is what a run directory's ``config.yaml`` holds. ``method.seed`` stays unset unless
    given (it follows ``train.seed``), and so do the keys the harness derives.

    Raises:
        ConfigError: As :func:`check_config`.
    """
    check_config(cfg)
    out = cfg
    for section in ("data", "model", "method"):
        part = getattr(cfg, section)
        defaults = entry_defaults(section, part.name) or {}
        full = {**defaults, **part.options}
        out = dataclasses.replace(out, **{section: dataclasses.replace(part, options=full)})
    return out


def build_model(cfg: ExperimentConfig, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """Create the model; unknown names and bad options become ConfigErrors."""
    options = check_model(cfg)
    try:
        return create_model(
            cfg.model.name, num_classes=num_classes, input_shape=input_shape, **options
        )
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"model {cfg.model.name!r}: {exc}") from None


def build_optimizer(
    model: nn.Module, o: OptimConfig, method: SparsityMethod
) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov) or AdamW over ``model``, in the groups of ``method``'s recipe.

    The groups are :func:`sparsetrain.param_groups` (ST-3: no weight decay on biases and
    normalisation parameters), so the method never needs to change the optimizer.
    """
    params = param_groups(model, method, weight_decay=o.weight_decay)
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov)
    return torch.optim.AdamW(params, lr=o.lr, betas=o.betas, eps=o.eps)


def batches_per_epoch(n_train: int, batch_size: int) -> int:
    """Micro-batches per epoch; a final batch of one example is dropped (BatchNorm needs two)."""
    n = n_train - 1 if n_train % batch_size == 1 and n_train > 1 else n_train
    return math.ceil(n / batch_size)


def steps_per_epoch(n_train: int, batch_size: int, grad_accum: int) -> int:
    """Optimizer steps per epoch: the last step of an epoch may accumulate fewer batches."""
    return math.ceil(batches_per_epoch(n_train, batch_size) / grad_accum)


def lr_factor(step: int, o: OptimConfig, steps_per_epoch: int, epochs: int) -> float:
    """Multiplier of the base LR for the optimizer step with 0-based index ``step``.

    A pure function of the step, so a resumed run needs no scheduler state.

    1. ``constant``: 1.
    2. ``cosine``: linear warmup ``(t + 1) / warmup`` for ``t < warmup``, then a half cosine
       from 1 down to ``min_lr / lr`` at the end of training.
    3. ``multistep``: ``gamma ** (number of milestones <= current epoch)``.

    With ``schedule_unit="step"`` the time ``t`` counts optimizer steps; with ``"epoch"`` it
    counts whole epochs (the LR is constant within an epoch). Multistep milestones fall on epoch
    boundaries, so both units agree for it.
    """
    if o.schedule == "constant":
        return 1.0
    if o.schedule == "multistep":
        # default E/2 and 3E/4 (Fantastic Weights); never epoch 0, which would scale the base LR
        default = (max(epochs // 2, 1), max(3 * epochs // 4, 1))
        milestones = o.milestones if o.milestones is not None else default
        epoch = step / steps_per_epoch
        return o.gamma ** sum(1 for m in milestones if m <= epoch)
    if o.schedule_unit == "step":
        t, total, warm = step, epochs * steps_per_epoch, round(o.warmup_epochs * steps_per_epoch)
    else:
        t, total, warm = step // steps_per_epoch, epochs, math.ceil(o.warmup_epochs)
    if t < warm:
        return (t + 1) / warm
    floor = o.min_lr / o.lr
    progress = (t - warm) / max(1, total - warm)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


DEFAULT_INPUTS: tuple[tuple[int, ...], ...] = ((3, 32, 32), (1, 28, 28), (1, 40))


def default_parameter_count(name: str, num_classes: int = 10) -> tuple[int, tuple[int, ...]]:
    """Parameters of model ``name`` for the first default input it accepts.

    Tries a CIFAR image (3x32x32), then an MNIST image (1x28x28), then an MNIST-1D signal
    (1x40), with ``num_classes`` outputs.

    Returns:
        ``(count, input_shape)``; ``(-1, ())`` if no default input fits.
    """
    for shape in DEFAULT_INPUTS:
        try:
            model = create_model(name, num_classes=num_classes, input_shape=shape)
        except (ValueError, TypeError, RuntimeError):
            continue
        return count_parameters(model), shape
    return -1, ()
