"""``sparsetrain report RUN_DIRS... [--out DIR]``: mean ± std over seeds, and a plot."""

from __future__ import annotations

import argparse
from typing import Any

from sparsetrain.cli._common import USER_ERRORS, fail


def add_parser(sub: Any) -> None:
    """Register the ``report`` subcommand."""
    p = sub.add_parser(
        "report",
        help="aggregate finished runs into a Markdown table and a plot",
        description="Read summary.json of each run (folders are searched recursively), group "
        "by method x sparsity and write report.md, report.json and accuracy_vs_sparsity.png.",
    )
    p.add_argument("runs", nargs="+", help="run directories or folders of runs")
    p.add_argument("--out", default="report", help="output folder (default: ./report)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Aggregate and write; prints the table."""
    from sparsetrain.train.aggregate import write_report

    try:
        table, files, note = write_report(args.runs, args.out)
    except USER_ERRORS as exc:
        return fail(exc, "report")
    print(table)
    if note:
        print(note)
    print("wrote " + ", ".join(map(str, files)))
    return 0
