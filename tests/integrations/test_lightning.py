"""PyTorch Lightning: SparsityCallback attaches at fit start, logs, reports and resumes exactly."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch")  # part of the dev install: never skipped in CI

import sparsetrain  # noqa: E402
from sparsetrain.integrations.lightning import SparsityCallback  # noqa: E402

EPOCHS, BATCHES = 4, 4  # 16 optimizer steps


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, _: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def loader() -> DataLoader:
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(
        torch.randn(BATCHES * 8, 8, generator=g), torch.randint(0, 4, (32,), generator=g)
    )
    return DataLoader(data, batch_size=8)


def trainer(tmp_path: Path, callback: SparsityCallback, **kw: Any) -> Any:
    return pl.Trainer(
        max_epochs=EPOCHS,
        accelerator="cpu",
        devices=1,
        callbacks=[callback, *kw.pop("callbacks", [])],
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        deterministic=True,
        **kw,
    )


def test_fit_attaches_logs_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cb = SparsityCallback("rigl", sparsity=0.8, update_interval=3)
    logger = pl.loggers.CSVLogger(tmp_path, name="log", version=0)
    model = Tiny()
    trainer(tmp_path, cb, logger=logger, enable_checkpointing=False).fit(model, loader())
    assert cb.method is not None and cb.method.total_steps == EPOCHS * BATCHES
    assert cb.method.step == EPOCHS * BATCHES  # every optimizer step drove the method
    assert [h["step"] for h in cb.method.history] == [3, 6, 9, 12]  # stop_fraction 0.75
    assert cb.report is not None and abs(cb.report.sparsity - 0.8) < 0.01
    assert "global" in capsys.readouterr().out  # the report, at fit end
    w = model.net[0].weight
    assert torch.equal(w == 0, ~cb.method.targets[0].mask | (w == 0))  # pruned weights are zero
    with open(tmp_path / "log" / "version_0" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    churn = [r for r in rows if r.get("sparsetrain/churn")]
    assert [int(r["step"]) for r in churn] == [3, 6, 9, 12]  # logged at the updates
    sparsity = [float(r["sparsetrain/sparsity"]) for r in rows if r.get("sparsetrain/sparsity")]
    assert len(sparsity) == EPOCHS and abs(sparsity[-1] - cb.report.sparsity) < 1e-6


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("rigl", {"sparsity": 0.8, "update_interval": 3}),
        ("optg", {"sparsity": 0.8}),  # in-place: raw weights, scores and their optimizer
    ],
)
def test_resume_from_checkpoint_is_bit_identical(
    tmp_path: Path, name: str, options: dict[str, Any]
) -> None:
    ckpts = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    straight = Tiny()
    cb = SparsityCallback(name, **options)
    trainer(tmp_path, cb, logger=False, callbacks=[ckpts]).fit(straight, loader())
    middle = sorted((tmp_path / "ckpt").glob("epoch=1-*.ckpt"))[0]  # after 2 of 4 epochs
    saved = torch.load(middle, weights_only=True)
    assert saved["sparsetrain"]["method"]["step"] == 2 * BATCHES
    plain = Tiny()
    plain.load_state_dict(saved["state_dict"])  # the checkpoint's weights load without sparsetrain

    resumed = Tiny()
    cb2 = SparsityCallback(name, **options)
    trainer(tmp_path, cb2, logger=False, enable_checkpointing=False).fit(
        resumed, loader(), ckpt_path=middle
    )
    assert cb2.method is not None and cb2.method.step == EPOCHS * BATCHES
    for (k, a), (_, b) in zip(
        straight.state_dict().items(), resumed.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), k
    for t, u in zip(cb.method.targets, cb2.method.targets, strict=True):
        assert torch.equal(t.mask, u.mask), t.name
    assert cb.method.history == cb2.method.history


class Recipe(Tiny):
    """Builds its optimizer from the recipe groups, with weight decay, as the README says."""

    def __init__(self, method: str, inf_batch: int | None = None) -> None:
        super().__init__()
        self.method, self.inf_batch = method, inf_batch

    def training_step(self, batch: Any, index: int) -> torch.Tensor:
        loss = super().training_step(batch, index)
        at_inf = self.inf_batch is not None and self.trainer.global_step == self.inf_batch
        return loss * float("inf") if at_inf and not getattr(self, "_done", False) else loss

    def on_train_batch_end(self, *_: Any) -> None:
        if self.inf_batch is not None and self.trainer.global_step > self.inf_batch:
            self._done = True  # one infinite loss only (the skipped step repeats global_step)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        groups = sparsetrain.param_groups(self, self.method, weight_decay=1e-3)
        return torch.optim.SGD(groups, lr=0.1, momentum=0.9)


MIXED = [
    ("rigl", {"sparsity": 0.8, "update_interval": 3}),
    ("st3", {"sparsity": 0.8}),
    ("optg", {"sparsity": 0.8}),
    ("scl", {"lam": 0.1}),
    ("str", {"threshold_weight_decay": 1e-2}),
]


def _tensors(x: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return {prefix: x} if x.is_floating_point() else {}
    items = x.items() if isinstance(x, dict) else enumerate(x) if isinstance(x, list) else []
    return {k: v for i, y in items for k, v in _tensors(y, f"{prefix}/{i}").items()}


def _mixed_fit(tmp_path: Path, name: str, options: dict[str, Any], scaler: bool, inf: bool):
    plugin = pl.plugins.precision.MixedPrecision(
        "16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=1024) if scaler else None
    )
    model, cb = Recipe(name, inf_batch=5 if inf else None), SparsityCallback(name, **options)
    run = trainer(tmp_path, cb, logger=False, enable_checkpointing=False, plugins=[plugin])
    run.fit(model, loader())
    return model, cb.method, plugin


@pytest.mark.parametrize(("name", "options"), MIXED, ids=[m for m, _ in MIXED])
def test_fp16_grad_scaler_gives_the_unscaled_run_and_skips_inf_steps(
    tmp_path: Path, name: str, options: dict[str, Any]
) -> None:
    plain, m_plain, _ = _mixed_fit(tmp_path, name, options, scaler=False, inf=False)
    scaled, m_scaled, _ = _mixed_fit(tmp_path, name, options, scaler=True, inf=False)
    for (k, a), (_, b) in zip(plain.state_dict().items(), scaled.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert m_plain.step == m_scaled.step == EPOCHS * BATCHES
    _, m_inf, plugin = _mixed_fit(tmp_path, name, options, scaler=True, inf=True)
    assert plugin.scaler.get_scale() == 512.0  # the infinite step was skipped
    assert m_inf.step == EPOCHS * BATCHES - 1  # ... and counted by no method
    for t in m_inf.targets:
        assert t.param.isfinite().all(), t.name  # nothing the method owns took the inf step
    for key, value in _tensors(m_inf.state_dict()["extra"]).items():
        assert value.isfinite().all(), key  # scores, mask variables, thresholds, their state
