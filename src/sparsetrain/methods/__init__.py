"""Sparsity methods. Importing this package registers every built-in method.

Every module in this package is imported here, so a new method registers by existing.
"""

import importlib
import pkgutil

from sparsetrain.methods.base import SparsityMethod
from sparsetrain.methods.dense import Dense
from sparsetrain.methods.diagnostics import Plan, ScheduleWarning, SparsityTargetWarning
from sparsetrain.methods.dynamic import DynamicSparse
from sparsetrain.methods.gmp import GMP
from sparsetrain.methods.groups import RecipeWarning, param_groups
from sparsetrain.methods.lifecycle import attached_method
from sparsetrain.methods.registry import (
    MethodInfo,
    create_method,
    get_method_info,
    list_methods,
    method_options,
    register_method,
)
from sparsetrain.methods.static import Static

__all__ = [
    "GMP",
    "Dense",
    "DynamicSparse",
    "MethodInfo",
    "Plan",
    "RecipeWarning",
    "ScheduleWarning",
    "SparsityMethod",
    "SparsityTargetWarning",
    "Static",
    "attached_method",
    "create_method",
    "get_method_info",
    "list_methods",
    "method_options",
    "param_groups",
    "register_method",
]

for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")
