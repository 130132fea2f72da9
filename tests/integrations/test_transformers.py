"""Hugging Face Trainer: SparsityCallback on a tiny random BERT, offline, resumed exactly."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded: models come from configs
transformers = pytest.importorskip("transformers")  # part of the dev install: never skipped in CI

import sparsetrain  # noqa: E402
from sparsetrain import create_method  # noqa: E402
from sparsetrain.integrations.transformers import (  # noqa: E402
    STATE_FILE,
    SparsityCallback,
    default_targets,
    recipe_optimizer,
)

STEPS = 8


def tiny_bert() -> Any:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=16,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return transformers.BertForSequenceClassification(config)


class Data(torch.utils.data.Dataset):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(1)
        self.ids = torch.randint(0, 64, (32, 8), generator=g)
        self.labels = torch.randint(0, 3, (32,), generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def trainer(out: Path, model: Any, cb: SparsityCallback) -> Any:
    args = transformers.TrainingArguments(
        output_dir=str(out),
        max_steps=STEPS,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        save_steps=4,
        logging_steps=2,
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    return transformers.Trainer(model=model, args=args, train_dataset=Data(), callbacks=[cb])


def test_default_targets_are_attention_and_mlp_projections() -> None:
    names = default_targets(tiny_bert())
    assert (
        len(names) == 2 * 6
    )  # per layer: query, key, value, attention output, intermediate, output
    assert "bert.encoder.layer.0.attention.self.query.weight" in names
    assert "bert.encoder.layer.1.intermediate.dense.weight" in names
    assert not any("embeddings" in n or "pooler" in n or "classifier" in n for n in names)


def test_gpt2_conv1d_projections_are_the_default_targets() -> None:
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16)
    model = transformers.GPT2LMHeadModel(cfg)
    names = default_targets(model)
    assert names == [
        f"transformer.h.{i}.{m}.weight"
        for i in range(2)
        for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    ]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    method = create_method("rigl", sparsity=0.8, total_steps=10, include=names)
    method.attach(model, opt)
    ids = torch.randint(0, 64, (4, 16))
    for _ in range(3):
        opt.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
    method.finish()  # exact target over the Conv1D weights
    assert abs(method.report().sparsity - 0.8) < 1e-3


def test_train_logs_and_resumes_bit_identical(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    straight = tiny_bert()
    cb = SparsityCallback("rigl", sparsity=0.7, update_interval=2)
    t = trainer(tmp_path / "a", straight, cb)
    t.train()
    assert cb.method is not None and cb.method.total_steps == STEPS and cb.method.step == STEPS
    assert [t_.name for t_ in cb.method.targets] == default_targets(straight)
    assert cb.report is not None and abs(cb.report.sparsity - 0.7) < 0.01
    assert "global" in capsys.readouterr().out
    logged = [r for r in t.state.log_history if "loss" in r]  # the logging_steps rows
    assert [r["step"] for r in logged] == [2, 4, 6, 8]
    assert all(abs(r["sparsetrain/sparsity"] - 0.7) < 0.01 for r in logged)
    assert any("sparsetrain/churn" in r for r in logged)
    assert (tmp_path / "a" / "checkpoint-4" / STATE_FILE).is_file()
    emb = straight.bert.embeddings.word_embeddings.weight
    assert bool((emb[1:] != 0).all())  # embeddings stay dense (row 0: the padding token)

    resumed = tiny_bert()
    cb2 = SparsityCallback("rigl", sparsity=0.7, update_interval=2)
    trainer(tmp_path / "a", resumed, cb2).train(
        resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-4")
    )
    assert cb2.method is not None and cb2.method.step == STEPS
    for (k, a), (_, b) in zip(
        straight.state_dict().items(), resumed.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), k
    assert cb.method.history == cb2.method.history


@pytest.mark.parametrize(
    ("name", "options"),
    [("str", {"s_init": -3.0}), ("optg", {"sparsity": 0.7, "score_optimizer": "user"})],
)
def test_methods_with_their_own_parameters_resume_bit_identical(
    tmp_path: Path, name: str, options: dict
) -> None:
    """Thresholds/scores train in the method's companion optimizer, saved with the method."""
    straight = tiny_bert()
    if name == "optg":
        options = {**options, "steps_per_epoch": 2}
    trainer(tmp_path / "a", straight, SparsityCallback(name, **options)).train()
    resumed = tiny_bert()
    trainer(tmp_path / "a", resumed, SparsityCallback(name, **options)).train(
        resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-4")
    )
    for (k, a), (_, b) in zip(
        straight.state_dict().items(), resumed.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), k


def _amp_trainer(out: Path, model: Any, cb: SparsityCallback, precision: str, recipe: str | None):
    args = transformers.TrainingArguments(
        output_dir=str(out),
        max_steps=STEPS,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        weight_decay=0.01,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
        **{precision: True},
    )
    opt = None if recipe is None else recipe_optimizer(model, args, recipe)
    return transformers.Trainer(
        model=model, args=args, train_dataset=Data(), callbacks=[cb], optimizers=(opt, None)
    )


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_recipe_optimizer_and_mixed_precision_leave_the_optimizer_as_built(
    tmp_path: Path, precision: str
) -> None:
    model = tiny_bert()
    cb = SparsityCallback("st3", sparsity=0.5)
    run = _amp_trainer(tmp_path, model, cb, precision, recipe="st3")
    opt = run.optimizer
    before = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    ids = [[id(p) for p in g["params"]] for g in opt.param_groups]
    embeddings = model.bert.embeddings.word_embeddings.weight
    assert [g["weight_decay"] for g in before] == [0.01, 0.0]
    assert id(embeddings) in ids[1] and id(model.classifier.weight) in ids[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error", sparsetrain.RecipeWarning)  # the recipe's own groups
        run.train()
    assert cb.method is not None and cb.method.step == STEPS
    assert [[id(p) for p in g["params"]] for g in opt.param_groups] == ids
    after = [
        {k: v for k, v in g.items() if k not in ("params", "lr", "initial_lr")}
        for g in opt.param_groups
    ]
    assert after == [{k: v for k, v in g.items() if k not in ("lr", "initial_lr")} for g in before]
    assert abs(cb.report.sparsity - 0.5) < 0.01


@pytest.mark.parametrize("name", ["optg", "scl", "str"])
def test_own_parameters_train_under_fp16_autocast(tmp_path: Path, name: str) -> None:
    options = {"optg": {"sparsity": 0.5, "steps_per_epoch": 2}, "scl": {"lam": 0.1}, "str": {}}
    cb = SparsityCallback(name, **options[name])
    _amp_trainer(tmp_path, tiny_bert(), cb, "fp16", recipe=None).train()
    assert cb.method is not None and cb.method.step == STEPS
    extra = cb.method.state_dict()["extra"]
    owned = {"optg": extra.get("scores"), "scl": extra.get("mask_vars"), "str": [extra.get("s")]}
    assert owned[name] and all(torch.isfinite(t).all() for t in owned[name])
