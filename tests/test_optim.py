"""Optimizer-state surgery: pruned weights and their state stay exactly zero, grown ones restart."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import pytest
import torch
from torch import nn

from sparsetrain import attached_method, create_method
from sparsetrain.methods.base import SparsityMethod
from sparsetrain.optim import momentum_of, param_ids, zero_preserving, zero_state

Batch = tuple[torch.Tensor, torch.Tensor]
OptFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]

OPTIMIZERS: dict[str, OptFactory] = {
    "sgd_momentum_wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.1),
    "sgd_nesterov": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
    "adam_wd": lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1),
    "adam_amsgrad": lambda p: torch.optim.Adam(p, lr=0.01, amsgrad=True),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.5),
    "rmsprop_centered_momentum": lambda p: torch.optim.RMSprop(
        p, lr=0.01, centered=True, momentum=0.9, weight_decay=0.1
    ),
    "rmsprop_momentum": lambda p: torch.optim.RMSprop(p, lr=0.01, momentum=0.5),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=0.1, initial_accumulator_value=0.1),
}


def train_step(model: nn.Module, opt: torch.optim.Optimizer, batch: Batch) -> None:
    x, y = batch
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    if (method := attached_method(model)) is not None:
        method.apply_pending()  # a deferred update takes effect (see apply_pending)


def state_tensors(opt: torch.optim.Optimizer, p: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every parameter-shaped state tensor of ``p``."""
    return {
        k: v
        for k, v in opt.state.get(p, {}).items()
        if isinstance(v, torch.Tensor) and v.shape == p.shape
    }


def assert_pruned_exactly_zero(method: SparsityMethod, opt: torch.optim.Optimizer) -> int:
    """Pruned weights and parameter-shaped state are exactly 0; returns #state tensors checked."""
    checked = 0
    for t in method.targets:
        off = ~t.mask
        assert off.any()
        assert bool((t.param.detach()[off] == 0).all()), f"{t.name}: pruned weight not zero"
        for key, v in state_tensors(opt, t.param).items():
            assert bool((v[off] == 0).all()), f"{t.name}: state {key!r} not zero where pruned"
            checked += 1
    return checked


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_static_state_stays_zero(opt_name: str, tiny_mlp: nn.Module, batch: Batch) -> None:
    opt = OPTIMIZERS[opt_name](tiny_mlp.parameters())
    method = create_method("static", sparsity=0.5, distribution="uniform").attach(tiny_mlp, opt)
    masks = [t.mask.clone() for t in method.targets]
    assert [t.nnz for t in method.targets] == [24, 12]  # half of 48 and of 24
    before = [t.param.detach().clone() for t in method.targets]
    for _ in range(20):
        train_step(tiny_mlp, opt, batch)
        assert assert_pruned_exactly_zero(method, opt) >= 2  # every target has state
    for t, m, w0 in zip(method.targets, masks, before, strict=True):
        assert torch.equal(t.mask, m)  # static: the mask never changes
        assert not torch.equal(t.param.detach()[m], w0[m])  # active weights did train
        # the state is live at active positions (so the zeros above are not vacuous)
        assert any(bool((v[m] != 0).any()) for v in state_tensors(opt, t.param).values())


def test_adagrad_initial_state_zeroed_on_attach(tiny_mlp: nn.Module) -> None:
    # Adagrad creates its "sum" state (0.1 everywhere) in its constructor: attach must clear it
    opt = torch.optim.Adagrad(tiny_mlp.parameters(), initial_accumulator_value=0.1)
    method = create_method("static", sparsity=0.5, distribution="uniform").attach(tiny_mlp, opt)
    for t in method.targets:
        s = opt.state[t.param]["sum"]
        assert bool((s[~t.mask] == 0).all()) and bool((s[t.mask] == 0.1).all())


@pytest.mark.parametrize("opt_name", ["sgd_momentum_wd", "adam_wd", "rmsprop_centered_momentum"])
def test_set_grown_positions_restart_from_zero(
    opt_name: str, tiny_mlp: nn.Module, batch: Batch
) -> None:
    opt = OPTIMIZERS[opt_name](tiny_mlp.parameters())
    method = create_method("set", sparsity=0.5, total_steps=40, update_interval=5)
    method.attach(tiny_mlp, opt)
    counts = [t.nnz for t in method.targets]
    just_grown: list[torch.Tensor] | None = None
    for step in range(1, 41):
        old = [t.mask.clone() for t in method.targets]
        train_step(tiny_mlp, opt, batch)
        assert_pruned_exactly_zero(method, opt)
        assert [t.nnz for t in method.targets] == counts  # constant density
        if just_grown is not None:
            # grown weights are trainable: the step after the update moves them off zero
            moved = [t.param.detach()[g] for t, g in zip(method.targets, just_grown, strict=True)]
            assert all(bool((m != 0).any()) for m in moved if m.numel())
            just_grown = None
        grown = [t.mask & ~o for t, o in zip(method.targets, old, strict=True)]
        if step % 5 or step == 40:  # and never at the final step (nothing would train it)
            assert not any(g.any() for g in grown)  # topology changes only on update steps
            continue
        assert all(g.any() for g in grown), f"step {step}: nothing regrown"
        for t, g in zip(method.targets, grown, strict=True):
            assert bool((t.param.detach()[g] == 0).all()), f"step {step}: grown weight not zero"
            for key, v in state_tensors(opt, t.param).items():
                assert bool((v[g] == 0).all()), f"step {step}: grown state {key!r} not zero"
        just_grown = grown
    assert [h["step"] for h in method.history] == [5, 10, 15, 20, 25, 30, 35]
    # ER at 50 %: raw 14/48 and 10/24, eps = 36 / (14 + 10) = 1.5 -> 21 and 15 active.
    # SET, constant zeta 0.3: k = ceil(6.3) = 7 and ceil(4.5) = 5 -> ceil(k/2) of each sign:
    # 4 + 4 and 3 + 3 removed, 14 in all, and as many regrown
    assert counts == [21, 15]
    assert all(h["pruned"] == h["grown"] == 14 for h in method.history)


class NoisySGD(torch.optim.Optimizer):
    """An optimizer outside torch.optim that does not preserve zeros: it adds noise everywhere."""

    def __init__(self, params: Iterable[nn.Parameter], lr: float = 0.1, noise: float = 0.01):
        super().__init__(params, {"lr": lr, "noise": noise})
        self.gen = torch.Generator().manual_seed(0)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"])
                p.add_(torch.randn(p.shape, generator=self.gen), alpha=group["noise"])


def test_noisy_optimizer_really_revives_zeros() -> None:
    p = nn.Parameter(torch.zeros(5))
    p.grad = torch.zeros(5)
    opt = NoisySGD([p])
    opt.step()
    assert bool((p != 0).all())
    assert not zero_preserving(opt)
    assert zero_preserving(torch.optim.SGD([p], lr=0.1))
    assert zero_preserving(torch.optim.Adam([p]))


def test_non_torch_optimizer_rezeroed_every_step(tiny_mlp: nn.Module, batch: Batch) -> None:
    opt = NoisySGD(tiny_mlp.parameters())
    method = create_method("static", sparsity=0.5, distribution="uniform").attach(tiny_mlp, opt)
    for _ in range(20):
        train_step(tiny_mlp, opt, batch)
        for t in method.targets:
            assert bool((t.param.detach()[~t.mask] == 0).all())
            assert bool((t.param.detach()[t.mask] != 0).all())  # noise reached active weights


def test_non_torch_optimizer_dst_rezeroed(tiny_mlp: nn.Module, batch: Batch) -> None:
    opt = NoisySGD(tiny_mlp.parameters())
    method = create_method("set", sparsity=0.5, total_steps=20, update_interval=5)
    method.attach(tiny_mlp, opt)
    for _ in range(20):
        train_step(tiny_mlp, opt, batch)
        for t in method.targets:
            assert bool((t.param.detach()[~t.mask] == 0).all())
    assert len(method.history) == 3  # steps 5, 10, 15: none at the final step


# --------------------------------------------------------------------------- zero_state


def _stepped_sgd() -> tuple[nn.Parameter, torch.optim.SGD]:
    p = nn.Parameter(torch.ones(2, 3))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    p.grad = torch.full((2, 3), 2.0)
    opt.step()  # momentum_buffer = grad = 2
    return p, opt


def test_zero_state_zeroes_only_where_asked() -> None:
    p, opt = _stepped_sgd()
    where = torch.tensor([[True, False, False], [False, False, True]])
    zero_state(opt, p, where)
    buf = opt.state[p]["momentum_buffer"]
    assert buf.tolist() == [[0.0, 2.0, 2.0], [2.0, 2.0, 0.0]]
    assert p.detach().flatten().tolist() == pytest.approx([0.8] * 6)  # weight not touched


def test_zero_state_leaves_scalars_alone() -> None:
    p = nn.Parameter(torch.ones(4))
    opt = torch.optim.Adam([p], lr=0.1)
    p.grad = torch.ones(4)
    opt.step()
    zero_state(opt, p, torch.tensor([True, True, False, False]))
    st = opt.state[p]
    assert float(st["step"]) == 1.0
    assert st["exp_avg"].tolist() == pytest.approx([0.0, 0.0, 0.1, 0.1])
    assert st["exp_avg_sq"].tolist() == pytest.approx([0.0, 0.0, 0.001, 0.001])


def test_zero_state_without_state_is_noop() -> None:
    p = nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    zero_state(opt, p, torch.ones(3, dtype=torch.bool))
    assert len(opt.state) == 0


def test_zero_state_other_shape_raises_and_skip_keys_opt_out() -> None:
    p, opt = _stepped_sgd()
    opt.state[p]["row_factor"] = torch.ones(2)  # a factored layout sparsetrain cannot mask
    where = torch.zeros(2, 3, dtype=torch.bool)
    where[0, 0] = True
    with pytest.raises(TypeError, match=r"'row_factor' has shape \(2,\).*\(2, 3\)") as err:
        zero_state(opt, p, where)
    assert "state_skip_keys=['row_factor']" in str(err.value)
    assert opt.state[p]["momentum_buffer"][0, 0] == 2.0  # all keys checked before any write
    zero_state(opt, p, where, skip_keys=["row_factor"])
    assert opt.state[p]["row_factor"].tolist() == [1.0, 1.0]
    assert opt.state[p]["momentum_buffer"][0].tolist() == [0.0, 2.0, 2.0]
    # skip_keys also opts a parameter-shaped key out
    zero_state(
        opt, p, torch.ones(2, 3, dtype=torch.bool), skip_keys=["row_factor", "momentum_buffer"]
    )
    assert opt.state[p]["momentum_buffer"][1].tolist() == [2.0, 2.0, 2.0]


def test_method_state_skip_keys(tiny_mlp: nn.Module, batch: Batch) -> None:
    # the method-level opt-out reaches zero_state: a factored key does not block attach
    opt = torch.optim.SGD(tiny_mlp.parameters(), lr=0.1, momentum=0.9)
    train_step(tiny_mlp, opt, batch)
    first = tiny_mlp[0].weight
    opt.state[first]["row_factor"] = torch.ones(6)
    method = create_method("static", sparsity=0.5, state_skip_keys=["row_factor"])
    method.attach(tiny_mlp, opt)
    assert opt.state[first]["row_factor"].tolist() == [1.0] * 6
    mask = method.targets[0].mask
    assert bool((opt.state[first]["momentum_buffer"][~mask] == 0).all())
    assert bool((opt.state[first]["momentum_buffer"][mask] != 0).any())


def test_method_factored_state_without_skip_raises(tiny_mlp: nn.Module, batch: Batch) -> None:
    opt = torch.optim.SGD(tiny_mlp.parameters(), lr=0.1, momentum=0.9)
    train_step(tiny_mlp, opt, batch)
    opt.state[tiny_mlp[0].weight]["row_factor"] = torch.ones(6)
    with pytest.raises(TypeError, match="row_factor"):
        create_method("static", sparsity=0.5).attach(tiny_mlp, opt)


# --------------------------------------------------------------------------- momentum_of


def test_momentum_of_sgd() -> None:
    p = nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    assert momentum_of(opt, p) is None  # no state yet
    p.grad = torch.tensor([0.5, -1.0])
    opt.step()
    assert momentum_of(opt, p).tolist() == [0.5, -1.0]  # first step: buffer = grad
    opt.step()
    assert momentum_of(opt, p).tolist() == pytest.approx([0.95, -1.9])  # 0.9 * buf + grad


def test_momentum_of_adam() -> None:
    p = nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = torch.optim.Adam([p], lr=0.1, betas=(0.9, 0.999))
    p.grad = torch.tensor([0.5, -1.0])
    opt.step()
    # m = 0.1 g, v = 0.001 g^2  ->  m / sqrt(v) = 0.1 / sqrt(0.001) * sign(g) = sqrt(10) * sign(g)
    assert momentum_of(opt, p).tolist() == pytest.approx([math.sqrt(10), -math.sqrt(10)], rel=1e-5)


def test_momentum_of_none_without_momentum() -> None:
    p = nn.Parameter(torch.tensor([1.0, 2.0]))
    p.grad = torch.tensor([0.5, -1.0])
    for opt in (torch.optim.SGD([p], lr=0.1), torch.optim.Adagrad([p])):
        opt.step()
        assert momentum_of(opt, p) is None


def test_param_ids() -> None:
    a, b = nn.Parameter(torch.ones(1)), nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1)
    assert param_ids(opt) == {id(a), id(b)}
