"""``examples/demo.py`` (what ``make demo`` runs): its whole code path on a tiny budget."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

from sparsetrain.data import load_dataset

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo.py"


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location("sparsetrain_demo", DEMO)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def tiny_data(*_, **__):
    """64 train / 32 test signals shaped like MNIST-1D (1 x 40, 10 classes), instantly."""
    return load_dataset(
        "synthetic", n_train=64, n_test=32, input_shape=(1, 40), num_classes=10, val_fraction=0.0
    )


def test_demo_runs_end_to_end(demo, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(demo, "load_dataset", tiny_data)
    methods = ["dense", "st3", "granet", "rigl", "static"]
    argv = ["--epochs", "2", "--out", str(tmp_path), "--methods", *methods]
    threads = torch.get_num_threads()
    rows = demo.main(argv)
    assert torch.get_num_threads() == threads  # restored
    out = capsys.readouterr().out
    by_name = {r["method"]: r for r in rows}
    assert list(by_name) == methods
    for name in methods:
        assert f"\n{name} " in out
    # 64 examples at batch 128: one step per epoch, so every step is on the table's clock
    dense = by_name["dense"]
    assert dense["sparsity"] == 0.0
    assert dense["train_flops"] == dense["final_flops"] == 1.0
    assert dense["step_ratio"] == 1.0 and dense["execution"] == "dense"
    for name in methods[1:]:
        row = by_name[name]
        assert abs(row["sparsity"] - 0.9) < 2 / 78_336  # within a weight of 40-256-256-10
        # an MLP uses every weight once per example: FLOPs ratio = live fraction
        assert math.isclose(row["final_flops"], 1.0 - row["sparsity"], rel_tol=1e-9)
        assert row["step_ratio"] > 0.0 and row["wall"] > 0.0
        assert 0.0 <= row["accuracy"] <= 100.0
    sparse = ("rigl", "static", "granet")  # the methods sparse execution serves
    assert all(by_name[name]["execution"] == "sparse" for name in sparse)
    assert by_name["st3"]["execution"] == "masked"
    # a fixed random mask: 0.1 live for forward, input and weight gradients alike
    assert math.isclose(by_name["static"]["train_flops"], 1.0 - by_name["static"]["sparsity"])
    # ST-3 back-propagates to every weight: more than its live fraction, less than dense
    assert by_name["st3"]["final_flops"] < by_name["st3"]["train_flops"] < 1.0
    picture = tmp_path / "demo.png"
    assert picture.is_file() and f"picture: {picture}" in out


def test_picture_never_overwrites(demo, tmp_path):
    first = tmp_path / "demo.png"
    first.write_bytes(b"user's file")
    assert demo.free_path(first) == tmp_path / "demo-2.png"
    (tmp_path / "demo-2.png").write_bytes(b"")
    assert demo.free_path(first) == tmp_path / "demo-3.png"
    assert first.read_bytes() == b"user's file"


def test_lr_schedule_warms_up_then_decays_to_zero(demo):
    factor = demo.lr_lambda(total_steps=100, warmup=0.05)  # 5 warm-up steps
    assert [factor(s) for s in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert factor(5) == pytest.approx(1.0)
    assert factor(5 + 95 // 2) == pytest.approx(0.5 * (1 + math.cos(math.pi * 47 / 95)))
    assert factor(100) == pytest.approx(0.0, abs=1e-12)


def test_bad_arguments_exit_with_usage(demo):
    bad = (["--epochs", "0"], ["--threads", "-1"], ["--execution", "fast"], ["--methods", "str"])
    for argv in bad:  # STR's sparsity is emergent: the demo's fixed target does not apply
        with pytest.raises(SystemExit) as err:
            demo.parse_args(argv)
        assert err.value.code == 2
