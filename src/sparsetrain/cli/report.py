"""``sparsetrain report RUNS... [--out DIR] [--baseline LABEL] [--metric M]``: comparable runs."""

from __future__ import annotations

import argparse
from typing import Any

from sparsetrain.cli._common import USER_ERRORS, fail
from sparsetrain.train.reporting import write_report
from sparsetrain.train.stats import METRICS


def add_parser(sub: Any) -> None:
    """Register the ``report`` subcommand."""
    p = sub.add_parser(
        "report",
        help="aggregate finished runs into Markdown tables and a plot",
        description="Read summary.json of each run (folders are searched recursively). Runs "
        "are pooled over seeds only when their configs differ in the seed alone; other "
        "differences make separate rows labelled by the keys that differ. Writes report.md "
        "(by method x sparsity, paired same-seed differences against a baseline with 95%% "
        "intervals, unfinished runs), report.json and accuracy_vs_sparsity.png.",
    )
    p.add_argument("runs", nargs="+", help="run directories or folders of runs")
    p.add_argument(
        "--out",
        help="output folder (default: RUNS/report inside the first folder given, beside the runs)",
    )
    p.add_argument(
        "--baseline",
        help="row for the paired differences: a method (one row per sparsity, compared at "
        "equal sparsity; a sparsity-0 row with all) or a row label such as 'rigl 0.9' "
        "(default: dense, when present)",
    )
    p.add_argument(
        "--metric",
        default="test_acc",
        choices=list(METRICS),
        help="the number tabulated at each run's headline epoch (default: test_acc; a language "
        "model's loss is in nats per token)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace report files in --out that sparsetrain report did not write",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Aggregate and write; prints the tables."""
    try:
        text, files, note = write_report(
            args.runs,
            args.out,
            baseline=args.baseline,
            metric=args.metric,
            overwrite=args.overwrite,
        )
    except USER_ERRORS as exc:
        return fail(exc, "report")
    body = text.split("\nRuns:\n", 1)[0].removeprefix("# sparsetrain report\n").strip()
    print(body)
    if note:
        print(note)
    print("wrote " + ", ".join(map(str, files)))
    return 0
