"""Method options: one vocabulary, renamed options, and one way to validate a value.

A method's options are the keyword parameters of its constructor (names, defaults and help in
the ``Args:`` section of its docstring: what ``sparsetrain list methods NAME`` shows). Next to the
constructor a method declares two class attributes, read by :class:`~sparsetrain.methods.base.
SparsityMethod` for every subclass:

- ``CHECKS``: option name → :class:`Check` (type, range or valid values). Every value of a
  declared option, default included, is checked before the constructor body runs, so all
  methods report a bad value the same way::

      gmp: update_interval must be an int >= 1, got 0          (ValueError; TypeError: wrong type)
      gmp: unknown scope 'x'; valid: layer, global             (ValueError)

  Rules that tie several options together stay in the constructor and raise
  :func:`option_error` (same format).
- ``RENAMED``: old option name → new name. The old spelling keeps working for one release with
  a ``DeprecationWarning`` naming the new one; giving both is a ``TypeError``. Subclasses
  inherit the renames of their bases (``granet`` takes GMP's).

The vocabulary, one name per idea across methods: ``update_interval`` (steps between mask
updates), ``begin_step``/``end_step`` (the schedule's window), ``freeze_step`` (the mask is
fixed after this step), ``dense_first``/``dense_last``, ``sparsity`` (the target, also of an
emergent method that can aim at one: SCL's adaptive λ), ``<thing>_lr`` for the learning rate of
what a method trains itself (OptG's ``score_lr``, SCL's ``mask_lr``, STR's ``threshold_lr``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
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


def rename_options(
    method: str,
    renamed: Mapping[str, str],
    options: Mapping[str, Any],
    *,
    warn: bool = True,
    prefix: str = "",
    saved: bool = False,
    defaults: Mapping[str, Any] | None = None,
    stacklevel: int = 3,
) -> dict[str, Any]:
    """``options`` with every old name of ``renamed`` replaced by its new name, order kept.

    Args:
        method: Method name, for the messages.
        renamed: Old name → new name.
        options: The options as given.
        warn: Emit a ``DeprecationWarning`` naming the new name for each old one.
        prefix: Written before option names in messages (``"method."`` for configs).
        saved: A config written by an earlier version, which wrote every default out: when both
            names are present, the one still at its default (``defaults``, by new name) yields
            to the other; a real conflict still raises.
        defaults: Defaults by new name (for ``saved``).
        stacklevel: Of the warning.

    Raises:
        TypeError: Both the old and the new name given (with differing values, for ``saved``).
    """
    out = dict(options)
    for key in [k for k in options if k in renamed]:
        new, value = renamed[key], out[key]
        if new not in out:
            out = {(new if k == key else k): v for k, v in out.items()}
        else:
            default = (defaults or {}).get(new)
            at_default = _same(value, default) or _same(value, out[new])
            if not saved or not (at_default or _same(out[new], default)):
                raise option_error(
                    method,
                    f"{prefix}{key} and {prefix}{new} both given; {prefix}{key} is the old name "
                    f"of {prefix}{new}: give {prefix}{new} only",
                    TypeError,
                )
            del out[key]
            if not at_default:  # the new name held its default: the old one's value counts
                out[new] = value
        if warn:
            warnings.warn(
                f"{method}: option {prefix}{key} is deprecated; it is now called {prefix}{new} "
                "(the old name works until the next release)",
                DeprecationWarning,
                stacklevel=stacklevel,
            )
    return out


def _same(a: Any, b: Any) -> bool:
    def plain(v: Any) -> Any:
        return list(v) if isinstance(v, tuple | list) else v

    try:
        return bool(plain(a) == plain(b))
    except Exception:
        return False


def checks(**declared: Check) -> Mapping[str, Check]:
    """A method's ``CHECKS``: option name → :class:`Check` (read-only)."""
    return MappingProxyType(declared)


def renamed(**old_to_new: str) -> Mapping[str, str]:
    """A method's ``RENAMED``: old option name → new name (read-only)."""
    return MappingProxyType(old_to_new)
