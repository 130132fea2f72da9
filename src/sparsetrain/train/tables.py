"""The report's Markdown tables: rows, series × sparsities, paired differences, gaps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sparsetrain.train.aggregate import Unfinished, differing
from sparsetrain.train.stats import Metric, get_metric, metric_of


def _acc(m: Metric, mean: float, std: float | None, n: int) -> str:
    return f"{m.show(mean)} (n=1)" if n == 1 or std is None else f"{m.show(mean)} ± {m.show(std)}"


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The aggregated rows as a Markdown table (accuracies in percent)."""
    m = metric_of(rows)
    places = {(r.get("model"), r.get("dataset")) for r in rows}
    where = len(places) > 1
    head = (
        f"| method | sparsity | n | seeds | {m.label} | final {m.label} | actual sparsity "
        "| FLOPs vs dense | targets missed |" + (" model / data |" if where else "")
    )
    lines = [head, "|---|---:|---:|---|---:|---:|---:|---:|---:|" + ("---|" if where else "")]
    for r in rows:
        lines.append(
            f"| {r['series']} | {r['sparsity']:g} | {r['n']} | {_seeds(r['seeds'])} "
            f"| {_acc(m, r['acc_mean'], r['acc_std'], r['n'])} "
            f"| {_acc(m, r['final_mean'], r['final_std'], r['n'])} "
            f"| {r['actual_sparsity']:.4f} | {r['flops_ratio']:.3f} | {r['missed']} |"
            + (f" {r.get('model')} / {r.get('dataset')} |" if where else "")
        )
    select = {r["select"] for r in rows}
    note = (
        f"{m.name}: at the best-validation epoch"
        if select == {"best_val"}
        else f"{m.name}: per run's train.select (" + ", ".join(sorted(select)) + ")"
    )
    return (
        "\n".join(lines) + f"\n\nMean ± sample std over the seeds of a row (n=1: a single run); "
        f"a row pools only runs whose configs differ in the seed alone; {note}.\n"
    )


def _seeds(seeds: Sequence[int]) -> str:
    return ",".join(map(str, seeds)) if seeds else "—"


def pivot_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Series × sparsities: test acc (%), then actual sparsity / FLOPs ratio.

    Rows at sparsity 0 (dense, emergent methods run once) get a single cell in the first
    column. Series keep their order of first appearance in ``rows``. A cell whose ``n``
    differs from the most common one says so.
    """
    m = metric_of(rows)
    grid = sorted({float(r["sparsity"]) for r in rows if r["sparsity"] > 0})
    cols = grid or [0.0]
    by = {(r.get("series", r["method"]), float(r["sparsity"])): r for r in rows}
    ns = [int(r.get("n", 0)) for r in rows]
    common = max(set(ns), key=ns.count) if ns else 0
    lines = [
        "| method | " + " | ".join(f"sparsity {s:g}" for s in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for series in dict.fromkeys(r.get("series", r["method"]) for r in rows):
        cells = []
        for i, s in enumerate(cols):
            r = by.get((series, s)) or (by.get((series, 0.0)) if i == 0 else None)
            if r is None:
                cells.append("—")
                continue
            n = int(r.get("n", common))
            acc = _acc(m, r["acc_mean"], r.get("acc_std"), n) + (
                f" (n={n})" if n != common and n != 1 and r.get("acc_std") is not None else ""
            )
            cells.append(f"{acc} <sub>{r['actual_sparsity']:.3f} / {r['flops_ratio']:.3f}</sub>")
        lines.append(f"| {series} | " + " | ".join(cells) + " |")
    return (
        "\n".join(lines) + f"\n\nCells: {m.label}, mean ± std over the row's seeds (n={common} "
        "unless shown; n=1: one run, no spread), then <sub>actual sparsity / FLOPs vs dense</sub> "
        "of the final masks. A run at sparsity 0 shows in the first column.\n"
    )


def paired_table(
    paired: Sequence[Mapping[str, Any]], baseline: str, metric: str = "test_acc"
) -> str:
    """The paired differences as Markdown (percentage points for accuracies)."""
    m = get_metric(metric)
    lines = [
        f"| method | baseline | pairs | seeds | difference ({m.unit}) | 95% interval ({m.unit}) | "
        "also differs in |",
        "|---|---|---:|---|---:|---:|---|",
    ]
    for p in paired:
        if p["baseline"] is None:
            lines.append(f"| {p['label']} | — | 0 | — | — | no baseline row at this sparsity | |")
            continue
        if not p["n"]:
            lines.append(f"| {p['label']} | {p['baseline']} | 0 | — | — | no common seed | |")
            continue
        ci = "n=1" if p["low"] is None else f"[{m.signed(p['low'])}, {m.signed(p['high'])}]"
        other = ", ".join(p.get("differs_in", [])) or ""
        lines.append(
            f"| {p['label']} | {p['baseline']} | {p['n']} | {_seeds(p['seeds'])} "
            f"| {m.signed(p['mean'])} | {ci} | {other} |"
        )
    return (
        "\n".join(lines) + f"\n\n{m.name.capitalize()} of each row minus "
        f"{baseline}'s ({'higher' if m.higher_is_better else 'lower'} is better), run by run "
        "on the seeds both have (same seed: same data split, order and initial draw where the "
        "configs allow); mean and 95% interval from the t distribution with pairs − 1 degrees "
        'of freedom. "also differs in": settings outside `method.*` that are not the '
        "baseline's (the difference is not the method's alone).\n"
    )


def gap_lines(rows: Sequence[Mapping[str, Any]], unfinished: Sequence[Unfinished]) -> list[str]:
    """Markdown lines for what the tables lack: unfinished runs, missing and repeated seeds."""
    lines: list[str] = []
    if unfinished:
        lines.append(f"Unfinished runs ({len(unfinished)}, not in the tables):\n")
        lines += [f"- {u.path}: {u.note}" for u in unfinished]
        lines.append("")
    seeds = sorted(set().union(*(r["seeds"] for r in rows))) if rows else []
    missing = [(r, [s for s in seeds if s not in r["seeds"]]) for r in rows]
    missing = [(r, m) for r, m in missing if m]
    if missing:
        lines.append("Rows without a run for every seed of the report:\n")
        lines += [f"- {r['label']}: no seed {_seeds(m)}" for r, m in missing]
        lines.append("")
    repeated = [r for r in rows if r["repeated_seeds"]]
    if repeated:
        lines.append("Rows with repeated seeds (same config and seed in several folders):\n")
        lines += [f"- {r['label']}: seed {_seeds(r['repeated_seeds'])}" for r in repeated]
        lines.append("")
    return lines


def varying_keys(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Keys outside ``method.*`` whose values differ between the rows' settings."""
    return sorted(
        k for k in differing([r["_setting"] for r in rows]) if not k.startswith("method.")
    )
