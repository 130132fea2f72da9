"""Bad input fails loudly, names the bad value, and leaves the model untouched."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from sparsetrain import attached_method, create_method

Snapshot = dict[str, torch.Tensor]


def snapshot(model: nn.Module) -> Snapshot:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, snap: Snapshot) -> None:
    now = model.state_dict()
    assert list(now) == list(snap)
    for k, v in snap.items():
        assert torch.equal(now[k], v), f"{k} changed"


def fails_cleanly(
    model: nn.Module,
    action: Callable[[], object],
    exc: type[Exception],
    *needles: str,
    attached: object = None,
) -> str:
    """``action`` raises ``exc`` whose message holds every needle; the model is untouched."""
    snap = snapshot(model)
    with pytest.raises(exc) as err:
        action()
    msg = str(err.value)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    assert_unchanged(model, snap)
    assert attached_method(model) is attached
    return msg


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def assert_attachable(model: nn.Module) -> None:
    """After a failure the model still takes a valid method (nothing half-attached)."""
    method = create_method("static", sparsity=0.5, distribution="uniform")
    method.attach(model, sgd(model))
    assert attached_method(model) is method
    assert all(t.nnz == t.numel // 2 for t in method.targets)


# --------------------------------------------------------------------------- sparsity


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_sparsity_out_of_range(bad: float, tiny_mlp: nn.Module) -> None:
    def act() -> None:
        create_method("static", sparsity=bad).attach(tiny_mlp, sgd(tiny_mlp))

    message = "static: sparsity must be a number in [0, 1)"
    fails_cleanly(tiny_mlp, act, ValueError, message, f"got {bad}")
    assert_attachable(tiny_mlp)


def test_sparsity_wrong_type(tiny_mlp: nn.Module) -> None:
    fails_cleanly(
        tiny_mlp, lambda: create_method("rigl", sparsity="0.9", total_steps=10), TypeError, "'0.9'"
    )


# --------------------------------------------------------------------------- names and options


def test_unknown_method_lists_valid_and_close_match(tiny_mlp: nn.Module) -> None:
    msg = fails_cleanly(
        tiny_mlp,
        lambda: create_method("rigll", sparsity=0.9),
        ValueError,
        "unknown method 'rigll'",
        "Did you mean 'rigl'",
    )
    valid = msg.split("valid: ")[1]
    for name in ("dense", "gmp", "rigl", "set", "static"):
        assert name in valid


def test_method_name_not_a_string() -> None:
    with pytest.raises(TypeError, match="method name must be a string, got int"):
        create_method(3)  # type: ignore[arg-type]


def test_unknown_option(tiny_mlp: nn.Module) -> None:
    fails_cleanly(
        tiny_mlp,
        lambda: create_method("static", sparsty=0.5),
        TypeError,
        "'static'",
        "['sparsty']",
        "sparsity",  # the valid options are listed
    )


def test_options_with_ready_method_object() -> None:
    ready = create_method("static", sparsity=0.5)
    assert create_method(ready) is ready
    with pytest.raises(TypeError, match="ready method object"):
        create_method(ready, sparsity=0.7)


def test_unknown_prune_criterion(tiny_mlp: nn.Module) -> None:
    fails_cleanly(
        tiny_mlp,
        lambda: create_method("dst", prune="magnitde", total_steps=10),
        ValueError,
        "'magnitde'",
        "'magnitude'",
    )


def test_unknown_growth_criterion(tiny_mlp: nn.Module) -> None:
    fails_cleanly(
        tiny_mlp,
        lambda: create_method("dst", grow="gradeint", total_steps=10),
        ValueError,
        "'gradeint'",
        "'gradient'",
    )


def test_unknown_distribution(tiny_mlp: nn.Module) -> None:
    fails_cleanly(
        tiny_mlp,
        lambda: create_method("static", sparsity=0.5, distribution="erdos"),
        ValueError,
        "'erdos'",
        "uniform, er, erk",
    )


# --------------------------------------------------------------------------- attach


def test_model_without_prunable_weights() -> None:
    model = nn.Sequential(nn.BatchNorm1d(4), nn.LayerNorm(4))
    fails_cleanly(
        model,
        lambda: create_method("static", sparsity=0.5).attach(model, sgd(model)),
        ValueError,
        "no prunable weights found in Sequential",
        "Linear",
    )


def test_attach_same_method_twice(tiny_mlp: nn.Module, batch: tuple[torch.Tensor, ...]) -> None:
    opt = sgd(tiny_mlp)
    method = create_method("static", sparsity=0.5, distribution="uniform").attach(tiny_mlp, opt)
    fails_cleanly(
        tiny_mlp,
        lambda: method.attach(tiny_mlp, opt),
        ValueError,
        "'static' method is already attached",
        attached=method,
    )
    # nor onto another model
    other = nn.Sequential(nn.Linear(3, 3))
    fails_cleanly(other, lambda: method.attach(other, sgd(other)), ValueError, "already attached")
    # the hooks were not registered twice: one step advances the step counter by one
    x, y = batch
    nn.functional.cross_entropy(tiny_mlp(x), y).backward()
    opt.step()
    assert method.step == 1


def test_second_method_on_same_model(tiny_mlp: nn.Module) -> None:
    opt = sgd(tiny_mlp)
    first = create_method("static", sparsity=0.5, distribution="uniform").attach(tiny_mlp, opt)
    second = create_method("set", sparsity=0.5, total_steps=40, update_interval=5)
    fails_cleanly(
        tiny_mlp,
        lambda: second.attach(tiny_mlp, opt),
        ValueError,
        "model already has a 'static' method attached",
        "detach()",
        attached=first,
    )
    assert second.model is None
    # after detach the second method may attach
    first.detach()
    second.attach(tiny_mlp, opt)
    assert attached_method(tiny_mlp) is second


def test_optimizer_without_model_params(tiny_mlp: nn.Module) -> None:
    other = nn.Linear(8, 6)
    wrong = torch.optim.SGD(other.parameters(), lr=0.1)
    fails_cleanly(
        tiny_mlp,
        lambda: create_method("static", sparsity=0.5).attach(tiny_mlp, wrong),
        ValueError,
        "does not hold the model parameter '0.weight'",
        "2 of 2 targets missing",
    )
    assert_attachable(tiny_mlp)


def test_optimizer_missing_one_layer(tiny_mlp: nn.Module) -> None:
    partial = torch.optim.SGD(tiny_mlp[0].parameters(), lr=0.1)
    fails_cleanly(
        tiny_mlp,
        lambda: create_method("static", sparsity=0.5).attach(tiny_mlp, partial),
        ValueError,
        "'2.weight'",
        "1 of 2 targets missing",
    )


def test_closure_optimizer_refused_at_attach(tiny_mlp: nn.Module) -> None:
    opt = torch.optim.LBFGS(tiny_mlp.parameters(), lr=0.1)
    for name in ("static", "dnw"):
        fails_cleanly(
            tiny_mlp,
            lambda n=name: create_method(n, sparsity=0.5).attach(tiny_mlp, opt),
            TypeError,
            "LBFGS needs step(closure)",
            "loss.backward(); optimizer.step()",
        )
    assert opt.state == {} and len(opt.param_groups[0]["params"]) == 4
    assert_attachable(tiny_mlp)


@pytest.mark.parametrize("name", ["rigl", "dnw"])
def test_step_with_closure_fails_before_any_change(
    name: str, tiny_mlp: nn.Module, batch: tuple[torch.Tensor, ...]
) -> None:
    opt = sgd(tiny_mlp)
    method = create_method(name, sparsity=0.5, total_steps=10).attach(tiny_mlp, opt)
    x, y = batch

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(tiny_mlp(x), y)
        loss.backward()
        return loss

    closure()
    grads = [p.grad.clone() for p in tiny_mlp.parameters()]
    fails_cleanly(
        tiny_mlp,
        lambda: opt.step(closure),
        TypeError,
        "optimizer.step(closure) is not supported",
        attached=method,
    )
    assert method.step == 0 and opt.state == {}
    assert all(torch.equal(p.grad, g) for p, g in zip(tiny_mlp.parameters(), grads, strict=True))
    opt.step()  # the supported call still works afterwards
    assert method.step == 1


def test_not_an_optimizer(tiny_mlp: nn.Module) -> None:
    fails_cleanly(
        tiny_mlp,
        lambda: create_method("static", sparsity=0.5).attach(tiny_mlp, [1, 2]),  # type: ignore[arg-type]
        TypeError,
        "torch.optim.Optimizer",
        "list",
    )


def test_not_a_model() -> None:
    with pytest.raises(TypeError, match=r"needs an nn\.Module, got dict"):
        create_method("static", sparsity=0.5).attach({})  # type: ignore[arg-type]


def test_factored_optimizer_state_fails_cleanly(
    tiny_mlp: nn.Module, batch: tuple[torch.Tensor, ...]
) -> None:
    opt = sgd(tiny_mlp)
    x, y = batch
    nn.functional.cross_entropy(tiny_mlp(x), y).backward()
    opt.step()
    opt.state[tiny_mlp[2].weight]["row_factor"] = torch.ones(4)
    fails_cleanly(
        tiny_mlp,
        lambda: create_method("static", sparsity=0.5).attach(tiny_mlp, opt),
        TypeError,
        "'row_factor'",
    )


# --------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("interval", [0, -5])
def test_update_interval_not_positive(interval: int, tiny_mlp: nn.Module) -> None:
    fails_cleanly(
        tiny_mlp,
        lambda: create_method("set", sparsity=0.5, total_steps=40, update_interval=interval),
        ValueError,
        f"set: update_interval must be an int >= 1, got {interval}",
    )


def test_gmp_end_before_start(tiny_mlp: nn.Module) -> None:
    fails_cleanly(
        tiny_mlp,
        lambda: create_method("gmp", sparsity=0.5, begin_step=100, end_step=10),
        ValueError,
        "end (10) is before its start (100)",
    )


def test_total_steps_not_positive(tiny_mlp: nn.Module) -> None:
    fails_cleanly(
        tiny_mlp,
        lambda: create_method("rigl", sparsity=0.5, total_steps=0),
        ValueError,
        "rigl: total_steps must be an int >= 1 or None, got 0",
    )


# --------------------------------------------------------------------------- include / exclude


def test_include_matching_nothing(tiny_mlp: nn.Module) -> None:
    fails_cleanly(
        tiny_mlp,
        lambda: create_method("static", sparsity=0.5, include=["0.weight", "encoder.*"]).attach(
            tiny_mlp, sgd(tiny_mlp)
        ),
        ValueError,
        "['encoder.*'] matched no parameter",
    )
    assert_attachable(tiny_mlp)


def test_include_as_single_string(tiny_mlp: nn.Module) -> None:
    fails_cleanly(
        tiny_mlp,
        lambda: create_method("static", sparsity=0.5, include="0.*").attach(tiny_mlp),
        TypeError,
        "lists of glob patterns",
    )


def test_include_lazy_module_before_its_first_forward() -> None:
    model = nn.Sequential(nn.LazyLinear(3), nn.ReLU(), nn.Linear(3, 2))
    before = model[2].weight.detach().clone()
    with pytest.raises(ValueError, match=r"'0.weight' is not materialised yet.*one forward pass"):
        create_method("static", sparsity=0.5).attach(model, sgd(model))
    assert attached_method(model) is None and torch.equal(model[2].weight, before)
    model(torch.zeros(1, 4))
    method = create_method("static", sparsity=0.5).attach(model, sgd(model))
    assert [t.name for t in method.targets] == ["0.weight", "2.weight"]


def test_include_names_recurrent_weight() -> None:
    # a recurrent weight named by an include pattern is a target; biases matched are skipped
    torch.manual_seed(0)
    model = nn.ModuleDict({"rnn": nn.GRU(3, 4), "fc": nn.Linear(4, 2)})
    method = create_method("static", sparsity=0.5, include=["rnn.*_l0", "fc.*"])
    method.attach(model, sgd(model))
    assert [t.name for t in method.targets] == ["rnn.weight_ih_l0", "rnn.weight_hh_l0", "fc.weight"]


def test_include_embedding_with_sparse_gradients() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 4, sparse=True), nn.Flatten(), nn.Linear(12, 2))
    fails_cleanly(
        model,
        lambda: create_method("rigl", sparsity=0.5, include=["*"], total_steps=10).attach(
            model, sgd(model)
        ),
        TypeError,
        "'0.weight' gets sparse gradients (Embedding(sparse=True))",
        "exclude=['0.weight']",
    )
    method = create_method("rigl", sparsity=0.5, total_steps=10).attach(model, sgd(model))
    assert [t.name for t in method.targets] == ["2.weight"]  # not included: no error
