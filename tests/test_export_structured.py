"""Structured exports: the N:M encoding of compressed checkpoints, 2:4 and block-sparse layers."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open
from torch import nn

from sparsetrain import create_method
from sparsetrain.export import (
    format_decisions,
    load_compressed,
    save_compressed,
    squash,
    to_block_sparse_inference,
    to_semi_structured,
)
from sparsetrain.masking.structure import expand_blocks, nm_mask
from sparsetrain.sparse.blocks import BlockSparseInferenceLinear


def _header(path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["sparsetrain"])


def _nm_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Flatten(), nn.Linear(8 * 36, 16), nn.Linear(16, 4))
    with torch.no_grad():
        model[0].weight.mul_(nm_mask(model[0].weight.abs(), 2, 4))
        model[2].weight.mul_(nm_mask(model[2].weight.abs(), 1, 4))
    return model


def test_nm_tensors_round_trip_as_group_ranks_smaller_than_a_bitmask(tmp_path):
    model = _nm_model()
    path = tmp_path / "nm.safetensors"
    chosen = save_compressed(model, path)
    assert chosen["0.weight"] == chosen["2.weight"] == "nm"
    header = _header(path)
    assert header["format_version"] == 2
    entries = {e["name"]: e for e in header["tensors"]}
    assert (entries["0.weight"]["n"], entries["0.weight"]["m"]) == (2, 4)
    assert (entries["2.weight"]["n"], entries["2.weight"]["m"]) == (1, 4)
    with safe_open(str(path), framework="pt") as f:
        pattern = f.get_tensor("0.weight::pattern")
    groups = 8 * 4 * 9 // 4  # 2:4: C(4, 2) = 6 subsets, 3 bits per group
    assert pattern.numel() == math.ceil(groups * 3 / 8) < math.ceil(8 * 4 * 9 / 8)
    fresh = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Flatten(), nn.Linear(8 * 36, 16), nn.Linear(16, 4))
    masks = load_compressed(fresh, path)
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(masks["0.weight"], model[0].weight != 0)


def test_a_checkpoint_without_nm_tensors_keeps_format_version_1(tmp_path):
    model = nn.Sequential(nn.Linear(8, 8))
    with torch.no_grad():  # rows with 8, 7, ... live weights: no N:M pattern
        model[0].weight.mul_(torch.ones(8, 8).tril(4) > 0)
    save_compressed(model, tmp_path / "a.safetensors")
    assert _header(tmp_path / "a.safetensors")["format_version"] == 1


def test_a_truncated_nm_pattern_is_reported_as_corrupt(tmp_path):
    from safetensors.torch import save_file

    model = _nm_model()
    path = tmp_path / "nm.safetensors"
    save_compressed(model, path)
    with safe_open(str(path), framework="pt") as f:
        arrays = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        meta = f.metadata()
    arrays["0.weight::pattern"] = arrays["0.weight::pattern"][:-1].clone()
    save_file(arrays, str(path), metadata=meta)
    fresh = _nm_model()
    with pytest.raises(ValueError, match=r"N:M pattern of '0\.weight': pattern missing or of the"):
        load_compressed(fresh, path)


def test_srste_training_squashes_to_an_nm_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    method = create_method("srste", total_steps=5).attach(model, opt)
    for _ in range(5):
        opt.zero_grad()
        model(torch.randn(8, 16)).pow(2).mean().backward()
        opt.step()
    plain = squash(method)
    chosen = save_compressed(plain, tmp_path / "m.safetensors")
    assert chosen["0.weight"] == "nm" and chosen["2.weight"] == "dense"  # classifier dense


def test_to_semi_structured_on_a_cpu_says_the_kernels_are_cuda_only():
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    with torch.no_grad():
        model[0].weight.mul_(nm_mask(model[0].weight.abs(), 2, 4))
    with pytest.raises(RuntimeError) as err:
        to_semi_structured(model)
    assert str(err.value) == (
        "to_semi_structured: 2:4 sparse kernels (torch.sparse.to_sparse_semi_structured) are "
        "CUDA-only; the 2:4 layers are on cpu"
    )
    with pytest.raises(ValueError, match=r"no nn.Linear weight of Sequential is 2:4 \(1 layers\)"):
        to_semi_structured(nn.Sequential(nn.Linear(8, 8)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="2:4 kernels need CUDA")
def test_to_semi_structured_on_cuda_keeps_the_outputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 64)).cuda().half()
    with torch.no_grad():
        for i in (0, 2):
            model[i].weight.mul_(nm_mask(model[i].weight.abs(), 2, 4))
    x = torch.randn(64, 128, device="cuda", dtype=torch.half)
    expected = model(x)
    assert to_semi_structured(model) == {"0": "2:4", "2": "2:4"}
    torch.testing.assert_close(model(x), expected, rtol=1e-2, atol=1e-2)


def _block_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
    keep = torch.rand(16, 8, generator=torch.Generator().manual_seed(1)) < 0.25
    with torch.no_grad():
        model[0].weight.mul_(expand_blocks(keep, 4, 4, (64, 32)))
    return model


def test_block_sparse_inference_always_converts_and_keeps_the_outputs():
    model = _block_model()
    x = torch.randn(5, 32)
    with torch.no_grad():
        expected = model(x)
    decisions = to_block_sparse_inference(model, (4, 4), mode="always")
    assert [(d.name, d.choice) for d in decisions] == [("0", "sparse"), ("2", "dense")]
    assert isinstance(model[0], BlockSparseInferenceLinear)  # 10 rows: not 4x4 blocks
    keep = torch.rand(16, 8, generator=torch.Generator().manual_seed(1)) < 0.25
    assert model[0].nnz == int(keep.sum()) * 16  # whole 4x4 blocks stored
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)
    state = model.state_dict()
    assert {"0.crow_indices", "0.col_indices", "0.blocks", "0.bias"} <= set(state)


def test_block_sparse_inference_measures_each_layer():
    model = _block_model()
    decisions = to_block_sparse_inference(model, (4, 4), batch_size=8, repeats=3, warmup=1)
    d = decisions[0]
    assert d.dense_ms > 0 and d.sparse_ms > 0 and d.choice in ("sparse", "dense")
    assert isinstance(model[0], BlockSparseInferenceLinear) == (d.choice == "sparse")
    assert "| 0 | 64x32 |" in format_decisions(decisions)
    with pytest.raises(ValueError, match=r"blocksize must be a pair of ints >= 1, got \(4,\)"):
        to_block_sparse_inference(model, (4,))  # type: ignore[arg-type]
