"""Checkpoints: one dict, atomic writes, weights-only loads, RNG round trips, clear errors.

The end-to-end straight-vs-resumed identity runs through the CLI in
``tests/integration/test_cli.py``; here the pieces are checked on their own.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sparsetrain.train.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    get_rng_state,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from sparsetrain.train.metrics import count_flops


def draws() -> tuple[list[float], list[float], list[float]]:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path: Path) -> None:
    np.random.randn()  # leave a cached Gaussian in NumPy's state
    state = get_rng_state()
    expected = draws()
    save_checkpoint({"rng": state}, tmp_path / "c.pt")
    loaded = load_checkpoint(tmp_path / "c.pt")
    draws()
    set_rng_state(loaded["rng"])
    assert draws() == expected


def test_model_optimizer_and_masks_round_trip(tmp_path: Path, tiny_mlp: nn.Sequential) -> None:
    opt = torch.optim.SGD(tiny_mlp.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    tiny_mlp(torch.randn(4, 8)).sum().backward()
    opt.step()
    mask = torch.rand(6, 8) < 0.5
    save_checkpoint(
        {"model": tiny_mlp.state_dict(), "optimizer": opt.state_dict(), "masks": {"w": mask}},
        tmp_path / "c.pt",
    )
    state = load_checkpoint(tmp_path / "c.pt")
    assert state["format_version"] == FORMAT_VERSION
    assert torch.equal(state["masks"]["w"], mask)
    for k, v in tiny_mlp.state_dict().items():
        assert torch.equal(state["model"][k], v)
    fresh = torch.optim.SGD(tiny_mlp.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    fresh.load_state_dict(state["optimizer"])
    assert torch.equal(
        fresh.state_dict()["state"][0]["momentum_buffer"],
        opt.state_dict()["state"][0]["momentum_buffer"],
    )


def test_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint({"step": 1}, path)

    def crash(obj: object, f: object) -> None:
        f.write(b"partial")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temp file left


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_damaged_file_is_one_clear_error(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint({"model": {"w": torch.randn(100, 100)}}, path)
    data = path.read_bytes()
    path.write_bytes(
        {"truncated": data[: len(data) // 2], "garbage": b"hello", "empty": b""}[damage]
    )
    with pytest.raises(CheckpointError, match="cannot be read: the file is truncated") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)


def test_foreign_missing_and_future_files(tmp_path: Path) -> None:
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="is not a sparsetrain checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"format": "sparsetrain.checkpoint", "format_version": 99}, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(tmp_path / "new.pt")


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    torch.save({"format": "sparsetrain.checkpoint", "x": nn.Linear(2, 2)}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="cannot be read: the file is truncated"):
        load_checkpoint(tmp_path / "c.pt")


# The FLOPs counter summarises the final masks in summary.json.


def test_flops_count_masked_multiply_adds(tiny_cnn: nn.Sequential) -> None:
    with torch.no_grad():
        tiny_cnn[0].weight[0].zero_()  # one of 3 conv filters (9 weights each) pruned
    flops = count_flops(tiny_cnn, (1, 6, 6))
    conv_dense, fc_dense = 27 * 16, 48 * 4  # weights x output positions (4x4 for the conv)
    assert flops["dense"] == conv_dense + fc_dense
    assert flops["sparse"] == 18 * 16 + fc_dense
    assert [x["name"] for x in flops["layers"]] == ["0", "3"]
    assert tiny_cnn.training
