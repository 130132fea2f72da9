"""Structured sparsity: every method that chooses a mask, under 2:4, 1:4 and 4x4 blocks.

Checked after every step: the live weights lie inside the mask and the mask has the structure
(N:M: between N and M live per group, exactly N once the method is at its target; blocks: every
block all-live or all-pruned); at the end the target is reached exactly; a resumed run continues
bit-identically; squashing keeps the outputs. Plus hand-computed cases of the rules.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sparsetrain import create_method, param_groups
from sparsetrain.criteria import Site, drop_and_grow
from sparsetrain.masking.structure import (
    block_any,
    block_scores,
    expand_blocks,
    group_top,
    matrix_view,
    nm_groups,
    parse_structure,
)

STEPS = 24
STRUCTURES = ["2:4", "1:4", "block:4x4"]

# per-method options for a 24-step run (cadences scaled down; nothing else changed)
FAST: dict[str, dict[str, object]] = {
    "static": {},
    "snip": {"init": "snip"},
    "gmp": {"update_interval": 4, "end_step": 16},
    "gmp_global": {"update_interval": 4, "end_step": 16, "scope": "global"},
    "rigl": {"update_interval": 4},
    "set": {"update_interval": 4},
    "mest": {"update_interval": 4},
    "granet": {"update_interval": 4, "end_step": 16},
    "st3": {"begin_step": 2, "end_step": 12, "freeze_step": 20},
    "st3_sigma": {"begin_step": 2, "end_step": 12, "freeze_step": 20},
    "dnw": {},
    "dnw_ramp": {"end_step": 10, "scope": "global"},
    "optg": {"steps_per_epoch": 3, "update_interval": 3},
    "srste": {},
}
METHOD_OF = {"snip": "static", "gmp_global": "gmp", "dnw_ramp": "dnw"}
NM_ONLY = {"srste", "set"}  # SR-STE is an N:M method; SET's drop rule cannot rank blocks
CASES = [
    (key, s) for key in FAST for s in STRUCTURES if not (key in NM_ONLY and s.startswith("block"))
]


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(4, 8, 3),  # groups: 4 input channels at each of 3 kernel positions
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 14, 32),
        nn.ReLU(),
        nn.Linear(32, 4),
    )


def data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(16, 4, 16, generator=g)
    return x, (x.sum(dim=(1, 2)) > 0).long() + 2 * (x[:, 0, 0] > 0).long()


def build(key: str, structure: str, opt_name: str = "sgd"):
    model = make_model()
    name = METHOD_OF.get(key, key)
    kwargs: dict[str, object] = {"total_steps": STEPS, "structure": structure, **FAST[key]}
    if structure.startswith("block"):
        kwargs["sparsity"] = 0.75
    if name == "srste":
        kwargs["dense_last"] = False
    method = create_method(name, **kwargs)
    groups = param_groups(model, method, weight_decay=1e-3)
    if opt_name == "adamw":
        opt = torch.optim.AdamW(groups, lr=1e-2)
    else:
        opt = torch.optim.SGD(groups, lr=0.05, momentum=0.9)
    return model, opt, method.attach(model, opt)


def train_step(model, opt, step: int) -> float:
    x, y = data(step)
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def check_pattern(method, structure: str, *, at_target: bool) -> None:
    s = parse_structure(structure)
    for t in method.targets:
        live = t.param.detach() != 0
        assert not (live & ~t.mask).any(), f"{t.name}: a live weight outside the mask"
        if s.kind == "nm":
            counts = nm_groups(t.mask, s.m).sum(1)
            assert int(counts.min()) >= s.n and int(counts.max()) <= s.m, t.name
            if at_target:
                assert set(counts.tolist()) == {s.n}, t.name
        else:
            blocks = block_any(t.mask, s.rows, s.cols)
            assert torch.equal(expand_blocks(blocks, s.rows, s.cols, t.shape), t.mask), t.name


@pytest.mark.conformance
@pytest.mark.parametrize("opt_name", ["sgd", "adamw"])
@pytest.mark.parametrize(("key", "structure"), CASES)
def test_pattern_after_every_step_and_target_reached(key, structure, opt_name):
    model, opt, method = build(key, structure, opt_name)
    final = method.sparsity_at(STEPS)
    for step in range(STEPS):
        train_step(model, opt, step)
        check_pattern(method, structure, at_target=method.sparsity_at(step + 1) == final)
    rep = method.finish()
    assert rep.nnz == method.global_target_count()
    check_pattern(method, structure, at_target=True)
    if method.hard_mask:  # pruned entries: optimizer state exactly zero
        for t in method.targets:
            for v in opt.state[t.param].values():
                if torch.is_tensor(v) and v.dim():
                    assert not v[~t.mask].any(), t.name


def test_nm_rigl_on_sparse_kernels_keeps_the_pattern_and_matches_masked_dense():
    runs = []
    for execution in ("dense", "sparse"):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        method = create_method(
            "rigl", structure="2:4", total_steps=12, update_interval=3, execution=execution
        ).attach(model, opt)
        losses = []
        for step in range(12):
            x = torch.randn(8, 16, generator=torch.Generator().manual_seed(step))
            loss = model(x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        check_pattern(method, "2:4", at_target=True)
        runs.append((losses, [t.mask.clone() for t in method.targets]))
    torch.testing.assert_close(runs[0][0], runs[1][0], rtol=1e-5, atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1], strict=True))


@pytest.mark.conformance
@pytest.mark.parametrize(("key", "structure"), CASES)
def test_resume_is_bit_identical(key, structure):
    model, opt, method = build(key, structure)
    split = 10
    for step in range(split):
        train_step(model, opt, step)
    saved = [copy.deepcopy(x.state_dict()) for x in (model, opt, method)]
    model2, opt2, method2 = build(key, structure)
    for x, state in zip((model2, opt2, method2), saved, strict=True):
        x.load_state_dict(state)
    for step in range(split, STEPS):
        assert train_step(model, opt, step) == train_step(model2, opt2, step), step
    for t1, t2 in zip(method.targets, method2.targets, strict=True):
        assert torch.equal(t1.mask, t2.mask) and torch.equal(t1.param, t2.param)


@pytest.mark.conformance
@pytest.mark.parametrize(("key", "structure"), CASES)
def test_squash_keeps_the_outputs(key, structure):
    model, opt, method = build(key, structure)
    for step in range(STEPS // 2):
        train_step(model, opt, step)
    model.eval()
    x, _ = data(999)
    with torch.no_grad():
        expected = model(x)
    with torch.no_grad():
        got = method.squash()(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("scl", {"structure": "2:4"}, "scl: structure='2:4' is not supported (its masks come"),
        ("str", {"structure": "2:4"}, "str: structure='2:4' is not supported (a learned soft"),
        ("dense", {"structure": "2:4"}, "dense: structure='2:4' is not supported"),
        ("set", {"structure": "block:4x4"}, "set: prune criterion 'set' is a selection rule"),
        ("rigl", {"structure": "2:4", "bernoulli": True}, "rigl: bernoulli=True draws each"),
        (
            "gmp",
            {"structure": "2:4", "sparsity": 0.9},
            "gmp: sparsity=0.9 does not match structure '2:4' (1 - N/M = 0.5); omit sparsity",
        ),
        ("gmp", {"structure": "2:"}, "gmp: bad structure '2:'; valid: 'unstructured', an 'N:M'"),
        ("gmp", {"structure": "block:0x4"}, "gmp: bad block structure 'block:0x4'"),
        ("gmp", {"structure": (4,)}, "gmp: bad block shape (4,); valid: a pair of ints"),
        ("optg", {"structure": "2:4", "selection": "as_released"}, "optg: selection='as_rel"),
    ],
)
def test_refusals_name_the_value(name, options, message):
    extra = {"steps_per_epoch": 3} if name == "optg" else {}
    with pytest.raises(ValueError) as err:
        create_method(name, total_steps=20, **extra, **options)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_a_target_that_cannot_carry_the_structure_is_named_with_exclude():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 36, 6))
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError) as err:
        create_method("rigl", structure="block:4x4", sparsity=0.75, total_steps=10).attach(model)
    assert str(err.value) == (
        "rigl: structure 'block:4x4' does not fit 2 target(s): '0.weight' (shape (8, 3, 3, 3), "
        "matrix view 8x27) cannot be cut into 4x4 blocks: 8 rows and 27 columns must be "
        "divisible by 4 and 4; keep them dense with exclude=['0.weight', '2.weight']"
    )
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_nm_sparsity_may_be_omitted_and_every_layer_is_at_n_over_m():
    method = create_method("rigl", structure="1:4", total_steps=10)
    assert method.sparsity == 0.75
    model = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 4))
    method.attach(model)
    assert method.target_counts() == {"0.weight": 32, "1.weight": 16}  # ERK does not apply


# ------------------------------------------------------------------ the rules by hand


def test_group_top_takes_counts_per_group_candidates_first_and_the_lower_index_on_ties():
    scores = torch.tensor([[1.0, 4.0, 3.0, 2.0, 5.0, 5.0, 5.0, 5.0]])
    got = group_top(scores, torch.tensor([2, 3]), 4)
    assert got.int().tolist() == [[0, 1, 1, 0, 1, 1, 1, 0]]
    cand = torch.tensor([[True, False, True, True, True, True, True, True]])
    assert group_top(scores, 1, 4, candidates=cand).int().tolist() == [[0, 0, 1, 0, 1, 0, 0, 0]]


def test_blocks_live_on_the_matrix_view_with_nhwc_columns():
    w = torch.arange(2 * 2 * 1 * 2.0).view(2, 2, 1, 2)  # Conv (out 2, in 2, kh 1, kw 2)
    # matrix view: row o = [w[o,0,0,0], w[o,1,0,0], w[o,0,0,1], w[o,1,0,1]] (kernel pos, then in)
    assert matrix_view(w).tolist() == [[0.0, 2.0, 1.0, 3.0], [4.0, 6.0, 5.0, 7.0]]
    sums = block_scores(w, 2, 2)  # two 2x2 blocks: kernel position 0, then 1
    assert sums.tolist() == [[0.0 + 2 + 4 + 6, 1.0 + 3 + 5 + 7]]
    full = expand_blocks(torch.tensor([[False, True]]), 2, 2, w.shape)
    assert full[:, :, 0, 1].all() and not full[:, :, 0, 0].any()


def test_nm_regrowth_refills_each_group_by_the_gradient_within_it():
    # one row, two groups of 4, 2:4; the drop (1 entry, lowest |w|) hits group 0
    w = torch.tensor([[0.9, 0.1, 0.0, 0.0, 0.8, 0.0, 0.7, 0.0]])
    mask = w != 0
    g = torch.tensor([[0.0, 0.0, 0.2, 0.5, 0.0, 9.0, 0.0, 9.0]])
    site = Site(w, mask, grads=g)
    [c] = drop_and_grow([site], "magnitude", "gradient", [1], structure=parse_structure("2:4"))
    assert c.drop.tolist() == [1]
    assert c.grow.tolist() == [3]  # group 0's best |g|, not group 1's larger ones


def test_block_drop_and_grow_ranks_summed_scores():
    w = torch.tensor([[1.0, 1.0, 0.2, 0.2, 0.0, 0.0], [1.0, 1.0, 0.2, 0.2, 0.0, 0.0]])
    mask = w != 0
    g = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]])
    site = Site(w, mask, grads=g)
    [c] = drop_and_grow(
        [site], "magnitude", "gradient", [4], structure=parse_structure("block:2x2")
    )
    assert sorted(c.drop.tolist()) == [2, 3, 8, 9]  # the block of summed |w| 0.8
    assert sorted(c.grow.tolist()) == [4, 5, 10, 11]  # the only block with gradient


def test_gmp_decays_n_per_group_on_its_ramp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    method = create_method("gmp", structure="2:4", total_steps=10, end_step=8, update_interval=2)
    method.attach(model, opt)
    seen = []
    for step in range(10):
        loss = model(torch.randn(4, 8, generator=torch.Generator().manual_seed(step))).pow(2)
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
        model(torch.zeros(1, 8))  # the next forward applies a deferred update
        seen.append(set(nm_groups(method.targets[0].mask, 4).sum(1).tolist()))
    # cubic ramp to 0.5 over 8 steps: N_t = round(4 (1 - s_t)), s_2 = 0.29, s_4 = 0.44
    assert [round(4 * (1 - method.sparsity_at(t))) for t in (2, 4, 6, 8)] == [3, 2, 2, 2]
    assert seen[:4] == [{4}, {3}, {3}, {2}] and seen[-1] == {2}


@pytest.mark.conformance
@pytest.mark.parametrize(("key", "structure"), [c for c in CASES if c[1] in ("2:4", "block:4x4")])
def test_channels_last_conv_weights_keep_the_structure(key, structure):
    """Conv nets run channels_last on the CPU: every method's structured path takes it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 16)).to(
        memory_format=torch.channels_last
    )
    name = METHOD_OF.get(key, key)
    kwargs: dict[str, object] = {"total_steps": STEPS, "structure": structure, **FAST[key]}
    if structure.startswith("block"):
        kwargs["sparsity"] = 0.75
    if name == "srste":
        kwargs["dense_last"] = False
    method = create_method(name, **kwargs)
    opt = torch.optim.SGD(param_groups(model, method, weight_decay=1e-3), lr=0.05, momentum=0.9)
    method.attach(model, opt)
    final = method.sparsity_at(STEPS)
    for step in range(STEPS):
        g = torch.Generator().manual_seed(step)
        x = torch.randn(8, 4, 8, 8, generator=g).to(memory_format=torch.channels_last)
        loss = nn.functional.cross_entropy(model(x), torch.randint(0, 16, (8,), generator=g))
        opt.zero_grad()
        loss.backward()
        opt.step()
        check_pattern(method, structure, at_target=method.sparsity_at(step + 1) == final)
    assert method.finish().nnz == method.global_target_count()
