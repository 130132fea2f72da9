"""Sharded top-k (``sparsetrain.sharded``) equals the one-process selection on 1, 2 and 3 ranks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import _sharded_cases
from _sharded_cases import CASES, candidates, tensors
from sparsetrain.masking.sharded import sharded_topk, sortable_keys
from sparsetrain.masking.topk import global_topk_masks, topk_indices

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")


def expected(case: str) -> list[torch.Tensor]:
    """The one-process selection on the full tensors (masking.topk)."""
    c = CASES[case]
    full = tensors(3, c["ties"])
    cand = candidates(3) if c["cand"] else [None] * len(full)
    if isinstance(c["ks"], int):
        return global_topk_masks(full, c["ks"], None if not c["cand"] else cand)
    out = []
    for t, k, m in zip(full, c["ks"], cand, strict=True):
        sel = torch.zeros(t.numel(), dtype=torch.bool)
        flat_c = None if m is None else m.reshape(-1)
        sel[topk_indices(t.reshape(-1), k, flat_c, largest=c["largest"])] = True
        out.append(sel.view(t.shape))
    return out


@pytest.fixture(scope="module", params=[2, 3])
def ranks(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    world = request.param
    out = tmp_path_factory.mktemp(f"sharded{world}")
    mp.spawn(_sharded_cases.run, args=(world, str(out)), nprocs=world, join=True)
    return world, out


@pytest.mark.parametrize("case", list(CASES))
def test_sharded_selection_equals_one_process(ranks, case: str) -> None:
    world, out = ranks
    parts = [torch.load(Path(out) / f"{case}-{r}.pt", weights_only=False) for r in range(world)]
    for p in parts:
        assert not isinstance(p, dict), p
    for i, want in enumerate(expected(case)):
        got = torch.cat([p[i] for p in parts])
        assert torch.equal(got, want), (case, i)


@pytest.mark.parametrize("case", list(CASES))
def test_without_a_process_group_it_is_the_one_process_selection(case: str) -> None:
    c = CASES[case]
    full = tensors(3, c["ties"])
    cand = candidates(3) if c["cand"] else None
    got = sharded_topk(full, c["ks"], candidates=cand, largest=c["largest"])
    for g, want in zip(got, expected(case), strict=True):
        assert torch.equal(g, want)


def test_keys_order_floats_and_refuse_too_many() -> None:
    x = torch.tensor([float("-inf"), -3.5, -0.0, 0.0, 1e-30, 2.0, float("inf")])
    k = sortable_keys(x)
    assert bool((k[1:] >= k[:-1]).all()) and k[2] == k[3]
    assert bool((sortable_keys(x, largest=False)[1:] <= sortable_keys(x, largest=False)[:-1]).all())
    with pytest.raises(ValueError, match="cannot select 5 entries out of 4 candidates"):
        sharded_topk([torch.ones(4)], [5])


@pytest.mark.parametrize("case", ["layer-ties", "global-candidates"])
def test_the_bisection_fallback_gives_the_same_selection(monkeypatch, case: str) -> None:
    from sparsetrain.masking import sharded

    monkeypatch.setattr(sharded, "_EXACT", 0)  # nothing is small enough to gather
    monkeypatch.setattr(sharded, "_sample_bracket", lambda inside, *_: [None] * len(inside))
    c = CASES[case]
    full = tensors(3, c["ties"])
    cand = candidates(3) if c["cand"] else None
    got = sharded_topk(full, c["ks"], candidates=cand, largest=c["largest"])
    for g, want in zip(got, expected(case), strict=True):
        assert torch.equal(g, want)
