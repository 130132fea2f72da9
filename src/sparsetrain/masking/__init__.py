"""The mask engine: which tensors are sparse and how masks are selected and applied.

Where masks live (their one home)
---------------------------------
A mask is a ``bool`` tensor (one byte per weight) owned by the *method*: each
:class:`~sparsetrain.masking.targets.Target` holds it, and ``method.state_dict()`` saves it under
``"masks"`` keyed by the parameter's fully qualified name. ``model.state_dict()`` never carries a
mask. For hard-mask methods (dense, static, GMP, the DST family) the model keeps its own plain
parameters, under their original names, with pruned entries stored as exact zeros, so the model
can be saved, exported or used without sparsetrain at any time. Methods whose forward pass is a
function of the weights (ST-3, OptG, SCL, STR, DNW) keep the effective weight in the parameter
and the raw weight in a ``<name>_raw`` buffer of the same module (see
``sparsetrain.methods._inplace``); their masks too are held by the method, never by the model.

This package knows nothing about methods: it selects targets, ranks scores and applies masks.
"""

from sparsetrain.masking.targets import (
    SUPPORTED_MODULES,
    Target,
    select_targets,
)
from sparsetrain.masking.topk import (
    global_topk_masks,
    random_mask,
    select_bottomk,
    select_topk,
    topk_indices,
)

__all__ = [
    "SUPPORTED_MODULES",
    "Target",
    "global_topk_masks",
    "random_mask",
    "select_bottomk",
    "select_targets",
    "select_topk",
    "topk_indices",
]
