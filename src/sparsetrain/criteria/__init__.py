"""Pruning and growth criteria, and the one drop-and-grow kernel every method uses.

Pruning *scores* follow one convention: the entries with the **lowest** score are removed (the
Fantastic Weights code's ``pruners.py`` convention). Growth scores: the **highest** inactive
entries are grown. Two pruning rules are not scores but selections (SET and the as-released SET).

Every criterion is a plain function called with keywords from one vocabulary::

    weights, grads, momentum, generator       # the inputs (dense tensors of one shape)
    <its own hyper-parameters>                # keyword parameters with defaults, e.g. gamma

A function names the inputs it reads and nothing else; registering it reads its signature, so
the registry knows what each criterion needs (``grads``: the dense gradient of the batch,
``momentum``: the optimizer's momentum, ``generator``: a seeded random stream) and which options
it takes. A pruning score must be elementwise (each entry's score depends on that entry only):
per layer, the kernel scores just the active entries, gathered into a 1-D tensor. Growth scores
see whole tensors. Adding a criterion is one decorated function::

    @register_prune_criterion("my_score", order="pre_step", description="lowest |w|·|g|^alpha")
    def my_score(weights, grads, alpha=1.0):
        return weights.abs() * grads.abs() ** alpha

and ``dst`` (``prune="my_score"``), ``granet`` (``prune="my_score"``) and ``static``
(``init="my_score"``) can use it, with ``prune_options={"alpha": 2.0}``. Growth criteria register
with :func:`register_growth_criterion` the same way (``grow=...``, ``grow_options=...``).

:func:`drop_and_grow` is the kernel behind every drop-and-grow step: DST's updates (per layer or
global), GraNet's regrowth and static pruning at initialisation (SNIP). It selects; the method
applies the change to weights, optimizer state and sparse layers.

Update order: ``"pre_step"`` criteria update the topology between ``loss.backward()`` and the
optimizer step (pre-step weights and gradients); ``"post_step"`` ones after the optimizer step.
Fantastic Weights' code calls these ``opt_order="after"`` and ``"before"`` respectively (the
order of the *optimizer step* relative to the update).

Modules: :mod:`~sparsetrain.criteria.criterion` (the criterion objects and update orders),
:mod:`~sparsetrain.criteria.registry` (``register_*``, ``get_*``),
:mod:`~sparsetrain.criteria.builtin` (the built-in criteria) and
:mod:`~sparsetrain.criteria.kernel` (:func:`drop_and_grow`).
"""

from sparsetrain.criteria.builtin import (
    abs_gradient,
    abs_momentum,
    gradstep,
    magnitude,
    mest,
    random_scores,
    reciprocal_sensitivity,
    sensitivity,
    set_as_released_drop,
    set_drop,
    snip,
    taylor,
)
from sparsetrain.criteria.criterion import (
    INPUTS,
    ORDERS,
    SCOPES,
    Change,
    GrowthCriterion,
    Order,
    PruneCriterion,
    Site,
)
from sparsetrain.criteria.kernel import drop_and_grow
from sparsetrain.criteria.registry import (
    GROWTH_CRITERIA,
    PRUNE_CRITERIA,
    get_growth_criterion,
    get_prune_criterion,
    grow_random,
    register_growth_criterion,
    register_prune_criterion,
)

__all__ = [
    "GROWTH_CRITERIA",
    "INPUTS",
    "ORDERS",
    "PRUNE_CRITERIA",
    "SCOPES",
    "Change",
    "GrowthCriterion",
    "Order",
    "PruneCriterion",
    "Site",
    "abs_gradient",
    "abs_momentum",
    "drop_and_grow",
    "get_growth_criterion",
    "get_prune_criterion",
    "gradstep",
    "grow_random",
    "magnitude",
    "mest",
    "random_scores",
    "reciprocal_sensitivity",
    "register_growth_criterion",
    "register_prune_criterion",
    "sensitivity",
    "set_as_released_drop",
    "set_drop",
    "snip",
    "taylor",
]
