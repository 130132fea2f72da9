"""sparsetrain: train sparse neural networks in PyTorch, one API for many methods.

Two-line integration into a plain training loop::

    method = sparsetrain.create_method("rigl", sparsity=0.9, total_steps=len(loader) * epochs)
    method.attach(model, optimizer)   # optimizer.step() now drives the method

A method never edits the optimizer; where its recipe wants per-parameter hyper-parameters
(ST-3: no weight decay on biases and norms), build the optimizer from
``sparsetrain.param_groups(model, method, weight_decay=...)``.

See ``sparsetrain.methods.base`` for the hook order and ``sparsetrain.masking`` for where
masks live.
"""

from sparsetrain import criteria, distributions, schedules
from sparsetrain._version import __version__
from sparsetrain.distributions import allocate
from sparsetrain.masking import Target, select_targets
from sparsetrain.methods import (
    GMP,
    Dense,
    DynamicSparse,
    MethodInfo,
    Plan,
    RecipeWarning,
    ScheduleWarning,
    SparsityMethod,
    SparsityTargetWarning,
    Static,
    attached_method,
    create_method,
    get_method_info,
    list_methods,
    param_groups,
    register_method,
)
from sparsetrain.report import SparsityReport, SparsityTargetError

__all__ = [
    "GMP",
    "Dense",
    "DynamicSparse",
    "MethodInfo",
    "Plan",
    "RecipeWarning",
    "ScheduleWarning",
    "SparsityMethod",
    "SparsityReport",
    "SparsityTargetError",
    "SparsityTargetWarning",
    "Static",
    "Target",
    "__version__",
    "allocate",
    "attached_method",
    "create_method",
    "criteria",
    "distributions",
    "get_method_info",
    "list_methods",
    "param_groups",
    "register_method",
    "schedules",
    "select_targets",
]
