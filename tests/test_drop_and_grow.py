"""The drop-and-grow kernel by hand, and criteria registered at runtime reaching every method."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from sparsetrain import create_method
from sparsetrain.criteria import (
    GROWTH_CRITERIA,
    PRUNE_CRITERIA,
    Site,
    drop_and_grow,
    get_growth_criterion,
    get_prune_criterion,
    register_growth_criterion,
    register_prune_criterion,
)

T, F = True, False


def _site(w, mask, g=None, mom=None) -> Site:
    return Site(
        torch.tensor(w),
        torch.tensor(mask),
        grads=None if g is None else torch.tensor(g),
        momentum=None if mom is None else torch.tensor(mom),
        prune_generator=torch.Generator().manual_seed(0),
        grow_generator=torch.Generator().manual_seed(1),
    )


# --------------------------------------------------------------------------- the kernel


def test_layer_scope_by_hand_on_eight_entries() -> None:
    # active: 0 (.3), 1 (-.1), 3 (-.7), 6 (.05); drop the 2 lowest |w|: 6 and 1. Candidates for
    # growth: the inactive 2, 4, 5, 7 and the just-dropped 1, 6; largest |g|: 5 (9), 1 (-4)
    s = _site(
        [0.3, -0.1, 0.0, -0.7, 0.0, 0.0, 0.05, 0.0],
        [T, T, F, T, F, F, T, F],
        g=[0.0, -4.0, 1.0, 0.0, 2.0, 9.0, 0.5, 3.0],
    )
    (c,) = drop_and_grow([s], "magnitude", "gradient", [2])
    assert sorted(c.drop.tolist()) == [1, 6] and sorted(c.grow.tolist()) == [1, 5]
    assert c.fresh.tolist() == [5]  # 1 was dropped and regrown at once
    assert s.mask.tolist() == [T, T, F, T, F, F, T, F]  # selection never writes the mask


def test_global_scope_ranks_all_tensors_together() -> None:
    a = _site([0.9, 0.1, 0.0], [T, T, F], g=[0.0, 0.0, 1.0])
    b = _site([0.8, 0.2, 0.0], [T, T, F], g=[0.0, 0.0, 5.0])
    ca, cb = drop_and_grow([a, b], "magnitude", "gradient", 2, "global")
    assert ca.drop.tolist() == [1] and cb.drop.tolist() == [1]  # .1 and .2
    # grow the 2 largest |g| of a1, a2, b1, b2: b2 (5), a2 (1)
    assert ca.grow.tolist() == [2] and cb.grow.tolist() == [2]
    cb2 = drop_and_grow([a, b], "magnitude", "gradient", 1, "global")[1]
    assert cb2.drop.tolist() == [] and cb2.grow.tolist() == [2]  # a1 goes, b2 comes: b gains


def test_prune_only_and_keep_top() -> None:
    s = _site([0.5, 0.0, 0.0, 0.2], [T, T, T, T])
    (c,) = drop_and_grow([s], "magnitude", None, [2])
    assert sorted(c.drop.tolist()) == [1, 2] and c.grow.numel() == 0
    (k,) = drop_and_grow([s], "magnitude", None, [2], keep_top=True)  # no tie at the boundary
    assert sorted(k.drop.tolist()) == [1, 2]


def test_threads_give_the_same_changes_and_reach_every_tensor() -> None:
    gen = torch.Generator().manual_seed(0)
    sites = [
        Site(
            torch.randn(50, generator=gen),
            torch.rand(50, generator=gen) < 0.5,
            grads=torch.randn(50, generator=gen),
            prune_generator=torch.Generator().manual_seed(i),
            grow_generator=torch.Generator().manual_seed(100 + i),
        )
        for i in range(5)
    ]
    counts = [int(s.mask.sum()) // 3 for s in sites]
    seen: list[int] = []
    one = drop_and_grow(sites, "magnitude", "gradient", counts, workers=1)
    two = drop_and_grow(
        sites, "magnitude", "gradient", counts, workers=2, commit=lambda i, c: seen.append(i)
    )
    assert sorted(seen) == [0, 1, 2, 3, 4]
    for a, b, n in zip(one, two, counts, strict=True):
        assert torch.equal(a.drop, b.drop) and torch.equal(a.grow, b.grow) and a.drop.numel() == n


def test_kernel_refuses_bad_calls() -> None:
    s = _site([0.5, 0.1], [T, T], g=[0.0, 1.0])
    with pytest.raises(ValueError, match="per-layer only"):
        drop_and_grow([s], "set", "random", 1, "global")
    with pytest.raises(ValueError, match="one count per tensor"):
        drop_and_grow([s], "magnitude", "random", 1)
    with pytest.raises(ValueError, match="exactly one of counts and fraction"):
        drop_and_grow([s], "magnitude", "random", [1], fraction=0.5)
    with pytest.raises(ValueError, match="unknown scope 'all'"):
        drop_and_grow([s], "magnitude", "random", 1, "all")
    with pytest.raises(ValueError, match="'mest' needs the dense gradient"):
        drop_and_grow([_site([0.5, 0.1], [T, T])], "mest", "random", [1])
    with pytest.raises(ValueError, match="'momentum' needs an optimizer with momentum"):
        drop_and_grow([s], "magnitude", "momentum", [1])


def test_criteria_declare_their_inputs_and_options() -> None:
    mest = get_prune_criterion("mest")
    assert mest.inputs == {"weights", "grads"} and dict(mest.options) == {"gamma": 1.0}
    assert mest.default_order == "pre_step" and get_prune_criterion("set").selection
    assert (
        get_growth_criterion("random").uniform and get_growth_criterion("momentum").needs_momentum
    )


def test_registration_refuses_an_unknown_parameter() -> None:
    def bad(weights, scale):  # `scale` has no default: neither an input nor a hyper-parameter
        return weights * scale

    with pytest.raises(TypeError, match="'scale' is neither an input"):
        register_prune_criterion("bad", order="post_step", description="-")(bad)
    assert "bad" not in PRUNE_CRITERIA


# --------------------------------------------------------------------------- runtime criteria


@pytest.fixture
def largest_first() -> Iterator[None]:
    """A prune criterion that removes the *largest* |w|·alpha, and growth by smallest |g|."""

    @register_prune_criterion("test_largest", order="post_step", description="largest |w|")
    def largest(weights: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
        return -alpha * weights.abs()

    @register_growth_criterion("test_smallest_grad", description="smallest |g|")
    def smallest_grad(grads: torch.Tensor) -> torch.Tensor:
        return -grads.abs()

    yield
    PRUNE_CRITERIA.pop("test_largest")
    GROWTH_CRITERIA.pop("test_smallest_grad")


class Head(nn.Module):
    """y = w·x (one bias-free head): ∂L/∂w = x for loss = y.sum()."""

    def __init__(self, w: list[float]) -> None:
        super().__init__()
        self.fc = nn.Linear(len(w), 1, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([w]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


W = [0.9, -0.1, 0.5, 0.2, 0.0, 0.0]
X = [1.0, 1.0, 1.0, 1.0, 3.0, 0.5]  # gradients; inactive 4 and 5: |g| 3 and .5


def _one_step(name: str, mask: list[bool] | None, **options: object) -> list[bool]:
    model = Head(W)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    m = create_method(name, total_steps=4, **options).attach(model, opt)
    if mask is not None:
        state = m.state_dict()
        state["masks"] = {"fc.weight": torch.tensor([mask])}
        m.load_state_dict(state)
        model.load_state_dict(Head(W).state_dict())
    opt.zero_grad()
    model(torch.tensor([X])).sum().backward()
    opt.step()
    m.apply_pending()  # a deferred update takes effect (see apply_pending)
    return m.targets[0].mask[0].tolist()


def test_a_runtime_criterion_works_in_dst(largest_first) -> None:
    # 4 active, ζ = .5: drop the 2 largest |w| (a0 .9, a2 .5); grow 2 by smallest |g| among
    # a0, a2 (1), a4 (3), a5 (.5): a5 and one of the tied a0/a2
    mask = _one_step(
        "dst",
        [T, T, T, T, F, F],
        prune="test_largest",
        grow="test_smallest_grad",
        prune_options={"alpha": 2.0},
        sparsity=0.5,
        update_interval=1,
        drop_fraction=0.5,
        drop_schedule="constant",
    )
    assert mask[1] and mask[3] and mask[5] and not mask[4] and mask[0] != mask[2]


def test_a_runtime_criterion_works_in_granet(largest_first) -> None:
    # GraNet prunes 6 -> 3 by |w| at step 1 (= end_step): a0 .9, a2 .5, a3 .2 stay; the regrowth
    # round (ζ = 1/3) drops ceil(3/3) = 1 by the test criterion (the largest, a0) and grows 1
    # by smallest |g| among a0, a1, a4, a5: a5 (.5)
    mask = _one_step(
        "granet",
        None,
        prune="test_largest",
        grow="test_smallest_grad",
        sparsity=0.5,
        end_step=1,
        update_interval=1,
        regrow_fraction=1 / 3,
        regrow_fraction_end=1 / 3,
    )
    assert mask == [F, F, T, T, F, T]


def test_a_runtime_criterion_works_in_static(largest_first) -> None:
    # keep the top 3 by -|w|: the three smallest |w| (a1 .1, a4 0, a5 0)
    mask = _one_step("static", None, init="test_largest", sparsity=0.5)
    assert mask == [F, T, F, F, T, T]
    assert (
        create_method("static", init="test_largest", total_steps=4).criterion
        is PRUNE_CRITERIA["test_largest"]
    )
