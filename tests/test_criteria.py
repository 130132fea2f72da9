"""Pruning scores, the two SET rules, growth criteria and the criteria registries."""

from __future__ import annotations

import pytest
import torch

from sparsetrain.criteria import (
    GROWTH_CRITERIA,
    PRUNE_CRITERIA,
    get_growth_criterion,
    get_prune_criterion,
    gradstep,
    grow_random,
    magnitude,
    mest,
    random_scores,
    reciprocal_sensitivity,
    sensitivity,
    set_as_released_drop,
    set_drop,
    snip,
    taylor,
)
from sparsetrain.masking.topk import select_topk

# one tiny case for every score: w and g chosen so each score is exact by hand
W = torch.tensor([1.0, -2.0, 0.5, -0.25])
G = torch.tensor([0.5, 1.0, -2.0, 0.0])
ALL = torch.ones(4, dtype=torch.bool)


def close(a: torch.Tensor, b: list[float]) -> bool:
    return torch.allclose(a, torch.tensor(b), rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- scores


def test_magnitude() -> None:
    assert close(magnitude(W), [1.0, 2.0, 0.5, 0.25])


def test_mest_with_gamma() -> None:
    assert close(mest(W, G), [1.5, 3.0, 2.5, 0.25])  # gamma = 1 (FW default)
    assert close(mest(W, G, gamma=0.5), [1.25, 2.5, 1.5, 0.25])
    assert close(mest(W, G, gamma=0.0), [1.0, 2.0, 0.5, 0.25])


def test_snip() -> None:
    assert close(snip(W, G), [0.5, 2.0, 1.0, 0.0])


def test_sensitivity() -> None:
    # |g| / (|w| + 1e-8)
    assert close(sensitivity(W, G), [0.5, 0.5, 4.0, 0.0])
    # zero weight: finite, huge
    assert sensitivity(torch.tensor([0.0]), torch.tensor([1.0])).item() == pytest.approx(1e8)


def test_reciprocal_sensitivity() -> None:
    # |w| / (|g| + 1e-8); g = 0 gives 0.25 / 1e-8 = 2.5e7
    r = reciprocal_sensitivity(W, G)
    assert close(r[:3], [2.0, 2.0, 0.25])
    assert r[3].item() == pytest.approx(2.5e7)


def test_taylor() -> None:
    assert close(taylor(W, G), [0.25, 4.0, 1.0, 0.0])


def test_gradstep() -> None:
    assert close(gradstep(W, G), [0.5, 3.0, 2.5, 0.25])  # |w - g|
    assert close(gradstep(W, G, gamma=0.5), [0.75, 2.5, 1.5, 0.25])  # |w - g/2|


def test_random_scores_shape_and_determinism() -> None:
    w = torch.zeros(3, 5)
    a = random_scores(w, torch.Generator().manual_seed(7))
    b = random_scores(w, torch.Generator().manual_seed(7))
    c = random_scores(w, torch.Generator().manual_seed(8))
    assert a.shape == (3, 5)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert bool(((a >= 0) & (a < 1)).all())


@pytest.mark.parametrize(
    ("name", "k", "expected"),
    [
        ("magnitude", 2, [False, False, True, True]),  # |w| = 1, 2, .5, .25
        ("mest", 2, [True, False, False, True]),  # 1.5, 3, 2.5, .25
        ("snip", 2, [True, False, False, True]),  # .5, 2, 1, 0
        ("sensitivity", 1, [False, False, False, True]),  # .5, .5, 4, 0
        ("reciprocal_sensitivity", 1, [False, False, True, False]),  # 2, 2, .25, 2.5e7
        ("taylor", 2, [True, False, False, True]),  # .25, 4, 1, 0
        ("gradstep", 2, [True, False, False, True]),  # .5, 3, 2.5, .25
    ],
)
def test_registry_select_removes_lowest(name: str, k: int, expected: list[bool]) -> None:
    crit = get_prune_criterion(name)
    assert crit.select(W, G, ALL, k).tolist() == expected


def test_registry_select_only_among_active() -> None:
    # magnitude: the two smallest active entries, the inactive 0.25 is not a candidate
    mask = torch.tensor([True, True, True, False])
    assert get_prune_criterion("magnitude").select(W, None, mask, 2).tolist() == [
        True,
        False,
        True,
        False,
    ]


def test_registry_gamma_reaches_score() -> None:
    w = torch.tensor([1.0, 2.0])
    g = torch.tensor([3.0, 0.0])
    # mest: gamma=1 -> [4, 2] drops index 1; gamma=0.1 -> [1.3, 2] drops index 0
    mest_c = get_prune_criterion("mest")
    assert mest_c.select(w, g, torch.ones(2, dtype=torch.bool), 1).tolist() == [False, True]
    assert mest_c.select(w, g, torch.ones(2, dtype=torch.bool), 1, gamma=0.1).tolist() == [
        True,
        False,
    ]


def test_random_criterion_select_is_seeded_and_exact() -> None:
    crit = get_prune_criterion("random")
    w = torch.randn(10)
    mask = torch.ones(10, dtype=torch.bool)
    a = crit.select(w, None, mask, 4, torch.Generator().manual_seed(1))
    b = crit.select(w, None, mask, 4, torch.Generator().manual_seed(1))
    assert int(a.sum()) == 4 and torch.equal(a, b)


def test_grad_criteria_need_grad() -> None:
    for name in ("mest", "snip", "sensitivity", "reciprocal_sensitivity", "taylor", "gradstep"):
        crit = get_prune_criterion(name)
        assert crit.needs_grad and crit.default_order == "pre_step"
        with pytest.raises(ValueError, match=rf"{name}.*needs the dense gradient"):
            crit.scores(W, None)
    for name in ("magnitude", "set", "set_as_released", "random"):
        crit = get_prune_criterion(name)
        assert not crit.needs_grad and crit.default_order == "post_step"


def test_set_rules_are_not_scores() -> None:
    with pytest.raises(ValueError, match="selection rule"):
        get_prune_criterion("set").scores(W, None)


# --------------------------------------------------------------------------- SET (corrected)

# index:             0     1     2      3     4      5     6     7
SET_W = torch.tensor([0.3, -0.1, 0.05, -0.7, 0.0, -0.02, 0.9, -0.4])


def test_set_drop_hand_example() -> None:
    # k = 4: ceil(4/2) = 2 smallest positives (0.0 counts as positive -> idx 4, 0.05 -> idx 2)
    # and the 2 negatives closest to zero (-0.02 -> idx 5, -0.1 -> idx 1)
    drop = set_drop(SET_W, torch.ones(8, dtype=torch.bool), 4)
    assert drop.nonzero().squeeze(1).tolist() == [1, 2, 4, 5]
    # odd k: ceil(3/2) = 2 of each sign, so the same 4 removals
    assert torch.equal(set_drop(SET_W, torch.ones(8, dtype=torch.bool), 3), drop)
    # via the registry
    assert torch.equal(
        get_prune_criterion("set").select(SET_W, None, torch.ones(8, dtype=torch.bool), 4), drop
    )


def test_set_drop_respects_mask() -> None:
    mask = torch.ones(8, dtype=torch.bool)
    mask[[4, 5]] = False  # 0.0 and -0.02 inactive
    drop = set_drop(SET_W, mask, 4)
    # positives left: 0.3, 0.05, 0.9 -> 0.05 (2), 0.3 (0); negatives: -0.1 (1), -0.4 (7)
    assert drop.nonzero().squeeze(1).tolist() == [0, 1, 2, 7]


def test_set_drop_one_sign_too_few() -> None:
    w = torch.tensor([0.3, -0.1, 0.05, 0.9, 0.2, 0.6, 0.7, 0.8])  # a single negative
    drop = set_drop(w, torch.ones(8, dtype=torch.bool), 4)
    # 2 smallest positives (0.05 -> 2, 0.2 -> 4) + the only negative (1): 3 removals, no more
    assert drop.nonzero().squeeze(1).tolist() == [1, 2, 4]
    # no negatives at all
    pos = w.abs()
    assert set_drop(pos, torch.ones(8, dtype=torch.bool), 4).nonzero().squeeze(1).tolist() == [
        1,
        2,
    ]


# --------------------------------------------------------------------------- SET as released


def test_set_as_released_hand_example() -> None:
    # k = 4, half = 2. Released rule: drop active zeros (idx 4); drop the 2 smallest strictly
    # positive (0.05 -> 2, 0.3 -> 0); keep only the half-1 = 1 most negative (-0.7 -> 3) and
    # drop every other negative (1, 5, 7): 6 removals for 4 requested
    drop = set_as_released_drop(SET_W, torch.ones(8, dtype=torch.bool), 4)
    assert drop.nonzero().squeeze(1).tolist() == [0, 1, 2, 4, 5, 7]
    assert torch.equal(
        get_prune_criterion("set_as_released").select(
            SET_W, None, torch.ones(8, dtype=torch.bool), 4
        ),
        drop,
    )


def test_set_rules_with_k_zero() -> None:
    # the released code returns `weight != 0` when nothing is to be removed: only active zeros go
    mask = torch.ones(8, dtype=torch.bool)
    assert set_as_released_drop(SET_W, mask, 0).nonzero().squeeze(1).tolist() == [4]
    assert not set_drop(SET_W, mask, 0).any()


def test_set_rules_with_k_one() -> None:
    mask = torch.ones(8, dtype=torch.bool)
    # corrected: ceil(1/2) = 1 of each sign -> 0.0 (idx 4) and -0.02 (idx 5)
    assert set_drop(SET_W, mask, 1).nonzero().squeeze(1).tolist() == [4, 5]
    # released: zero (4), smallest positive 0.05 (2), and all negatives (keep half - 1 = 0)
    assert set_as_released_drop(SET_W, mask, 1).nonzero().squeeze(1).tolist() == [1, 2, 3, 4, 5, 7]


def test_set_as_released_over_prunes_gaussian() -> None:
    # spec §5.6 item 1: 1000 Gaussian weights, k = 300 -> far more than 300 removals
    w = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(1000, dtype=torch.bool)
    n_pos, n_neg = int((w > 0).sum()), int((w < 0).sum())
    assert n_pos >= 150 and n_pos + n_neg == 1000
    released = set_as_released_drop(w, mask, 300)
    # 150 smallest positives + every negative except the 149 most negative = n_neg + 1
    assert int(released.sum()) == n_neg + 1
    assert int(released.sum()) > 450
    kept_neg = (w < 0) & ~released
    assert int(kept_neg.sum()) == 149
    assert w[kept_neg].max() < w[(w < 0) & released].min()  # the kept ones are the most negative
    # the corrected rule removes exactly 150 + 150
    fixed = set_drop(w, mask, 300)
    assert int(fixed.sum()) == 300
    assert int((fixed & (w >= 0)).sum()) == 150


# --------------------------------------------------------------------------- growth


def select_topk_growth(
    name: str, grad: torch.Tensor | None, mom: torch.Tensor | None, cand: torch.Tensor, n: int
) -> torch.Tensor:
    """Deterministic growth as the DST methods do it: top-n growth scores among candidates."""
    return select_topk(get_growth_criterion(name).scores(None, grad, momentum=mom), n, cand)


def test_grow_random_exact_among_candidates() -> None:
    cand = torch.zeros(10, 10, dtype=torch.bool)
    cand[::2] = True  # 50 candidates
    for seed in range(5):
        grown = grow_random(cand, 7, torch.Generator().manual_seed(seed))
        assert int(grown.sum()) == 7
        assert not (grown & ~cand).any()
    a = grow_random(cand, 7, torch.Generator().manual_seed(0))
    assert torch.equal(a, grow_random(cand, 7, torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="cannot select 51"):
        grow_random(cand, 51, torch.Generator().manual_seed(0))


def test_grow_random_bernoulli_count_varies_only_among_candidates() -> None:
    cand = torch.zeros(1000, dtype=torch.bool)
    cand[:500] = True
    counts = []
    for seed in range(20):
        grown = grow_random(cand, 100, torch.Generator().manual_seed(seed), bernoulli=True)
        assert not (grown & ~cand).any()
        counts.append(int(grown.sum()))
    assert len(set(counts)) > 1  # exact only in expectation
    assert 90 <= sum(counts) / len(counts) <= 110  # p = 100 / 500


def test_gradient_growth_picks_largest_abs_grad_inactive() -> None:
    g = torch.tensor([0.1, -5.0, 0.3, -0.2, 4.0])
    active = torch.tensor([False, True, False, False, False])
    grown = select_topk_growth("gradient", g, None, ~active, 2)
    # -5 is active, so the two largest inactive |g| are 4 (idx 4) and 0.3 (idx 2)
    assert grown.tolist() == [False, False, True, False, True]
    g2 = torch.tensor([0.1, -5.0, 0.3, -0.9, 4.0])
    assert select_topk_growth("gradient", g2, None, ~active, 2).tolist() == [
        False,
        False,
        False,
        True,
        True,
    ]


def test_momentum_growth_uses_abs_momentum() -> None:
    m = torch.tensor([[0.5, -3.0], [2.0, -0.1]])
    cand = torch.tensor([[True, True], [False, True]])
    grown = select_topk_growth("momentum", None, m, cand, 1)
    assert grown.tolist() == [[False, True], [False, False]]  # |-3|; 2.0 is not a candidate


def test_registries_contents() -> None:
    assert set(PRUNE_CRITERIA) == {
        "magnitude",
        "set",
        "set_as_released",
        "mest",
        "snip",
        "sensitivity",
        "reciprocal_sensitivity",
        "taylor",
        "gradstep",
        "random",
    }
    assert set(GROWTH_CRITERIA) == {"random", "gradient", "momentum"}
    assert get_prune_criterion("snip") is PRUNE_CRITERIA["snip"]
    assert get_growth_criterion("gradient").needs_grad
    assert not get_growth_criterion("momentum").needs_grad


def test_unknown_prune_criterion_suggests_close_match() -> None:
    with pytest.raises(ValueError, match="unknown prune criterion 'magnitde'") as err:
        get_prune_criterion("magnitde")
    assert "Did you mean 'magnitude'" in str(err.value)
    assert "reciprocal_sensitivity" in str(err.value)  # lists the valid names


def test_unknown_growth_criterion_suggests_close_match() -> None:
    with pytest.raises(ValueError, match="unknown growth criterion 'gradeint'") as err:
        get_growth_criterion("gradeint")
    assert "'gradient'" in str(err.value)
    assert "momentum" in str(err.value)
    with pytest.raises(ValueError, match=r"valid: random, gradient, momentum\.$"):
        get_growth_criterion("zzzzzz")  # nothing close: no suggestion
