"""Layer-wise density allocation: uniform, ER, ERK (iterative dense rule), exact integer counts."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sparsetrain.distributions import (
    allocate,
    allocate_densities,
    densities_to_counts,
)

# two Linear layers (out, in) and one Conv2d (out, in, kh, kw); 32 + 8 + 54 = 94 weights
SHAPES = {"fc1.weight": (4, 8), "fc2.weight": (2, 4), "conv.weight": (3, 2, 3, 3)}


def approx(d: dict[str, float]) -> dict[str, object]:
    return {k: pytest.approx(v, rel=1e-9) for k, v in d.items()}


def test_uniform_and_global() -> None:
    for kind in ("uniform", "global"):
        assert allocate_densities(SHAPES, 0.8, kind) == approx(dict.fromkeys(SHAPES, 0.2))
    # counts: 0.2 * (32, 8, 54) = 6.4, 1.6, 10.8 -> floors 6, 1, 10 (17); target round(18.8) = 19;
    # the two largest remainders (conv .8, fc2 .6) get one more each
    assert allocate(SHAPES, 0.8, "uniform") == {"fc1.weight": 6, "fc2.weight": 2, "conv.weight": 11}


def test_er_ignores_kernel_dims() -> None:
    # raw = (n_in + n_out) / (n_in * n_out): fc1 12/32, fc2 6/8, conv (2+3)/(2*3) = 5/6
    # eps * (0.375*32 + 0.75*8 + 5/6*54) = eps * 63 = 0.2 * 94 = 18.8
    eps = 18.8 / 63
    expected = {"fc1.weight": 0.375 * eps, "fc2.weight": 0.75 * eps, "conv.weight": 5 / 6 * eps}
    assert allocate_densities(SHAPES, 0.8, "er") == approx(expected)


def test_erk_hand_computed() -> None:
    # raw = sum(dims) / prod(dims): fc1 12/32, fc2 6/8, conv (3+2+3+3)/54 = 11/54
    # eps * (12 + 6 + 11) = 18.8  ->  eps = 18.8 / 29 (no layer above density 1)
    eps = 18.8 / 29
    expected = {"fc1.weight": 0.375 * eps, "fc2.weight": 0.75 * eps, "conv.weight": 11 / 54 * eps}
    dens = allocate_densities(SHAPES, 0.8, "erk")
    assert dens == approx(expected)
    assert sum(dens[n] * math.prod(s) for n, s in SHAPES.items()) == pytest.approx(18.8)
    # real counts 7.779, 3.890, 7.131 -> floors 7, 3, 7 (17); target 19: fc2 (.890), fc1 (.779)
    assert allocate(SHAPES, 0.8, "erk") == {"fc1.weight": 8, "fc2.weight": 4, "conv.weight": 7}


def test_fused_blocks_get_the_density_of_separate_matrices() -> None:
    # attention in-projection (3E, E) with E = 4 as 3 blocks vs three separate 4x4 Linears,
    # next to a 4x20 Linear: block raw (4+4)/16 = 0.5, fc (4+20)/80 = 0.3, the same either way
    fused = {"in_proj": (12, 4), "fc": (4, 20)}
    split = {"q": (4, 4), "k": (4, 4), "v": (4, 4), "fc": (4, 20)}
    for kind in ("er", "erk"):
        a = allocate_densities(fused, 0.7, kind, blocks={"in_proj": 3})
        b = allocate_densities(split, 0.7, kind)
        assert a["in_proj"] == pytest.approx(b["q"]) and a["fc"] == pytest.approx(b["fc"])
        # eps * (0.5 * 48 + 0.3 * 80) = 0.3 * 128  ->  eps = 0.8
        assert a == approx({"in_proj": 0.5 * 0.8, "fc": 0.3 * 0.8})
    # unfused the in-projection would get (12+4)/48 = 1/3 instead of 1/2
    assert allocate_densities(fused, 0.7, "erk")["in_proj"] < a["in_proj"]
    # LSTM (4H, in) with 4 gates of H = 3: one gate's (3 + 5) / 15
    lstm = allocate_densities({"w_ih": (12, 5), "fc": (4, 20)}, 0.5, "erk", blocks={"w_ih": 4})
    assert lstm["w_ih"] / lstm["fc"] == pytest.approx((8 / 15) / 0.3)


def test_conv_transpose_gets_the_ratio_of_the_matching_conv() -> None:
    # ConvTranspose2d(3, 5, 2) stores (in, out, kh, kw) = (3, 5, 2, 2), Conv2d(3, 5, 2) (5, 3, 2, 2)
    up = allocate_densities({"up": (3, 5, 2, 2), "fc": (4, 8)}, 0.6, "erk")
    conv = allocate_densities({"up": (5, 3, 2, 2), "fc": (4, 8)}, 0.6, "erk")
    assert up == approx(conv)


@pytest.mark.parametrize("bad", [0, 5, 2.0])
def test_bad_blocks(bad: object) -> None:
    with pytest.raises(ValueError, match="blocks"):
        allocate_densities({"w": (12, 4)}, 0.5, "erk", blocks={"w": bad})


def test_erk_iterative_dense_rule() -> None:
    # sparsity 0.5: budget 47. First solve eps = 47/29 makes fc2 0.75*47/29 = 1.216 > 1, so fc2
    # becomes dense (8 weights) and the rest re-solve: eps * (12 + 11) = 47 - 8 = 39
    eps = 39 / 23
    dens = allocate_densities(SHAPES, 0.5, "erk")
    assert dens == approx(
        {"fc1.weight": 0.375 * eps, "fc2.weight": 1.0, "conv.weight": 11 / 54 * eps}
    )
    assert dens["fc2.weight"] == 1.0
    # real counts 20.348, 8, 18.652 -> floors 46; target 47: conv gets the extra one
    assert allocate(SHAPES, 0.5, "erk") == {"fc1.weight": 20, "fc2.weight": 8, "conv.weight": 19}


def test_erk_two_dense_rounds() -> None:
    # raw: a 4/4 = 1, b 8/16 = .5, c 40/400 = .1; sizes 4, 16, 400; budget 0.5 * 420 = 210.
    # round 1: eps = 210/52 -> a (4.04) and b (2.02) over 1; only the largest raw (a) goes dense.
    # round 2: eps = 206/48 -> b 2.15 > 1 goes dense. round 3: eps = 190/40 -> c = 0.475.
    shapes = {"a": (2, 2), "b": (4, 4), "c": (20, 20)}
    assert allocate_densities(shapes, 0.5, "erk") == approx({"a": 1.0, "b": 1.0, "c": 0.475})
    assert allocate(shapes, 0.5, "erk") == {"a": 4, "b": 16, "c": 190}


def test_erk_power_zero_is_uniform() -> None:
    assert allocate_densities(SHAPES, 0.7, "erk", erk_power=0.0) == approx(
        dict.fromkeys(SHAPES, 0.3)
    )


def test_zero_sparsity_is_dense() -> None:
    for kind in ("uniform", "er", "erk", "global"):
        assert allocate(SHAPES, 0.0, kind) == {n: math.prod(s) for n, s in SHAPES.items()}


def test_densities_to_counts_total_and_ties_in_model_order() -> None:
    shapes = {"a": (10,), "b": (10,), "c": (10,)}
    dens = {"a": 0.25, "b": 0.25, "c": 0.25}  # 2.5 each, floors 6
    # equal remainders: extra weights go in model order
    assert densities_to_counts(shapes, dens, 8) == {"a": 3, "b": 3, "c": 2}
    assert densities_to_counts(shapes, dens) == {"a": 3, "b": 3, "c": 2}  # round(7.5) = 8
    assert densities_to_counts(shapes, dens, 6) == {"a": 2, "b": 2, "c": 2}


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_invalid_sparsity_value(bad: float) -> None:
    with pytest.raises(
        ValueError, match=rf"^allocate: sparsity must be a number in \[0, 1\), got {bad}$"
    ):
        allocate(SHAPES, bad, "erk")


@pytest.mark.parametrize("bad", ["0.5", None, True])
def test_invalid_sparsity_type(bad: object) -> None:
    with pytest.raises(TypeError, match=f"got {bad!r}"):
        allocate(SHAPES, bad, "uniform")  # type: ignore[arg-type]


def test_unknown_distribution() -> None:
    with pytest.raises(ValueError, match="unknown distribution 'erdos'; valid: uniform, er, erk"):
        allocate(SHAPES, 0.5, "erdos")


def test_allocate_accepts_int_zero() -> None:
    assert allocate(SHAPES, 0, "uniform") == {"fc1.weight": 32, "fc2.weight": 8, "conv.weight": 54}


# --------------------------------------------------------------------------- properties

linear = st.tuples(st.integers(1, 12), st.integers(1, 12))
conv = st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 3), st.integers(1, 3))


@given(
    st.lists(st.one_of(linear, conv), min_size=1, max_size=5),
    st.floats(0.0, 0.99),
    st.sampled_from(["uniform", "er", "erk", "global"]),
)
def test_allocate_counts_are_exact(
    shape_list: list[tuple[int, ...]], sparsity: float, kind: str
) -> None:
    shapes = {f"layer{i}.weight": s for i, s in enumerate(shape_list)}
    counts = allocate(shapes, sparsity, kind)
    dens = allocate_densities(shapes, sparsity, kind)
    total = sum(math.prod(s) for s in shapes.values())
    assert list(counts) == list(shapes)
    assert sum(counts.values()) == round((1.0 - sparsity) * total)
    for name, shape in shapes.items():
        numel = math.prod(shape)
        assert 0 <= counts[name] <= numel
        assert 0.0 <= dens[name] <= 1.0
        assert abs(counts[name] - dens[name] * numel) <= 1.0
    # the real-valued densities carry the global budget exactly
    budget = sum(dens[n] * math.prod(s) for n, s in shapes.items())
    assert budget == pytest.approx((1.0 - sparsity) * total, rel=1e-9, abs=1e-9)
