"""Aggregate finished runs (``summary.json``) into a mean ± std table over seeds.

Runs are grouped by (method, requested sparsity). The headline accuracy is the test accuracy
``summary.json`` reports under ``headline`` (best-validation epoch by default, else final).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def find_summaries(paths: Sequence[str | Path]) -> list[tuple[Path, dict[str, Any]]]:
    """Every ``summary.json`` in ``paths`` (run directories, or folders searched recursively).

    Raises:
        ValueError: A path does not exist, a summary is unreadable, or none is found.
    """
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise ValueError(f"no such run directory: {p}")
        found += (
            [p / "summary.json"]
            if (p / "summary.json").is_file()
            else sorted(p.rglob("summary.json"))
        )
    if not found:
        raise ValueError(f"no finished runs (summary.json) under {', '.join(map(str, paths))}")
    out = []
    for f in dict.fromkeys(found):
        try:
            out.append((f.parent, json.loads(f.read_text())))
        except (OSError, ValueError) as exc:
            raise ValueError(f"unreadable {f}: {exc}") from None
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(summaries: Sequence[tuple[Path, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per (method, sparsity): n, seeds, headline/final test accuracy, sparsity, FLOPs.

    Standard deviations are sample standard deviations over seeds (0 for a single run).
    """
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for _, s in summaries:
        key = (str(s["method"]), float(s["sparsity"]["requested"]))
        groups.setdefault(key, []).append(s)
    rows = []
    for (method, sparsity), items in sorted(groups.items()):
        acc = _mean_std([s["headline"]["test_acc"] for s in items])
        final = _mean_std([s["final"]["test_acc"] for s in items])
        actual = _mean_std([s["sparsity"]["actual"] for s in items])
        flops = _mean_std([s["flops"]["ratio"] for s in items])
        rows.append(
            {
                "method": method,
                "sparsity": sparsity,
                "n": len(items),
                "seeds": sorted(s["seed"] for s in items),
                "select": items[0]["headline"]["select"],
                "acc_mean": acc[0],
                "acc_std": acc[1],
                "final_mean": final[0],
                "final_std": final[1],
                "actual_sparsity": actual[0],
                "flops_ratio": flops[0],
                "missed": sum(1 for s in items if not s["sparsity"]["target_met"]),
            }
        )
    return rows


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The aggregated rows as a Markdown table (accuracies in percent)."""
    head = (
        "| method | sparsity | n | test acc (%) | final test acc (%) | actual sparsity "
        "| FLOPs vs dense | targets missed |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['sparsity']:g} | {r['n']} "
            f"| {100 * r['acc_mean']:.2f} ± {100 * r['acc_std']:.2f} "
            f"| {100 * r['final_mean']:.2f} ± {100 * r['final_std']:.2f} "
            f"| {r['actual_sparsity']:.4f} | {r['flops_ratio']:.3f} | {r['missed']} |"
        )
    select = {r["select"] for r in rows}
    note = (
        "test acc: at the best-validation epoch"
        if select == {"best_val"}
        else "test acc: per run's train.select (" + ", ".join(sorted(select)) + ")"
    )
    return "\n".join(lines) + f"\n\nMean ± sample std over seeds; {note}.\n"


def pivot_table(rows: Sequence[dict[str, Any]]) -> str:
    """Methods × sparsities: test acc (%) mean ± std, then actual sparsity / FLOPs ratio.

    Rows at sparsity 0 (dense, emergent methods run once) get a single cell in the first
    column. Methods keep their order of first appearance in ``rows``.
    """
    grid = sorted({float(r["sparsity"]) for r in rows if r["sparsity"] > 0})
    cols = grid or [0.0]
    by = {(r["method"], float(r["sparsity"])): r for r in rows}
    lines = [
        "| method | " + " | ".join(f"sparsity {s:g}" for s in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for method in dict.fromkeys(r["method"] for r in rows):
        cells = []
        for i, s in enumerate(cols):
            r = by.get((method, s)) or (by.get((method, 0.0)) if i == 0 else None)
            cells.append(
                "—"
                if r is None
                else f"{100 * r['acc_mean']:.2f} ± {100 * r['acc_std']:.2f} "
                f"<sub>{r['actual_sparsity']:.3f} / {r['flops_ratio']:.3f}</sub>"
            )
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return (
        "\n".join(lines) + "\n\nCells: test acc (%) mean ± std, then <sub>actual sparsity / FLOPs "
        "vs dense</sub> of the final masks. A run at sparsity 0 shows in the first column.\n"
    )


def write_report(
    paths: Sequence[str | Path], out: str | Path
) -> tuple[str, list[Path], str | None]:
    """Write ``report.md``, ``report.json`` and ``accuracy_vs_sparsity.png`` into ``out``.

    Returns:
        The Markdown table, the files written, and a note if the plot was skipped.
    """
    from sparsetrain.train.metrics import write_json, write_text
    from sparsetrain.train.plots import plot_accuracy_vs_sparsity

    summaries = find_summaries(paths)
    rows = aggregate(summaries)
    table = markdown_table(rows)
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    runs = "\n".join(f"- {p}" for p, _ in summaries)
    pivot = pivot_table(rows)
    write_text(
        d / "report.md",
        f"# sparsetrain report\n\n{table}\n## By sparsity\n\n{pivot}\nRuns:\n\n{runs}\n",
    )
    write_json(d / "report.json", rows)
    files = [d / "report.md", d / "report.json"]
    note = plot_accuracy_vs_sparsity(rows, d / "accuracy_vs_sparsity.png")
    if note is None:
        files.append(d / "accuracy_vs_sparsity.png")
    return table, files, note
