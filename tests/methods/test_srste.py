"""SR-STE and its N:M mask: grouping, ties, errors, and a 2-step SGD update worked by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sparsetrain.masking.structure import check_nm, nm_groups, nm_mask, parse_nm
from sparsetrain.methods import create_method
from sparsetrain.methods.srste import SRSTE

T, F = True, False


def _live_per_group(mask: torch.Tensor, m: int, dim: int = 1) -> set[int]:
    return set(nm_groups(mask.to(torch.uint8), m, dim=dim).sum(1).tolist())


# ------------------------------------------------------------------------------- the N:M mask


def test_parse_nm() -> None:
    assert parse_nm("2:4") == (2, 4)
    assert parse_nm(" 1 : 8 ") == (1, 8)
    assert parse_nm("4:4") == (4, 4)
    for bad in ("2-4", "4:2", "0:4", "a:b", "2:4:8", "", "-1:4", "2.0:4"):
        with pytest.raises(ValueError) as err:
            parse_nm(bad)
        assert str(err.value) == (
            f"bad N:M pattern {bad!r}; valid: the form 'N:M' with ints 0 < N <= M, e.g. '2:4'"
        )
    with pytest.raises(ValueError, match=r"^N:M pattern must be a string .* got 124$"):
        parse_nm(124)  # type: ignore[arg-type]  # what YAML makes of an unquoted 2:4


def test_check_nm() -> None:
    check_nm(2, 4)
    with pytest.raises(ValueError, match=r"^N:M sparsity needs ints 0 < N <= M, got N=5, M=4$"):
        check_nm(5, 4)
    with pytest.raises(TypeError, match=r"got M=4.0$"):
        check_nm(2, 4.0)


def test_nm_mask_linear_2_of_4() -> None:
    w = torch.tensor(
        [
            [0.1, -0.9, 0.5, 0.2, 3.0, -4.0, 1.0, 2.0],
            [-0.3, 0.0, 0.0, 0.2, 0.0, 0.0, 0.0, -1e-9],
        ]
    )
    got = nm_mask(w.abs(), 2, 4)
    assert got.dtype == torch.bool and got.shape == w.shape
    assert got.tolist() == [
        [F, T, T, F, T, T, F, F],
        [T, F, F, T, T, F, F, T],  # ties at 0: the lower index wins
    ]
    assert nm_mask(w.abs(), 1, 4).tolist() == [
        [F, T, F, F, F, T, F, F],
        [T, F, F, F, F, F, F, T],
    ]
    assert nm_mask(w.abs(), 4, 4).all()


def test_nm_mask_conv_groups_input_channels_at_one_kernel_position() -> None:
    # Conv2d weight (out=1, in=4, kh=1, kw=2): w[0, c, 0, k]
    w = torch.zeros(1, 4, 1, 2)
    w[0, :, 0, 0] = torch.tensor([1.0, 4.0, 2.0, 3.0])  # kernel position 0: channels 1, 3
    w[0, :, 0, 1] = torch.tensor([5.0, 0.0, 8.0, 6.0])  # kernel position 1: channels 2, 3
    assert nm_groups(w, 4).tolist() == [[1.0, 4.0, 2.0, 3.0], [5.0, 0.0, 8.0, 6.0]]
    got = nm_mask(w, 2, 4)
    assert got.shape == w.shape
    assert got[0, :, 0, 0].tolist() == [F, T, F, T]
    assert got[0, :, 0, 1].tolist() == [F, F, T, T]
    # a flat (out, in·kh·kw) grouping would have taken [1, 5, 4, 0] and [2, 8, 3, 6] instead
    flat = nm_mask(w.reshape(1, 8), 2, 4).view(1, 4, 1, 2)
    assert not torch.equal(flat, got)


def test_nm_groups_order_and_conv_transpose_dim() -> None:
    w = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)  # Conv1d (out, in, k)
    groups = nm_groups(w, 4)
    assert groups.shape == (6, 4)
    assert groups[0].tolist() == w[0, :, 0].tolist()  # out 0, k 0: the 4 input channels
    assert groups[1].tolist() == w[0, :, 1].tolist()
    assert groups[3].tolist() == w[1, :, 0].tolist()
    t = torch.arange(4 * 2 * 3, dtype=torch.float32).view(4, 2, 3)  # ConvTranspose (in, out, k)
    assert nm_groups(t, 4, dim=0)[0].tolist() == t[:, 0, 0].tolist()
    mask = nm_mask(t, 2, 4, dim=0)
    assert mask[:, 0, 0].tolist() == [F, F, T, T] and _live_per_group(mask, 4, dim=0) == {2}


def test_nm_mask_ties_nan_and_the_sort_path() -> None:
    assert nm_mask(torch.ones(1, 4), 2, 4).tolist() == [[T, T, F, F]]
    assert nm_mask(torch.tensor([[2.0, 1.0, 2.0, 1.0]]), 2, 4).tolist() == [[T, F, T, F]]
    assert nm_mask(torch.tensor([[0.0, 3.0, 3.0, 3.0]]), 2, 4).tolist() == [[F, T, T, F]]
    nan = math.nan
    assert nm_mask(torch.tensor([[nan, 1.0, nan, 0.5]]), 2, 4).tolist() == [[F, T, F, T]]
    # M > 8 ranks by a stable sort: the same rule
    assert nm_mask(torch.ones(2, 16), 3, 16)[0].tolist() == [T] * 3 + [F] * 13
    scores = torch.randn(64, 32, generator=torch.Generator().manual_seed(0)).round(decimals=1)
    for m in (4, 8, 16, 32):
        got = nm_mask(scores, m // 4, m)
        assert _live_per_group(got, m) == {m // 4}
        kept, dropped = nm_groups(scores, m), nm_groups(scores.masked_fill(got, math.inf), m)
        lowest_kept = kept.masked_fill(~nm_groups(got, m), math.inf).min(1).values
        highest_dropped = dropped.masked_fill(nm_groups(got, m), -math.inf).max(1).values
        assert bool((lowest_kept >= highest_dropped).all())


def test_nm_mask_not_divisible_names_the_tensor_and_the_way_out() -> None:
    with pytest.raises(ValueError) as err:
        nm_mask(torch.ones(8, 6), 2, 4, name="fc.weight")
    assert str(err.value) == (
        "'fc.weight' (shape (8, 6)) cannot be cut into N:M groups of M=4: its grouped dimension "
        "(dim 1, the inputs / input channels) has size 6, not divisible by 4; keep it dense "
        "with exclude=['fc.weight']"
    )
    with pytest.raises(ValueError, match=r"'stem.weight' \(shape \(16, 3, 3, 3\)\).*size 3"):
        nm_mask(torch.ones(16, 3, 3, 3), 2, 4, name="stem.weight")
    with pytest.raises(ValueError, match=">= 2 dims"):
        nm_mask(torch.ones(8), 2, 4)


# ------------------------------------------------------------------------------------ SR-STE


def test_srste_two_sgd_steps_by_hand() -> None:
    layer = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.1, -0.5, 0.3, 0.2], [-0.4, 0.05, 0.8, -0.6]]))
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    method = create_method("srste", decay=0.5, dense_last=False).attach(layer, opt)
    x, r = torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.tensor([[1.0, -1.0]])
    # ∂L/∂W_eff = rᵀx = [[1, 2, 3, 4], [-1, -2, -3, -4]]; grad_W adds 0.5 · (1 − M) ⊙ W
    expected = [
        (  # step 0: mask of W0, then W1 = W0 − 0.1 · grad
            [[F, T, T, F], [F, F, T, T]],
            [[0.0, -0.5, 0.3, 0.0], [0.0, 0.0, 0.8, -0.6]],
            [[1.05, 2.0, 3.0, 4.1], [-1.2, -1.975, -3.0, -4.0]],
            [[-0.005, -0.7, 0.0, -0.21], [-0.28, 0.2475, 1.1, -0.2]],
        ),
        (  # step 1: mask of W1
            [[F, T, F, T], [T, F, T, F]],
            [[0.0, -0.7, 0.0, -0.21], [-0.28, 0.0, 1.1, 0.0]],
            [[0.9975, 2.0, 3.0, 4.0], [-1.0, -1.87625, -3.0, -4.1]],
            [[-0.10475, -0.9, -0.3, -0.61], [-0.18, 0.435125, 1.4, 0.21]],
        ),
    ]
    for mask, effective, grad, raw_after in expected:
        assert method.targets[0].mask.tolist() == mask
        torch.testing.assert_close(layer.weight.detach(), torch.tensor(effective))
        opt.zero_grad()
        (layer(x) * r).sum().backward()
        opt.step()
        torch.testing.assert_close(layer.weight.grad, torch.tensor(grad))
        torch.testing.assert_close(method.raw_weight(0), torch.tensor(raw_after))
        assert _live_per_group(method.targets[0].mask, 4) == {2}
    assert method.targets[0].mask.tolist() == [[F, T, F, T], [F, T, T, F]]  # mask of W2
    torch.testing.assert_close(
        layer.weight.detach(), torch.tensor([[0.0, -0.9, 0.0, -0.61], [0.0, 0.435125, 1.4, 0.0]])
    )


def test_srste_decay_zero_is_the_plain_straight_through_estimator() -> None:
    layer = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.1, -0.5, 0.3, 0.2]]))
    opt = torch.optim.SGD(layer.parameters(), lr=1.0)
    method = create_method("srste", decay=0.0, dense_last=False).attach(layer, opt)
    (layer(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))).sum().backward()
    opt.step()
    torch.testing.assert_close(method.raw_weight(0), torch.tensor([[-0.9, -2.5, -2.7, -3.8]]))


def _convnet() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 3 input channels: cannot be N:M
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 16),
        nn.ReLU(),
        nn.Linear(16, 3),
    )


def test_srste_keeps_exactly_n_per_group_at_every_step_and_the_classifier_dense() -> None:
    model = _convnet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-5)
    method = create_method("srste", total_steps=12, exclude=["0.weight"]).attach(model, opt)
    assert [t.name for t in method.targets] == ["2.weight", "5.weight"]  # 7.weight: dense_last
    assert method.sparsity == 0.5
    g = torch.Generator().manual_seed(3)
    for step in range(12):
        x, y = torch.randn(8, 3, 6, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        for i, t in enumerate(method.targets):
            assert _live_per_group(t.mask, 4) == {2}, (step, t.name)
            assert torch.equal(t.mask, nm_mask(method.raw_weight(i).abs(), 2, 4))
            assert torch.equal(t.param.detach(), method.raw_weight(i) * t.mask)
    rep = method.finish()
    assert rep.nnz == method.global_target_count() == (8 * 8 * 9 + 288 * 16) // 2
    assert method.target_counts() == {"2.weight": 8 * 8 * 9 // 2, "5.weight": 288 * 16 // 2}
    assert bool((model[7].weight != 0).all())


def test_srste_refuses_a_target_not_divisible_by_m_naming_it_and_exclude() -> None:
    model = _convnet()
    weights = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError) as err:
        create_method("srste").attach(model)
    assert str(err.value) == (
        "srste: structure '2:4' does not fit 1 target(s): '0.weight' (shape (8, 3, 3, 3)) "
        "cannot be cut into N:M groups of M=4: its grouped dimension (dim 1, the inputs / input "
        "channels) has size 3, not divisible by 4; keep them dense with exclude=['0.weight']"
    )
    assert "\n" not in str(err.value)
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters(), strict=True))
    method = create_method("srste", structure="1:8", exclude=["0.weight"]).attach(model)
    assert method.sparsity == 0.875 and [t.name for t in method.targets] == ["2.weight", "5.weight"]


def test_srste_options() -> None:
    assert create_method("srste").sparsity == 0.5
    assert create_method("srste", sparsity=0.5).sparsity == 0.5
    assert create_method("srste", structure="1:4", sparsity=0.75).sparsity == 0.75
    assert create_method("srste", structure="4:4").sparsity == 0.0
    assert SRSTE().dense_last is True
    cases: list[tuple[dict, type[Exception], str]] = [
        (
            {"sparsity": 0.9},
            ValueError,
            "srste: sparsity=0.9 does not match structure '2:4' (1 - N/M = 0.5); omit sparsity "
            "or change it",
        ),
        ({"structure": "5:4"}, ValueError, "srste: bad structure '5:4'; valid: 'unstructured',"),
        ({"structure": "0:4"}, ValueError, "srste: bad structure '0:4'"),
        ({"structure": 2.5}, ValueError, "srste: bad structure 2.5"),
        (
            {"structure": "block:4x4"},
            ValueError,
            "srste: structure='block:4x4' is not supported (SR-STE is an N:M method); valid "
            "kinds: nm",
        ),
        ({"decay": -1.0}, ValueError, "srste: decay must be a number >= 0, got -1.0"),
        (
            {"sparsity": 1.0},
            ValueError,
            "srste: sparsity must be a number in [0, 1) or None, got 1.0",
        ),
        ({"pattern": "2:4"}, TypeError, "method 'srste' got unknown option(s) ['pattern']"),
    ]
    for options, kind, message in cases:
        with pytest.raises(kind) as err:
            create_method("srste", **options)
        assert str(err.value).startswith(message), options
    with pytest.raises(ValueError, match="'srste' needs dense gradients"):
        model = nn.Sequential(nn.Linear(8, 4), nn.Linear(4, 2))
        create_method("srste", execution="sparse").attach(model)


def test_nm_mask_small_m_ranks_agree_with_a_stable_sort() -> None:
    g = torch.Generator().manual_seed(0)
    for m in range(1, 9):
        for n in range(1, m + 1):
            scores = torch.randint(0, 3, (200, m), generator=g).float()  # many ties
            order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :n]
            expected = torch.zeros(200, m, dtype=torch.bool).scatter_(1, order, True)
            assert torch.equal(nm_mask(scores, n, m), expected), (n, m)
