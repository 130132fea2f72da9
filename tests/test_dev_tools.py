"""The developer commands say what they did (``make test`` ends with its "N passed" line)."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_make_test_gives_pytest_one_q_so_it_prints_the_passed_line() -> None:
    """``-q`` twice (``-qq``) hides pytest's final "N passed in Ts" line."""
    recipe = re.search(r"^test:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M)
    assert recipe is not None
    words = [w for line in recipe.group(1).splitlines() for w in shlex.split(line)]
    assert "pytest" in words
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    words += shlex.split(pyproject["tool"]["pytest"]["ini_options"].get("addopts", ""))
    quiet = sum(w.count("q") for w in words if re.fullmatch(r"-[a-zA-Z]+", w) and "q" in w)
    quiet += words.count("--quiet")
    assert quiet <= 1, words
