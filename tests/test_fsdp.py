"""FSDP2 (``fully_shard``): methods on sharded models equal one process (2 and 3 gloo ranks).

Every rank trains on the replicated global batch, so FSDP2's reduce-scatter averages equal
gradients: on 2 ranks that is the one-process gradient exactly ((g + g) / 2 = g in floats) and
the whole run is bit-identical; on 3 ranks (g + g + g) / 3 can differ from g in the last bit,
so weights agree to float rounding while every mask decision is still identical.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import _fsdp_cases
from _fsdp_cases import CASES

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")


@pytest.fixture(scope="module", params=[2, 3])
def ranks(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    world = request.param
    out = tmp_path_factory.mktemp(f"fsdp{world}")
    mp.spawn(_fsdp_cases.run, args=(world, str(out)), nprocs=world, join=True)
    return world, out


def _load(ranks, case: str) -> list[dict[str, Any]]:
    world, out = ranks
    results = [torch.load(Path(out) / f"{case}-{r}.pt", weights_only=False) for r in range(world)]
    for r in results:
        assert "crash" not in r, r.get("crash")
    return results


@pytest.fixture(scope="module")
def one_process() -> dict[str, dict[str, Any]]:
    return {case: _fsdp_cases.train(case, shard=False) for case in CASES}


@pytest.mark.parametrize("case", list(CASES))
def test_sharded_run_equals_one_process(ranks, one_process, case: str) -> None:
    world, _ = ranks
    ref = one_process[case]
    for r in _load(ranks, case):
        for name, mask in ref["masks"].items():
            assert torch.equal(r["masks"][name], mask), name
        for name, w in ref["weights"].items():
            if world == 2:
                assert torch.equal(r["weights"][name], w), name
            else:
                torch.testing.assert_close(r["weights"][name], w, rtol=0, atol=1e-6)
        assert r["nnz"] == ref["nnz"]
        assert r["pruned_state"] == 0.0  # optimizer state exactly zero at pruned entries
        assert r["history"] == ref["history"]
        if world == 2:
            assert r["losses"] == ref["losses"]


def test_masks_live_on_the_shards(ranks) -> None:
    numel = [7 * 8, 11 * 7, 5 * 11]
    sizes = [r["local_mask_numel"] for r in _load(ranks, "gmp-layer-sgd")]
    assert [sum(s[i] for s in sizes) for i in range(3)] == numel  # no rank holds a full mask
    assert all(max(s[i] for s in sizes) < numel[i] for i in range(3))


def test_a_corrupted_shard_is_caught_at_the_next_update_on_every_rank(ranks) -> None:
    for r in _load(ranks, "corrupted"):
        assert r["step"] == 8
        assert r["error"] == (
            "gmp: a shard's mask changed outside the method before step 8: tensor '0.weight' "
            "has 31 live weights over the shards, the last decision left 32. rank_check=False "
            "turns this check off"
        )


@pytest.mark.parametrize(
    ("case", "text"),
    [
        (
            "refused-dnw",
            "dnw: FSDP2 (fully_shard) is not supported for this method yet: its forward uses a "
            "function of the raw weights",
        ),
        ("refused-st3", "st3: FSDP2 (fully_shard) is not supported for this method yet: "),
        ("refused-structure", "gmp: structure='1:4' is not supported under FSDP2 yet"),
        ("refused-random-prune", "dst: prune criterion 'random' draws one random score per "),
    ],
)
def test_what_is_not_served_is_refused_in_one_line(ranks, case: str, text: str) -> None:
    for r in _load(ranks, case):
        assert r["error"] is not None and r["error"].startswith(text)
        assert "\n" not in r["error"]


@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[int, int], dict[str, Any]]:
    """Checkpoints saved with DCP on 2 (and 1) ranks, loaded on 1, 2 and 3 ranks."""
    out: dict[tuple[int, int], dict[str, Any]] = {}
    for src, targets in ((2, (2, 3, 1)), (1, (2,))):
        d = tmp_path_factory.mktemp(f"dcp{src}")
        mp.spawn(_fsdp_cases.save_checkpoint, args=(src, str(d)), nprocs=src, join=True)
        for world in targets:
            mp.spawn(_fsdp_cases.load_checkpoint, args=(world, str(d)), nprocs=world, join=True)
            out[src, world] = torch.load(d / f"load{world}-0.pt", weights_only=False)
    return out


@pytest.mark.parametrize(("src", "world"), [(2, 2), (2, 3), (2, 1), (1, 2)])
def test_dcp_checkpoint_resumes_and_reshards(resumed, one_process, src: int, world: int) -> None:
    ref = one_process[_fsdp_cases.RESUME_CASE]
    got = resumed[src, world]
    assert got["step"] == _fsdp_cases.STEPS
    for name, mask in ref["masks"].items():
        assert torch.equal(got["masks"][name], mask), name
    for name, w in ref["weights"].items():
        if world == 3:  # 3 replicas: (g + g + g) / 3 rounds (module docstring)
            torch.testing.assert_close(got["weights"][name], w, rtol=0, atol=1e-6)
        else:
            assert torch.equal(got["weights"][name], w), name


def test_sharding_after_attach_is_caught_at_the_first_step(ranks) -> None:
    for r in _load(ranks, "sharded-after-attach"):
        assert r["error"] is not None
        assert "was replaced after attach (FSDP fully_shard?); shard the model first" in r["error"]
