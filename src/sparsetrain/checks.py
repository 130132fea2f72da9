"""One way to validate an option value, and the one error format ``"<where>: <text>"``.

A :class:`Check` is an int or a number in a range, or one of a few values.

The rules live here, below every layer that has options (methods, distributions, configs), so a
rule such as :data:`SPARSITY` is written once::

    gmp: update_interval must be an int >= 1, got 0          (ValueError; TypeError: wrong type)
    gmp: unknown scope 'x'; valid: layer, global             (ValueError)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Check:
    """What values one option takes: an int or number in a range, or one of a few values.

    Build it with :func:`integer`, :func:`number` or :func:`one_of`.
    """

    kind: str  # "int", "number" or "choice"
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[Any, ...] = ()
    optional: bool = False

    def rule(self) -> str:
        """The rule in words, e.g. ``an int >= 1`` or ``a number in (0, 1]``."""
        what = "an int" if self.kind == "int" else "a number"
        lo, hi = self.low, self.high
        if lo is not None and hi is not None:
            brackets = ("(" if self.low_open else "[", ")" if self.high_open else "]")
            text = f"{what} in {brackets[0]}{lo:g}, {hi:g}{brackets[1]}"
        elif lo is not None:
            text = f"{what} {'>' if self.low_open else '>='} {lo:g}"
        elif hi is not None:
            text = f"{what} {'<' if self.high_open else '<='} {hi:g}"
        else:
            text = what
        return f"{text} or None" if self.optional else text

    def __call__(self, method: str, option: str, value: Any) -> None:
        """Raise ``ValueError`` (``TypeError`` for a wrong type) if ``value`` breaks the rule."""
        if value is None and self.optional:
            return
        if self.kind == "choice":
            if not _member(value, self.choices):
                valid = ", ".join(map(str, self.choices))
                raise option_error(method, f"unknown {option} {value!r}; valid: {valid}")
            return
        types = (int,) if self.kind == "int" else (int, float)
        if isinstance(value, bool) or not isinstance(value, types):
            raise option_error(method, f"{option} must be {self.rule()}, got {value!r}", TypeError)
        ok = not (isinstance(value, float) and math.isnan(value))
        if ok and self.low is not None:
            ok = value > self.low if self.low_open else value >= self.low
        if ok and self.high is not None:
            ok = value < self.high if self.high_open else value <= self.high
        if not ok:
            raise option_error(method, f"{option} must be {self.rule()}, got {value!r}")


def _member(value: Any, choices: Sequence[Any]) -> bool:
    try:
        return value in choices
    except TypeError:  # an unhashable or oddly comparing value
        return False


def integer(low: int | None = None, high: int | None = None, *, optional: bool = False) -> Check:
    """An int (not a bool) in ``[low, high]``; ``optional``: ``None`` allowed."""
    return Check("int", low, high, optional=optional)


def number(
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
) -> Check:
    """An int or float (not a bool, not NaN) in the range; open ends with ``*_open``."""
    return Check("number", low, high, low_open, high_open, optional=optional)


def one_of(choices: Sequence[Any], *, optional: bool = False) -> Check:
    """One of ``choices`` (``optional``: or ``None``)."""
    return Check("choice", choices=(*choices,), optional=optional)


def option_error(method: str, text: str, kind: type[Exception] = ValueError) -> Exception:
    """The one error format for a bad option: ``"<method>: <text>"``."""
    return kind(f"{method}: {text}")


def check_options(method: str, checks: Mapping[str, Check], values: Mapping[str, Any]) -> None:
    """Run each declared check on the value of its option (options absent are skipped)."""
    for option, check in checks.items():
        if option in values:
            check(method, option, values[option])


SPARSITY = number(0, 1, high_open=True)
"""A target sparsity: a number in [0, 1)."""
