"""PNG plots of a run directory and of a report, drawn from the run's files alone.

Every figure has a title naming the method, sparsity, model and data; accuracies are in
percent everywhere. matplotlib is imported lazily (an optional dependency:
``pip install 'sparsetrain[plot]'``) and without ``pyplot``, so no GUI backend or global
figure state is touched.
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sparsetrain.train.metrics import read_csv
from sparsetrain.train.stats import metric_of

MISSING = "plots skipped: matplotlib is not installed (pip install 'sparsetrain[plot]')"

# Colour x marker: series i gets COLORS[i % 10] and MARKERS[i % 7], so the first 70 series are
# pairwise distinct in both together (10 and 7 are coprime); line styles change every 10.
COLORS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
LINESTYLES = ("-", "--", ":", "-.")


def series_style(i: int) -> tuple[str, str, str]:
    """(colour, marker, line style) of the ``i``-th series of a plot."""
    return COLORS[i % len(COLORS)], MARKERS[i % len(MARKERS)], LINESTYLES[(i // 10) % 4]


def _figure(width: float = 6.4, height: float = 4.0) -> Any:
    from matplotlib.figure import Figure  # optional: the `plot` extra

    return Figure(figsize=(width, height), layout="constrained")


def _floats(rows: Sequence[Mapping[str, str]], key: str) -> list[float]:
    return [float(r[key]) if r.get(key) not in (None, "", "nan") else float("nan") for r in rows]


# --------------------------------------------------------------------------- one run


def run_title(summary_or_config: Mapping[str, Any]) -> str:
    """The title "<method>, sparsity <s>, <model> on <data>" of a summary or resolved config."""
    cfg = summary_or_config.get("config", summary_or_config)
    method = cfg.get("method", {}) if isinstance(cfg, Mapping) else {}
    train = cfg.get("train", {}) if isinstance(cfg, Mapping) else {}
    name = train.get("label") or method.get("name", "?")
    s = train.get("report_sparsity")
    if s is None:
        s = method.get("sparsity", method.get("target_sparsity"))
    if method.get("name") == "dense":
        sparsity = "no pruning"
    elif isinstance(s, int | float) and s > 0:
        sparsity = f"sparsity {s:g}"
    else:
        sparsity = "emergent sparsity"
    model = cfg.get("model", {}).get("name", "?") if isinstance(cfg, Mapping) else "?"
    data = cfg.get("data", {}).get("name", "?") if isinstance(cfg, Mapping) else "?"
    return f"{name}, {sparsity}, {model} on {data}"


def _run_info(d: Path) -> tuple[str, int | None, str]:
    """Title, headline epoch and its rule, from ``summary.json`` or ``config.yaml``."""
    try:
        summary = json.loads((d / "summary.json").read_text())
        head = summary["headline"]
        return run_title(summary), int(head["epoch"]), str(head["select"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        import yaml  # optional: the `cli` extra

        cfg = yaml.safe_load((d / "config.yaml").read_text())
        return run_title(cfg), None, ""
    except Exception:  # no config, no yaml, unreadable: an untitled run
        return d.name, None, ""


def plot_run(run_dir: str | Path, summary: Mapping[str, Any] | None = None) -> str | None:
    """Write the run's plots into ``RUN_DIR/plots``.

    ``sparsity_layers.png`` (per-layer target vs actual), ``sparsity_steps.png`` (global
    sparsity by step, topology updates marked), ``accuracy.png`` (loss and accuracy (%) by
    epoch, the headline epoch marked) and, for runs whose ``topology.csv`` records churn (the
    DST family, GraNet, OptG), ``churn.png``.

    Args:
        run_dir: The run directory.
        summary: The run's summary (title and headline epoch); default: read ``summary.json``
            or, for an unfinished run, ``config.yaml``.

    Returns:
        None, or a one-line note when matplotlib is missing.
    """
    try:
        import matplotlib  # noqa: F401  (optional: the `plot` extra)
    except ImportError:
        return MISSING
    d = Path(run_dir)
    if summary is not None:
        head = summary["headline"]
        title, best, select = run_title(summary), int(head["epoch"]), str(head["select"])
    else:
        title, best, select = _run_info(d)
    out = d / "plots"
    out.mkdir(exist_ok=True)
    updates = read_csv(d / "topology.csv")
    layers = [r for r in read_csv(d / "sparsity.csv") if r["name"] != "global"]
    if layers:
        layers_figure(layers, title).savefig(out / "sparsity_layers.png", dpi=100)
    steps = read_csv(d / "steps.csv")
    if steps:
        steps_figure(steps, updates, title).savefig(out / "sparsity_steps.png", dpi=100)
    epochs = read_csv(d / "metrics.csv")
    if epochs:
        curves_figure(epochs, title, best, select).savefig(out / "accuracy.png", dpi=100)
    if any(r.get("churn") not in (None, "") for r in updates):
        churn_figure(updates, title).savefig(out / "churn.png", dpi=100)
    return None


def layers_figure(layers: Sequence[Mapping[str, str]], title: str) -> Any:
    """Per-layer target vs actual sparsity (bars)."""
    fig = _figure(max(6.4, 0.5 * len(layers) + 2), 4.0)
    ax = fig.add_subplot()
    xs = range(len(layers))
    ax.bar([x - 0.2 for x in xs], _floats(layers, "target_sparsity"), 0.4, label="target")
    ax.bar([x + 0.2 for x in xs], _floats(layers, "sparsity"), 0.4, label="actual")
    ax.set_xticks(list(xs), [r["name"] for r in layers], rotation=60, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("sparsity")
    ax.legend()
    fig.suptitle(f"{title}: per-layer sparsity of the final masks", fontsize="medium")
    return fig


def _mark_updates(ax: Any, steps: Sequence[float], label: str = "topology update") -> None:
    """A rug of short ticks at the bottom of ``ax`` at each update step (one artist)."""
    if steps:
        ax.vlines(
            steps, 0, 0.05, transform=ax.get_xaxis_transform(), colors="0.3", lw=0.8, label=label
        )


def steps_figure(
    steps: Sequence[Mapping[str, str]], updates: Sequence[Mapping[str, str]], title: str
) -> Any:
    """Global sparsity (actual and planned) by optimizer step, topology updates marked."""
    fig = _figure()
    ax = fig.add_subplot()
    x = _floats(steps, "step")
    ax.plot(x, _floats(steps, "sparsity"), label="actual")
    ax.plot(x, _floats(steps, "planned_sparsity"), "--", label="planned")
    _mark_updates(ax, sorted({float(r["step"]) for r in updates if r.get("step")}))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("global sparsity")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.suptitle(f"{title}: sparsity by step", fontsize="medium")
    return fig


def curves_figure(
    epochs: Sequence[Mapping[str, str]], title: str, best: int | None, select: str = ""
) -> Any:
    """Loss (left) and accuracy in % (right) by epoch; the headline epoch marked on both."""
    fig = _figure(10.0, 4.0)
    loss_ax, acc_ax = fig.subplots(1, 2)
    x = _floats(epochs, "epoch")
    for i, split in enumerate(("train", "val", "test")):
        color, marker, _ = series_style(i)
        loss = _floats(epochs, f"{split}_loss")
        acc = [100 * a for a in _floats(epochs, f"{split}_acc")]
        if all(math.isnan(v) for v in acc):
            continue  # no validation split
        loss_ax.plot(x, loss, marker=marker, color=color, label=split)
        acc_ax.plot(x, acc, marker=marker, color=color, label=split)
    if best is not None:
        rule = {"best_val": "best validation", "final": "last epoch"}.get(select, select)
        for ax in (loss_ax, acc_ax):
            ax.axvline(best, color="0.3", ls=":", lw=1, label=f"headline epoch {best} ({rule})")
        row = next((r for r in epochs if int(float(r["epoch"])) == best), None)
        if row is not None and row.get("test_acc") not in (None, ""):
            acc_ax.plot(
                [best], [100 * float(row["test_acc"])], "*", color="k", ms=12, label="headline"
            )
    loss_ax.set_ylabel("cross-entropy loss")
    acc_ax.set_ylabel("accuracy (%)")
    for ax in (loss_ax, acc_ax):
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
    loss_ax.legend(fontsize="small")
    acc_ax.legend(fontsize="small")
    fig.suptitle(f"{title}: loss and accuracy by epoch", fontsize="medium")
    return fig


def churn_figure(updates: Sequence[Mapping[str, str]], title: str) -> Any:
    """Churn (fraction of the live weights replaced) at each topology update."""
    fig = _figure()
    ax = fig.add_subplot()
    rows = [r for r in updates if r.get("churn") not in (None, "")]
    x = _floats(rows, "step")
    ax.plot(x, _floats(rows, "churn"), marker="o", ms=3, label="churn (regrown / active)")
    if any(r.get("drop_fraction") not in (None, "") for r in rows):
        ax.plot(x, _floats(rows, "drop_fraction"), "--", label="scheduled drop fraction")
    _mark_updates(ax, x)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("fraction of active weights")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.suptitle(f"{title}: topology churn", fontsize="medium")
    return fig


# --------------------------------------------------------------------------- a report


def _wrap(label: str, width: int = 48) -> str:
    """A legend entry on lines of at most ``width`` characters (long variant labels)."""
    return "\n".join(textwrap.wrap(label, width, break_on_hyphens=False)) or label


def accuracy_figure(rows: Sequence[Mapping[str, Any]], title: str | None = None) -> Any:
    """One series per report series: mean test accuracy (%) against actual density (log x).

    Points sit at the mean density the runs reached (not the requested one); error bars are
    the sample std (none for one run). Series at sparsity 0 only (dense) are horizontal lines.
    Points at density 0 cannot be drawn on the log axis: the legend says so.
    """
    m = metric_of(rows)
    fig = _figure(8.5, 4.8)  # constrained layout keeps the outside legend in the figure
    ax = fig.add_subplot()
    series = list(dict.fromkeys(r.get("series", r["method"]) for r in rows))
    for i, name in enumerate(series):
        color, marker, ls = series_style(i)
        mine = sorted(
            (r for r in rows if r.get("series", r["method"]) == name),
            key=lambda r: r["actual_sparsity"],
        )
        if all(r["sparsity"] == 0 and r["actual_sparsity"] == 0 for r in mine):
            label = _wrap(name if name == "dense" else f"{name} (sparsity 0)")
            ax.axhline(m.scale * mine[0]["acc_mean"], color=color, ls="--", lw=1.2, label=label)
            continue
        drawn = [r for r in mine if r["actual_sparsity"] < 1.0]
        hidden = len(mine) - len(drawn)
        label = _wrap(name + (f" ({hidden} at density 0 not drawn)" if hidden else ""))
        ax.errorbar(
            [1.0 - r["actual_sparsity"] for r in drawn],
            [m.scale * r["acc_mean"] for r in drawn],
            yerr=[m.scale * (r.get("acc_std") or 0.0) for r in drawn],
            color=color,
            marker=marker,
            ls=ls,
            capsize=3,
            label=label,
        )
    ticks = sorted({1.0 - r["sparsity"] for r in rows if r["sparsity"] > 0})
    xs = [1.0 - r["actual_sparsity"] for r in rows if 0 < r["actual_sparsity"] < 1]
    span = [*ticks, *xs]
    if span:
        ax.set_xlim(min(span) / 1.3, max(span) * 1.3)
    ax.set_xscale("log")
    if ticks:
        ax.set_xticks(ticks, [f"{d:.3g}\n({1 - d:.3g})" for d in ticks])
    ax.minorticks_off()
    ax.set_xlabel("density (sparsity) reached, log scale")
    ax.set_ylabel(m.label.replace("acc", "accuracy"))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    if title is None:
        places = sorted({f"{r.get('model')} on {r.get('dataset')}" for r in rows})
        title = "; ".join(places) if len(places) <= 2 else f"{len(places)} model/data settings"
    what = m.name.replace("acc", "accuracy")
    fig.suptitle(f"{title}: {what} (mean ± std over seeds)", fontsize="medium")
    return fig


def plot_accuracy_vs_sparsity(rows: Sequence[Mapping[str, Any]], path: str | Path) -> str | None:
    """Write :func:`accuracy_figure` of report rows to ``path`` (PNG).

    Args:
        rows: Report rows with ``series``, ``sparsity``, ``actual_sparsity``, ``acc_mean``,
            ``acc_std``, ``model`` and ``dataset``.
        path: PNG file to write.

    Returns:
        None, or a one-line note when matplotlib is missing.
    """
    try:
        import matplotlib  # noqa: F401  (optional: the `plot` extra)
    except ImportError:
        return MISSING
    accuracy_figure(rows).savefig(path, dpi=100, metadata={"Software": "sparsetrain report"})
    return None
