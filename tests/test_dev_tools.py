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


# Users have the papers and our docs, not the project's internal specification or issue tracker.
INTERNAL = re.compile(r"\bspec\b|§|\bissues? ?-?\d|methods\.md|\[(PROJECT CHOICE|OFFICIAL CODE)\]")
USER_FACING = (
    "src/sparsetrain/**/*.py",
    "configs/*.yaml",
    "benchmarks/suites/*.yaml",
    "benchmarks/README.md",
    "docs/*.md",
    "README.md",
)


def test_user_facing_text_cites_papers_and_our_docs_not_internal_documents() -> None:
    hits = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for pattern in USER_FACING
        for path in sorted(ROOT.glob(pattern))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if INTERNAL.search(line)
    ]
    assert not hits, "\n".join(hits)


def test_list_criteria_cites_no_internal_document(capsys) -> None:
    from sparsetrain.cli import main

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "SET as coded in the Fantastic Weights repo" in out
    assert not INTERNAL.search(out)
