"""``sparsetrain list [methods [NAME]|criteria|models|datasets]``: what the registries hold.

``sparsetrain list methods NAME`` shows one method's options with their defaults and one line of
help each, read from the constructor signatures and the ``Args:`` sections of their docstrings
(so they cannot drift from the code).
"""

from __future__ import annotations

import argparse
import inspect
import re
from collections.abc import Callable
from typing import Any

from sparsetrain.cli._common import USER_ERRORS, fail
from sparsetrain.config import sparsity_is_option, takes_sparsity
from sparsetrain.criteria import GROWTH_CRITERIA, PRUNE_CRITERIA
from sparsetrain.data import list_datasets
from sparsetrain.methods import get_method_info, list_methods, method_options
from sparsetrain.models import list_models
from sparsetrain.train.build import default_parameter_count

KINDS = ("methods", "criteria", "models", "datasets")

# Options the command line derives (method.<key> cannot be set in a config).
DERIVED = {
    "total_steps": "CLI: train.epochs x steps per epoch",
    "steps_per_epoch": "CLI: from the data and train.batch_size",
    "seed": "CLI: train.seed unless set",
}


def add_parser(sub: Any) -> None:
    """Register the ``list`` subcommand."""
    p = sub.add_parser(
        "list",
        help="list methods, criteria, models or datasets; `list methods NAME`: its options",
    )
    p.add_argument("kind", nargs="?", choices=KINDS, help="what to list (default: everything)")
    p.add_argument(
        "name", nargs="?", help="with `methods`: one method's options, defaults and help"
    )
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
    rows = []
    for name in list_methods():
        info = get_method_info(name)
        rows.append((name, info.sparsity_mode, f"{info.description} [{info.paper}]"))
    return _table(
        "methods (name, sparsity mode, description; `sparsetrain list methods NAME`: its options)",
        rows,
    )


def docstring_args(obj: Any) -> dict[str, str]:
    """The entries of the Google-style ``Args:`` section of ``obj``'s docstring, one line each.

    >>> def f(a, b):
    ...     \"\"\"Do it.
    ...
    ...     Args:
    ...         a: The first. More about it.
    ...         b: The second,
    ...             continued.
    ...     \"\"\"
    >>> docstring_args(f)
    {'a': 'The first. More about it.', 'b': 'The second, continued.'}
    """
    lines = inspect.cleandoc(obj.__doc__ or "").splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "Args:"), None)
    out: dict[str, str] = {}
    if start is None:
        return out
    indent: int | None = None
    current = None
    for line in lines[start + 1 :]:
        if line.strip() and not line.startswith(" "):
            break  # the next section
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        indent = depth if indent is None else indent
        match = re.match(r"(\*{0,2}\w+)(?: \([^)]*\))?: ?(.*)$", line.strip())
        if depth == indent and match:
            current = match.group(1)
            out[current] = match.group(2)
        elif current is not None:
            out[current] = f"{out[current]} {line.strip()}".strip()
    return out


def _first_sentence(text: str) -> str:
    return re.split(r"(?<=[.!?])\s+(?=[A-Z(`])", text.strip(), maxsplit=1)[0]


def _classes(factory: Callable[..., Any]) -> list[Any]:
    preset = getattr(factory, "preset", None)
    cls = factory if isinstance(factory, type) else preset[0] if preset else None
    return list(cls.__mro__) if cls is not None else [factory]


def method_details(name: str) -> str:
    """One method: description, paper, and every option with its default and one-line help.

    Raises:
        ValueError: Unknown method (with close matches).
    """
    info = get_method_info(name)
    helps: dict[str, str] = {}
    for cls in _classes(info.factory):
        for key, text in docstring_args(cls).items():
            helps.setdefault(key, text)
    rows = []
    for key, default in method_options(info.factory).items():
        if key == "sparsity" and not sparsity_is_option(name):
            continue
        shown = "(required)" if default is inspect.Parameter.empty else repr(default)
        note = f" [{DERIVED[key]}]" if key in DERIVED else ""
        rows.append((key, shown, _first_sentence(helps.get(key, "")) + note))
    lines = [f"{name}: {info.description} [{info.paper}]", f"sparsity: {info.sparsity_mode}"]
    if name == "dense":
        lines[-1] = "sparsity: none (every weight kept)"
    elif not takes_sparsity(name):
        note = getattr(_classes(info.factory)[0], "emergent_sparsity_note", "")
        refused = "" if sparsity_is_option(name) else "sparsity= is refused; "
        lines[-1] += f" ({refused}{note})" if note else f" ({refused.removesuffix('; ')})"
    lines.append(
        _table(
            f"options (config: method.<option>; Python: create_method({name!r}, <option>=...))",
            [("option", "default", "help"), *rows],
        )
    )
    return "\n".join(lines)


def criteria() -> str:
    """Pruning and growth criteria: what each reads, its options and (pruning) its update order."""

    def reads(c: Any) -> str:
        return "+".join(i for i in ("weights", "grads", "momentum", "generator") if i in c.inputs)

    def per_layer(c: Any) -> str:
        return " [a selection rule: per layer only, not for static]" if c.selection else ""

    def options(c: Any) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in c.options.items()) or "-"

    prune = [("name", "order", "reads", "options", "description")]
    prune += [
        (n, c.default_order, reads(c), options(c), c.description) for n, c in PRUNE_CRITERIA.items()
    ]
    grow = [("name", "reads", "options", "description")]
    grow += [(n, reads(c) or "-", options(c), c.description) for n, c in GROWTH_CRITERIA.items()]
    return (
        _table(
            "prune criteria (dst, granet: method.prune; static: method.init; options: "
            "method.prune_options; order: when dst's order=auto updates)",
            prune,
        )
        + "\n"
        + _table("growth criteria (dst, granet: method.grow; options: method.grow_options)", grow)
    )


def models() -> str:
    """Registered models with their parameter count for a default input."""
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
    return _table("datasets", list(list_datasets().items()))


def run(args: argparse.Namespace) -> int:
    """Print the requested listings."""
    if args.name is not None:
        if args.kind != "methods":
            return fail(f"details by name are listed for methods only (got {args.kind})", "list")
        try:
            print(method_details(args.name))
        except USER_ERRORS as exc:
            return fail(exc, "list")
        return 0
    kinds = [args.kind] if args.kind else list(KINDS)
    out = {"methods": methods, "criteria": criteria, "models": models, "datasets": datasets}
    print("\n\n".join(out[k]() for k in kinds))
    return 0
