"""``sparsetrain report``: ``report.md``, ``report.json`` and the plot from run directories.

The rows and paired differences come from :mod:`sparsetrain.train.aggregate`, the tables from
:mod:`sparsetrain.train.tables`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sparsetrain.train.aggregate import (
    Unfinished,
    aggregate,
    find_runs,
    paired_differences,
    resolve_baseline,
    run_config,
    setting_of,
)
from sparsetrain.train.metrics import write_json, write_text
from sparsetrain.train.plots import plot_accuracy_vs_sparsity
from sparsetrain.train.stats import get_metric
from sparsetrain.train.tables import (
    gap_lines,
    markdown_table,
    paired_table,
    pivot_table,
    varying_keys,
)

REPORT_FILES = ("report.md", "report.json", "accuracy_vs_sparsity.png")
REPORT_FORMAT = "sparsetrain.report"


def build_report(
    paths: Sequence[str | Path], baseline: str | None = None, metric: str = "test_acc"
) -> tuple[str, dict[str, Any]]:
    """Read the runs and return ``report.md``'s text and ``report.json``'s content.

    Raises:
        ValueError: As :func:`find_runs`; an unknown ``baseline`` or ``metric``.
    """
    get_metric(metric)
    summaries, unfinished = find_runs(paths)
    rows = aggregate(summaries, metric)
    settings = {
        str(p): setting_of(run_config(p, s)) for p, s in summaries
    }  # the first run's setting stands for its row (all of a row's are equal)
    for r in rows:
        r["_setting"] = settings[r["runs"][0]]
    base = resolve_baseline(rows, baseline)
    paired = paired_differences(rows, base)
    base_name = base[0]["label"] if len(base) == 1 else (base[0]["series"] if base else None)

    parts = ["# sparsetrain report\n", _overview(rows, summaries, unfinished)]
    parts += [markdown_table(rows), "## By sparsity\n", pivot_table(rows)]
    if paired:
        parts += [
            f"## Paired differences vs {base_name}\n",
            paired_table(paired, base_name, metric),
        ]
    elif baseline is None:
        parts.append(
            "No paired differences: no `dense` row; choose a baseline with `--baseline LABEL`.\n"
        )
    gaps = gap_lines(rows, unfinished)
    if gaps:
        parts += ["## Not in the tables\n", "\n".join(gaps)]
    parts.append("Runs:\n\n" + "\n".join(f"- {p}" for p, _ in summaries) + "\n")
    for r in rows:
        del r["_setting"]
    data = {
        "format": REPORT_FORMAT,
        "version": 2,
        "rows": rows,
        "metric": metric,
        "baseline": base_name,
        "paired": paired,
        "unfinished": [{"path": str(u.path), "note": u.note} for u in unfinished],
    }
    return "\n".join(parts), data


def _overview(
    rows: Sequence[Mapping[str, Any]],
    summaries: Sequence[tuple[Path, Mapping[str, Any]]],
    unfinished: Sequence[Unfinished],
) -> str:
    places = sorted({f"{r.get('model')} on {r.get('dataset')}" for r in rows})
    text = (
        f"{len(summaries)} finished runs in {len(rows)} rows"
        + (f", {len(unfinished)} unfinished (listed below)" if unfinished else "")
        + f"; {', '.join(places)}."
    )
    varying = varying_keys(rows)
    if varying:
        shown = ", ".join(f"`{k}`" for k in varying[:8]) + (" ..." if len(varying) > 8 else "")
        text += f" Settings outside `method.*` that differ between rows: {shown}."
    else:
        text += " All rows share every setting outside `method.*` (data, model, optimizer, epochs)."
    return text + "\n"


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse to replace files in ``out`` that an earlier ``sparsetrain report`` did not write.

    Raises:
        ValueError: ``out`` is a file, or holds a report file of unknown origin (and
            ``overwrite`` is false).
    """
    if out.exists() and not out.is_dir():
        raise ValueError(f"report folder {out} exists and is not a folder")
    if overwrite or not out.is_dir():
        return
    ours_md = _is_report_md(out / "report.md")
    for name in REPORT_FILES:
        f = out / name
        if not f.exists():
            continue
        ours = {
            "report.md": ours_md,
            "report.json": _is_report_json(f),
            "accuracy_vs_sparsity.png": ours_md,
        }[name]
        if not ours:
            raise ValueError(
                f"{f} exists and was not written by sparsetrain report; choose another --out "
                "or pass --overwrite to replace it"
            )


def _is_report_md(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().strip() == "# sparsetrain report"
    except (OSError, UnicodeDecodeError):
        return False


def _is_report_json(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if isinstance(data, dict):
        return data.get("format") == REPORT_FORMAT
    return isinstance(data, list) and all(isinstance(r, dict) and "method" in r for r in data)


def default_out(paths: Sequence[str | Path]) -> Path:
    """Where ``report`` writes without ``--out``: ``report/`` inside the first path given."""
    return Path(paths[0]) / "report"


def write_report(
    paths: Sequence[str | Path],
    out: str | Path | None = None,
    *,
    baseline: str | None = None,
    metric: str = "test_acc",
    overwrite: bool = False,
) -> tuple[str, list[Path], str | None]:
    """Write ``report.md``, ``report.json`` and ``accuracy_vs_sparsity.png`` into ``out``.

    Args:
        paths: Run directories or folders of runs.
        out: Output folder (default: :func:`default_out`).
        baseline: Row label or series for the paired differences (default: ``dense``).
        metric: What the tables show (a key of ``METRICS``: ``test_acc``, ``test_loss``, ...).
        overwrite: Replace report files of unknown origin in ``out``.

    Returns:
        The Markdown report, the files written, and a note if the plot was skipped.

    Raises:
        ValueError: As :func:`build_report` and :func:`check_out`.
    """
    d = default_out(paths) if out is None else Path(out)
    check_out(d, overwrite)
    text, data = build_report(paths, baseline, metric)
    d.mkdir(parents=True, exist_ok=True)
    write_text(d / "report.md", text)
    write_json(d / "report.json", data)
    files = [d / "report.md", d / "report.json"]
    note = plot_accuracy_vs_sparsity(data["rows"], d / "accuracy_vs_sparsity.png")
    if note is None:
        files.append(d / "accuracy_vs_sparsity.png")
    return text, files, note
