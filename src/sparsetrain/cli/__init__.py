"""The ``sparsetrain`` command line: one small module per subcommand, no logic of its own.

    sparsetrain train CONFIG [section.key=value ...] [--out RUN_DIR] [--resume] [--overwrite]
    sparsetrain compare SUITE.yaml [--jobs 2] [--out DIR]
    sparsetrain report RUN_DIR... [--out DIR]
    sparsetrain list [methods [NAME]|criteria|models|datasets]
    sparsetrain plan CONFIG [section.key=value ...]
    sparsetrain export RUN_DIR --format {compressed,dense,sparse-inference} [--out PATH]

Exit codes: 0 success; 1 a sparsity target was missed or a suite run failed (everything is
saved first); 2 a usage or config error (one line on stderr naming the key and valid options);
128 + signal number when ``train`` or ``compare`` was stopped by SIGINT (130) or SIGTERM (143)
(resumable with ``--resume``, or by running ``compare`` again).

Masked-dense training (the default execution) is not faster than dense training: sparsity
saves theoretical FLOPs (reported in ``summary.json``), not wall time. ``method.execution=sparse``
(or ``auto``: per layer, where measured faster) trains Linear layers on CSR kernels (static and
the DST family).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sparsetrain._version import __version__
from sparsetrain.cli import compare, export, listing, plan, report, train
from sparsetrain.cli._common import ArgumentParser

SUBCOMMANDS = (train, compare, report, listing, plan, export)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = ArgumentParser(
        prog="sparsetrain",
        description="Train sparse neural networks: one config, one run directory.",
        epilog="Masked-dense training saves FLOPs in theory, not wall time. "
        "See docs/cli.md for the config format and the run-directory layout.",
    )
    parser.add_argument("--version", action="version", version=f"sparsetrain {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    sub.required = True
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (the console script passes it to ``sys.exit``)."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
        # Overrides may come after options (`train c.yaml --out d train.epochs=3`): argparse
        # leaves those to us.
        if extra and hasattr(args, "overrides") and not any(e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    return int(args.func(args))


__all__ = ["build_parser", "main"]
