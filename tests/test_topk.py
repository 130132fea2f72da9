"""Exact-count selection: select_topk, select_bottomk, global_topk_masks, random_mask."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsetrain.masking.topk import global_topk_masks, random_mask, select_bottomk, select_topk

NAN = float("nan")


def t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float32)


def b(*xs: int) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.bool)


# --------------------------------------------------------------------------- hand-computed cases


def test_select_topk_picks_highest() -> None:
    assert select_topk(t(3, 1, 2), 2).tolist() == [True, False, True]
    assert select_topk(t(3, 1, 2), 0).tolist() == [False, False, False]
    assert select_topk(t(3, 1, 2), 3).tolist() == [True, True, True]


def test_select_topk_keeps_shape_and_dtype() -> None:
    scores = torch.tensor([[0.5, -1.0, 2.0], [4.0, 0.0, 1.0]])
    out = select_topk(scores, 3)
    assert out.dtype == torch.bool and out.shape == (2, 3)
    assert out.tolist() == [[False, False, True], [True, False, True]]


def test_select_topk_with_candidates() -> None:
    # the two highest overall (9, 7) are not candidates: pick 5 and 3 among {5, 3, 1}
    scores = t(9, 5, 7, 3, 1)
    cand = b(0, 1, 0, 1, 1)
    assert select_topk(scores, 2, cand).tolist() == [False, True, False, True, False]


def test_select_topk_negative_and_infinite_scores() -> None:
    scores = t(-1, -math.inf, math.inf, -3)
    assert select_topk(scores, 2).tolist() == [True, False, True, False]


def test_select_topk_nan_counts_lowest() -> None:
    assert select_topk(t(NAN, 1, 2), 2).tolist() == [False, True, True]
    # a NaN is taken only when the request cannot be met otherwise
    assert select_topk(t(NAN, 1, NAN), 2).sum() == 2
    assert select_topk(t(NAN, 1, NAN), 2)[1]


def test_select_bottomk_picks_lowest() -> None:
    assert select_bottomk(t(3, 1, 2), 1).tolist() == [False, True, False]
    assert select_bottomk(t(3, 1, 2), 2).tolist() == [False, True, True]
    assert select_bottomk(t(3, 1, 2, 0), 2, b(1, 1, 1, 0)).tolist() == [False, True, True, False]


def test_select_bottomk_integer_scores() -> None:
    scores = torch.tensor([5, -2, 7, 0], dtype=torch.int64)
    assert select_bottomk(scores, 2).tolist() == [False, True, False, True]


def test_select_bottomk_nan_picked_last() -> None:
    # a NaN score is never preferred, in either direction
    assert select_bottomk(t(NAN, 1, 2), 2).tolist() == [False, True, True]
    assert select_bottomk(t(NAN, 1, 2), 3).tolist() == [True, True, True]


def test_k_out_of_range_raises() -> None:
    with pytest.raises(ValueError, match=r"cannot select 4 .*out of 3"):
        select_topk(t(1, 2, 3), 4)
    with pytest.raises(ValueError, match="cannot select -1"):
        select_topk(t(1, 2, 3), -1)
    with pytest.raises(ValueError, match="cannot select 2 candidate entries out of 1"):
        select_bottomk(t(1, 2, 3), 2, b(0, 1, 0))


def test_global_topk_masks_hand_case() -> None:
    scores = [torch.tensor([[1.0, 5.0], [3.0, 0.0]]), torch.tensor([4.0, 2.0])]
    top = global_topk_masks(scores, 2)
    assert top[0].tolist() == [[False, True], [False, False]]  # 5
    assert top[1].tolist() == [True, False]  # 4
    low = global_topk_masks(scores, 3, largest=False)
    assert low[0].tolist() == [[True, False], [False, True]]  # 1, 0
    assert low[1].tolist() == [False, True]  # 2
    assert [m.shape for m in low] == [(2, 2), (2,)]


def test_global_topk_masks_with_candidates() -> None:
    scores = [t(9, 8), t(7, 6, 5)]
    cands = [b(0, 1), b(0, 0, 1)]
    out = global_topk_masks(scores, 2, cands)
    assert out[0].tolist() == [False, True]
    assert out[1].tolist() == [False, False, True]
    with pytest.raises(ValueError, match="cannot select 3"):
        global_topk_masks(scores, 3, cands)


def test_random_mask_exact_and_seeded() -> None:
    m = random_mask((4, 5), 7, torch.Generator().manual_seed(3))
    assert m.shape == (4, 5) and m.dtype == torch.bool and int(m.sum()) == 7
    again = random_mask((4, 5), 7, torch.Generator().manual_seed(3))
    assert torch.equal(m, again)
    other = random_mask((4, 5), 7, torch.Generator().manual_seed(4))
    assert not torch.equal(m, other)
    assert int(random_mask((3, 3), 0).sum()) == 0
    assert bool(random_mask((3, 3), 9).all())
    with pytest.raises(ValueError, match="cannot select 10 random entries out of 9"):
        random_mask((3, 3), 10)


def test_random_mask_is_uniform_over_positions() -> None:
    # 2000 draws of 1 position out of 4: every position hit about 500 times
    g = torch.Generator().manual_seed(0)
    hits = sum(random_mask((4,), 1, g).long() for _ in range(2000))
    assert hits.sum() == 2000
    assert all(400 < int(h) < 600 for h in hits)


# --------------------------------------------------------------------------- properties


Case = tuple[torch.Tensor, torch.Tensor, int]


@st.composite
def scored(draw: st.DrawFn, nan: bool = False) -> Case:
    """Integer scores from a tiny range (heavy ties), candidates, and a valid k."""
    n = draw(st.integers(1, 40))
    values = st.integers(-2, 2).map(float)
    if nan:
        values = st.one_of(values, st.just(NAN))
    scores = torch.tensor(draw(st.lists(values, min_size=n, max_size=n)))
    cand = torch.tensor(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    k = draw(st.integers(0, int(cand.sum())))
    return scores, cand, k


def _check_top(scores: torch.Tensor, cand: torch.Tensor, k: int, sel: torch.Tensor) -> None:
    assert int(sel.sum()) == k
    assert not (sel & ~cand).any()
    chosen, rest = scores[sel], scores[cand & ~sel]
    if len(chosen) and len(rest):
        assert chosen.min() >= rest.max()


@settings(max_examples=50)
@given(scored(), st.data())
def test_topk_exact_count_and_order_under_ties(case: Case, data: st.DataObject) -> None:
    scores, cand, k = case
    _check_top(scores, cand, k, select_topk(scores, k, cand))
    # without candidates: any k in range over all entries
    k_all = data.draw(st.integers(0, scores.numel()))
    _check_top(scores, torch.ones_like(cand), k_all, select_topk(scores, k_all))


@settings(max_examples=50)
@given(scored())
def test_bottomk_exact_count_and_order_under_ties(case: Case) -> None:
    scores, cand, k = case
    sel = select_bottomk(scores, k, cand)
    _check_top(-scores, cand, k, sel)


@settings(max_examples=50)
@given(scored(nan=True))
def test_topk_and_bottomk_with_nan(case: Case) -> None:
    scores, cand, k = case
    is_nan = scores.isnan()
    finite = int((cand & ~is_nan).sum())
    for fn, sign in ((select_topk, 1.0), (select_bottomk, -1.0)):
        sel = fn(scores, k, cand)
        assert int(sel.sum()) == k
        assert not (sel & ~cand).any()
        if k <= finite:
            assert not (sel & is_nan).any()  # NaN only when nothing else is left
        else:
            assert bool(sel[cand & ~is_nan].all())
        ok = sel & ~is_nan
        rest = cand & ~sel & ~is_nan
        if ok.any() and rest.any():
            assert (sign * scores[ok]).min() >= (sign * scores[rest]).max()


@st.composite
def layered(draw: st.DrawFn) -> tuple[list[torch.Tensor], list[torch.Tensor], int]:
    shapes = draw(st.lists(st.tuples(st.integers(1, 4), st.integers(1, 4)), min_size=1, max_size=4))
    scores, cands = [], []
    for shape in shapes:
        n = shape[0] * shape[1]
        vals = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
        scores.append(torch.tensor(vals, dtype=torch.float32).view(shape))
        flags = draw(st.lists(st.booleans(), min_size=n, max_size=n))
        cands.append(torch.tensor(flags).view(shape))
    k = draw(st.integers(0, sum(int(c.sum()) for c in cands)))
    return scores, cands, k


@settings(max_examples=50)
@given(layered(), st.booleans())
def test_global_selection_sums_to_k(
    case: tuple[list[torch.Tensor], list[torch.Tensor], int], largest: bool
) -> None:
    scores, cands, k = case
    masks = global_topk_masks(scores, k, cands, largest=largest)
    assert [m.shape for m in masks] == [s.shape for s in scores]
    assert sum(int(m.sum()) for m in masks) == k
    flat_s = torch.cat([s.reshape(-1) for s in scores]) * (1.0 if largest else -1.0)
    flat_c = torch.cat([c.reshape(-1) for c in cands])
    flat_m = torch.cat([m.reshape(-1) for m in masks])
    _check_top(flat_s, flat_c, k, flat_m)
    # without candidates too
    k_all = min(k, flat_s.numel())
    everything = global_topk_masks(scores, k_all, largest=largest)
    assert sum(int(m.sum()) for m in everything) == k_all
    flat_e = torch.cat([m.reshape(-1) for m in everything])
    _check_top(flat_s, torch.ones_like(flat_c), k_all, flat_e)


@settings(max_examples=50)
@given(
    st.lists(st.integers(1, 5), min_size=1, max_size=3),
    st.integers(0, 10_000),
    st.floats(0, 1),
)
def test_random_mask_exact_count(shape: list[int], seed: int, frac: float) -> None:
    numel = math.prod(shape)
    n = round(frac * numel)
    m = random_mask(shape, n, torch.Generator().manual_seed(seed))
    assert tuple(m.shape) == tuple(shape)
    assert int(m.sum()) == n


# --------------------------------------------------------------------------- large tensors

BIG = 1 << 20  # large enough for the sampled-threshold fast path


@pytest.mark.parametrize(
    ("levels", "k", "with_cand", "with_nan"),
    [
        (1000, 5000, True, False),
        (10, BIG // 8, False, False),  # heavy ties at the threshold
        (10, 3000, True, True),
        (2, 100, False, False),  # two distinct values: the threshold cannot help
    ],
)
def test_large_tensor_selection_is_exact(
    levels: int, k: int, with_cand: bool, with_nan: bool
) -> None:
    g = torch.Generator().manual_seed(levels + k)
    scores = torch.randint(0, levels, (BIG,), generator=g).float()
    if with_nan:
        scores[torch.randint(0, BIG, (BIG // 10,), generator=g)] = NAN
    cand = torch.rand(BIG, generator=g) < 0.5 if with_cand else torch.ones(BIG, dtype=torch.bool)
    not_nan = ~scores.isnan()
    for fn, sign in ((select_topk, 1.0), (select_bottomk, -1.0)):
        sel = fn(scores, k, cand if with_cand else None)
        assert int(sel.sum()) == k
        assert not (sel & ~cand).any()
        assert not (sel & ~not_nan).any()
        rest = cand & ~sel & not_nan
        assert (sign * scores[sel]).min() >= (sign * scores[rest]).max()


def test_large_global_selection_is_exact() -> None:
    g = torch.Generator().manual_seed(0)
    scores = [torch.randint(0, 100, (BIG // 2,), generator=g).float() for _ in range(2)]
    masks = global_topk_masks(scores, 1000)
    assert sum(int(m.sum()) for m in masks) == 1000
    chosen = torch.cat([s[m] for s, m in zip(scores, masks, strict=True)])
    rest = torch.cat([s[~m] for s, m in zip(scores, masks, strict=True)])
    assert chosen.min() >= rest.max()
