"""Export: squash, sparse inference conversion, compressed checkpoints and their failure modes."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils import parametrize

import sparsetrain
from sparsetrain.export import compressed as compressed_mod
from sparsetrain.export import (
    load_compressed,
    save_compressed,
    squash,
    to_sparse_inference,
)
from sparsetrain.sparse import SparseInferenceLinear, SparseLinear, random_mask, swap_to_sparse


def mlp(width: int = 32) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, width), nn.ReLU(), nn.Linear(width, 4))


def attached(model: nn.Module, name: str = "static", sparsity: float = 0.9, **kw):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    method = sparsetrain.create_method(name, sparsity=sparsity, total_steps=10, **kw)
    return method.attach(model, opt), opt


def train_steps(model: nn.Module, opt: torch.optim.Optimizer, n: int = 3) -> None:
    for _ in range(n):
        opt.zero_grad()
        model(torch.randn(8, 16)).square().mean().backward()
        opt.step()


def no_sparsetrain_left(model: nn.Module) -> bool:
    for m in model.modules():
        if isinstance(m, SparseLinear | SparseInferenceLinear) or parametrize.is_parametrized(m):
            return False
        if m._forward_hooks or m._forward_pre_hooks:
            return False
    return sparsetrain.attached_method(model) is None


# ---------------------------------------------------------------------------------- squash


@pytest.mark.parametrize("via_method", [True, False])
def test_squash_hard_mask_method(via_method):
    model = mlp()
    method, opt = attached(model)
    train_steps(model, opt)
    x = torch.randn(5, 16)
    expected = model(x)
    masks = {t.name: t.mask.clone() for t in method.targets}
    out = squash(method if via_method else model)
    assert out is model and no_sparsetrain_left(model)
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    torch.testing.assert_close(model(x), expected)
    assert bool((model[0].weight[~masks["0.weight"]] == 0).all())
    n_hooks = len(opt._optimizer_step_pre_hooks) + len(opt._optimizer_step_post_hooks)
    assert n_hooks == 0


def test_squash_parametrized_method_bakes_effective_weight():
    model = mlp()
    method = None
    for name in ("dnw", "st3"):
        try:
            method, opt = attached(model, name, sparsity=0.5)
            break
        except (ValueError, TypeError, KeyError):
            continue
    if method is None or method.hard_mask:
        pytest.skip("no parametrized method builds with default options")
    train_steps(model, opt, 2)
    x = torch.randn(5, 16)
    expected = model(x).detach()
    squash(model)
    assert no_sparsetrain_left(model)
    torch.testing.assert_close(model(x), expected)


def test_squash_sparse_layers_back_to_linear():
    model = mlp()
    with torch.no_grad():
        model[0].weight.mul_(random_mask((32, 16), 0.2))
    x = torch.randn(3, 16)
    expected = model(x)
    swap_to_sparse(model, "0")
    model[2] = SparseInferenceLinear(model[2].weight, model[2].bias)
    squash(model)
    assert (
        no_sparsetrain_left(model) and type(model[0]) is nn.Linear and type(model[2]) is nn.Linear
    )
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
    assert isinstance(squash(SparseLinear(3, 2, torch.ones(2, 3, dtype=torch.bool))), nn.Linear)


def test_squash_errors():
    with pytest.raises(ValueError, match="nothing to squash in Sequential"):
        squash(mlp())
    method = sparsetrain.create_method("static", sparsity=0.5, total_steps=10)
    with pytest.raises(ValueError, match="'static' method is not attached"):
        squash(method)
    with pytest.raises(TypeError, match="got int"):
        squash(42)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- inference


def test_to_sparse_inference_always_converts_and_matches():
    model = mlp(64)
    method, opt = attached(model)
    train_steps(model, opt)
    squash(method)
    x = torch.randn(7, 16)
    expected = model(x)
    decisions = to_sparse_inference(model, mode="always")
    assert [(d.name, d.choice) for d in decisions] == [("0", "sparse"), ("2", "sparse")]
    assert isinstance(model[0], SparseInferenceLinear)
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(x[:1]), expected[:1], atol=1e-5, rtol=1e-5)


def test_to_sparse_inference_keeps_attention_and_tied_layers_dense():
    from lm_models import lm_batch, make_lm

    model = make_lm("transformer")  # head tied to the embedding; attention's out_proj
    method = sparsetrain.create_method("static", sparsity=0.8, include=["*"]).attach(model)
    squash(method)
    model.eval()
    x, _ = lm_batch(0)
    with torch.no_grad():
        expected = model(x)
    decisions = to_sparse_inference(model, mode="always")
    choices = {d.name: d.choice for d in decisions}
    assert choices == {
        "attn.out_proj": "dense",
        "ff.0": "sparse",
        "ff.2": "sparse",
        "head": "dense",
    }
    assert type(model.attn.out_proj) is not SparseInferenceLinear
    assert model.head.weight is model.emb.weight
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


def test_to_sparse_inference_measures_per_layer():
    model = mlp(64)
    with torch.no_grad():
        model[0].weight.mul_(random_mask((64, 16), 0.1))
    decisions = to_sparse_inference(model, batch_size=4, repeats=2, warmup=0)
    first, last = decisions
    assert first.choice in ("sparse", "dense") and first.dense_ms > 0
    assert isinstance(model[0], SparseInferenceLinear) == (first.choice == "sparse")
    assert last.choice == "dense" and type(model[2]) is nn.Linear  # no zeros: kept, unmeasured
    table = sparsetrain.export.format_decisions(decisions)
    assert table.count("\n") == 3


def test_to_sparse_inference_errors():
    model = mlp()
    with pytest.raises(ValueError, match="no Linear weight of Sequential has zeros"):
        to_sparse_inference(model)
    with pytest.raises(ValueError, match="unknown mode 'fast'"):
        to_sparse_inference(model, mode="fast")
    with pytest.raises(ValueError, match=r"no nn\.Linear layer"):
        to_sparse_inference(nn.Sequential(nn.ReLU()))
    attached(model)
    with pytest.raises(ValueError, match="'static' method attached; call squash"):
        to_sparse_inference(model)


# ---------------------------------------------------------------------------------- checkpoint


def test_compressed_round_trip_exact_values_and_masks(tmp_path):
    model = mlp()
    method, opt = attached(model)
    train_steps(model, opt)
    t0 = method.targets[0]
    live = t0.mask.nonzero()[0]
    with torch.no_grad():
        t0.param[live[0], live[1]] = 0.0  # a live weight that is exactly zero
    path = tmp_path / "model.safetensors"
    enc = save_compressed(model, path)
    assert enc == {
        "0.weight": "bitmask",
        "0.bias": "dense",
        "2.weight": "bitmask",
        "2.bias": "dense",
    }
    fresh = mlp()
    masks = load_compressed(fresh, path)
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert set(masks) == {"0.weight", "2.weight"}
    for t in method.targets:
        assert torch.equal(masks[t.name], t.mask)
    # into a model with the method attached: its masks are restored too
    other = mlp()
    m2, _ = attached(other, seed=5)
    load_compressed(other, path)
    assert all(torch.equal(a.mask, b.mask) for a, b in zip(m2.targets, method.targets, strict=True))


def test_file_is_small_at_90_percent_and_csr_wins_at_98(tmp_path):
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256))
    attached(model, distribution="uniform")
    dense_path, path = tmp_path / "dense.safetensors", tmp_path / "sparse.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, dense_path)
    save_compressed(model, path)
    ratio = path.stat().st_size / dense_path.stat().st_size
    assert ratio <= 0.15, ratio
    model98 = nn.Sequential(nn.Linear(256, 256))
    attached(model98, sparsity=0.98, distribution="uniform")
    enc = save_compressed(model98, tmp_path / "98.safetensors")
    assert enc["0.weight"] == "csr"
    fresh = nn.Sequential(nn.Linear(256, 256))
    load_compressed(fresh, tmp_path / "98.safetensors")
    assert torch.equal(fresh[0].weight, model98[0].weight)


def test_squashed_model_and_sparse_layers_round_trip(tmp_path):
    model = mlp()
    with torch.no_grad():
        model[0].weight.mul_(random_mask((32, 16), 0.1))
    save_compressed(model, tmp_path / "a.safetensors")  # masks from nonzeros
    swap_to_sparse(model, "0")
    enc = save_compressed(model, tmp_path / "b.safetensors")
    assert list(enc) == ["0.weight", "0.bias", "2.weight", "2.bias"]  # logical, original names
    dense = mlp()
    load_compressed(dense, tmp_path / "b.safetensors")
    assert torch.equal(dense[0].weight, model[0].to_dense())
    other = mlp()
    swap_to_sparse(other, "0", random_mask((32, 16), 0.5))  # other nnz: rebuilt from the file
    load_compressed(other, tmp_path / "a.safetensors")
    assert other[0].nnz == model[0].nnz and torch.equal(other[0].to_dense(), dense[0].weight)


def test_mismatched_model_names_first_difference(tmp_path):
    model = mlp()
    attached(model)
    path = tmp_path / "m.safetensors"
    save_compressed(model, path)
    renamed = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Sequential(nn.Linear(32, 4)))
    with pytest.raises(ValueError, match=r"model tensor '2\.0\.weight' is missing"):
        load_compressed(renamed, path)
    wider = mlp(48)
    with pytest.raises(ValueError, match=r"'0\.weight' has shape \(32, 16\) in .* but \(48, 16\)"):
        load_compressed(wider, path)
    fewer = nn.Sequential(nn.Linear(16, 32))
    with pytest.raises(ValueError, match=r"checkpoint tensor '2\.weight' is not in the model"):
        load_compressed(fewer, path)
    double = mlp().double()
    with pytest.raises(ValueError, match=r"is float32 in .* but float64"):
        load_compressed(double, path)


def test_corrupt_and_truncated_files(tmp_path):
    model = mlp()
    attached(model)
    path = tmp_path / "m.safetensors"
    save_compressed(model, path)
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_compressed(mlp(), cut)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 3)
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_compressed(mlp(), junk)
    plain = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in mlp().state_dict().items()}, plain)
    with pytest.raises(ValueError, match="no sparsetrain header"):
        load_compressed(mlp(), plain)
    with pytest.raises(FileNotFoundError):
        load_compressed(mlp(), tmp_path / "missing.safetensors")


def _rewrite_header(src: Path, dst: Path, edit) -> None:
    """Copy a safetensors file with its sparsetrain header edited (data untouched)."""
    raw = src.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    meta = json.loads(raw[8 : 8 + n])
    header = json.loads(meta["__metadata__"]["sparsetrain"])
    edit(header)
    meta["__metadata__"]["sparsetrain"] = json.dumps(header)
    new = json.dumps(meta).encode()
    new += b" " * (-len(new) % 8)
    dst.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])


def test_inconsistent_header_and_future_version(tmp_path):
    model = mlp()
    attached(model)
    path = tmp_path / "m.safetensors"
    save_compressed(model, path)

    def wrong_shape(h):
        h["tensors"][0]["encoding"] = "csr"

    def future(h):
        h["format_version"] = 99

    for edit, match in [(wrong_shape, "CSR arrays of '0.weight' missing"), (future, "version 99")]:
        bad = tmp_path / "bad.safetensors"
        _rewrite_header(path, bad, edit)
        with pytest.raises(ValueError, match=match):
            load_compressed(mlp(), bad)


def test_write_is_atomic(tmp_path, monkeypatch):
    model = mlp()
    attached(model)
    path = tmp_path / "m.safetensors"
    save_compressed(model, path)
    before = path.read_bytes()

    def failing_save(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(compressed_mod, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_compressed(model, path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]
    with pytest.raises(OSError, match="disk full"):
        save_compressed(model, tmp_path / "new.safetensors")
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]


def test_save_errors(tmp_path):
    with pytest.raises(ValueError, match="nothing to compress in Sequential"):
        save_compressed(mlp(), tmp_path / "d.safetensors")
    assert save_compressed(mlp(), tmp_path / "d.safetensors", require_sparse=False)["0.weight"] == (
        "dense"
    )
    model = mlp()
    with pytest.raises(ValueError, match="mask 'nope' names no tensor"):
        save_compressed(model, tmp_path / "x.safetensors", masks={"nope": torch.ones(1).bool()})
    with pytest.raises(ValueError, match=r"mask '0\.weight' must be a bool tensor of shape"):
        save_compressed(model, tmp_path / "x.safetensors", masks={"0.weight": torch.ones(3, 3)})
    mask = torch.zeros(32, 16, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"'0\.weight' has nonzeros outside its mask"):
        save_compressed(model, tmp_path / "x.safetensors", masks={"0.weight": mask})
    assert not (tmp_path / "x.safetensors").exists()
