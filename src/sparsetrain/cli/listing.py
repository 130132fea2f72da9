"""``sparsetrain list [methods|criteria|models|datasets]``: what the registries hold."""

from __future__ import annotations

import argparse
from typing import Any

KINDS = ("methods", "criteria", "models", "datasets")


def add_parser(sub: Any) -> None:
    """Register the ``list`` subcommand."""
    p = sub.add_parser("list", help="list methods, criteria, models or datasets")
    p.add_argument("kind", nargs="?", choices=KINDS, help="what to list (default: everything)")
    p.set_defaults(func=run)


def _table(title: str, rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)] if rows else []
    lines = [f"{title}:"]
    for r in rows:
        cells = [c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)]
        lines.append("  " + "  ".join([*cells, r[-1]]))
    return "\n".join(lines)


def methods() -> str:
    """Registered methods: name, sparsity mode, description."""
    from sparsetrain.methods import get_method_info, list_methods

    rows = []
    for name in list_methods():
        info = get_method_info(name)
        rows.append((name, info.sparsity_mode, f"{info.description} [{info.paper}]"))
    return _table("methods (name, sparsity mode, description)", rows)


def criteria() -> str:
    """Pruning and growth criteria."""
    from sparsetrain.criteria import GROWTH_CRITERIA, PRUNE_CRITERIA

    prune = [(n, c.description) for n, c in PRUNE_CRITERIA.items()]
    grow = [(n, c.description) for n, c in GROWTH_CRITERIA.items()]
    return (
        _table("prune criteria (dst: method.prune)", prune)
        + "\n"
        + _table("growth criteria (dst: method.grow)", grow)
    )


def models() -> str:
    """Registered models with their parameter count for a default input."""
    from sparsetrain.models import list_models
    from sparsetrain.train.build import default_parameter_count

    rows = []
    for name, desc in list_models().items():
        count, shape = default_parameter_count(name)
        where = f"{count:,} params @ {'x'.join(map(str, shape))}" if count >= 0 else "-"
        rows.append((name, where, desc))
    return _table(
        "models (name, parameters for a default input with 10 classes, description)", rows
    )


def datasets() -> str:
    """Registered datasets."""
    from sparsetrain.data import list_datasets

    return _table("datasets", list(list_datasets().items()))


def run(args: argparse.Namespace) -> int:
    """Print the requested listings."""
    kinds = [args.kind] if args.kind else list(KINDS)
    out = {"methods": methods, "criteria": criteria, "models": models, "datasets": datasets}
    print("\n\n".join(out[k]() for k in kinds))
    return 0
