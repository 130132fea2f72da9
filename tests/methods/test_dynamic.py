"""DST (``dst``, ``rigl``, ``set``, ``mest``): updates checked by hand through the public hooks.

Every test here runs at 1 and at 2 intra-op threads (the suite otherwise pins 1 thread, see
``conftest.py``): with 2 threads the per-layer update runs on a thread pool.

The model is two bias-free heads, ``y = a·x[:4] + b·x[4:]``, so with ``loss = y.sum()`` on one
input the weight gradients are the input halves: ``∂L/∂a = x[:4]``, ``∂L/∂b = x[4:]``. Masks are
set through ``load_state_dict``, and with ``lr=0`` the optimizer step leaves weights in place.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dst_runs import train_dst
from sparsetrain import attached_method, create_method


@pytest.fixture(autouse=True, params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request: pytest.FixtureRequest):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


class TwoHeads(nn.Module):
    """``y = a·x[:n] + b·x[n:]``: each head's weight gradient is its half of the input."""

    def __init__(self, wa: list[float], wb: list[float]) -> None:
        super().__init__()
        n = len(wa)
        self.a, self.b = nn.Linear(n, 1, bias=False), nn.Linear(n, 1, bias=False)
        with torch.no_grad():
            self.a.weight.copy_(torch.tensor([wa]))
            self.b.weight.copy_(torch.tensor([wb]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.a.in_features
        return self.a(x[:, :n]) + self.b(x[:, n:])


def _setup(name, wa, wb, mask_a, mask_b, *, lr=0.0, total_steps=4, **options):
    model = TwoHeads(wa, wb)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    opts = dict(sparsity=0.5, total_steps=total_steps, update_interval=1)
    method = create_method(name, **{**opts, **options}).attach(model, opt)
    state = method.state_dict()
    state["masks"] = {"a.weight": torch.tensor([mask_a]), "b.weight": torch.tensor([mask_b])}
    method.load_state_dict(state)  # our masks, as from a checkpoint ...
    model.load_state_dict(TwoHeads(wa, wb).state_dict())  # ... and our weights (0 if inactive)
    return model, opt, method


def _step(model, opt, x: list[float]) -> None:
    opt.zero_grad()
    model(torch.tensor([x])).sum().backward()
    opt.step()
    attached_method(model).apply_pending()  # a deferred update takes effect (see apply_pending)


def _state(model, method) -> tuple[list[bool], list[bool], list[float], list[float]]:
    a, b = method.targets
    return (
        a.mask[0].tolist(),
        b.mask[0].tolist(),
        model.a.weight[0].tolist(),
        model.b.weight[0].tolist(),
    )


T, F = True, False
CONSTANT_HALF = dict(drop_fraction=0.5, drop_fraction_end=0.5)


# --------------------------------------------------------------------------- RigL


def test_rigl_drops_lowest_magnitude_and_grows_largest_gradient_by_hand() -> None:
    model, opt, m = _setup(
        "rigl",
        [0.9, -0.1, 0.5, 0.0],
        [0.2, -0.8, 0.0, 0.0],
        [T, T, T, F],
        [T, T, F, F],
        **CONSTANT_HALF,
    )
    _step(model, opt, [1, 2, 3, 7, 0.5, 0, 4, -6])  # grads a = [1 2 3 7], b = [.5 0 4 -6]
    mask_a, mask_b, wa, wb = _state(model, m)
    # a: 3 active, drop ceil(3/2) = 2 lowest |w|: a1 (.1), a2 (.5). Grow 2 of the inactive or
    # just-dropped {a1, a2, a3} with the largest |g|: a3 (7) and a2 (3); a2 restarts at zero.
    assert mask_a == [T, F, T, T] and wa == pytest.approx([0.9, 0.0, 0.0, 0.0])
    # b: 2 active, drop 1: b0 (.2). Grow 1 of {b0, b2, b3}: b3 (|-6|), at zero.
    assert mask_b == [F, T, F, T] and wb == pytest.approx([0.0, -0.8, 0.0, 0.0])
    assert m.history[-1] == {
        "step": 1,
        "drop_fraction": 0.5,
        "pruned": 3,
        "grown": 3,
        "churn": 0.4,
    }  # a3 and b3 are new: 2 of 5 active


def test_rigl_cosine_drop_fraction_through_the_hooks() -> None:
    # 8 active of 16 in a; ζ_t = 0.5·(1 + cos(π·t/6))/2 with the end at 0.75·8 = step 6
    wa = [float(i + 1) for i in range(8)] + [0.0] * 8
    model, opt, m = _setup(
        "rigl",
        wa,
        [1.0] + [0.0] * 15,
        [T] * 8 + [F] * 8,
        [T] + [F] * 15,
        total_steps=8,
        drop_fraction=0.5,
        drop_fraction_end=0.0,
    )
    x = [float(i) for i in range(32)]
    for step in (1, 2, 3):
        _step(model, opt, x)
        zeta = 0.5 * (1 + math.cos(math.pi * step / 6)) / 2
        assert m.drop_fraction_at(step) == pytest.approx(zeta)
        assert m.history[-1]["drop_fraction"] == pytest.approx(zeta, abs=1e-6)
        # a drops ceil(ζ·8), b (1 active) drops ceil(ζ·1) = 1
        assert m.history[-1]["pruned"] == math.ceil(zeta * 8) + 1
    assert [h["pruned"] - 1 for h in m.history] == [4, 3, 2]  # ζ = .4665, .375, .25
    assert m.drop_fraction_at(6) == pytest.approx(0.0)


@pytest.mark.parametrize("order", ["pre_step", "post_step"])
def test_update_order_pre_step_reads_pre_step_weights(order: str) -> None:
    # a = [1, .6] active, g = [2, -1, 5, 0], lr .5: the step takes a to [0, 1.1]
    model, opt, m = _setup(
        "rigl",
        [1.0, 0.6, 0.0, 0.0],
        [0.3, 0.0, 0.0, 0.0],
        [T, T, F, F],
        [T, F, F, F],
        lr=0.5,
        order=order,
        **CONSTANT_HALF,
    )
    _step(model, opt, [2, -1, 5, 0, 0.1, 0.2, 0.3, 0.4])
    mask_a, _, wa, _ = _state(model, m)
    if order == "pre_step":
        # update first, on [1, .6]: drop a1, grow a2 (|g| 5); then the step moves the new
        # active set: a0 = 1 - .5·2 = 0, a2 = 0 - .5·5 = -2.5
        assert mask_a == [T, F, T, F] and wa == pytest.approx([0.0, 0.0, -2.5, 0.0])
    else:
        # step first (a2 inactive: no update), giving [0, 1.1]; then drop a0, grow a2 at zero
        assert mask_a == [F, T, T, F] and wa == pytest.approx([0.0, 1.1, 0.0, 0.0])


def test_auto_order_follows_the_criterion() -> None:
    assert create_method("rigl", total_steps=10).order == "post_step"  # magnitude
    assert create_method("dst", prune="snip", total_steps=10).order == "pre_step"
    assert create_method("mest", total_steps=10).order == "pre_step"
    # Fantastic Weights' opt_order names ("before"/"after") are not ours: unknown values
    with pytest.raises(ValueError, match="valid: auto, pre_step, post_step"):
        create_method("dst", order="before", total_steps=10)
    with pytest.raises(ValueError, match="valid: auto, pre_step, post_step"):
        create_method("dst", order="later", total_steps=10)


# --------------------------------------------------------------------------- global scope


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_global_scope_moves_counts_between_layers(scope: str) -> None:
    model, opt, m = _setup(
        "rigl",
        [0.9, 0.1, 0.0, 0.0],
        [0.8, 0.2, 0.0, 0.0],
        [T, T, F, F],
        [T, T, F, F],
        scope=scope,
        **CONSTANT_HALF,
    )
    _step(model, opt, [1, 2, 3, 4, 0.5, 0.6, 9, 8])
    mask_a, mask_b, _, _ = _state(model, m)
    if scope == "global":
        # 4 active, drop the 2 lowest |w| of all: a1 (.1), b1 (.2); grow the 2 largest |g| of
        # every inactive or just-dropped entry: b2 (9), b3 (8). a loses one, b gains one.
        assert mask_a == [T, F, F, F] and mask_b == [T, F, T, T]
    else:
        # each layer drops 1 and grows 1: a1 -> a3 (|g| 4), b1 -> b2 (9)
        assert mask_a == [T, F, F, T] and mask_b == [T, F, T, F]
    assert m.history[-1]["pruned"] == m.history[-1]["grown"] == 2


# --------------------------------------------------------------------------- SET and MEST


def test_set_drops_smallest_positive_and_negative_closest_to_zero_regrows_randomly() -> None:
    wa = [0.3, -0.1, 0.05, -0.7, 0.0, 0.0, 0.0, 0.0]
    model, opt, m = _setup(
        "set",
        wa,
        [1.0] + [0.0] * 7,
        [T, T, T, T, F, F, F, F],
        [T] + [F] * 7,
        drop_fraction=0.5,
    )
    _step(model, opt, [0.0] * 16)
    mask_a, _, w, _ = _state(model, m)
    # k = 2: one smallest positive (a2 = .05) and one negative closest to zero (a1 = -.1) go;
    # a0 and a3 stay with their values; 2 entries are grown at random among a1, a2, a4..a7
    assert mask_a[0] and mask_a[3] and w[0] == pytest.approx(0.3) and w[3] == pytest.approx(-0.7)
    grown = [i for i in (1, 2, 4, 5, 6, 7) if mask_a[i]]
    assert len(grown) == 2 and all(w[i] == 0.0 for i in grown)
    assert sum(mask_a) == 4


@pytest.mark.parametrize(("options", "dropped"), [({}, [2, 3]), ({"gamma": 0.1}, [1, 3])])
def test_mest_drops_lowest_magnitude_plus_gamma_gradient(options, dropped) -> None:
    # scores |w| + γ|g| on a0..a3 = [.9, .1, .5, .3] with g = [0, 2, 0, .1]:
    # γ = 1 -> [.9, 2.1, .5, .4]: drop a3, a2; γ = .1 -> [.9, .3, .5, .31]: drop a1, a3
    model, opt, m = _setup(
        "mest",
        [0.9, -0.1, 0.5, 0.3, 0, 0, 0, 0],
        [1.0] + [0.0] * 7,
        [T] * 4 + [F] * 4,
        [T] + [F] * 7,
        **CONSTANT_HALF,
        **options,
    )
    _step(model, opt, [0, 2, 0, 0.1] + [0.0] * 12)
    mask_a, _, w, _ = _state(model, m)
    kept = [i for i in range(4) if i not in dropped]
    before = [0.9, -0.1, 0.5, 0.3]
    assert all(mask_a[i] and w[i] == pytest.approx(before[i]) for i in kept)  # not regrown
    assert sum(mask_a) == 4 and all(w[i] == 0.0 for i in range(8) if i not in kept)
    assert create_method("mest", total_steps=10, **options).prune_options == {
        "gamma": options.get("gamma", 1.0)
    }


def test_prune_options_reach_the_criterion_and_bad_ones_are_refused() -> None:
    m = create_method("dst", prune="gradstep", prune_options={"gamma": 0.25}, total_steps=10)
    assert m.prune_options == {"gamma": 0.25}
    with pytest.raises(ValueError, match=r"'magnitude' has no option\(s\) \['gamma'\]"):
        create_method("dst", prune_options={"gamma": 0.5}, total_steps=10)
    with pytest.raises(ValueError, match="disagree"):
        create_method("mest", gamma=0.5, prune_options={"gamma": 0.2}, total_steps=10)
    with pytest.raises(ValueError, match="per-layer only"):
        create_method("dst", prune="set", scope="global", total_steps=10)


# --------------------------------------------------------------------------- threads


@pytest.mark.parametrize(
    "options",
    [
        dict(prune="magnitude", grow="gradient"),
        dict(prune="random", grow="random", bernoulli=True),
        dict(prune="snip", grow="momentum"),
        dict(prune="magnitude", grow="gradient", execution="sparse"),
    ],
    ids=["rigl", "random-bernoulli", "snip-momentum", "rigl-sparse"],
)
def test_threaded_update_equals_the_single_threaded_one(threads: int, options) -> None:
    if threads == 1:
        pytest.skip("the 1-thread run is the reference of the 2-thread one")
    opts = dict(update_interval=2, **options)
    torch.set_num_threads(1)
    ref_losses, ref_masks, ref = train_dst(6, **opts)
    torch.set_num_threads(threads)
    losses, masks, method = train_dst(6, **opts)
    assert losses == ref_losses
    assert all(torch.equal(a, b) for a, b in zip(masks, ref_masks, strict=True))
    assert method.history == ref.history
