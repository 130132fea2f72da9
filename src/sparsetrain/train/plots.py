"""PNG plots of a run directory and of a comparison, drawn from the CSV files alone.

matplotlib is imported lazily (an optional dependency: ``pip install 'sparsetrain[plot]'``) and
without ``pyplot``, so no GUI backend or global figure state is touched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sparsetrain.train.metrics import read_csv

MISSING = "plots skipped: matplotlib is not installed (pip install 'sparsetrain[plot]')"


def _figure(width: float = 6.4, height: float = 4.0) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _floats(rows: Sequence[Mapping[str, str]], key: str) -> list[float]:
    return [float(r[key]) if r.get(key) not in (None, "", "nan") else float("nan") for r in rows]


def plot_run(run_dir: str | Path) -> str | None:
    """Write ``plots/sparsity_layers.png``, ``sparsity_steps.png`` and ``accuracy.png``.

    Returns:
        None, or a one-line note when matplotlib is missing.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return MISSING
    d = Path(run_dir)
    out = d / "plots"
    out.mkdir(exist_ok=True)
    layers = [r for r in read_csv(d / "sparsity.csv") if r["name"] != "global"]
    if layers:
        fig = _figure(max(6.4, 0.5 * len(layers) + 2), 4.0)
        ax = fig.add_subplot()
        xs = range(len(layers))
        ax.bar([x - 0.2 for x in xs], _floats(layers, "target_sparsity"), 0.4, label="target")
        ax.bar([x + 0.2 for x in xs], _floats(layers, "sparsity"), 0.4, label="actual")
        ax.set_xticks(list(xs), [r["name"] for r in layers], rotation=60, ha="right", fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_ylabel("sparsity")
        ax.set_title("per-layer sparsity")
        ax.legend()
        fig.savefig(out / "sparsity_layers.png", dpi=100)
    steps = read_csv(d / "steps.csv")
    if steps:
        fig = _figure()
        ax = fig.add_subplot()
        x = _floats(steps, "step")
        ax.plot(x, _floats(steps, "sparsity"), label="actual")
        ax.plot(x, _floats(steps, "planned_sparsity"), "--", label="planned")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("global sparsity")
        ax.set_ylim(0, 1)
        ax.legend()
        fig.savefig(out / "sparsity_steps.png", dpi=100)
    epochs = read_csv(d / "metrics.csv")
    if epochs:
        fig = _figure()
        ax = fig.add_subplot()
        x = _floats(epochs, "epoch")
        for key in ("train_acc", "val_acc", "test_acc"):
            ax.plot(x, _floats(epochs, key), marker="o", label=key.removesuffix("_acc"))
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy")
        ax.legend()
        fig.savefig(out / "accuracy.png", dpi=100)
    return None


def plot_accuracy_vs_sparsity(groups: Sequence[Mapping[str, Any]], path: str | Path) -> str | None:
    """One line per method: mean test accuracy (± std error bars) against density (log x).

    Methods with only sparsity-0 rows (dense) are drawn as a horizontal reference line.

    Args:
        groups: Rows with ``method``, ``sparsity``, ``acc_mean`` and ``acc_std``.
        path: PNG file to write.

    Returns:
        None, or a one-line note when matplotlib is missing.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return MISSING
    fig = _figure(8.0, 4.5)  # constrained layout keeps the outside legend in the figure
    ax = fig.add_subplot()
    styles = [(m, ls) for ls in ("-", "--", ":") for m in "osD^vP*Xh"]  # 27 distinct series
    methods = sorted({g["method"] for g in groups})
    for i, method in enumerate(methods):
        rows = sorted((g for g in groups if g["method"] == method), key=lambda g: g["sparsity"])
        if all(g["sparsity"] == 0 for g in rows):  # dense (or an un-tuned emergent run): a line
            ax.axhline(rows[0]["acc_mean"], color="0.4", ls="--", lw=1, label=f"{method} (s=0)")
            continue
        marker, ls = styles[i % len(styles)]
        ax.errorbar(
            [1.0 - g["sparsity"] for g in rows],
            [g["acc_mean"] for g in rows],
            yerr=[g["acc_std"] for g in rows],
            marker=marker,
            ls=ls,
            capsize=3,
            label=method,
        )
    ticks = sorted({1.0 - g["sparsity"] for g in groups if g["sparsity"] > 0})
    if len(ticks) == 1:  # one grid point: give the log axis some room
        ax.set_xlim(ticks[0] / 1.5, ticks[0] * 1.5)
    ax.set_xscale("log")
    ax.set_xticks(ticks, [f"{d:.3g}\n({1 - d:.3g})" for d in ticks])
    ax.minorticks_off()
    ax.set_xlabel("density (sparsity), log scale")
    ax.set_ylabel("test accuracy")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.savefig(path, dpi=100)
    return None
