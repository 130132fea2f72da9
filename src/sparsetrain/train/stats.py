"""Statistics of the report: its metrics, Student's t quantiles, mean and std, paired intervals."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Metric:
    """A number of ``summary.json``'s headline epoch that a report can tabulate.

    Attributes:
        key: Field of ``headline`` / ``final`` (``test_acc``, ``test_loss``, ...).
        label: Column title.
        scale: Factor for display (100: a fraction shown in percent).
        places: Decimals shown.
        unit: Unit of a paired difference (``pp``: percentage points).
        higher_is_better: Whether a positive difference is an improvement.
    """

    key: str
    label: str
    scale: float
    places: int
    unit: str
    higher_is_better: bool

    @property
    def name(self) -> str:
        """The label without its unit (``"test acc"``)."""
        return self.label.split(" (")[0]

    def show(self, x: float) -> str:
        """``x`` as displayed (scaled, rounded)."""
        return f"{self.scale * x:.{self.places}f}"

    def signed(self, x: float) -> str:
        """A difference ``x`` as displayed, with its sign."""
        return f"{self.scale * x:+.{self.places}f}"


METRICS: dict[str, Metric] = {
    "test_acc": Metric("test_acc", "test acc (%)", 100.0, 2, "pp", True),
    "test_loss": Metric("test_loss", "test loss (nats)", 1.0, 4, "nats", False),
    "val_acc": Metric("val_acc", "val acc (%)", 100.0, 2, "pp", True),
    "val_loss": Metric("val_loss", "val loss (nats)", 1.0, 4, "nats", False),
}
"""What ``sparsetrain report --metric`` accepts. A language model's loss is per token and its
accuracy the fraction of next tokens predicted right."""


def metric_of(rows: Sequence[Mapping[str, Any]]) -> Metric:
    """The metric report rows hold (test accuracy for rows of reports older than the key)."""
    return get_metric(rows[0].get("metric", "test_acc") if rows else "test_acc")


def get_metric(name: str) -> Metric:
    """The :class:`Metric` named ``name``; a ValueError names the valid ones."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; valid: {', '.join(METRICS)}")
    return METRICS[name]


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t distribution with ``df`` degrees of freedom.

    Uses ``scipy.stats.t.ppf`` when SciPy is installed; otherwise inverts the exact
    closed-form CDF for integer ``df`` (Abramowitz & Stegun 26.7.3-4) by bisection.

    Raises:
        ValueError: ``p`` not in (0, 1) or ``df < 1``.
    """
    if not 0.0 < p < 1.0 or df < 1:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df >= 1, got p={p}, df={df}")
    try:
        from scipy.stats import t as student_t  # optional (not a dependency)
    except ImportError:
        return _t_quantile_exact(p, df)
    return float(student_t.ppf(p, df))


def _t_central(x: float, df: int) -> float:
    """P(|T| <= x) for T ~ Student t with integer ``df`` (exact finite series)."""
    theta = math.atan(x / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2:  # odd: (2/π)(θ + sinθ cosθ (1 + 2/3 cos²θ + 2·4/(3·5) cos⁴θ + ...))
        term, total = 1.0, 1.0 if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        return 2.0 / math.pi * (theta + s * math.cos(theta) * total)
    term, total = 1.0, 1.0  # even: sinθ (1 + 1/2 cos²θ + 1·3/(2·4) cos⁴θ + ...)
    for k in range(1, df // 2):
        term *= c2 * (2 * k - 1) / (2 * k)
        total += term
    return s * total


def _t_quantile_exact(p: float, df: int) -> float:
    if p == 0.5:
        return 0.0
    target = abs(2.0 * p - 1.0)  # P(|T| <= x) for the upper quantile
    lo, hi = 0.0, 1.0
    while _t_central(hi, df) < target:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _t_central(mid, df) < target:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * max(1.0, hi):
            break
    x = 0.5 * (lo + hi)
    return x if p > 0.5 else -x


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (``None`` for one value; NaN mean for none)."""
    if not values:
        return math.nan, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def paired_interval(diffs: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """Mean of paired differences and its ``level`` interval (t, ``len - 1`` dof).

    One pair has no interval (``low``/``high`` None).
    """
    n = len(diffs)
    mean = statistics.fmean(diffs) if n else math.nan
    if n < 2:
        return {"n": n, "mean": mean, "std": None, "low": None, "high": None, "t": None}
    sd = statistics.stdev(diffs)
    t = t_quantile(0.5 + level / 2.0, n - 1)
    half = t * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "std": sd, "low": mean - half, "high": mean + half, "t": t}
