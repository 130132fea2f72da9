"""Diagnostic: what each DST topology update does to the run, from a suite's saved files.

For every finished DST run under a results folder (``topology.csv`` with ``grown`` and ``churn``
columns, ``steps.csv``, ``metrics.csv``, ``summary.json``) this prints, per row (run label and
sparsity, pooled over seeds):

- **in place**: the median share of each update's regrowth that lands on a weight dropped in the
  same update (``1 − churn · nnz / grown``; churn counts only entries that were inactive before).
  With ``regrown_value="zero"`` such a weight restarts at zero.
- **loss jump**: the median over updates and seeds of the mean logged training loss in the
  ``--window`` steps after an update minus the mean in the window before it.
- **train acc**: the final training accuracy, mean over seeds.

    python benchmarks/dst_update_effects.py benchmarks/results/fw_fashion_mnist --sparsity 0.9 0.95

Reads only; writes nothing.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def run_effects(run: Path, window: int) -> tuple[float, list[float], float] | None:
    """(median in-place share, per-update loss jumps, final train acc) of one run, or None."""
    topology = _rows(run / "topology.csv")
    if not topology or "grown" not in topology[0]:
        return None
    nnz = json.loads((run / "summary.json").read_text())["sparsity"]["nnz"]
    in_place = [
        1 - float(r["churn"]) * nnz / int(r["grown"]) for r in topology if int(r["grown"]) > 0
    ]
    loss = {int(r["step"]): float(r["loss"]) for r in _rows(run / "steps.csv")}
    jumps = []
    for update in (int(r["step"]) for r in topology):
        before = [v for s, v in loss.items() if update - window <= s < update]
        after = [v for s, v in loss.items() if update < s <= update + window]
        if before and after:
            jumps.append(statistics.mean(after) - statistics.mean(before))
    train_acc = float(_rows(run / "metrics.csv")[-1]["train_acc"])
    return statistics.median(in_place), jumps, train_acc


def main(argv: list[str] | None = None) -> int:
    """Print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path, help="a suite's results folder")
    p.add_argument("--sparsity", nargs="*", type=float, help="only these sparsities")
    p.add_argument("--window", type=int, default=60, help="steps before/after each update")
    args = p.parse_args(argv)
    groups: dict[tuple[str, float], list[tuple[float, list[float], float]]] = defaultdict(list)
    for summary in sorted(args.results.glob("*/summary.json")):
        run = summary.parent
        info = json.loads(summary.read_text())
        sparsity = float(info["sparsity"]["target"])
        if args.sparsity and sparsity not in args.sparsity:
            continue
        effects = run_effects(run, args.window)
        if effects is not None:
            groups[(info["method"], sparsity)].append(effects)
    print("| run | sparsity | seeds | in place | loss jump | train acc |")
    print("|---|---:|---:|---:|---:|---:|")
    for (label, sparsity), runs in sorted(groups.items()):
        in_place = statistics.median(r[0] for r in runs)
        jump = statistics.median(j for r in runs for j in r[1])
        acc = statistics.mean(r[2] for r in runs)
        print(f"| {label} | {sparsity} | {len(runs)} | {in_place:.3f} | {jump:+.3f} | {acc:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
