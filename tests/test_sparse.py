"""Sparse execution: CSR training layer vs masked dense, conversions, state transfer, benches."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsetrain.sparse import (
    SparseInferenceLinear,
    SparseLinear,
    bench_conv2d,
    bench_layer,
    flat_indices,
    gather_state,
    plan_layers,
    random_mask,
    remap_values,
    replace_param,
    sparse_linear,
    structure_from_mask,
    swap_to_dense,
    swap_to_sparse,
    to_dense_linear,
    to_sparse_linear,
)
from sparsetrain.sparse.bench import conv2d_csr


def masked_pair(
    out_f: int, in_f: int, density: float, *, bias: bool = True, dtype=torch.float32, seed=0
) -> tuple[nn.Linear, SparseLinear, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    dense = nn.Linear(in_f, out_f, bias=bias, dtype=dtype)
    mask = random_mask((out_f, in_f), density, gen)
    with torch.no_grad():
        dense.weight.mul_(mask)
    return dense, to_sparse_linear(dense, mask), mask


def run_both(dense, sparse, mask, x, gy=None):
    xd = x.detach().clone().requires_grad_(True)
    xs = x.detach().clone().requires_grad_(True)
    yd, ys = dense(xd), sparse(xs)
    gy = torch.randn_like(yd) if gy is None else gy
    yd.backward(gy)
    ys.backward(gy)
    return yd, ys, xd.grad, xs.grad


# ---------------------------------------------------------------------------------- kernel


def test_hand_checked_forward_and_backward():
    # W = [[1, 0, 2], [0, 0, 0], [0, 3, 0]]: row 1 fully pruned
    mask = torch.tensor([[1, 0, 1], [0, 0, 0], [0, 1, 0]], dtype=torch.bool)
    layer = SparseLinear(3, 3, mask)
    with torch.no_grad():
        layer.values.copy_(torch.tensor([1.0, 2.0, 3.0]))
        layer.bias.copy_(torch.tensor([0.5, -1.0, 0.0]))
    x = torch.tensor([[1.0, 2.0, 3.0], [0.0, 1.0, -1.0]], requires_grad=True)
    y = layer(x)
    assert torch.equal(y, torch.tensor([[7.5, -1.0, 6.0], [-1.5, -1.0, 3.0]]))
    y.backward(torch.tensor([[1.0, 1.0, 1.0], [2.0, 0.0, 1.0]]))
    # gx = gy @ W;  gv[k] = sum_b gy[b, r_k] * x[b, c_k];  gb = gy.sum(0)
    assert torch.equal(x.grad, torch.tensor([[1.0, 3.0, 2.0], [2.0, 3.0, 4.0]]))
    assert torch.equal(layer.values.grad, torch.tensor([1.0, 1.0, 3.0]))
    assert torch.equal(layer.bias.grad, torch.tensor([3.0, 1.0, 2.0]))


@pytest.mark.parametrize(
    ("out_f", "in_f", "density", "bias"),
    [(5, 7, 0.3, True), (16, 9, 0.1, False), (33, 64, 0.02, True), (8, 8, 1.0, True)],
)
def test_matches_masked_dense(out_f, in_f, density, bias):
    dense, sparse, mask = masked_pair(out_f, in_f, density, bias=bias)
    x = torch.randn(6, in_f)
    yd, ys, gxd, gxs = run_both(dense, sparse, mask, x)
    torch.testing.assert_close(ys, yd, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gxs, gxd, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sparse.values.grad, dense.weight.grad[mask], atol=1e-5, rtol=1e-5)
    if bias:
        torch.testing.assert_close(sparse.bias.grad, dense.bias.grad, atol=1e-5, rtol=1e-5)


def test_fully_pruned_layer_and_empty_rows_and_columns():
    dense, sparse, mask = masked_pair(6, 5, 0.0)
    x = torch.randn(4, 5)
    yd, ys, gxd, gxs = run_both(dense, sparse, mask, x)
    assert sparse.nnz == 0
    torch.testing.assert_close(ys, yd)
    assert torch.equal(gxs, torch.zeros_like(gxs))
    assert sparse.values.grad.shape == (0,)
    # one live weight: every other row and column empty
    mask = torch.zeros(6, 5, dtype=torch.bool)
    mask[3, 2] = True
    dense = nn.Linear(5, 6)
    with torch.no_grad():
        dense.weight.mul_(mask)
    sparse = to_sparse_linear(dense, mask)
    yd, ys, gxd, gxs = run_both(dense, sparse, mask, x)
    torch.testing.assert_close(ys, yd)
    torch.testing.assert_close(gxs, gxd)
    torch.testing.assert_close(sparse.values.grad, dense.weight.grad[mask])


def test_input_shapes_and_chained_feature_major_layers():
    d1, s1, _ = masked_pair(12, 10, 0.3, seed=1)
    d2, s2, _ = masked_pair(4, 12, 0.3, seed=2)
    dense, sparse = nn.Sequential(d1, nn.ReLU(), d2), nn.Sequential(s1, nn.ReLU(), s2)
    for shape in [(10,), (3, 10), (2, 3, 10)]:
        x = torch.randn(shape)
        torch.testing.assert_close(sparse(x), dense(x), atol=1e-5, rtol=1e-5)
    x = torch.randn(5, 10)
    dense(x).square().sum().backward()
    sparse(x).square().sum().backward()
    torch.testing.assert_close(s1.values.grad, d1.weight.grad[s1.mask()], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s2.values.grad, d2.weight.grad[s2.mask()], atol=1e-5, rtol=1e-5)


def test_gradcheck_float64():
    mask = random_mask((5, 4), 0.5, torch.Generator().manual_seed(3))
    s = structure_from_mask(mask)
    values = torch.randn(s.nnz, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(5, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, v, b: sparse_linear(x, v, s, b), (x, values, bias))


def test_no_input_grad_when_input_does_not_need_it():
    _, sparse, _ = masked_pair(4, 3, 0.5)
    x = torch.randn(2, 3)
    sparse(x).sum().backward()
    assert x.grad is None and sparse.values.grad is not None


def test_dense_gradient_captured_only_when_asked():
    dense, sparse, mask = masked_pair(7, 6, 0.3)
    x = torch.randn(4, 6)
    gy = torch.randn(4, 7)
    run_both(dense, sparse, mask, x, gy)
    assert sparse.dense_grad is None
    sparse.capture_dense_grad = True
    dense.weight.grad = None
    run_both(dense, sparse, mask, x, gy)
    torch.testing.assert_close(sparse.dense_grad, dense.weight.grad, atol=1e-5, rtol=1e-5)
    assert bool((sparse.dense_grad[~mask] != 0).any())  # the pruned positions RigL grows from


def test_layer_input_errors():
    layer = SparseLinear(3, 2, torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="expects 3"):
        layer(torch.randn(4, 5))
    with pytest.raises(TypeError, match="float64"):
        layer(torch.randn(4, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"mask shape \(3, 2\)"):
        SparseLinear(3, 2, torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        SparseLinear(3, 2, torch.ones(2, 3))


# ---------------------------------------------------------------------------------- conversion


def test_conversion_round_trip_keeps_values_names_and_bias_object():
    dense, sparse, mask = masked_pair(5, 4, 0.5)
    mask[0, 0] = True  # a live weight that happens to be zero is kept as live
    with torch.no_grad():
        dense.weight[0, 0] = 0.0
    sparse = to_sparse_linear(dense, mask)
    assert sparse.bias is dense.bias
    assert sparse.nnz == int(mask.sum())
    assert torch.equal(sparse.mask(), mask)
    back = to_dense_linear(sparse)
    assert isinstance(back, nn.Linear) and back.bias is dense.bias
    assert torch.equal(back.weight, dense.weight)
    assert [n for n, _ in back.named_parameters()] == ["weight", "bias"]
    assert torch.equal(to_sparse_linear(back).to_dense(), dense.weight)  # default mask: nonzeros


def test_conversion_errors():
    with pytest.raises(TypeError, match=r"nn\.Linear"):
        to_sparse_linear(nn.Conv2d(1, 1, 1))
    with pytest.raises(ValueError, match="mask shape"):
        to_sparse_linear(nn.Linear(3, 2), torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        to_sparse_linear(nn.Linear(3, 2), torch.ones(2, 3))
    with pytest.raises(TypeError, match="SparseLinear"):
        to_dense_linear(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="no submodule 'nope'"):
        swap_to_sparse(nn.Sequential(nn.Linear(2, 2)), "nope")
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="does not hold"):
        replace_param(opt, torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1)))


def _train(model, opt, xs, ys, masks=None):
    losses = []
    for x, y in zip(xs, ys, strict=True):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        if masks:
            for lin, m in masks:
                lin.weight.grad.mul_(m)
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("make_opt", ["sgd", "adam"])
def test_swap_mid_training_carries_optimizer_state(make_opt):
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
    masks = [
        random_mask(ref[i].weight.shape, 0.4, torch.Generator().manual_seed(i)) for i in (0, 2)
    ]
    with torch.no_grad():
        for i, m in zip((0, 2), masks, strict=True):
            ref[i].weight.mul_(m)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
    model.load_state_dict(ref.state_dict())

    def opt_for(m):
        if make_opt == "sgd":
            return torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
        return torch.optim.Adam(m.parameters(), lr=0.01)

    opt_ref, opt = opt_for(ref), opt_for(model)
    xs, ys = torch.randn(8, 5, 10), torch.randn(8, 5, 3)
    pairs_ref = [(ref[0], masks[0]), (ref[2], masks[1])]
    pairs = [(model[0], masks[0]), (model[2], masks[1])]
    ref_losses = _train(ref, opt_ref, xs, ys, pairs_ref)
    losses = _train(model, opt, xs[:4], ys[:4], pairs)
    index_before = [id(p) for p in opt.param_groups[0]["params"]]
    swap_to_sparse(model, "0", masks[0], opt)
    swap_to_sparse(model, "2", masks[1], opt)
    assert isinstance(model[0], SparseLinear)
    assert opt.param_groups[0]["params"][0] is model[0].values  # same slot
    assert opt.param_groups[0]["params"][1] is model[0].bias
    assert id(opt.param_groups[0]["params"][1]) == index_before[1]
    key = "momentum_buffer" if make_opt == "sgd" else "exp_avg"
    assert opt.state[model[0].values][key].shape == (int(masks[0].sum()),)
    losses += _train(model, opt, xs[4:], ys[4:])
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), atol=1e-5, rtol=1e-5)
    # and back: dense state with zeros at pruned positions, same values as the reference
    swap_to_dense(model, "0", opt)
    assert torch.allclose(model[0].weight, ref[0].weight, atol=1e-5)
    state = opt.state[model[0].weight][key]
    assert state.shape == (16, 10) and bool((state[~masks[0]] == 0).all())
    torch.testing.assert_close(state, opt_ref.state[ref[0].weight][key], atol=1e-5, rtol=1e-4)
    if make_opt == "adam":
        assert opt.state[model[0].weight]["step"] == opt_ref.state[ref[0].weight]["step"]


def test_state_of_unknown_layout_raises():
    lin = nn.Linear(3, 2)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    opt.state[lin.weight]["factored"] = torch.zeros(3)
    values = nn.Parameter(torch.zeros(6))
    with pytest.raises(TypeError, match="'factored'"):
        gather_state(opt, lin.weight, values, torch.arange(6))


# ---------------------------------------------------------------------------------- topology


def test_remap_values_keeps_shared_positions():
    old = torch.tensor([1.0, 2.0, 3.0])
    out = remap_values(old, torch.tensor([0, 4, 7]), torch.tensor([1, 4, 7, 9]), None)
    assert torch.equal(out, torch.tensor([0.0, 2.0, 3.0, 0.0]))
    reset = torch.tensor([False, False, True, False])
    out = remap_values(old, torch.tensor([0, 4, 7]), torch.tensor([1, 4, 7, 9]), reset)
    assert torch.equal(out, torch.tensor([0.0, 2.0, 0.0, 0.0]))
    assert (
        remap_values(old, torch.tensor([0, 4, 7]), torch.tensor([], dtype=torch.long), None).numel()
        == 0
    )


def test_set_structure_moves_weights_and_state():
    # 8-element drop-and-grow checkable by hand: live {0, 2, 5, 7} -> {0, 3, 5, 6}
    mask = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1]], dtype=torch.bool)
    layer = SparseLinear(4, 2, mask, bias=False)
    with torch.no_grad():
        layer.values.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
    layer(torch.ones(1, 4)).sum().backward()
    opt.step()
    mom = opt.state[layer.values]["momentum_buffer"].clone()
    before = layer.values.detach().clone()
    param = layer.values
    new = torch.tensor([[1, 0, 0, 1], [0, 1, 1, 0]], dtype=torch.bool)
    layer.set_structure(new, opt)
    assert layer.values is param and layer.values.grad is None
    assert torch.equal(layer.mask(), new)
    assert torch.equal(layer.values.detach(), torch.tensor([before[0], 0.0, before[2], 0.0]))
    assert torch.equal(
        opt.state[param]["momentum_buffer"], torch.tensor([mom[0], 0.0, mom[2], 0.0])
    )
    # reset: a kept position restarts from zero; nnz may change (a new Parameter, in the
    # optimizer at the old one's place, with its state)
    reset = torch.zeros(2, 4, dtype=torch.bool)
    reset[0, 0] = True
    loss = layer(torch.ones(3, 4)).sum()  # a graph using the 4 values, alive across the change
    loss.backward()
    layer.set_structure(torch.ones(2, 4, dtype=torch.bool), opt, reset=reset)
    assert layer.nnz == 8 and layer.values[0].item() == 0.0
    assert layer.values is not param and opt.param_groups[0]["params"][0] is layer.values
    assert param not in opt.state
    assert opt.state[layer.values]["momentum_buffer"].shape == (8,)
    assert [n for n, _ in layer.named_parameters()] == ["values"]
    loss = layer(torch.ones(3, 4)).sum()  # trains on after the resize
    loss.backward()
    opt.step()
    assert torch.equal(layer.values.grad, torch.full((8,), 3.0))


def test_csr_state_dict_of_earlier_versions_loads_and_adopts_other_nnz():
    # the state dict is now the plain Linear's (tests/test_sparse_face.py); one written with
    # the CSR keys before that still loads, pattern included
    _, a, _ = masked_pair(6, 5, 0.6, seed=1)
    _, b, _ = masked_pair(6, 5, 0.2, seed=2)
    assert a.nnz != b.nnz
    old = {
        "values": a.values.detach().clone(),
        "bias": a.bias.detach().clone(),
        "crow_indices": a.crow_indices.clone(),
        "col_indices": a.col_indices.clone(),
    }
    b.load_state_dict(old)
    assert b.nnz == a.nnz and torch.equal(b.to_dense(), a.to_dense())
    x = torch.randn(3, 5)
    torch.testing.assert_close(b(x), a(x))
    bad = dict(old)
    bad["col_indices"] = bad["col_indices"] + 100
    with pytest.raises(RuntimeError, match="invalid CSR structure"):
        b.load_state_dict(bad)


def test_deepcopy_and_dtype_conversion_keep_working():
    _, layer, _ = masked_pair(6, 5, 0.4)
    x = torch.randn(3, 5)
    twin = copy.deepcopy(layer)
    torch.testing.assert_close(twin(x), layer(x))
    twin.set_structure(torch.ones(6, 5, dtype=torch.bool))
    assert layer.nnz != twin.nnz  # independent structures
    y64 = layer.double()(x.double())
    assert y64.dtype == torch.float64


# ---------------------------------------------------------------------------------- inference


def test_inference_layer_matches_dense_at_every_batch_shape():
    dense, _, _ = masked_pair(9, 11, 0.2)
    inf = SparseInferenceLinear(dense.weight, dense.bias)
    assert not list(inf.parameters())
    for shape in [(11,), (1, 11), (7, 11), (2, 3, 11)]:
        x = torch.randn(shape, requires_grad=True)
        y = inf(x)
        assert not y.requires_grad
        torch.testing.assert_close(y, dense(x).detach(), atol=1e-5, rtol=1e-5)
    assert torch.equal(to_dense_linear(inf).weight, dense.weight)
    x = torch.randn(1, 11)
    y = inf(x)
    torch.testing.assert_close(copy.deepcopy(inf)(x), y)  # after the batch-1 CSR cache exists
    with torch.no_grad():
        inf.values.mul_(2.0)  # in-place edits reach the cached CSR
    torch.testing.assert_close(inf(x) - inf.bias, (y - inf.bias) * 2.0)
    inf2 = SparseInferenceLinear(torch.zeros(3, 3))
    assert torch.equal(inf2(torch.randn(2, 3)), torch.zeros(2, 3))


# ---------------------------------------------------------------------------------- benches


def test_bench_layer_reports_both_modes():
    r = bench_layer((32, 16), 0.1, 4, repeats=2, warmup=1)
    for mode in ("train", "inference"):
        assert r[mode] in ("sparse", "dense")
        assert r[f"{mode}_ratio"] == pytest.approx(r[f"{mode}_sparse_ms"] / r[f"{mode}_dense_ms"])
    only = bench_layer((8, 8), 0.5, 2, modes=("inference",), repeats=1, warmup=0)
    assert "train" not in only and "inference" in only


def test_bench_errors():
    with pytest.raises(ValueError, match="layer_shape"):
        bench_layer((8,), 0.1, 4)
    with pytest.raises(ValueError, match="batch_size"):
        bench_layer((8, 8), 0.1, 0)
    with pytest.raises(ValueError, match="unknown mode 'fit'"):
        bench_layer((8, 8), 0.1, 2, modes=("fit",))
    with pytest.raises(ValueError, match="density"):
        random_mask((4, 4), 1.5)
    with pytest.raises(ValueError, match="unknown mode"):
        plan_layers(nn.Linear(2, 2), 1, mode="fit")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="force"):
        plan_layers(nn.Linear(2, 2), 1, force="maybe")


def test_conv2d_csr_matches_conv2d():
    w = torch.randn(6, 4, 3, 3) * random_mask((6, 4, 3, 3), 0.3)
    s = structure_from_mask(w.reshape(6, -1) != 0)
    values = w.reshape(-1)[flat_indices(s)]
    x = torch.randn(2, 4, 7, 5)
    y = conv2d_csr(x, s, values, 3, stride=2, padding=1)
    torch.testing.assert_close(y, F.conv2d(x, w, stride=2, padding=1), atol=1e-5, rtol=1e-5)


def test_bench_conv2d_and_plan_layers():
    r = bench_conv2d(2, 4, 3, (6, 6), 0.1, 2, repeats=2, warmup=1)
    assert r["choice"] in ("sparse", "dense") and r["dense_ms"] > 0
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 2))
    with torch.no_grad():
        model[0].weight[:, :4] = 0
        model[2].weight[:, :4] = 0
    plan = plan_layers(model, 2, repeats=1, warmup=0)
    assert [d.name for d in plan] == ["0", "2", "3"]
    assert plan[0].density == 0.5 and plan[2].choice == "dense"  # no zeros: not measured
    forced = plan_layers(model, 2, force="sparse")
    assert {d.choice for d in forced[:2]} == {"sparse"}
