"""Every weight tensor can be a target: attention, recurrent, transposed-conv and tied weights.

Every registered method trains a tiny transformer (MultiheadAttention + feed-forward, embedding
tied to the head) and a 2-layer LSTM language model with every >= 2-D tensor a target, reaches
its target exactly, resumes bit-identically and squashes to equal outputs.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from lm_models import SEQ, TinyTransformerLM, lm_batch, lm_step, make_lm
from sparsetrain import create_method, get_method_info, list_methods, select_targets
from sparsetrain.methods.registry import method_options
from sparsetrain.train.metrics import count_flops
from test_conformance import FAST

STEPS = 30
SPLIT = 12
SPARSITY = 0.75
# methods that keep the last layer dense by default, told to make it a target here
EVERY_TENSOR: dict[str, dict[str, object]] = {"srste": {"dense_last": False}}

EVERY = {
    "transformer": [
        "emb.weight",  # also head.weight (tied)
        "attn.in_proj_weight",
        "attn.out_proj.weight",
        "ff.0.weight",
        "ff.2.weight",
    ],
    "lstm": [
        "emb.weight",
        "rnn.weight_ih_l0",
        "rnn.weight_hh_l0",
        "rnn.weight_ih_l1",
        "rnn.weight_hh_l1",
        "head.weight",
    ],
}


def build(name: str, kind: str, **extra: object):
    model = make_lm(kind)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    info = get_method_info(name)
    kwargs: dict[str, object] = {
        "total_steps": STEPS,
        "include": ["*"],
        **FAST.get(name, {}),
        **EVERY_TENSOR.get(name, {}),
    }
    if info.sparsity_mode == "target" and name != "dense":
        kwargs["sparsity"] = SPARSITY
    valid = method_options(info.factory)
    kwargs = {k: v for k, v in kwargs.items() if k in valid} | dict(extra)
    return model, opt, create_method(name, **kwargs).attach(model, opt)


@pytest.mark.conformance
@pytest.mark.parametrize("kind", sorted(EVERY))
@pytest.mark.parametrize("name", list_methods())
def test_every_method_on_transformer_and_lstm(name: str, kind: str) -> None:
    model, opt, method = build(name, kind)
    assert [t.name for t in method.targets] == EVERY[kind]
    for step in range(SPLIT):
        lm_step(model, opt, step)
    saved = copy.deepcopy((model.state_dict(), opt.state_dict(), method.state_dict()))
    model2, opt2, method2 = build(name, kind)
    model2.load_state_dict(saved[0])
    opt2.load_state_dict(saved[1])
    method2.load_state_dict(saved[2])
    for step in range(SPLIT, STEPS):
        a, b = lm_step(model, opt, step), lm_step(model2, opt2, step)
        assert a == b, f"step {step}: resumed loss {b} != {a}"
    for t1, t2 in zip(method.targets, method2.targets, strict=True):
        assert torch.equal(t1.mask, t2.mask) and torch.equal(t1.param, t2.param), t1.name
    if method.hard_mask:
        for t in method.targets:
            assert torch.all(t.param[~t.mask] == 0), f"{t.name}: pruned weight non-zero"
    if get_method_info(name).sparsity_mode == "target" and name != "dense":
        rep = method.finish()  # raises when a tensor or the global count is off target
        assert rep.misses() == []
        assert rep.sparsity == pytest.approx(SPARSITY, abs=0.01)
    model.eval()
    x, _ = lm_batch(999)
    with torch.no_grad():
        expected = model(x)
    plain = method.squash()
    with torch.no_grad():
        torch.testing.assert_close(plain(x), expected, rtol=1e-5, atol=1e-6)
    assert {n for n, _ in plain.named_parameters()} == {
        n for n, _ in make_lm(kind).named_parameters()
    }
    assert not any(k.endswith("_raw") for k in plain.state_dict())


# --------------------------------------------------------------------------- the default rule


def test_default_targets_of_transformer_leave_the_tied_embedding_dense() -> None:
    model = make_lm("transformer")
    emb = model.emb.weight.detach().clone()
    with pytest.warns(UserWarning, match=r"'head.weight'.*tied to 'emb.weight'.*Embedding"):
        method = create_method("static", sparsity=0.5).attach(model)
    names = [t.name for t in method.targets]
    assert names == ["attn.in_proj_weight", "attn.out_proj.weight", "ff.0.weight", "ff.2.weight"]
    assert torch.equal(model.emb.weight, emb)  # the Embedding (= the head) is not masked


def test_default_targets_of_lstm_and_fused_blocks() -> None:
    targets = select_targets(make_lm("lstm"))
    assert [t.name for t in targets] == EVERY["lstm"][1:]  # embeddings are opt-in
    assert [t.blocks for t in targets] == [4, 4, 4, 4, 1]  # the LSTM's four gates
    attn = select_targets(make_lm("transformer"), include=["attn.*"])
    assert [(t.name, t.blocks) for t in attn] == [
        ("attn.in_proj_weight", 3),
        ("attn.out_proj.weight", 1),
    ]


def test_conv_transpose_gru_and_separate_projections_are_default_targets() -> None:
    torch.manual_seed(0)
    model = nn.ModuleDict(
        {
            "up": nn.ConvTranspose2d(4, 6, 3, groups=2),
            "gru": nn.GRU(3, 5),
            "mha": nn.MultiheadAttention(4, 2, kdim=3, vdim=5),
        }
    )
    got = [(t.name, t.shape, t.blocks) for t in select_targets(model)]
    assert got == [
        ("up.weight", (4, 3, 3, 3), 1),
        ("gru.weight_ih_l0", (15, 3), 3),
        ("gru.weight_hh_l0", (15, 5), 3),
        ("mha.q_proj_weight", (4, 4), 1),
        ("mha.k_proj_weight", (4, 3), 1),
        ("mha.v_proj_weight", (4, 5), 1),
        ("mha.out_proj.weight", (4, 4), 1),
    ]


def test_select_by_module_type() -> None:
    model = make_lm("transformer")
    got = select_targets(model, include=["type:MultiheadAttention", "type:Embedding"])
    assert [t.name for t in got] == ["emb.weight", "attn.in_proj_weight"]
    # a base class name selects its subclasses (out_proj is a Linear subclass)
    with pytest.warns(UserWarning, match="'head.weight'"):  # tied to the Embedding
        got = select_targets(model, include=["type:Linear"])
    assert [t.name for t in got] == ["attn.out_proj.weight", "ff.0.weight", "ff.2.weight"]
    got = select_targets(model, include=["*"], exclude=["type:Linear", "type:Embedding"])
    assert [t.name for t in got] == ["attn.in_proj_weight"]
    with pytest.raises(ValueError, match=r"\['type:Conv2d'\] matched no parameter"):
        select_targets(model, include=["type:Conv2d"])


def test_any_2d_parameter_can_be_included_by_name() -> None:
    class WithPositions(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pos = nn.Parameter(torch.randn(SEQ, 4))
            self.bil = nn.Bilinear(4, 4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = x + self.pos
            return self.bil(h, h)

    torch.manual_seed(0)
    model = WithPositions()
    assert [t.name for t in select_targets(model, include=["*"])] == ["pos", "bil.weight"]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    method = create_method("static", sparsity=0.5, include=["*"], distribution="uniform")
    method.attach(model, opt)
    x = torch.randn(3, SEQ, 4)
    for _ in range(3):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    assert [t.nnz for t in method.targets] == [12, 16]
    assert int((model.pos != 0).sum()) == 12 and int((model.bil.weight != 0).sum()) == 16


# --------------------------------------------------------------------------- tied weights


def test_tied_embedding_is_one_target_when_included() -> None:
    model = make_lm("transformer")
    assert model.head.weight is model.emb.weight
    targets = select_targets(model, include=["*"])
    assert [t.name for t in targets].count("emb.weight") == 1
    assert "head.weight" not in [t.name for t in targets]
    assert targets[0].aliases == ("head.weight",)
    # naming only the head leaves the tensor dense: the Embedding name is not included
    with pytest.warns(UserWarning, match="'head.weight'"):
        targets = select_targets(model, include=["head.weight", "ff.*"])
    assert [t.name for t in targets] == ["ff.0.weight", "ff.2.weight"]
    # excluding either name keeps it dense
    got = select_targets(model, include=["*"], exclude=["head.weight"])
    assert "emb.weight" not in [t.name for t in got]


# --------------------------------------------------------------------------- frozen tensors


def _frozen_model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU())
    model.append(nn.Linear(12, 4))
    model[2].weight.requires_grad_(False)
    return model


def test_frozen_layer_in_optimizer_is_not_a_dst_target() -> None:
    model = _frozen_model()
    frozen = model[2].weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with pytest.warns(UserWarning, match=r"'2.weight'.*requires_grad=False"):
        method = create_method("rigl", sparsity=0.75, total_steps=20, update_interval=2)
        method.attach(model, opt)
    assert [t.name for t in method.targets] == ["0.weight", "4.weight"]
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(16, 8, generator=g), torch.randint(0, 4, (16,), generator=g)
    for _ in range(20):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert torch.equal(model[2].weight, frozen)  # never masked, never revived at zero
    method.finish()
    for t in method.targets:  # every kept entry of a trained target is live
        assert int((t.param[t.mask] == 0).sum()) == 0, t.name


def test_frozen_layer_left_out_of_optimizer_attaches() -> None:
    model = _frozen_model()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    with pytest.warns(UserWarning, match=r"exclude=\['2.weight'\]"):
        method = create_method("static", sparsity=0.5).attach(model, opt)
    assert [t.name for t in method.targets] == ["0.weight", "4.weight"]
    method.detach()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # excluding it silences the note
        create_method("static", sparsity=0.5, exclude=["2.weight"]).attach(model, opt)


def test_trainable_layer_missing_from_optimizer_names_exclude() -> None:
    model = _frozen_model()
    model[2].weight.requires_grad_(True)
    opt = torch.optim.SGD([model[0].weight, model[4].weight], lr=0.1)
    snap = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"'2.weight'.*exclude=\['2.weight'\]"):
        create_method("static", sparsity=0.5).attach(model, opt)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in snap.items())


# --------------------------------------------------------------------------- FLOPs


def test_flops_count_attention_lstm_and_transposed_convs() -> None:
    model = TinyTransformerLM(tied=False)
    got = count_flops(model, (SEQ,), input_dtype=torch.long)
    names = [row["name"] for row in got["layers"]]
    assert names == ["attn", "ff.0", "ff.2", "head"]
    d = 8
    assert got["layers"][0]["dense"] == SEQ * (3 * d * d + d * d)  # in-projection + out_proj
    lstm = make_lm("lstm")
    rows = count_flops(lstm, (SEQ,), input_dtype=torch.long)["layers"]
    assert (rows[0]["name"], rows[0]["dense"]) == ("rnn", SEQ * 4 * 12 * (8 + 12 + 12 + 12))
    up = nn.Sequential(nn.ConvTranspose1d(2, 3, kernel_size=3, stride=2))
    rows = count_flops(up, (2, 5))["layers"]
    assert rows[0]["dense"] == 2 * 3 * 3 * 5  # every input position times the kernel
    # a masked model counts its live weights
    model = make_lm("transformer")
    method = create_method("static", sparsity=0.5, include=["*"]).attach(model)
    got = count_flops(model, (SEQ,), input_dtype=torch.long)
    assert got["sparse"] < got["dense"]
    method.detach()
