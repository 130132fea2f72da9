"""One registry type: name → entry, for methods, models, datasets and criteria.

Each registry holds entries of one kind in registration order. :meth:`Registry.lookup` is the
one place an unknown name becomes a ``ValueError`` listing the valid names and close matches
(:func:`~sparsetrain._names.unknown_name`); registering a name twice warns and the later entry
wins. It is a mapping (``name in registry``, ``registry[name]``, ``.items()``), so code that
reads a registry reads it like a dict.
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Callable, Iterator, MutableMapping
from typing import TypeVar

from sparsetrain._names import unknown_name

T = TypeVar("T")


def plain_name(name: str) -> str:
    """``name`` as a registry key: stripped, lower case, ``-`` as ``_`` (``Wide-ResNet``)."""
    return name.strip().lower().replace("-", "_")


class Registry(MutableMapping[str, T]):
    """Entries of one kind by name.

    Args:
        kind: What an entry is, as messages name it (``"method"``, ``"prune criterion"``).
        normalise: Maps the name a user wrote to its key (e.g. :func:`plain_name`); names are
            looked up as written when ``None``.
        sort_valid: List the valid names sorted in an unknown-name error (else in registration
            order).
        strings_only: Looking up a name that is not a string raises ``TypeError``.
    """

    def __init__(
        self,
        kind: str,
        *,
        normalise: Callable[[str], str] | None = None,
        sort_valid: bool = True,
        strings_only: bool = True,
    ) -> None:
        self.kind = kind
        self._normalise = normalise
        self._sort_valid = sort_valid
        self._strings_only = strings_only
        self._entries: dict[str, T] = {}

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __setitem__(self, name: str, entry: T) -> None:
        self._entries[name] = entry

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"

    def add(self, name: str, entry: T) -> None:
        """Register ``entry`` under ``name``; a name registered twice warns, the later one wins.

        The warning points at the caller of the function that calls ``add`` (the decorated
        definition, for the ``register_*`` decorators).
        """
        if name in self._entries:
            warnings.warn(
                f"{self.kind} {name!r} registered twice; the later one wins", stacklevel=3
            )
        self._entries[name] = entry

    def lookup(self, name: object) -> T:
        """The entry registered under ``name``.

        Raises:
            TypeError: ``name`` is not a string (``strings_only``).
            ValueError: Unknown name, with the valid names and close matches.
        """
        if self._strings_only and not isinstance(name, str):
            raise TypeError(f"{self.kind} name must be a string, got {type(name).__name__}")
        key = self._normalise(name) if self._normalise is not None else name  # type: ignore[arg-type]
        if key in self._entries:
            return self._entries[key]  # type: ignore[index]
        raise self.unknown(name)

    def unknown(self, name: object) -> ValueError:
        """The error for an unknown ``name``: the valid names and up to three close matches."""
        return unknown_name(self.kind, name, sorted(self) if self._sort_valid else list(self))

    def names(self, pattern: str | None = None) -> list[str]:
        """Registered names, sorted, optionally filtered by a glob (``"resnet*"``)."""
        return [n for n in sorted(self) if pattern is None or fnmatch.fnmatchcase(n, pattern)]
