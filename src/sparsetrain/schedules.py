"""Schedules, all counted in optimizer steps (the number of ``optimizer.step()`` calls done).

Pure functions of the step, plus :class:`UpdateSchedule` for the topology-update cadence. Epoch
based rules (OptG's sigmoid) take ``steps_per_epoch`` and evaluate at ``step // steps_per_epoch``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


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

    >>> polynomial(50, initial=0.0, final=0.8, start=0, end=100)
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


@dataclass(frozen=True)
class UpdateSchedule:
    """Topology updates every ``interval`` steps, for steps in ``(start, end]``.

    Attributes:
        interval: Steps between updates (ΔT), > 0.
        start: No update at or before this step.
        end: No update after this step (``None``: no end).
    """

    interval: int
    start: int = 0
    end: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.interval, bool) or not isinstance(self.interval, int):
            raise TypeError(f"update interval must be an int, got {self.interval!r}")
        if self.interval <= 0:
            raise ValueError(f"update interval must be > 0, got {self.interval}")
        if self.start < 0:
            raise ValueError(f"update start must be >= 0, got {self.start}")
        if self.end is not None:
            _check_window(self.start, self.end)

    def is_update(self, step: int) -> bool:
        """Whether the topology changes at the end of optimizer step number ``step`` (1-based)."""
        if step <= self.start or (self.end is not None and step > self.end):
            return False
        return (step - self.start) % self.interval == 0

    def steps(self, total: int) -> list[int]:
        """All update steps up to ``total``."""
        last = total if self.end is None else min(total, self.end)
        return list(range(self.start + self.interval, last + 1, self.interval))
