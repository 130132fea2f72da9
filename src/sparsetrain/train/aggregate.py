"""Aggregate finished runs (``summary.json``) into tables that pool only comparable runs.

Rules (``docs/cli.md``, "Report"):

- Runs are pooled into one row only when their resolved configs differ in the seed alone
  (``train.seed``, ``method.seed``) or in keys that never change a number (:data:`FREE_KEYS`).
  Runs of one method that differ in anything else become separate rows, labelled by the keys
  that differ, e.g. ``rigl 0.9 [train.epochs=6]``. Method options that change only from one
  sparsity to the next (a per-target knob such as STR's ``method.threshold_weight_decay``)
  do not split a method; every other difference does, ``method.execution`` included.
- The headline accuracy is the test accuracy ``summary.json`` reports under ``headline``
  (best-validation epoch by default, else final); a row shows mean ± sample std over its
  seeds, and ``n=1`` (no spread) for a single run.
- Paired differences against a baseline row use the seeds both rows have: the mean of the
  per-seed differences with a 95% interval from the t distribution with ``pairs - 1`` degrees
  of freedom.
- Run directories without ``summary.json`` (unfinished or never started) and seeds a row lacks
  are listed, never dropped silently.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparsetrain.train.build import resolved_dict
from sparsetrain.train.metrics import write_json, write_text
from sparsetrain.train.plots import plot_accuracy_vs_sparsity

SEED_KEYS = ("train.seed", "method.seed")
# Keys that never change a number of a run (where data is read from, plots, logging, the
# device string as in ``--resume``) and naming keys shown elsewhere (the row's method name,
# its sparsity column).
FREE_KEYS = (
    "data.data_dir",
    "train.plots",
    "train.device",
    "train.log_every",
    "train.label",
    "train.report_sparsity",
)
REPORT_FILES = ("report.md", "report.json", "accuracy_vs_sparsity.png")
REPORT_FORMAT = "sparsetrain.report"
_UNSET = "(unset)"


# --------------------------------------------------------------------------- finding runs


@dataclass(frozen=True)
class Unfinished:
    """A run directory without ``summary.json``.

    Attributes:
        path: The run directory.
        note: What is known: epochs done, whether it can be resumed.
    """

    path: Path
    note: str


def find_summaries(paths: Sequence[str | Path]) -> list[tuple[Path, dict[str, Any]]]:
    """Every ``summary.json`` in ``paths`` (run directories, or folders searched recursively).

    Raises:
        ValueError: A path does not exist, a summary is unreadable, or none is found.
    """
    return find_runs(paths)[0]


def find_runs(
    paths: Sequence[str | Path],
) -> tuple[list[tuple[Path, dict[str, Any]]], list[Unfinished]]:
    """Finished runs (directory, summary) and unfinished run directories under ``paths``.

    A directory is a run directory when it holds ``summary.json`` (finished), or
    ``checkpoint.pt``, or ``config.yaml`` next to ``train.log`` (started, not finished).

    Raises:
        ValueError: A path does not exist, a summary is unreadable, or no run is finished.
    """
    found: list[Path] = []
    started: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise ValueError(f"no such run directory: {p}")
        if (p / "summary.json").is_file():
            found.append(p / "summary.json")
            continue
        found += sorted(p.rglob("summary.json"))
        candidates = {f.parent for f in p.rglob("checkpoint.pt")}
        candidates |= {
            f.parent for f in p.rglob("config.yaml") if (f.parent / "train.log").is_file()
        }
        started += sorted(d for d in candidates if not (d / "summary.json").is_file())
    if not found:
        where = ", ".join(map(str, paths))
        what = (
            f" ({len(started)} unfinished: {', '.join(map(str, started[:3]))})" if started else ""
        )
        raise ValueError(f"no finished runs (summary.json) under {where}{what}")
    out = []
    for f in dict.fromkeys(found):
        try:
            out.append((f.parent, json.loads(f.read_text())))
        except (OSError, ValueError) as exc:
            raise ValueError(f"unreadable {f}: {exc}") from None
    return out, [Unfinished(d, _unfinished_note(d)) for d in dict.fromkeys(started)]


def _unfinished_note(run_dir: Path) -> str:
    done = 0
    try:
        with open(run_dir / "metrics.csv", newline="") as f:
            done = sum(1 for _ in csv.DictReader(f))
    except OSError:
        pass
    cfg = _read_config_yaml(run_dir)
    epochs = _lookup(cfg, "train.epochs") if cfg else None
    total = f" of {epochs}" if isinstance(epochs, int) else ""
    if (run_dir / "checkpoint.pt").is_file():
        how = f"resume: sparsetrain train {run_dir / 'config.yaml'} --out {run_dir} --resume"
    else:
        how = "no checkpoint to resume from"
    return f"{done}{total} epochs done, no summary.json ({how})"


def _read_config_yaml(run_dir: Path) -> dict[str, Any] | None:
    try:
        import yaml  # optional: the `cli` extra

        raw = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (ImportError, OSError, ValueError):
        return None
    except Exception:  # yaml.YAMLError and friends: an unreadable config is just unknown
        return None
    return raw if isinstance(raw, dict) else None


def _lookup(d: Mapping[str, Any], dotted: str) -> Any:
    cur: Any = d
    for part in dotted.split("."):
        cur = cur.get(part) if isinstance(cur, Mapping) else None
    return cur


def run_config(run_dir: Path, summary: Mapping[str, Any]) -> dict[str, Any] | None:
    """The run's resolved config: ``summary.json``'s copy, else ``config.yaml`` (None: neither).

    Registry defaults are written out (:func:`~sparsetrain.train.build.resolved_dict`), so a
    run saved before an option existed pools with one that holds the option's default.
    """
    cfg = summary.get("config")
    raw = dict(cfg) if isinstance(cfg, Mapping) else _read_config_yaml(run_dir)
    return None if raw is None else resolved_dict(raw)


def flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Dotted keys of a nested config, values as canonical JSON text (comparable, hashable)."""
    out: dict[str, str] = {}
    for k, v in cfg.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, f"{name}."))
        else:
            out[name] = json.dumps(v, sort_keys=True, default=str)
    return out


def _show(canon: str) -> str:
    if canon == _UNSET:
        return canon
    value = json.loads(canon)
    return value if isinstance(value, str) else json.dumps(value).replace('"', "")


# --------------------------------------------------------------------------- statistics


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


def _mean_std(values: list[float]) -> tuple[float, float | None]:
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


# --------------------------------------------------------------------------- grouping


def _setting(cfg: Mapping[str, Any] | None) -> dict[str, str]:
    if cfg is None:
        return {}
    return {k: v for k, v in flatten(cfg).items() if k not in SEED_KEYS and k not in FREE_KEYS}


def _differing(settings: Sequence[Mapping[str, str]]) -> set[str]:
    keys = set().union(*settings) if settings else set()
    return {k for k in keys if len({s.get(k, _UNSET) for s in settings}) > 1}


def aggregate(summaries: Sequence[tuple[Path, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per (method, sparsity, setting): runs whose configs differ in the seed alone.

    Each row: ``label`` (``"rigl 0.9 [train.epochs=6]"``), ``series`` (the label without the
    sparsity), ``method``, ``variant`` (the distinguishing keys and values), ``sparsity``,
    ``n``, ``seeds``, ``runs``, ``select``, test accuracy ``acc_mean``/``acc_std`` and final
    ``final_mean``/``final_std`` (std None for one run), ``actual_sparsity``,
    ``flops_ratio``, ``missed``, ``model``, ``dataset``, ``per_seed`` (headline accuracy by
    seed, averaged over repeated runs of a seed) and ``repeated_seeds``.
    """
    cells: dict[tuple[str, float], dict[tuple[tuple[str, str], ...], list[Any]]] = {}
    for path, s in summaries:
        setting = _setting(run_config(path, s))
        key = (str(s["method"]), float(s["sparsity"]["requested"]))
        cells.setdefault(key, {}).setdefault(tuple(sorted(setting.items())), []).append((path, s))
    # Keys that split a method: any that differ within one (method, sparsity) cell, and any
    # outside ``method.*`` that differ at all between the method's runs.
    split: dict[str, set[str]] = {}
    for (method, _), variants in cells.items():
        within = _differing([dict(v) for v in variants])
        split.setdefault(method, set()).update(within)
    by_method: dict[str, list[dict[str, str]]] = {}
    for (method, _), variants in cells.items():
        by_method.setdefault(method, []).extend(dict(v) for v in variants)
    for method, settings in by_method.items():
        split[method].update(k for k in _differing(settings) if not k.startswith("method."))

    rows = []
    for (method, sparsity), variants in cells.items():
        for setting_items, items in variants.items():
            setting = dict(setting_items)
            variant = {k: _show(setting.get(k, _UNSET)) for k in sorted(split[method])}
            suffix = ", ".join(f"{k}={v}" for k, v in variant.items())
            series = f"{method} [{suffix}]" if suffix else method
            rows.append(_row(method, sparsity, series, variant, items))
    rows.sort(key=lambda r: (r["method"], r["series"], r["sparsity"]))
    return rows


def _row(
    method: str, sparsity: float, series: str, variant: dict[str, str], items: list[Any]
) -> dict[str, Any]:
    summaries = [s for _, s in items]
    acc = _mean_std([s["headline"]["test_acc"] for s in summaries])
    final = _mean_std([s["final"]["test_acc"] for s in summaries])
    by_seed: dict[int, list[float]] = {}
    for s in summaries:
        by_seed.setdefault(int(s["seed"]), []).append(float(s["headline"]["test_acc"]))
    label = series if sparsity == 0 else f"{method} {sparsity:g}" + series[len(method) :]
    return {
        "label": label,
        "series": series,
        "method": method,
        "variant": variant,
        "sparsity": sparsity,
        "n": len(summaries),
        "seeds": sorted(int(s["seed"]) for s in summaries),
        "runs": sorted(str(p) for p, _ in items),
        "select": summaries[0]["headline"]["select"],
        "acc_mean": acc[0],
        "acc_std": acc[1],
        "final_mean": final[0],
        "final_std": final[1],
        "actual_sparsity": statistics.fmean(s["sparsity"]["actual"] for s in summaries),
        "flops_ratio": statistics.fmean(s["flops"]["ratio"] for s in summaries),
        "missed": sum(1 for s in summaries if not s["sparsity"]["target_met"]),
        "model": summaries[0].get("model"),
        "dataset": summaries[0].get("dataset"),
        "per_seed": {seed: statistics.fmean(v) for seed, v in sorted(by_seed.items())},
        "repeated_seeds": sorted(seed for seed, v in by_seed.items() if len(v) > 1),
    }


# --------------------------------------------------------------------------- paired differences


def resolve_baseline(
    rows: Sequence[Mapping[str, Any]], wanted: str | None
) -> list[Mapping[str, Any]]:
    """The baseline row(s) named by ``wanted``: a row label, or a series (one row per sparsity).

    ``None`` picks the ``dense`` series when there is one (else no baseline: ``[]``).

    Raises:
        ValueError: ``wanted`` names no row.
    """
    if wanted is None:
        return [r for r in rows if r["series"] == "dense"]
    exact = [r for r in rows if r["label"] == wanted]
    if exact:
        return exact
    series = [r for r in rows if r["series"] == wanted]
    if series:
        return series
    labels = list(dict.fromkeys([*(r["series"] for r in rows), *(r["label"] for r in rows)]))
    raise ValueError(f"unknown baseline {wanted!r}; valid: {', '.join(labels)}")


def paired_differences(
    rows: Sequence[Mapping[str, Any]], baseline: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Each row minus its baseline row, seed by seed (headline test accuracy).

    A baseline of one row is compared with every other row; a baseline series with rows at
    several sparsities is compared at equal sparsity (a dense row at sparsity 0 with all).
    """
    if not baseline:
        return []
    ids = {id(b) for b in baseline}
    out = []
    for r in rows:
        if id(r) in ids:
            continue
        if len(baseline) == 1:
            b: Mapping[str, Any] | None = baseline[0]
        else:
            b = next((x for x in baseline if x["sparsity"] == r["sparsity"]), None)
        entry: dict[str, Any] = {"label": r["label"], "baseline": None if b is None else b["label"]}
        if b is None:
            out.append(entry | {"n": 0, "seeds": [], "mean": None, "low": None, "high": None})
            continue
        seeds = sorted(set(r["per_seed"]) & set(b["per_seed"]))
        diffs = [r["per_seed"][s] - b["per_seed"][s] for s in seeds]
        stats = paired_interval(diffs) if diffs else {"n": 0, "mean": None}
        entry |= {"seeds": seeds, **stats, "differs_in": _outside_method(r, b)}
        out.append(entry)
    return out


def _outside_method(row: Mapping[str, Any], base: Mapping[str, Any]) -> list[str]:
    """Keys outside ``method.*`` where the row's setting differs from the baseline's."""
    a, b = row.get("_setting", {}), base.get("_setting", {})
    return sorted(k for k in _differing([a, b]) if not k.startswith("method."))


# --------------------------------------------------------------------------- Markdown


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _acc(mean: float, std: float | None, n: int) -> str:
    return f"{_pct(mean)} (n=1)" if n == 1 or std is None else f"{_pct(mean)} ± {_pct(std)}"


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The aggregated rows as a Markdown table (accuracies in percent)."""
    places = {(r.get("model"), r.get("dataset")) for r in rows}
    where = len(places) > 1
    head = (
        "| method | sparsity | n | seeds | test acc (%) | final test acc (%) | actual sparsity "
        "| FLOPs vs dense | targets missed |" + (" model / data |" if where else "")
    )
    lines = [head, "|---|---:|---:|---|---:|---:|---:|---:|---:|" + ("---|" if where else "")]
    for r in rows:
        lines.append(
            f"| {r['series']} | {r['sparsity']:g} | {r['n']} | {_seeds(r['seeds'])} "
            f"| {_acc(r['acc_mean'], r['acc_std'], r['n'])} "
            f"| {_acc(r['final_mean'], r['final_std'], r['n'])} "
            f"| {r['actual_sparsity']:.4f} | {r['flops_ratio']:.3f} | {r['missed']} |"
            + (f" {r.get('model')} / {r.get('dataset')} |" if where else "")
        )
    select = {r["select"] for r in rows}
    note = (
        "test acc: at the best-validation epoch"
        if select == {"best_val"}
        else "test acc: per run's train.select (" + ", ".join(sorted(select)) + ")"
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
            acc = (
                f"{_pct(r['acc_mean'])} (n=1)"
                if n == 1 or r.get("acc_std") is None
                else f"{_pct(r['acc_mean'])} ± {_pct(r['acc_std'])}"
                + (f" (n={n})" if n != common else "")
            )
            cells.append(f"{acc} <sub>{r['actual_sparsity']:.3f} / {r['flops_ratio']:.3f}</sub>")
        lines.append(f"| {series} | " + " | ".join(cells) + " |")
    return (
        "\n".join(lines) + f"\n\nCells: test acc (%), mean ± std over the row's seeds (n={common} "
        "unless shown; n=1: one run, no spread), then <sub>actual sparsity / FLOPs vs dense</sub> "
        "of the final masks. A run at sparsity 0 shows in the first column.\n"
    )


def paired_table(paired: Sequence[Mapping[str, Any]], baseline: str) -> str:
    """The paired differences as Markdown (percentage points)."""
    lines = [
        "| method | baseline | pairs | seeds | difference (pp) | 95% interval (pp) | "
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
        ci = "n=1" if p["low"] is None else f"[{100 * p['low']:+.2f}, {100 * p['high']:+.2f}]"
        other = ", ".join(p.get("differs_in", [])) or ""
        lines.append(
            f"| {p['label']} | {p['baseline']} | {p['n']} | {_seeds(p['seeds'])} "
            f"| {100 * p['mean']:+.2f} | {ci} | {other} |"
        )
    return (
        "\n".join(lines) + f"\n\nTest acc of each row minus {baseline}'s, run by run on the "
        "seeds both have (same seed: same data split, order and initial draw where the "
        "configs allow); mean and 95% interval from the t distribution with pairs − 1 degrees "
        'of freedom. "also differs in": settings outside `method.*` that are not the '
        "baseline's (the difference is not the method's alone).\n"
    )


def _gaps(rows: Sequence[Mapping[str, Any]], unfinished: Sequence[Unfinished]) -> list[str]:
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


def _varying(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return sorted(
        k for k in _differing([r["_setting"] for r in rows]) if not k.startswith("method.")
    )


# --------------------------------------------------------------------------- writing


def build_report(
    paths: Sequence[str | Path], baseline: str | None = None
) -> tuple[str, dict[str, Any]]:
    """Read the runs and return ``report.md``'s text and ``report.json``'s content.

    Raises:
        ValueError: As :func:`find_runs`; an unknown ``baseline``.
    """
    summaries, unfinished = find_runs(paths)
    rows = aggregate(summaries)
    settings = {
        str(p): _setting(run_config(p, s)) for p, s in summaries
    }  # the first run's setting stands for its row (all of a row's are equal)
    for r in rows:
        r["_setting"] = settings[r["runs"][0]]
    base = resolve_baseline(rows, baseline)
    paired = paired_differences(rows, base)
    base_name = base[0]["label"] if len(base) == 1 else (base[0]["series"] if base else None)

    parts = ["# sparsetrain report\n", _overview(rows, summaries, unfinished)]
    parts += [markdown_table(rows), "## By sparsity\n", pivot_table(rows)]
    if paired:
        parts += [f"## Paired differences vs {base_name}\n", paired_table(paired, base_name)]
    elif baseline is None:
        parts.append(
            "No paired differences: no `dense` row; choose a baseline with `--baseline LABEL`.\n"
        )
    gaps = _gaps(rows, unfinished)
    if gaps:
        parts += ["## Not in the tables\n", "\n".join(gaps)]
    parts.append("Runs:\n\n" + "\n".join(f"- {p}" for p, _ in summaries) + "\n")
    for r in rows:
        del r["_setting"]
    data = {
        "format": REPORT_FORMAT,
        "version": 2,
        "rows": rows,
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
    varying = _varying(rows)
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
    overwrite: bool = False,
) -> tuple[str, list[Path], str | None]:
    """Write ``report.md``, ``report.json`` and ``accuracy_vs_sparsity.png`` into ``out``.

    Args:
        paths: Run directories or folders of runs.
        out: Output folder (default: :func:`default_out`).
        baseline: Row label or series for the paired differences (default: ``dense``).
        overwrite: Replace report files of unknown origin in ``out``.

    Returns:
        The Markdown report, the files written, and a note if the plot was skipped.

    Raises:
        ValueError: As :func:`build_report` and :func:`check_out`.
    """
    d = default_out(paths) if out is None else Path(out)
    check_out(d, overwrite)
    text, data = build_report(paths, baseline)
    d.mkdir(parents=True, exist_ok=True)
    write_text(d / "report.md", text)
    write_json(d / "report.json", data)
    files = [d / "report.md", d / "report.json"]
    note = plot_accuracy_vs_sparsity(data["rows"], d / "accuracy_vs_sparsity.png")
    if note is None:
        files.append(d / "accuracy_vs_sparsity.png")
    return text, files, note
