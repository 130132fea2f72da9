"""``sparsetrain train CONFIG [overrides] [--out RUN_DIR] [--resume] [--overwrite] ...``."""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path
from typing import Any

from sparsetrain.cli._common import USER_ERRORS, fail
from sparsetrain.config import load_config
from sparsetrain.train import ddp
from sparsetrain.train.experiment import RunOptions, RunResult, plan_experiment, prepare


def add_parser(sub: Any) -> None:
    """Register the ``train`` subcommand."""
    p = sub.add_parser(
        "train",
        help="train one config into a run directory",
        description="Train one config. Writes config.yaml, metrics, checkpoints, the sparsity "
        "report and summary.json into the run directory. Exit 1 if a sparsity target is missed "
        "(after saving everything); Ctrl-C saves a resumable checkpoint.",
    )
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument(
        "overrides", nargs="*", help="section.key=value overrides, e.g. method.sparsity=0.95"
    )
    p.add_argument("--out", help="run directory (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in a non-empty run directory (deletes the previous run's files and "
        "exports; other files stay)",
    )
    p.add_argument("--data-dir", help="dataset folder (overrides data.data_dir)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    p.add_argument("--tensorboard", action="store_true", help="also log to <run>/tensorboard")
    p.add_argument(
        "--dry-run", action="store_true", help="print the plan (as `sparsetrain plan`) and exit"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load, validate and train; see ``sparsetrain.train.experiment``.

    Under ``torchrun --nproc-per-node N`` every process trains the run together (see
    ``sparsetrain.train.ddp``); only rank 0 writes and prints.
    """
    run_dir = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    follower = ddp.launched() and os.environ.get("RANK", "0") != "0"
    options = RunOptions(
        resume=args.resume,
        overwrite=args.overwrite,
        quiet=args.quiet or follower,
        tensorboard=args.tensorboard,
        data_dir=args.data_dir,
        progress=False if follower else None,
    )
    try:
        notes: list[str] = []
        cfg = load_config(args.config, args.overrides, notes)
        for note in notes:
            print(f"note: {note}", flush=True)
        if args.dry_run:
            if not follower:
                print(plan_experiment(cfg, args.data_dir))
            return 0
    except USER_ERRORS as exc:
        return 2 if follower else fail(exc, "train")
    with ddp.process_group(cfg.train.device):
        try:
            prepared = prepare(cfg, run_dir, options)
        except USER_ERRORS as exc:
            return 2 if follower else fail(exc, "train")
        if isinstance(prepared, RunResult):
            if not follower:
                print(prepared.message)
            return prepared.exit_code
        result = prepared.execute()
    if result.status == "interrupted" and not follower:
        again = shlex.join(["sparsetrain", "train", args.config, *args.overrides])
        if ddp.launched():
            n = os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])
            again = f"torchrun --nproc-per-node {n} -m {again}"
        print(f"{result.message}: {again} --out {shlex.quote(str(run_dir))} --resume")
    return result.exit_code
