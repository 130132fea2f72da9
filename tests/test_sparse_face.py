"""Sparse execution keeps the model's own face: ``weight``, state-dict keys, resume, plain loads.

A Linear that trains on CSR kernels (``SparseLinear``) still reads ``layer.weight`` (the dense
masked weight, read-only) and saves the plain ``nn.Linear``'s ``weight``/``bias``, so the
README's resume recipe (attach, then load the model, optimizer and method state dicts) continues
bit for bit before and after a layer moves to sparse kernels, and a mid-run checkpoint loads
into the model without sparsetrain.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsetrain
from sparsetrain.export import squash
from sparsetrain.methods.registry import get_method_info, list_methods
from sparsetrain.sparse import SparseLinear, random_mask, to_sparse_linear

STEPS = 18
SPARSE_METHODS = [m for m in list_methods() if get_method_info(m).sparse_execution]
# per-method options: DST updates every 3 steps; GMP/GraNet prune every 3 steps to 90% at step
# 9, each layer moving to sparse kernels at the first pruning step leaving it <= 30% dense
OPTIONS: dict[str, dict[str, object]] = {
    "static": {"sparsity": 0.8},
    **{n: {"sparsity": 0.8, "update_interval": 3} for n in ("set", "rigl", "mest", "dst")},
    **{n: {"sparsity": 0.9, "update_interval": 3, "end_step": 9} for n in ("gmp", "granet")},
}
# resume points: before any topology change / layer move, and after several
BEFORE, AFTER = 2, 11


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 4)
    )


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(8, 12, generator=g)
    return x, (x[:, :4].sum(1) > 0).long() + 2 * (x[:, 4] > 0).long()


def _build(name: str, seed: int = 0, execution: str = "sparse"):
    model = _model(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    method = sparsetrain.create_method(
        name, total_steps=STEPS, seed=3, execution=execution, **OPTIONS[name]
    ).attach(model, opt)
    return model, opt, method


def _step(model, opt, method, step: int) -> tuple[float, dict[str, torch.Tensor]]:
    x, y = _batch(step)
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item(), {t.name: t.mask.clone() for t in method.targets}


def _saved(obj):
    """``obj`` through ``torch.save``/``torch.load(weights_only=True)``, as a checkpoint file."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


_REFERENCE: dict[str, tuple] = {}


def _reference(name: str):
    """The uninterrupted run: losses, masks and the state dicts at ``BEFORE`` and ``AFTER``."""
    if name not in _REFERENCE:
        model, opt, method = _build(name)
        losses, masks, states = [], [], {}
        for step in range(STEPS):
            if step in (BEFORE, AFTER):
                states[step] = _saved(
                    {
                        "model": model.state_dict(),
                        "opt": opt.state_dict(),
                        "method": method.state_dict(),
                    }
                )
            loss, mask = _step(model, opt, method, step)
            losses.append(loss)
            masks.append(mask)
        _REFERENCE[name] = (losses, masks, states)
    return _REFERENCE[name]


ORDERS = {
    "readme": ("model", "opt", "method"),  # README: model, optimizer, then method
    "method-first": ("method", "model", "opt"),
    "model-method-opt": ("model", "method", "opt"),  # Lightning restores callbacks first
    "opt-first": ("opt", "model", "method"),
}


@pytest.mark.parametrize("order", list(ORDERS))
@pytest.mark.parametrize("at", [BEFORE, AFTER], ids=["before", "after"])
@pytest.mark.parametrize("name", SPARSE_METHODS)
def test_resume_continues_bit_for_bit(name, at, order):
    losses, masks, states = _reference(name)
    saved = copy.deepcopy(states[at])  # a loaded optimizer state aliases the tensors it loads
    if at == AFTER:  # the checkpoint really is mid-run: sparse layers, moved structures
        assert "sparse" in saved["method"]["execution"].values()
        assert saved["method"]["history"] or name == "static"  # static never changes
    model, opt, method = _build(name, seed=1)  # other initial weights: the load must bring them
    load = {
        "model": lambda: model.load_state_dict(saved["model"]),
        "opt": lambda: opt.load_state_dict(saved["opt"]),
        "method": lambda: method.load_state_dict(saved["method"]),
    }
    for what in ORDERS[order]:
        load[what]()
    assert method.state_dict()["execution"] == saved["method"]["execution"]
    for t in method.targets:
        layer = method.sparse_layers().get(t.name)
        if layer is not None:
            assert torch.equal(layer.mask(), t.mask)
    for step in range(at, STEPS):
        loss, mask = _step(model, opt, method, step)
        assert loss == losses[step], f"loss differs at step {step}"
        assert all(torch.equal(mask[k], masks[step][k]) for k in mask), f"mask at step {step}"


@pytest.mark.parametrize("name", SPARSE_METHODS)
def test_state_dict_has_the_plain_models_keys_and_shapes(name):
    saved = _reference(name)[2][AFTER]["model"]
    plain = _model().state_dict()
    assert list(saved) == list(plain)
    assert all(saved[k].shape == plain[k].shape for k in plain)


@pytest.mark.parametrize("name", ["rigl", "gmp"])
def test_mid_run_checkpoint_loads_into_the_plain_model(name):
    model, opt, method = _build(name)
    for step in range(AFTER):
        _step(model, opt, method, step)
    assert any(isinstance(m, SparseLinear) for m in model.modules())
    state = _saved(model.state_dict())
    plain = _model(seed=1)
    plain.load_state_dict(state, strict=True)
    for t in method.targets:  # zeros at pruned positions
        assert torch.equal(state[t.name] != 0, t.mask & (state[t.name] != 0))
        assert not state[t.name][~t.mask].any()
    x = _batch(99)[0]
    with torch.no_grad():
        reference = squash(copy.deepcopy(model))  # the same weights in plain nn.Linear layers
        assert torch.equal(plain(x), reference(x))
        torch.testing.assert_close(plain(x), model(x), rtol=1e-5, atol=1e-6)
    # and back: the plain model's state loads into the sparse one (strict), same outputs
    before = model(x).detach()
    model.load_state_dict(plain.state_dict(), strict=True)
    assert torch.equal(model(x).detach(), before)


def test_weight_is_the_dense_masked_weight_and_read_only():
    torch.manual_seed(0)
    linear = nn.Linear(5, 4)
    mask = random_mask((4, 5), 0.5, torch.Generator().manual_seed(1))
    with torch.no_grad():
        linear.weight.mul_(mask)
    layer = to_sparse_linear(linear, mask)
    assert torch.equal(layer.weight, linear.weight.detach())
    assert layer.weight.shape == (4, 5) and layer.weight.dtype == layer.values.dtype
    with pytest.raises(AttributeError, match=r"read-only.*CSR"):
        layer.weight = nn.Parameter(torch.zeros(4, 5))
    with pytest.raises(AttributeError, match="read-only"):
        layer.weight = torch.zeros(4, 5)
    w = layer.weight
    w.zero_()  # a copy: the layer keeps its values
    assert torch.equal(layer.weight, linear.weight.detach())
    # a loss term computed from it (a norm penalty, logging under autograd) trains the values
    layer.weight.pow(2).sum().backward()
    assert torch.equal(layer.values.grad, 2 * layer.values.detach())
    # norm logging over a model, whatever its layers run on
    model, _, method = _build("rigl")
    norms = {n: m.weight.norm().item() for n, m in model.named_modules() if hasattr(m, "weight")}
    assert set(norms) == {"0", "2", "4"} and all(v > 0 for v in norms.values())
    for t in method.targets:
        torch.testing.assert_close(
            method.sparse_layers()[t.name].weight, method.sparse_layers()[t.name].to_dense()
        )


def test_a_dense_weight_outside_the_structure_waits_for_the_masks():
    # two layers of one shape, other structures: b takes a's weights at b's positions now,
    # and those outside when set_structure gives it a's structure (the method's masks)
    torch.manual_seed(0)
    masks = [random_mask((4, 6), 0.5, torch.Generator().manual_seed(s)) for s in (1, 2)]
    a, b = (SparseLinear(6, 4, m) for m in masks)
    b.load_state_dict(a.state_dict())
    assert torch.equal(b.weight, a.weight * masks[1])
    b.set_structure(masks[0])
    assert torch.equal(b.weight, a.weight) and torch.equal(b.bias, a.bias)
    # once the values changed (an optimizer step), the loaded weight is no longer used
    b2 = SparseLinear(6, 4, masks[1])
    b2.load_state_dict(a.state_dict())
    opt = torch.optim.SGD(b2.parameters(), lr=0.1)
    b2(torch.ones(2, 6)).sum().backward()
    opt.step()
    kept = b2.weight * masks[0]
    b2.set_structure(masks[0])
    assert torch.equal(b2.weight, kept)
    with pytest.raises(RuntimeError, match="size mismatch for weight"):
        b.load_state_dict({"weight": torch.zeros(6, 4), "bias": torch.zeros(4)})


class _TiedLM(nn.Module):
    """An embedding and an output head sharing one weight, plus an untied hidden layer."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 16)
        self.mid = nn.Linear(16, 16)
        self.head = nn.Linear(16, 10, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:  # what HF's PreTrainedModel.tie_weights does
        self.head.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.mid(self.emb(x))))


def test_tied_head_stays_dense_and_tie_weights_still_works():
    torch.manual_seed(0)
    model = _TiedLM()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    method = sparsetrain.create_method(
        "rigl", sparsity=0.7, total_steps=6, update_interval=2, include=["*"], execution="sparse"
    ).attach(model, opt)
    assert type(model.head) is nn.Linear and isinstance(model.mid, SparseLinear)
    assert model.head.weight is model.emb.weight
    g = torch.Generator().manual_seed(2)
    for _ in range(4):
        x = torch.randint(0, 10, (8, 5), generator=g)
        loss = F.cross_entropy(model(x).reshape(-1, 10), ((x + 1) % 10).reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.tie_weights()  # re-tying keeps one Parameter (HF calls it on load and resize)
    assert model.head.weight is model.emb.weight and model.mid.weight.shape == (16, 16)
    state = model.state_dict()
    assert list(state) == list(_TiedLM().state_dict())
    plain = _TiedLM()
    plain.load_state_dict(state, strict=True)
    x = torch.randint(0, 10, (3, 5), generator=g)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), model(x), rtol=1e-5, atol=1e-6)
    assert method.report().rows  # the method still runs the tied target
    with pytest.raises(AttributeError, match="read-only"):  # a tie onto a sparse layer: clear
        model.mid.weight = model.emb.weight


# --------------------------------------------------------------------------- the train harness

HARNESS = {
    "data": {"name": "synthetic", "n_train": 64, "n_test": 32},  # 4 batches an epoch
    "model": {"name": "mlp", "hidden_sizes": [16]},
    "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
    "train": {"epochs": 3, "batch_size": 16, "plots": False},
}


@pytest.mark.integration
@pytest.mark.parametrize(
    "method",
    [
        {"name": "rigl", "sparsity": 0.8, "update_interval": 2, "execution": "sparse"},
        # layers move to sparse kernels at step 4, before the kill at step 7
        {"name": "gmp", "sparsity": 0.9, "update_interval": 2, "end_step": 4},
    ],
    ids=["rigl", "gmp"],
)
def test_harness_resume_of_a_sparse_run_is_identical(tmp_path, monkeypatch, method):
    import yaml

    from sparsetrain.cli import main
    from sparsetrain.train import experiment

    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({**HARNESS, "method": {"execution": "sparse", **method}}))
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(["train", str(cfg), "--out", str(straight), "--quiet"]) == 0
    build, calls = experiment.build_model, [0]

    def killing(*args, **kwargs):  # a KeyboardInterrupt in the 7th training forward
        model = build(*args, **kwargs)

        def hook(module, *_):
            calls[0] += module.training
            if calls[0] == 7:
                raise KeyboardInterrupt

        model.register_forward_pre_hook(hook)
        return model

    with monkeypatch.context() as m:
        m.setattr(experiment, "build_model", killing)
        assert main(["train", str(cfg), "--out", str(resumed), "--quiet"]) == 130
    mid = torch.load(resumed / "checkpoint.pt", weights_only=True)
    assert "sparse" in mid["method"]["execution"].values() and "fc1.weight" in mid["model"]
    assert main(["train", str(cfg), "--out", str(resumed), "--quiet", "--resume"]) == 0
    a, b = (torch.load(r / "checkpoint.pt", weights_only=True) for r in (straight, resumed))
    untimed = [[{k: v for k, v in r.items() if k != "time"} for r in c["history"]] for c in (a, b)]
    assert untimed[0] == untimed[1]  # losses and accuracies of every epoch
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    masks = a["method"]["masks"]
    assert all(torch.equal(masks[k], b["method"]["masks"][k]) for k in masks)
