"""Attach rolls back on failure; ``load_state_dict`` refuses what does not fit, changing nothing."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sparsetrain import attached_method, create_method
from sparsetrain.methods.dynamic import DynamicSparse
from sparsetrain.methods.soft_threshold import STR


class Boom(RuntimeError):
    """Raised by the failing methods below."""


class FailingDST(DynamicSparse):
    """Sets and applies its masks (weights and optimizer state zeroed), then fails."""

    def _on_attach(self) -> None:
        super()._on_attach()
        raise Boom("after partial work")


class FailingSTR(STR):
    """Registers its raw-weight buffers and swaps the effective weights in, then fails."""

    def _on_attach(self) -> None:
        super()._on_attach()
        raise Boom("after partial work")


def _trained(momentum: float = 0.9) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A model and an optimizer that already holds state (one plain training step)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=momentum)
    x, y = torch.randn(16, 8), torch.randint(0, 4, (16,))
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    return model, opt


def _snapshot(model: nn.Module, opt: torch.optim.Optimizer):
    return (
        copy.deepcopy(model.state_dict()),
        copy.deepcopy(opt.state_dict()),
        {n: p for n, p in model.named_parameters()},
        {n: p.data.data_ptr() for n, p in model.named_parameters()},
    )


def _assert_unchanged(model: nn.Module, opt: torch.optim.Optimizer, snap) -> None:
    state, opt_state, params, ptrs = snap
    assert list(model.state_dict()) == list(state)  # no buffer left behind
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name
    for name, p in model.named_parameters():
        assert p is params[name] and p.data.data_ptr() == ptrs[name], name
    after = opt.state_dict()
    assert after["param_groups"] == opt_state["param_groups"]
    assert after["state"].keys() == opt_state["state"].keys()
    for i, s in opt_state["state"].items():
        for key, value in s.items():
            assert torch.equal(after["state"][i][key], value), (i, key)
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks


@pytest.mark.parametrize(
    "method",
    [
        FailingDST(sparsity=0.5, total_steps=10, update_interval=2),
        FailingDST(sparsity=0.5, total_steps=10, update_interval=2, weight_init="kaiming_normal"),
        FailingDST(sparsity=0.5, total_steps=10, update_interval=2, execution="sparse"),
        FailingSTR(),
    ],
    ids=["dst", "dst-kaiming", "dst-sparse", "str"],
)
def test_attach_rolls_back_when_on_attach_raises(method) -> None:
    model, opt = _trained()
    snap = _snapshot(model, opt)
    with pytest.raises(Boom):
        method.attach(model, opt)
    _assert_unchanged(model, opt, snap)
    assert method.model is None and method.targets == [] and attached_method(model) is None
    # the model is free for a working method, and the failed one can be fixed and reused
    ok = create_method("rigl", sparsity=0.5, total_steps=10, update_interval=2).attach(model, opt)
    assert attached_method(model) is ok


# --------------------------------------------------------------------------- load_state_dict


def _attached(name: str = "rigl", seed: int = 0):
    model, opt = _trained()
    method = create_method(name, sparsity=0.5, total_steps=10, update_interval=2, seed=seed)
    return model, opt, method.attach(model, opt)


def _refused(method, state, match: str) -> None:
    masks = [t.mask.clone() for t in method.targets]
    weights = [t.param.detach().clone() for t in method.targets]
    step, history = method.step, list(method.history)
    with pytest.raises(ValueError, match=match):
        method.load_state_dict(state)
    assert all(torch.equal(m, t.mask) for m, t in zip(masks, method.targets, strict=True))
    assert all(torch.equal(w, t.param) for w, t in zip(weights, method.targets, strict=True))
    assert method.step == step and method.history == history


def test_load_state_dict_refuses_another_method() -> None:
    _, _, method = _attached()
    state = _attached("set")[2].state_dict()
    _refused(method, state, "state is for method 'set', not 'rigl'")


def test_load_state_dict_refuses_missing_and_unexpected_keys() -> None:
    _, _, method = _attached()
    state = _attached(seed=1)[2].state_dict()
    state["masks"]["2.weight_renamed"] = state["masks"].pop("2.weight")
    _refused(method, state, r"missing \['2.weight'\], unexpected \['2.weight_renamed'\]")


@pytest.mark.parametrize("shape", [(1, 6), (4, 1), (6,), (4, 6, 1)])
def test_load_state_dict_refuses_a_wrong_mask_shape(shape: tuple[int, ...]) -> None:
    # (1, 6), (4, 1) and (6,) broadcast to (4, 6): a copy would silently accept them
    _, _, method = _attached()
    state = _attached(seed=1)[2].state_dict()
    state["masks"]["2.weight"] = torch.ones(shape, dtype=torch.bool)  # the second target
    _refused(method, state, r"mask '2.weight' has shape .*, expected \(4, 6\)")


def test_load_state_dict_takes_a_matching_state() -> None:
    _, _, method = _attached()
    other = _attached(seed=1)[2]
    method.load_state_dict(other.state_dict())
    assert all(
        torch.equal(a.mask, b.mask) for a, b in zip(method.targets, other.targets, strict=True)
    )


# --------------------------------------------------------------------------- adopt_execution


def _auto_run(monkeypatch, choices: list[str], steps: int, seed_model: int = 0):
    """An ``execution="auto"`` rigl run whose per-layer decisions are ``choices``."""
    from sparsetrain.sparse import bench

    def decide(sub, batch, **kwargs):
        names = [n for n, m in sub.named_modules() if isinstance(m, nn.Linear)]
        return [
            bench.LayerDecision(n, (0, 0), 0.0, c, 1.0, 1.0)
            for n, c in zip(names, choices, strict=True)
        ]

    monkeypatch.setattr(bench, "plan_layers", decide)
    torch.manual_seed(seed_model)
    model = nn.Sequential(
        nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    method = create_method(
        "rigl",
        sparsity=0.7,
        total_steps=12,
        update_interval=2,
        scope="global",  # per-layer counts move: a fresh method's masks differ in size too
        execution="auto",
        execution_batch_size=8,
        seed=seed_model,
    ).attach(model, opt)
    losses = [_train_step(model, opt, s) for s in range(steps)]
    return model, opt, method, losses


def _train_step(model, opt, step: int) -> float:
    g = torch.Generator().manual_seed(step)
    x = torch.randn(8, 8, generator=g)
    loss = nn.functional.cross_entropy(model(x), (x.sum(1) > 0).long())
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def test_adopt_execution_takes_the_checkpoints_layout_and_masks(monkeypatch) -> None:
    from sparsetrain.sparse import SparseLinear

    model, opt, method, _ = _auto_run(monkeypatch, ["sparse", "dense", "sparse"], 6)
    saved = copy.deepcopy((model.state_dict(), opt.state_dict(), method.state_dict()))
    assert saved[2]["execution"] == {
        "0.weight": "sparse",
        "2.weight": "dense",
        "4.weight": "sparse",
    }
    # a new process measures otherwise, and its masks are its own (another seed)
    model2, opt2, method2, _ = _auto_run(monkeypatch, ["dense", "sparse", "dense"], 0, seed_model=1)
    assert not torch.equal(method2.targets[0].mask, saved[2]["masks"]["0.weight"])
    method2.adopt_execution(saved[2])
    assert [type(model2[i]) for i in (0, 2, 4)] == [SparseLinear, nn.Linear, SparseLinear]
    for t in method2.targets:  # the new sparse layers are built on the checkpoint's masks
        if t.name in method2.sparse_layers():
            assert torch.equal(method2.sparse_layers()[t.name].mask(), saved[2]["masks"][t.name])
    assert [r["decision"] for r in method2.execution_decisions] == ["sparse", "dense", "sparse"]
    model2.load_state_dict(saved[0])
    opt2.load_state_dict(saved[1])
    method2.load_state_dict(saved[2])
    # both continue identically
    more = [_train_step(model, opt, s) for s in range(6, 10)]
    more2 = [_train_step(model2, opt2, s) for s in range(6, 10)]
    assert more2 == more
    for a, b in zip(method.targets, method2.targets, strict=True):
        assert torch.equal(a.mask, b.mask)
