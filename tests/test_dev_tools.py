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


def _import_cycles() -> list[list[str]]:
    """Every strongly connected group of two or more sparsetrain modules (Tarjan, iterative).

    grimp counts imports inside functions and behind ``TYPE_CHECKING`` as edges too.
    """
    import grimp

    graph = grimp.build_graph("sparsetrain", cache_dir=None)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            if i < len(edges[node]):
                work.append((node, i + 1))
                nxt = edges[node][i]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    group.append(m)
                    if m == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return groups


def test_no_import_cycles_among_sparsetrain_modules() -> None:
    """A lower module never imports a higher one, not even inside a function (see pyproject)."""
    assert _import_cycles() == []


def test_import_cycle_check_finds_a_cycle(tmp_path, monkeypatch) -> None:
    pkg = tmp_path / "sparsetrain_cycle_probe"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from sparsetrain_cycle_probe import b\n")
    (pkg / "b.py").write_text("from sparsetrain_cycle_probe import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import grimp

    real = grimp.build_graph
    monkeypatch.setattr(grimp, "build_graph", lambda *_a, **kw: real(pkg.name, **kw))
    assert _import_cycles() == [[f"{pkg.name}.a", f"{pkg.name}.b"]]


def test_make_lint_checks_the_import_layers() -> None:
    recipe = re.search(r"^lint:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M)
    assert recipe is not None and "lint-imports" in recipe.group(1)
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert any(c["type"] == "layers" for c in contracts["contracts"])


def test_import_layers_contract_is_kept(capsys) -> None:
    from importlinter.cli import lint_imports

    code = lint_imports(str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)
    assert code == 0, capsys.readouterr().out
