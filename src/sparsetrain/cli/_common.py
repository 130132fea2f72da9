"""Helpers shared by the subcommands: one-line errors and the argument parser."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, FileNotFoundError)


def one_line(exc: BaseException | str) -> str:
    """A message on one line (whitespace runs collapsed)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def fail(exc: BaseException | str, command: str = "") -> int:
    """Print ``sparsetrain[ command]: error: <one line>`` to stderr; return exit code 2."""
    prog = f"sparsetrain {command}".strip()
    print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
    return 2


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line on stderr (exit code 2)."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)
