"""``sparsetrain plan CONFIG [overrides]``: the sparsity curve and update steps, no training."""

from __future__ import annotations

import argparse
from typing import Any

from sparsetrain.cli._common import USER_ERRORS, fail
from sparsetrain.config import load_config
from sparsetrain.train.experiment import plan_experiment


def add_parser(sub: Any) -> None:
    """Register the ``plan`` subcommand."""
    p = sub.add_parser(
        "plan",
        help="dry run: planned sparsity curve and topology-update steps",
        description="Build the data, model and method of a config and print method.plan() over "
        "the run's optimizer steps, without training.",
    )
    p.add_argument("config", help="YAML config")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides")
    p.add_argument("--points", type=int, default=11, help="points of the curve (default 11)")
    p.add_argument("--data-dir", help="dataset folder (overrides data.data_dir)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the plan."""
    notes: list[str] = []
    try:
        cfg = load_config(args.config, args.overrides, notes)
        text = plan_experiment(cfg, args.data_dir, points=args.points)
    except USER_ERRORS as exc:
        return fail(exc, "plan")
    print("\n".join([*(f"note: {n}" for n in notes), text]))
    return 0
