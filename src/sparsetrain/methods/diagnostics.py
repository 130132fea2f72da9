"""What a method tells about itself: the plan of its schedule, the end-of-run warnings, the report.

Pure functions of a method's schedule, targets and history, so the base class only forwards to
them (``method.plan()``, ``method.report()``, ``method.finish()``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sparsetrain.masking.targets import Target
from sparsetrain.report import LayerRow, SparsityReport
from sparsetrain.schedules import Schedule


class SparsityTargetWarning(UserWarning):
    """Emitted when training ends with a tensor off its sparsity target."""


class ScheduleWarning(UserWarning):
    """Emitted when a run and its method's schedule do not fit.

    By ``finish()`` when training ended before the schedule did, and by ``attach()`` when the
    schedule does not suit the run's length (see ``schedule_notes``).
    """


@dataclass(frozen=True)
class Plan:
    """A dry run of a method's schedule: sparsity along the way and the update steps."""

    method: str
    total_steps: int
    curve: list[tuple[int, float]]
    update_steps: list[int]
    notes: tuple[str, ...] = ()

    @classmethod
    def of(
        cls,
        method: str,
        schedule: Schedule,
        total: int,
        points: int = 11,
        notes: Sequence[str] = (),
    ) -> Plan:
        """The plan of ``schedule`` over ``total`` steps, the curve at ``points`` steps."""
        n = max(2, points)
        steps = sorted({math.floor(i * total / (n - 1)) for i in range(n)})
        curve = [(s, schedule.sparsity_at(s)) for s in steps]
        return cls(method, total, curve, schedule.update_steps(total), tuple(notes))

    def __str__(self) -> str:
        lines = [
            f"plan for {self.method!r} over {self.total_steps} optimizer steps",
            "step  sparsity",
        ]
        lines += [f"{s:>6d}  {v:.4f}" for s, v in self.curve]
        n, steps = len(self.update_steps), list(map(str, self.update_steps))
        shown = ", ".join(steps if n <= 12 else [*steps[:10], "...", *steps[-2:]])
        lines.append(f"topology updates: {n}" + (f" at steps {shown}" if n else ""))
        if n:
            lines.append(f"last topology update: step {self.update_steps[-1]}")
        lines += [f"warning: {note}" for note in self.notes]
        return "\n".join(lines)


def short_run_message(name: str, schedule: Schedule, step: int, total: int | None) -> str | None:
    """Why a run that ended after ``step`` of ``total`` steps missed its schedule, if it did."""
    if total is None or step >= total:
        return None
    pending = [s for s in schedule.update_steps(total) if s > step]
    now, planned = schedule.sparsity_at(step), schedule.sparsity_at(total)
    if not pending and now == planned:
        return None
    parts = [
        f"{name}: training ended after {step} optimizer steps, before the "
        f"schedule's total_steps={total}"
    ]
    if pending:
        parts.append(
            f"{len(pending)} planned topology update(s) did not run (the last at step "
            f"{pending[-1]}; see method.plan())"
        )
    if now != planned:
        parts.append(f"the schedule is at sparsity {now:.4f} of {planned:.4f}")
    return (
        "; ".join(parts) + ". total_steps counts optimizer steps actually taken: steps "
        "skipped by GradScaler or merged by gradient accumulation do not count"
    )


def build_report(
    name: str,
    step: int,
    targets: Sequence[Target],
    counts: dict[str, int] | None,
    global_target: int | None,
    history: Sequence[dict[str, Any]],
) -> SparsityReport:
    """Per-tensor target vs actual sparsity, the global row, mask memory and churn."""
    rows = [
        LayerRow(t.name, t.shape, t.numel, t.nnz, None if counts is None else counts[t.name])
        for t in targets
    ]
    return SparsityReport(
        method=name,
        step=step,
        rows=rows,
        global_target_nnz=global_target,
        mask_bytes=sum(t.mask.numel() * t.mask.element_size() for t in targets),
        churn=[h for h in history if "churn" in h],
    )
