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

YAML is imported lazily (``import sparsetrain.config`` needs no ``pyyaml``); configs never refer to
module paths, only to registry names (the torchtune rule: a refactor never breaks a user's config).

Modules: :mod:`~sparsetrain.config.sections` (the dataclasses, :func:`load_config`),
:mod:`~sparsetrain.config.values` (type checks, :class:`ConfigError`),
:mod:`~sparsetrain.config.overrides` (YAML and ``section.key=value``) and
:mod:`~sparsetrain.config.entries` (the options each registry entry takes).
"""

from sparsetrain.config.entries import (
    HARNESS_METHOD_KEYS,
    entry_defaults,
    sparsity_is_option,
    switch_entry,
    takes_sparsity,
)
from sparsetrain.config.overrides import apply_overrides, parse_override, read_yaml, set_dotted
from sparsetrain.config.sections import (
    SECTIONS,
    DataConfig,
    ExperimentConfig,
    MethodConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    load_config,
)
from sparsetrain.config.values import (
    SECTION_NAMES,
    ConfigError,
    check_option,
    check_registry_options,
    check_type,
    deep_copy,
    did_you_mean,
    diff_configs,
    plain,
)

__all__ = [
    "HARNESS_METHOD_KEYS",
    "SECTIONS",
    "SECTION_NAMES",
    "ConfigError",
    "DataConfig",
    "ExperimentConfig",
    "MethodConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "apply_overrides",
    "check_option",
    "check_registry_options",
    "check_type",
    "deep_copy",
    "did_you_mean",
    "diff_configs",
    "entry_defaults",
    "load_config",
    "parse_override",
    "plain",
    "read_yaml",
    "set_dotted",
    "sparsity_is_option",
    "switch_entry",
    "takes_sparsity",
]
