"""Sparse execution (``execution="sparse" | "auto"``) of hard-mask methods vs masked-dense."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsetrain
from sparsetrain.sparse import SparseLinear

STEPS = 50


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)
    )


def _data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(32, 64, generator=g), torch.randint(0, 10, (32,), generator=g))
        for _ in range(STEPS)
    ]


def _method(name: str, execution: str, **extra: object) -> sparsetrain.SparsityMethod:
    opts = {"update_interval": 10} if name in ("set", "rigl") else {}
    return sparsetrain.create_method(
        name, sparsity=0.8, total_steps=STEPS, seed=3, execution=execution, **opts, **extra
    )


def _train(
    model: nn.Module,
    method: sparsetrain.SparsityMethod,
    opt: torch.optim.Optimizer,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[list[float], list[dict[str, torch.Tensor]]]:
    losses, masks = [], []
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        method.apply_pending()  # a deferred update takes effect (see apply_pending)
        losses.append(loss.item())
        masks.append({t.name: t.mask.clone() for t in method.targets})
    return losses, masks


def _run(name: str, execution: str, steps: int = STEPS):
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    method = _method(name, execution).attach(model, opt)
    losses, masks = _train(model, method, opt, _data()[:steps])
    return model, opt, method, losses, masks


@pytest.mark.parametrize("name", ["static", "set", "rigl"])
def test_sparse_matches_masked_dense_over_50_steps(name):
    _, _, dense_m, dense_losses, dense_masks = _run(name, "dense")
    model, _, sparse_m, sparse_losses, sparse_masks = _run(name, "sparse")
    assert all(isinstance(model[i], SparseLinear) for i in (0, 2, 4))
    torch.testing.assert_close(
        torch.tensor(sparse_losses), torch.tensor(dense_losses), rtol=1e-5, atol=1e-6
    )
    for step, (a, b) in enumerate(zip(dense_masks, sparse_masks, strict=True), start=1):
        for k in a:
            assert torch.equal(a[k], b[k]), f"mask {k} differs at step {step}"
    assert len(dense_m.history) == len(sparse_m.history)
    if name != "static":
        assert len(sparse_m.history) >= 3  # several topology updates happened
    # the layers' structure is the method's mask, and the weights agree
    for t in sparse_m.targets:
        layer = sparse_m.sparse_layers()[t.name]
        assert torch.equal(layer.mask(), t.mask)
    dense_w = {t.name: t.param.detach() for t in dense_m.targets}
    sparse_w = {n: layer.to_dense() for n, layer in sparse_m.sparse_layers().items()}
    for k in dense_w:
        torch.testing.assert_close(sparse_w[k], dense_w[k], rtol=1e-4, atol=1e-5)


# GMP / GraNet: dense start, pruning every 4 steps to 90% at step 24; GraNet also drops and
# regrows (dense gradient) on every update step, after the pruning window too
SHRINKING = {"update_interval": 4, "end_step": 24, "sparsity": 0.9}


def _run_shrinking(name: str, execution: str, steps: int = STEPS, **extra: object):
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    method = sparsetrain.create_method(
        name, total_steps=STEPS, seed=3, execution=execution, **SHRINKING, **extra
    ).attach(model, opt)
    losses, masks = _train(model, method, opt, _data()[:steps])
    return model, opt, method, losses, masks


@pytest.mark.parametrize("name", ["gmp", "granet"])
def test_shrinking_methods_switch_layers_to_sparse_and_match_dense(name):
    _, _, dense_m, dense_losses, dense_masks = _run_shrinking(name, "dense")
    model, opt, sparse_m, sparse_losses, sparse_masks = _run_shrinking(name, "sparse")
    torch.testing.assert_close(
        torch.tensor(sparse_losses), torch.tensor(dense_losses), rtol=1e-5, atol=1e-6
    )
    for step, (a, b) in enumerate(zip(dense_masks, sparse_masks, strict=True), start=1):
        for k in a:
            assert torch.equal(a[k], b[k]), f"mask {k} differs at step {step}"
    assert [h["step"] for h in dense_m.history] == [h["step"] for h in sparse_m.history]
    rows = {r["layer"]: r for r in sparse_m.execution_decisions}
    for i in (0, 2, 4):  # every layer moved at the first step that left it at density <= 0.3
        name_i = f"{i}.weight"
        first = next(s for s, m in enumerate(dense_masks, 1) if m[name_i].float().mean() <= 0.3)
        assert isinstance(model[i], SparseLinear)
        assert rows[name_i]["decision"] == "sparse"
        assert rows[name_i]["note"].startswith(f"sparse from step {first} ")
    # the optimizer trains the live values only
    assert [p.shape for p in opt.param_groups[0]["params"][::2]] == [
        (model[i].nnz,) for i in (0, 2, 4)
    ]
    dense_w = {t.name: t.param.detach() for t in dense_m.targets}
    for t in sparse_m.targets:
        layer = sparse_m.sparse_layers()[t.name]
        assert torch.equal(layer.mask(), t.mask)
        torch.testing.assert_close(layer.to_dense(), dense_w[t.name], rtol=1e-4, atol=1e-5)


def test_shrinking_methods_keep_dense_layers_until_the_density_limit():
    model, _, method, _, _ = _run_shrinking("gmp", "sparse", steps=4)  # one prune: density 0.7+
    assert all(type(model[i]) is nn.Linear for i in (0, 2, 4))
    assert all("dense until density <= 0.3" in r["note"] for r in method.execution_decisions)
    erk = {"initial_sparsity": 0.8, "regrow_fraction": 0.3}  # GraNet from an ERK mask
    model, _, method, _, _ = _run_shrinking("granet", "sparse", steps=2, **erk)
    dens = {t.name: t.nnz / t.numel for t in method.targets}
    for i in (0, 2, 4):
        expected = SparseLinear if dens[f"{i}.weight"] <= 0.3 else nn.Linear
        assert type(model[i]) is expected


def test_shrinking_methods_auto_measure_layers_once_pruned_to_half():
    model, _, method, _, _ = _run_shrinking("gmp", "auto", steps=30, execution_batch_size=32)
    for i, row in zip((0, 2, 4), method.execution_decisions, strict=True):
        assert row["dense_ms"] > 0 and row["sparse_ms"] > 0  # measured during the run
        assert isinstance(model[i], SparseLinear) == (row["decision"] == "sparse")
        if row["decision"] == "dense":
            assert row["note"].startswith("measured dense at step")


@pytest.mark.parametrize(("name", "at"), [("gmp", 10), ("gmp", 14), ("granet", 10)])
def test_shrinking_methods_resume_in_sparse_mode(name, at):
    _, _, _, full_losses, full_masks = _run_shrinking(name, "sparse")
    model, opt, method, _, _ = _run_shrinking(name, "sparse", steps=at)
    saved = copy.deepcopy(
        {"model": model.state_dict(), "opt": opt.state_dict(), "method": method.state_dict()}
    )
    model2 = _mlp()
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    method2 = sparsetrain.create_method(
        name, total_steps=STEPS, seed=3, execution="sparse", **SHRINKING
    ).attach(model2, opt2)
    method2.adopt_execution(saved["method"])
    assert method2.state_dict()["execution"] == saved["method"]["execution"]
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    method2.load_state_dict(saved["method"])
    losses, masks = _train(model2, method2, opt2, _data()[at:])
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(full_losses[at:]))
    for a, b in zip(masks, full_masks[at:], strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(isinstance(model2[i], SparseLinear) for i in (0, 2, 4))


@pytest.mark.parametrize("name", ["static", "rigl"])
def test_resume_in_sparse_mode_continues_exactly(name):
    _, _, _, full_losses, full_masks = _run(name, "sparse")
    model, opt, method, _, _ = _run(name, "sparse", steps=25)
    saved = copy.deepcopy(
        {"model": model.state_dict(), "opt": opt.state_dict(), "method": method.state_dict()}
    )
    assert saved["method"]["execution"]["0.weight"] == "sparse"
    model2 = _mlp()
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    method2 = _method(name, "sparse").attach(model2, opt2)
    method2.adopt_execution(saved["method"])
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    method2.load_state_dict(saved["method"])
    assert method2.step == 25
    losses, masks = _train(model2, method2, opt2, _data()[25:])
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(full_losses[25:]))
    for a, b in zip(masks, full_masks[25:], strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_squash_gives_plain_linear_with_original_names_and_zeros():
    model, _, method, _, _ = _run("set", "sparse", steps=12)
    x = torch.randn(5, 64)
    expected = model(x).detach()
    masks = {t.name: t.mask.clone() for t in method.targets}
    original = model[0]
    plain = sparsetrain.squash(method) if hasattr(sparsetrain, "squash") else method.squash()
    assert sparsetrain.attached_method(plain) is None
    assert all(type(plain[i]) is nn.Linear for i in (0, 2, 4))
    assert [n for n, _ in plain.named_parameters()] == [n for n, _ in _mlp().named_parameters()]
    assert plain[0] is not original  # the sparse layer was replaced by the original Linear
    for name, m in masks.items():
        w = plain.get_parameter(name)
        assert torch.all(w[~m] == 0)
    torch.testing.assert_close(plain(x), expected, rtol=1e-5, atol=1e-6)


def test_detach_puts_back_the_original_modules_and_optimizer_state():
    model = _mlp()
    first = model[0]
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    method = _method("static", "sparse").attach(model, opt)
    _train(model, method, opt, _data()[:3])
    assert isinstance(model[0], SparseLinear)
    method.detach()
    assert model[0] is first
    assert opt.state[first.weight]["momentum_buffer"].shape == first.weight.shape
    assert opt.param_groups[0]["params"][0] is first.weight


@pytest.mark.parametrize("name", ["st3", "optg", "dnw"])
def test_methods_needing_dense_path_refuse_sparse_execution(name):
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    extra = {"steps_per_epoch": 10} if name == "optg" else {}
    method = sparsetrain.create_method(
        name, sparsity=0.8, total_steps=20, execution="sparse", **extra
    )
    with pytest.raises(ValueError, match=rf"method '{name}' .*dense path"):
        method.attach(model, opt)
    assert type(model[0]) is nn.Linear and sparsetrain.attached_method(model) is None


def test_unknown_execution_and_bad_batch_size():
    with pytest.raises(ValueError, match="unknown execution 'fast'; valid: dense, sparse, auto"):
        sparsetrain.create_method("static", sparsity=0.8, execution="fast")
    with pytest.raises(ValueError, match="execution_batch_size"):
        sparsetrain.create_method("static", sparsity=0.8, execution_batch_size=0)
    method = sparsetrain.create_method("static", sparsity=0.8, execution="auto")
    with pytest.raises(ValueError, match="execution_batch_size"):
        method.attach(_mlp())


def test_auto_measures_each_layer_and_reports_it():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    method = sparsetrain.create_method(
        "static", sparsity=0.8, execution="auto", execution_batch_size=32
    ).attach(model, opt)
    rows = method.execution_decisions
    assert [r["layer"] for r in rows] == ["0.weight", "2.weight", "4.weight"]
    for r in rows:
        assert r["decision"] in ("dense", "sparse") and r["dense_ms"] > 0 and r["batch"] == 32
        assert isinstance(model.get_submodule(r["layer"][:-7]), SparseLinear) == (
            r["decision"] == "sparse"
        )
    table = method.execution_report()
    assert "| 0.weight | 128x64 |" in table and "dense ms" in table
    _train(model, method, opt, _data()[:2])  # a mix of dense and sparse layers trains


def test_conv_targets_stay_dense_and_are_reported():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    method = sparsetrain.create_method("static", sparsity=0.8, execution="sparse")
    method.attach(model, opt)
    assert type(model[0]) is nn.Conv2d and isinstance(model[2], SparseLinear)
    conv = method.execution_decisions[0]
    assert conv["decision"] == "dense" and "Conv2d" in conv["note"]
    loss = model(torch.randn(2, 1, 8, 8)).sum()
    loss.backward()
    opt.step()
    assert torch.all(model[0].weight[~method.targets[0].mask] == 0)
    assert method.report().rows[1].nnz == model[2].nnz


class _HeadFirst(nn.Module):
    """An output head registered before the embedding it is tied to, and one Linear used twice
    under two names (``mid`` and ``again``)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(16, 10, bias=False)
        self.emb = nn.Embedding(10, 16)
        self.emb.weight = self.head.weight
        self.mid = nn.Linear(16, 16)
        self.again = self.mid
        self.other = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.mid(self.emb(x)))
        h = torch.relu(self.again(h))
        return self.head(torch.relu(self.other(h)))


def _tied_run(name: str, execution: str, steps: int):
    torch.manual_seed(0)
    model = _HeadFirst()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    # include the embedding too: head.weight = emb.weight is one target
    method = _method(name, execution, include=["*"]).attach(model, opt)
    g = torch.Generator().manual_seed(2)
    losses = []
    for _ in range(steps):
        x = torch.randint(0, 10, (8, 5), generator=g)
        loss = F.cross_entropy(model(x).reshape(-1, 10), ((x + 1) % 10).reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model, opt, method, losses


@pytest.mark.parametrize("name", ["static", "rigl"])
def test_tied_and_shared_weights_keep_the_dense_path(name):
    _, _, _, dense_losses = _tied_run(name, "dense", 20)
    model, opt, method, losses = _tied_run(name, "sparse", 12)
    rows = {r["layer"]: r for r in method.execution_decisions}
    assert [t.name for t in method.targets] == ["head.weight", "mid.weight", "other.weight"]
    assert (
        rows["head.weight"]["decision"] == "dense" and "'emb.weight'" in rows["head.weight"]["note"]
    )
    assert (
        rows["mid.weight"]["decision"] == "dense" and "'again.weight'" in rows["mid.weight"]["note"]
    )
    assert rows["other.weight"]["decision"] == "sparse" and isinstance(model.other, SparseLinear)
    assert model.emb(torch.arange(10)).abs().sum() > 0  # the embedding reads the real weights
    assert model.mid is model.again and type(model.mid) is nn.Linear
    # resume from the state dicts, then squash: same outputs, plain model
    saved = copy.deepcopy((model.state_dict(), opt.state_dict(), method.state_dict()))
    model2, opt2, method2, _ = _tied_run(name, "sparse", 0)
    method2.adopt_execution(saved[2])
    model2.load_state_dict(saved[0])
    opt2.load_state_dict(saved[1])
    method2.load_state_dict(saved[2])
    x = torch.randint(0, 10, (4, 5), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        torch.testing.assert_close(model2(x), model(x))
        expected = model(x)
    plain = method.squash()
    with torch.no_grad():
        torch.testing.assert_close(plain(x), expected, rtol=1e-5, atol=1e-6)
    assert plain.head.weight is plain.emb.weight
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(dense_losses[:12]))
