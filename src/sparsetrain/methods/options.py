"""Method options: one vocabulary, declared checks, and the one function that validates them.

A method's options are the keyword parameters of its constructor (names, defaults and help in
the ``Args:`` section of its docstring: what ``sparsetrain list methods NAME`` shows). Next to the
constructor a method declares ``CHECKS``: option name → :class:`~sparsetrain.checks.Check` (type,
range or valid values), read by :func:`validate`, which :func:`~sparsetrain.methods.registry.
create_method` calls before it builds the method (config loading goes through
``create_method`` too). Every value of a declared option, default included, is checked there,
so all methods report a bad value the same way::

    gmp: update_interval must be an int >= 1, got 0          (ValueError; TypeError: wrong type)
    gmp: unknown scope 'x'; valid: layer, global             (ValueError)

A class's declaration of an option overrides its bases' (SCL declares its own ``sparsity``).
Rules that tie several options together stay in the constructor and raise
:func:`~sparsetrain.checks.option_error` (same format). Constructors themselves check nothing
that ``CHECKS`` says: build methods with ``create_method`` (the classes are for subclassing).

The vocabulary, one name per idea across methods: ``update_interval`` (steps between mask
updates), ``begin_step``/``end_step`` (the schedule's window), ``freeze_step`` (the mask is
fixed after this step), ``dense_first``/``dense_last``, ``sparsity`` (the target, also of an
emergent method that can aim at one: SCL's adaptive λ), ``<thing>_lr`` for the learning rate of
what a method trains itself (OptG's ``score_lr``, SCL's ``mask_lr``, STR's ``threshold_lr``).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from sparsetrain.checks import Check, integer, number, one_of, option_error

__all__ = [
    "Check",
    "checks",
    "declared_checks",
    "integer",
    "number",
    "one_of",
    "option_error",
    "validate",
]


def checks(**declared: Check) -> Mapping[str, Check]:
    """A method's ``CHECKS``: option name → :class:`~sparsetrain.checks.Check` (read-only)."""
    return MappingProxyType(declared)


def declared_checks(cls: type) -> dict[str, Check]:
    """Every option check of ``cls`` and its bases; a class's own declaration wins."""
    out: dict[str, Check] = {}
    for klass in cls.__mro__:
        for option, check in klass.__dict__.get("CHECKS", {}).items():
            out.setdefault(option, check)
    return out


def validate(
    method: str, cls: type, defaults: Mapping[str, Any], options: Mapping[str, Any]
) -> None:
    """Raise on an unknown option or a value (given, or the default) its check refuses.

    Args:
        method: The registry name, for the messages.
        cls: The method's class (its ``CHECKS`` and its bases').
        defaults: Every option the method takes, with its default.
        options: The options given.

    Raises:
        TypeError: An unknown option (one line with the valid names), or a value of the wrong
            type.
        ValueError: A value out of range or not among the valid ones.
    """
    bad = [k for k in options if k not in defaults]
    if bad:
        raise TypeError(
            f"method {method!r} got unknown option(s) {bad}; valid: {', '.join(defaults)}"
        )
    values = {**defaults, **options}
    for option, check in declared_checks(cls).items():
        if option in values:
            check(method, option, values[option])
