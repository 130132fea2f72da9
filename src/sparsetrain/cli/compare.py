"""``sparsetrain compare SUITE.yaml [--jobs 2] [--out DIR]``: run a grid of configs."""

from __future__ import annotations

import argparse
import os
import signal
from typing import Any

from sparsetrain._names import plural
from sparsetrain.cli._common import USER_ERRORS, fail
from sparsetrain.config import ConfigError
from sparsetrain.train import ddp
from sparsetrain.train.suite import load_suite, run_suite


def add_parser(sub: Any) -> None:
    """Register the ``compare`` subcommand."""
    p = sub.add_parser(
        "compare",
        help="run a suite: base config x methods x sparsities x seeds",
        description="Run every cell of a suite file. Finished runs (summary.json) are skipped "
        "and never touched; unfinished ones resume from their checkpoints.",
    )
    p.add_argument("suite", help="suite YAML (base, methods, sparsities, seeds, ...)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--out", help="suite directory (default: the suite's `out`, else runs/<name>)")
    p.add_argument("--data-dir", help="dataset folder for every run")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Validate the whole grid, then run it; exit 1 if any run failed or missed its target.

    Under ``torchrun --nproc-per-node N`` every process trains each run together, one run
    after the other (``--jobs 1``); only rank 0 writes and prints.
    """
    follower = ddp.launched() and os.environ.get("RANK", "0") != "0"
    if args.jobs < 1:
        return 2 if follower else fail(f"--jobs must be >= 1, got {args.jobs}", "compare")
    if args.jobs > 1 and ddp.launched():
        return 2 if follower else fail("--jobs must be 1 under torchrun", "compare")
    try:
        runs = load_suite(args.suite, args.out)
    except USER_ERRORS as exc:
        return 2 if follower else fail(exc, "compare")
    root = runs[0].run_dir.parent

    def echo(line: str) -> None:
        if not follower:
            print(line, flush=True)

    echo(f"suite {args.suite}: {plural(len(runs), 'run')} in {root} ({plural(args.jobs, 'job')})")
    try:
        with ddp.process_group(runs[0].cfg.train.device):
            outcomes = run_suite(runs, jobs=args.jobs, data_dir=args.data_dir, echo=echo)
    except ConfigError as exc:  # another compare holds the folder's lock
        return fail(exc, "compare")
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    echo(
        ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        + f"; report: sparsetrain report {root}"
    )
    if counts.get("interrupted"):  # 128 + the signal that stopped it (SIGINT 130, SIGTERM 143)
        signums = [o.signum for o in outcomes if o.signum is not None]
        return 128 + (signums[0] if signums else int(signal.SIGINT))
    return 0 if set(counts) <= {"finished", "skipped"} else 1
