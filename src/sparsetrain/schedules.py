"""Schedules, all counted in optimizer steps (the number of ``optimizer.step()`` calls done).

Pure functions of the step, and the objects a method's schedule is made of: a :class:`Schedule`
is a sparsity ramp (:class:`ConstantRamp`, :class:`StepRamp`, :class:`PolynomialRamp`,
:class:`SigmoidRamp`: how much sparsity at a step) plus update cadences (:class:`UpdateSchedule`:
when the mask changes). Epoch based rules (OptG's sigmoid) take ``steps_per_epoch`` and evaluate
at ``step // steps_per_epoch``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol


def _check_window(start: int, end: int) -> None:
    if end < start:
        raise ValueError(f"schedule end ({end}) is before its start ({start})")


def constant(step: int, value: float) -> float:
    """A constant schedule: ``value`` at every step."""
    return value


def polynomial(
    step: int, *, initial: float, final: float, start: int, end: int, power: float = 3.0
) -> float:
    """Zhu & Gupta's gradual schedule: s_t = s_f + (s_i − s_f)(1 − (t − t₀)/(t₁ − t₀))^p.

    ``initial`` before ``start``, ``final`` from ``end`` on; ``power = 3`` is the cubic ramp of GMP
    and ST-3.

    >>> round(polynomial(50, initial=0.0, final=0.8, start=0, end=100), 6)
    0.7
    """
    _check_window(start, end)
    if step <= start:
        return initial
    if step >= end:
        return final
    progress = (step - start) / (end - start)
    return final + (initial - final) * (1.0 - progress) ** power


def cubic(step: int, *, final: float, start: int, end: int, initial: float = 0.0) -> float:
    """The cubic sparsity ramp of GMP and ST-3: :func:`polynomial` with power 3."""
    return polynomial(step, initial=initial, final=final, start=start, end=end, power=3.0)


def sigmoid_ramp(epoch: int, *, target: float, total_epochs: int, beta: float = 1.0) -> float:
    """OptG's ramp s(e) = s_target · σ(β(e − E/2)) (Zhang et al., arXiv 2201.12826).

    >>> round(sigmoid_ramp(80, target=0.9, total_epochs=160), 3)
    0.45
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    return target / (1.0 + math.exp(-beta * (epoch - total_epochs / 2)))


def cosine_decay(step: int, *, initial: float, final: float, total: int) -> float:
    """Cosine decay from ``initial`` at step 0 to ``final`` at ``total`` (held afterwards).

    RigL's drop fraction is ``cosine_decay(t, initial=ζ, final=0, total=T_end)``; Fantastic
    Weights uses ``initial=0.5, final=0.005`` over all training steps.

    >>> cosine_decay(50, initial=0.5, final=0.0, total=100)
    0.25
    """
    if total <= 0:
        return final
    t = min(max(step, 0), total)
    return final + 0.5 * (initial - final) * (1.0 + math.cos(math.pi * t / total))


def last_update_step(total_steps: int, interval: int) -> int:
    """The last step a topology update may end: ``total_steps - interval`` (at least 0).

    The rule every method that regrows weights follows: the weights grown at an update get at
    least one full update interval of training before the run ends, and no update ever falls on
    the final step (regrown weights start at zero and would enter the final model untrained).
    """
    return max(0, total_steps - interval)


_FINALS = ("plain", "always", "never")


@dataclass(frozen=True)
class UpdateSchedule:
    """When the mask changes: every ``interval`` steps in ``(start, end]``, plus single steps.

    Steps are optimizer steps, 1-based (the update ends step ``t``). The periodic updates fall on
    the steps ``t`` of the window with ``t ≡ phase (mod interval)``; by default ``phase = start``,
    so the first is ``start + interval``.

    Attributes:
        interval: Steps between periodic updates (ΔT), > 0; ``None``: only the ``at`` steps.
        start: No periodic update at or before this step.
        end: No periodic update after this step (``None``: no end).
        phase: Periodic updates on steps ``≡ phase`` modulo ``interval`` (``None``: ``start``).
        at: Single update steps besides the periodic ones (the window does not apply to them).
        final: The run's last step ``total``: ``"plain"`` (no rule), ``"always"`` (an update
            there too) or ``"never"`` (no update at or after it).
        total: The run's length, for ``final`` in :meth:`is_update` and :meth:`latest`
            (:meth:`steps` takes the length as its argument).
        offset: Every update (periodic, ``at`` and the window) moves ``offset`` steps later;
            ``final`` still refers to the run's last step.
    """

    interval: int | None
    start: int = 0
    end: int | None = None
    phase: int | None = None
    at: tuple[int, ...] = ()
    final: str = "plain"
    total: int | None = None
    offset: int = 0

    def __post_init__(self) -> None:
        if self.interval is not None:
            if isinstance(self.interval, bool) or not isinstance(self.interval, int):
                raise TypeError(f"update interval must be an int, got {self.interval!r}")
            if self.interval <= 0:
                raise ValueError(f"update interval must be > 0, got {self.interval}")
        if self.start < 0:
            raise ValueError(f"update start must be >= 0, got {self.start}")
        if self.end is not None:
            _check_window(self.start, self.end)
        if self.final not in _FINALS:
            raise ValueError(f"final must be one of {', '.join(_FINALS)}, got {self.final!r}")

    @property
    def _phase(self) -> int:
        return self.start if self.phase is None else self.phase

    def _periodic(self, step: int) -> bool:
        """Whether unshifted step ``step`` is one of the periodic updates."""
        if self.interval is None or step <= self.start:
            return False
        if self.end is not None and step > self.end:
            return False
        return (step - self._phase) % self.interval == 0

    def is_update(self, step: int) -> bool:
        """Whether the topology changes at the end of optimizer step number ``step`` (1-based)."""
        total = self.total
        if total is not None and self.final == "always" and step == total:
            return True
        if total is not None and self.final == "never" and step >= total:
            return False
        return step - self.offset in self.at or self._periodic(step - self.offset)

    def steps(self, total: int) -> list[int]:
        """All update steps up to ``total`` (the run's last step for ``final``), sorted."""
        out = {a + self.offset for a in self.at}
        if self.interval is not None:
            last = total - self.offset if self.end is None else min(total - self.offset, self.end)
            first = self.start + 1 + (self._phase - self.start - 1) % self.interval
            out.update(s + self.offset for s in range(first, last + 1, self.interval))
        if self.final == "always":
            out.add(total)
        bound = total - 1 if self.final == "never" else total
        return sorted(s for s in out if s <= bound)

    def latest(self, step: int) -> int | None:
        """The last update step at or before ``step`` (``None``: none yet)."""
        total, shift = self.total, self.offset
        bound = step if total is None or self.final != "never" else min(step, total - 1)
        found = [a + shift for a in self.at if a + shift <= bound]
        if total is not None and self.final == "always" and total <= step:
            found.append(total)
        last = bound - shift if self.end is None else min(bound - shift, self.end)
        if self.interval is not None and last > self.start:
            periodic = last - (last - self._phase) % self.interval
            if periodic > self.start:
                found.append(periodic + shift)
        return max(found, default=None)


class Ramp(Protocol):
    """How much sparsity at a step: ``at(step)``, a pure function of the optimizer step."""

    def at(self, step: int) -> float:
        """The planned global sparsity after ``step`` optimizer steps."""
        ...


@dataclass(frozen=True)
class ConstantRamp:
    """The same sparsity at every step."""

    value: float

    def at(self, step: int) -> float:
        """``value``."""
        return self.value


@dataclass(frozen=True)
class StepRamp:
    """``initial`` before step ``step``, ``final`` from it on (a one-shot prune)."""

    final: float
    step: int
    initial: float = 0.0

    def at(self, step: int) -> float:
        """``final`` from ``self.step`` on, else ``initial``."""
        return self.final if step >= self.step else self.initial


@dataclass(frozen=True)
class PolynomialRamp:
    """Zhu & Gupta's gradual ramp (:func:`polynomial`); ``power=3`` is GMP's and ST-3's cubic."""

    initial: float
    final: float
    start: int
    end: int
    power: float = 3.0

    def __post_init__(self) -> None:
        _check_window(self.start, self.end)

    def at(self, step: int) -> float:
        """:func:`polynomial` at ``step``."""
        return polynomial(
            step,
            initial=self.initial,
            final=self.final,
            start=self.start,
            end=self.end,
            power=self.power,
        )


@dataclass(frozen=True)
class SigmoidRamp:
    """OptG's per-epoch ramp s(e) = target · σ(β(e − E/2)), e = step // steps_per_epoch.

    The last ``final_epochs`` epochs are at ``target`` (a short-run option; 0: as released).
    """

    target: float
    epochs: int
    steps_per_epoch: int
    beta: float = 1.0
    final_epochs: int = 0

    def fraction(self, epoch: int) -> float:
        """r(e) = σ(β(e − E/2)), or 1 in the last ``final_epochs`` epochs."""
        if epoch >= self.epochs - self.final_epochs:
            return 1.0
        return _logistic(self.beta * (epoch - self.epochs / 2))

    def at(self, step: int) -> float:
        """``target · r(step // steps_per_epoch)``."""
        return self.target * self.fraction(step // self.steps_per_epoch)


def _logistic(x: float) -> float:
    """Overflow-free logistic function (β·E can be large)."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


@dataclass(frozen=True)
class Schedule:
    """A method's schedule: how much sparsity at a step, and when the mask changes.

    A method builds one from its options and stores it as ``method.schedule``; the hooks then
    only ask :meth:`is_update` and :meth:`sparsity_at`.

    Attributes:
        ramp: The sparsity at a step.
        updates: The update cadences; a step is an update step if it is one of any.
        held: The sparsity changes only at updates: at step ``t`` it is the ramp's value at the
            latest update at or before ``t`` (step 0, the mask set at attach, if none); OptG's
            mask holds its epoch's sparsity until the next re-selection.

    >>> s = Schedule(PolynomialRamp(0.0, 0.8, 0, 100), (UpdateSchedule(25, end=100),))
    >>> round(s.sparsity_at(50), 6), s.update_steps(100), s.is_update(30)
    (0.7, [25, 50, 75, 100], False)
    """

    ramp: Ramp
    updates: tuple[UpdateSchedule, ...] = ()
    held: bool = False

    def sparsity_at(self, step: int) -> float:
        """Planned global sparsity after ``step`` optimizer steps."""
        if self.held:
            found = [u for c in self.updates if (u := c.latest(step)) is not None]
            step = max(found, default=0)
        return self.ramp.at(step)

    def is_update(self, step: int) -> bool:
        """Whether the hooks of optimizer step ``step`` (1-based) may change a mask."""
        return any(c.is_update(step) for c in self.updates)

    def update_steps(self, total: int) -> list[int]:
        """Steps at whose end the topology changes, in a run of ``total`` steps."""
        return sorted({s for c in self.updates for s in c.steps(total)})
