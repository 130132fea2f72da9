"""Aggregate finished runs (``summary.json``) into tables that pool only comparable runs.

Rules (``docs/cli.md``, "Report"):

- Runs are pooled into one row only when their resolved configs differ in the seed alone
  (``train.seed``, ``method.seed``) or in keys that never change a number (:data:`FREE_KEYS`).
  Runs of one method that differ in anything else become separate rows, labelled by the keys
  that differ, e.g. ``rigl 0.9 [train.epochs=6]``. Method options that change only from one
  sparsity to the next (a per-target knob such as STR's ``method.threshold_weight_decay``)
  do not split a method; every other difference does, ``method.execution`` included.
- The headline number is the report's metric (:data:`METRICS`: test accuracy by default, or the
  test loss, the validation accuracy or loss) of the epoch ``summary.json`` reports under
  ``headline`` (best-validation epoch by default, else final); a row shows mean ± sample std
  over its seeds, and ``n=1`` (no spread) for a single run.
- Paired differences against a baseline row use the seeds both rows have: the mean of the
  per-seed differences with a 95% interval from the t distribution with ``pairs - 1`` degrees
  of freedom.
- Run directories without ``summary.json`` (unfinished or never started) and seeds a row lacks
  are listed, never dropped silently.
"""

from __future__ import annotations

import csv
import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparsetrain.train.build import resolved_dict
from sparsetrain.train.stats import get_metric, mean_std, paired_interval

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


# --------------------------------------------------------------------------- grouping


def setting_of(cfg: Mapping[str, Any] | None) -> dict[str, str]:
    """A run's flattened config without the seed and the free keys (what pooling compares)."""
    if cfg is None:
        return {}
    return {k: v for k, v in flatten(cfg).items() if k not in SEED_KEYS and k not in FREE_KEYS}


def differing(settings: Sequence[Mapping[str, str]]) -> set[str]:
    """The keys whose values (or presence) differ between ``settings``."""
    keys = set().union(*settings) if settings else set()
    return {k for k in keys if len({s.get(k, _UNSET) for s in settings}) > 1}


def aggregate(
    summaries: Sequence[tuple[Path, dict[str, Any]]], metric: str = "test_acc"
) -> list[dict[str, Any]]:
    """One row per (method, sparsity, setting): runs whose configs differ in the seed alone.

    Each row: ``label`` (``"rigl 0.9 [train.epochs=6]"``), ``series`` (the label without the
    sparsity), ``method``, ``variant`` (the distinguishing keys and values), ``sparsity``,
    ``n``, ``seeds``, ``runs``, ``select``, ``metric`` (a key of :data:`METRICS`), the metric at
    the headline epoch ``acc_mean``/``acc_std`` and at the last epoch ``final_mean``/
    ``final_std`` (std None for one run; the names say ``acc`` whatever the metric),
    ``actual_sparsity``, ``flops_ratio``, ``missed``, ``model``, ``dataset``, ``per_seed``
    (headline metric by seed, averaged over repeated runs of a seed) and ``repeated_seeds``.
    """
    get_metric(metric)
    cells: dict[tuple[str, float], dict[tuple[tuple[str, str], ...], list[Any]]] = {}
    for path, s in summaries:
        setting = setting_of(run_config(path, s))
        key = (str(s["method"]), float(s["sparsity"]["requested"]))
        cells.setdefault(key, {}).setdefault(tuple(sorted(setting.items())), []).append((path, s))
    # Keys that split a method: any that differ within one (method, sparsity) cell, and any
    # outside ``method.*`` that differ at all between the method's runs.
    split: dict[str, set[str]] = {}
    for (method, _), variants in cells.items():
        within = differing([dict(v) for v in variants])
        split.setdefault(method, set()).update(within)
    by_method: dict[str, list[dict[str, str]]] = {}
    for (method, _), variants in cells.items():
        by_method.setdefault(method, []).extend(dict(v) for v in variants)
    for method, settings in by_method.items():
        split[method].update(k for k in differing(settings) if not k.startswith("method."))

    rows = []
    for (method, sparsity), variants in cells.items():
        for setting_items, items in variants.items():
            setting = dict(setting_items)
            variant = {k: _show(setting.get(k, _UNSET)) for k in sorted(split[method])}
            suffix = ", ".join(f"{k}={v}" for k, v in variant.items())
            series = f"{method} [{suffix}]" if suffix else method
            rows.append(_row(method, sparsity, series, variant, items, metric))
    rows.sort(key=lambda r: (r["method"], r["series"], r["sparsity"]))
    return rows


def _row(
    method: str,
    sparsity: float,
    series: str,
    variant: dict[str, str],
    items: list[Any],
    metric: str,
) -> dict[str, Any]:
    summaries = [s for _, s in items]
    lacking = [str(p) for p, s in items if s["headline"].get(metric) is None]
    if lacking:
        raise ValueError(f"runs without {metric} (no validation split?): {', '.join(lacking)}")
    acc = mean_std([s["headline"][metric] for s in summaries])
    final = mean_std([s["final"][metric] for s in summaries])
    by_seed: dict[int, list[float]] = {}
    for s in summaries:
        by_seed.setdefault(int(s["seed"]), []).append(float(s["headline"][metric]))
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
        "metric": metric,
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
    """Each row minus its baseline row, seed by seed (the rows' headline metric).

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
    return sorted(k for k in differing([a, b]) if not k.startswith("method."))
