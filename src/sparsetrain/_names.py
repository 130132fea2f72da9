"""The one error for an unknown registry name: valid names plus close matches."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def unknown_name(kind: str, name: object, valid: Iterable[str]) -> ValueError:
    """``ValueError`` naming ``name``, the valid options and up to three close matches.

    >>> str(unknown_name("method", "rigll", ["rigl", "set"]))
    "unknown method 'rigll'; valid: rigl, set. Did you mean 'rigl'?"
    """
    options = list(valid)
    close = difflib.get_close_matches(str(name), options, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ValueError(f"unknown {kind} {name!r}; valid: {', '.join(options)}.{hint}")


def plural(n: int, word: str) -> str:
    """``"1 epoch"``, ``"3 epochs"``: a count with its noun (English ``-s`` plural).

    >>> plural(1, "epoch"), plural(2, "run")
    ('1 epoch', '2 runs')
    """
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
