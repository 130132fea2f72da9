"""The language-model task: the ``pydoc`` text, ``gpt_tiny``, per-token loss and accuracy."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from torch import nn

from sparsetrain.cli import main
from sparsetrain.data import load_dataset
from sparsetrain.data._text import CHARS, UNKNOWN, VOCAB, _streams, encode
from sparsetrain.models import count_parameters, create_model
from sparsetrain.train.loop import evaluate, hits


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder for the module: the standard library is parsed once."""
    return tmp_path_factory.mktemp("pydoc-cache")


def test_encode_maps_printable_ascii_and_newline_and_nothing_else() -> None:
    ids = encode("a\nZ é~").tolist()
    assert ids == [CHARS.index("a"), 0, CHARS.index("Z"), CHARS.index(" "), UNKNOWN, 95]
    assert VOCAB == 97 and CHARS[95] == "~"


def test_test_split_is_whole_modules_chosen_by_path(tmp_path: Path) -> None:
    for i in range(20):
        (tmp_path / f"m{i}.py").write_text(f'"""Module {i}."""\ndef f():\n    """Doc {i}."""\n')
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "t.py").write_text('"""Never read."""\n')
    text = {k: "".join(CHARS[t] for t in v.tolist()) for k, v in _streams(tmp_path).items()}
    assert "Never read" not in text["train"] + text["test"]
    for i in range(20):  # each module whole in exactly one split, its docstrings together
        where = [k for k, v in text.items() if f"Module {i}.\n\nDoc {i}." in v]
        assert len(where) == 1
    assert text["test"]  # crc32 puts some of 20 names in the held-out tenth


def test_pydoc_windows_are_next_token_pairs_and_cached(cache: Path) -> None:
    splits = load_dataset("pydoc", data_dir=cache, seq_len=16, val_fraction=0.1)
    x, y = splits.train[3]
    assert x.dtype == torch.int64 and x.shape == (16,) and y.shape == (16,)
    assert torch.equal(x[1:], y[:-1])  # the label is the window shifted by one
    assert splits.num_classes == VOCAB and splits.input_shape == (16,)
    assert len(splits.train) > 50_000 and len(splits.test) > 3_000
    (cached,) = cache.glob("pydoc-*.npz")
    again = load_dataset("pydoc", data_dir=cache, seq_len=16, val_fraction=0.1)
    assert torch.equal(again.test[0][0], splits.test[0][0])
    assert list(cache.glob("pydoc-*.npz")) == [cached]


def test_gpt_tiny_is_causal_and_ties_its_head() -> None:
    torch.manual_seed(0)
    model = create_model("gpt_tiny", num_classes=VOCAB, input_shape=(12,), width=16, heads=2)
    tokens = torch.randint(0, VOCAB, (2, 12))
    later = tokens.clone()
    later[:, 7:] = (later[:, 7:] + 1) % VOCAB
    a, b = model(tokens), model(later)
    assert a.shape == (2, 12, VOCAB)
    assert torch.allclose(a[:, :7], b[:, :7]) and not torch.allclose(a[:, 7:], b[:, 7:])
    assert model.head.weight is model.tok_emb.weight


def test_gpt_tiny_default_size() -> None:
    model = create_model("gpt_tiny", num_classes=VOCAB, input_shape=(64,))
    # embedding 97*64 + positions 64*64 + 2 blocks * (norms 2*128 + qkv 64*192+192 + proj
    # 64*64+64 + fc 64*256+256 + proj 256*64+64) + final norm 128; the head is the embedding
    assert count_parameters(model) == 6_208 + 4_096 + 2 * 49_984 + 128


def test_sequence_hits_are_the_fraction_of_tokens_right() -> None:
    logits = torch.zeros(2, 4, 3)
    logits[0, :, 1] = 1.0  # predicts 1 everywhere
    y = torch.tensor([[1, 1, 0, 2], [0, 0, 0, 0]])  # row 1: all-zero logits pick 0
    assert hits(logits, y).tolist() == [0.5, 1.0]
    assert hits(torch.eye(3), torch.tensor([0, 2, 2])).tolist() == [1.0, 0.0, 1.0]


class _Uniform(nn.Module):
    """Equal logits for every token: the loss is ln(vocab) nats per token exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(1, VOCAB)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(tokens.unsqueeze(-1).float())


def test_harness_trains_a_sparse_language_model(tmp_path: Path, cache: Path) -> None:
    """RigL at 50% on the blocks' projections: per-token metrics, FLOPs from token inputs."""
    cfg = {
        "data": {"name": "pydoc", "val_fraction": 0.1, "seq_len": 16, "train_size": 128},
        "model": {"name": "gpt_tiny", "width": 16, "layers": 1, "heads": 2},
        "method": {"name": "rigl", "sparsity": 0.5, "include": ["blocks.*"]},
        "optim": {"name": "adamw", "lr": 3e-3, "weight_decay": 0.1, "warmup_epochs": 0.5},
        "train": {"epochs": 2, "batch_size": 16, "select": "final", "plots": False},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    assert main(["train", str(path), "--out", str(run), "--quiet", "--data-dir", str(cache)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    final = summary["final"]
    assert 0.0 < final["test_acc"] < 1.0 and 0.0 < final["train_acc"] < 1.0
    assert final["test_loss"] < math.log(VOCAB)  # better than uniform after 16 steps
    names = {row["name"] for row in summary["layers"]} - {"global"}
    assert names == {"blocks.0.attn.qkv.weight", "blocks.0.attn.proj.weight",
                     "blocks.0.mlp.fc.weight", "blocks.0.mlp.proj.weight"}  # fmt: skip
    assert abs(summary["sparsity"]["actual"] - 0.5) < 1e-3
    assert 0.0 < summary["flops"]["ratio"] < 1.0


def test_evaluation_loss_is_nats_per_token(cache: Path) -> None:
    splits = load_dataset("pydoc", data_dir=cache, seq_len=8, val_fraction=0.0)
    cfg = SimpleNamespace(train=SimpleNamespace(eval_batch_size=512))
    run = SimpleNamespace(model=_Uniform(), device=torch.device("cpu"), channels_last=False,
                          ddp=None, cfg=cfg)  # fmt: skip
    loss, acc = evaluate(run, splits.test)  # type: ignore[arg-type]
    assert loss == pytest.approx(math.log(VOCAB), rel=1e-6)
    _, y = splits.test.tensors
    assert acc == pytest.approx((y == 0).double().mean().item())  # argmax of a tie: id 0
