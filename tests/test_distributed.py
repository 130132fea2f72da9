"""Multi-process behaviour on 2 gloo processes (one spawn for the whole module).

Every case starts each rank from its own initialisation, method seed and data; the ranks must
end with identical masks, weights, optimizer state and method state (see
``sparsetrain.distributed``). The cases run in ``tests/_ddp_cases.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import _ddp_cases
from _ddp_cases import METHODS

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_ddp_cases.run, args=(2, str(out)), nprocs=2, join=True)
    return out


def _load(out: Path, case: str) -> list[dict[str, Any]]:
    ranks = [torch.load(out / f"{case}-{r}.pt", weights_only=False) for r in range(2)]
    for r in ranks:
        assert "crash" not in r, r.get("crash")
    return ranks


def _assert_same(a: Any, b: Any, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.parametrize("where", ["before", "after"])
@pytest.mark.parametrize("case", [c for c, _, _ in METHODS])
def test_ranks_end_identical(results: Path, case: str, where: str) -> None:
    r0, r1 = _load(results, f"{case}-{where}")
    assert r0["seed"] == r1["seed"] == 0  # rank 0's seed on every rank
    for key in ("masks", "weights", "opt", "method"):
        _assert_same(r0[key], r1[key], f"{case}-{where} {key}")
    assert any(bool((~m).any()) for m in r0["masks"].values())  # something was pruned


def test_topology_updates_happened(results: Path) -> None:
    for case in ("set", "rigl", "gmp", "granet", "optg"):
        r0, _ = _load(results, f"{case}-before")
        assert r0["history"] >= 3, case  # several topology updates in 8 steps


def test_corrupted_mask_is_caught_on_every_rank(results: Path) -> None:
    for r in _load(results, "corrupted"):
        assert r["error"] is not None
        assert r["step"] == 2  # the first update after the corruption
        assert "first difference in tensor '2.weight'" in r["error"]
        assert "step 2" in r["error"]


@pytest.mark.parametrize("execution", ["sparse", "auto"])
def test_sparse_execution_refused(results: Path, execution: str) -> None:
    for r in _load(results, f"{execution}-refused"):
        assert r["error"] is not None
        assert f"execution={execution!r} is not supported with torch.distributed" in r["error"]


def test_fsdp2_refused_at_attach_for_a_method_that_does_not_serve_it(results: Path) -> None:
    for r in _load(results, "fsdp-refused"):
        if "unavailable" in r:
            pytest.skip(r["unavailable"])
        assert r["error"] is not None
        assert r["error"].startswith("st3: FSDP2 (fully_shard) is not supported for this method")
