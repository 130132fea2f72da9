"""``sparsetrain train`` in sparse execution, then ``sparsetrain export`` of the run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from sparsetrain.cli import main
from sparsetrain.export import load_compressed
from sparsetrain.train.experiment import load_run

pytestmark = pytest.mark.integration

CONFIG = {
    "data": {"name": "synthetic", "n_train": 64, "n_test": 32},
    "model": {"name": "mlp", "hidden_sizes": [32]},
    "method": {"name": "rigl", "sparsity": 0.8, "update_interval": 2, "execution": "sparse"},
    "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
    "train": {"epochs": 1, "batch_size": 16, "plots": False},
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("sparse_run")
    cfg = tmp / "config.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    out = tmp / "run"
    assert main(["train", str(cfg), "--out", str(out), "--quiet"]) == 0
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["method"]["execution"]["fc1.weight"] == "sparse"  # trained on sparse layers
    assert "fc1.weight" in state["model"]  # saved with the plain model's keys
    return out


def _plain_model(run_dir: Path) -> torch.nn.Module:
    """A fresh dense model of the run's architecture (no method attached)."""
    from sparsetrain.export import squash

    run = load_run(run_dir)
    model = squash(run.method)
    for p in model.parameters():  # forget the trained values: the file must bring them back
        torch.nn.init.normal_(p)
    return model


def test_train_in_sparse_mode_prints_the_execution_table(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    assert main(["train", str(cfg), "--out", str(tmp_path / "r")]) == 0
    text = capsys.readouterr().out
    assert "execution='sparse'" in text and "| fc1.weight |" in text


def test_export_compressed_round_trips_the_outputs(run_dir, capsys):
    assert main(["export", str(run_dir), "--format", "compressed"]) == 0
    path = run_dir / "model.compressed.safetensors"
    assert path.is_file() and f"wrote {path}" in capsys.readouterr().out
    from sparsetrain.export import squash

    trained = squash(load_run(run_dir).method).eval()
    fresh = _plain_model(run_dir).eval()
    load_compressed(fresh, path)
    x = torch.randn(7, *trained_input(run_dir))
    torch.testing.assert_close(fresh(x), trained(x))
    assert not any("Sparse" in type(m).__name__ for m in fresh.modules())


def trained_input(run_dir: Path) -> tuple[int, ...]:
    return tuple(load_run(run_dir).splits.input_shape)


def test_export_dense_and_sparse_inference(run_dir, tmp_path, capsys):
    dense = tmp_path / "m.pt"
    assert main(["export", str(run_dir), "--format", "dense", "--out", str(dense)]) == 0
    state = torch.load(dense, weights_only=True)
    assert "fc1.weight" in state and (state["fc1.weight"] == 0).float().mean() > 0.5
    sparse = tmp_path / "m.safetensors"
    rc = main(["export", str(run_dir), "--format", "sparse-inference", "--out", str(sparse)])
    assert rc == 0 and sparse.is_file()
    assert "| fc1 |" in capsys.readouterr().out


def test_export_errors_are_one_line_exit_2(run_dir, tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope"), "--format", "dense"]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["export", str(tmp_path / "empty"), "--format", "dense"]) == 2
    assert "no config.yaml" in capsys.readouterr().err
    out = tmp_path / "exists.pt"
    out.write_text("x")
    assert main(["export", str(run_dir), "--format", "dense", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert out.read_text() == "x"


# --------------------------------------------------------------------------- --checkpoint best|last

# A run whose best-validation epoch is not its last: constant high LR on a small synthetic set.
BEST_CONFIG = {
    "data": {"name": "synthetic", "n_train": 96, "n_test": 64, "val_fraction": 0.25},
    "model": {"name": "mlp", "hidden_sizes": [16]},
    "optim": {"name": "sgd", "lr": 0.5, "momentum": 0.9, "schedule": "constant"},
    "train": {"epochs": 6, "batch_size": 16, "plots": False},
}
BEST_METHODS = {
    "rigl": {"name": "rigl", "sparsity": 0.8, "update_interval": 2},  # hard masks
    "rigl-sparse": {"name": "rigl", "sparsity": 0.8, "update_interval": 2, "execution": "sparse"},
    "st3": {"name": "st3", "sparsity": 0.8},  # in place: effective weights in the parameters
}


@pytest.fixture(scope="module")
def best_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("best_runs")
    runs = {}
    for name, method in BEST_METHODS.items():
        cfg = tmp / f"{name}.yaml"
        cfg.write_text(yaml.safe_dump({**BEST_CONFIG, "method": method}))
        runs[name] = tmp / name
        assert main(["train", str(cfg), "--out", str(runs[name]), "--quiet"]) == 0
    return runs


def _exported_test_loss(run_dir: Path, path: Path) -> float:
    """Test loss of the dense file written by export, in a fresh plain model."""
    from sparsetrain.export import squash
    from sparsetrain.train.loop import evaluate

    run = load_run(run_dir)
    run.model = squash(run.method)
    run.model.load_state_dict(torch.load(path, weights_only=True))
    return evaluate(run, run.splits.test)[0]


@pytest.mark.parametrize("name", list(BEST_METHODS))
def test_export_defaults_to_the_headline_model_and_exports_either(
    best_runs: dict[str, Path], name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    run_dir = best_runs[name]
    summary = json.loads((run_dir / "summary.json").read_text())
    best, final = summary["best_val"], summary["final"]
    assert summary["headline"]["select"] == "best_val"
    assert best["epoch"] < final["epoch"] and best["test_loss"] != final["test_loss"]
    rel = 1e-5 if name == "rigl-sparse" else 1e-9  # CSR kernels in training, dense here

    default = tmp_path / "default.pt"
    assert main(["export", str(run_dir), "--format", "dense", "--out", str(default)]) == 0
    out = capsys.readouterr().out
    assert f"best-validation model, epoch {best['epoch']}" in out
    assert _exported_test_loss(run_dir, default) == pytest.approx(best["test_loss"], rel=rel)

    last = tmp_path / "last.pt"
    args = ["export", str(run_dir), "--format", "dense", "--out", str(last)]
    assert main([*args, "--checkpoint", "last"]) == 0
    assert "last checkpoint, step" in capsys.readouterr().out
    assert _exported_test_loss(run_dir, last) == pytest.approx(final["test_loss"], rel=rel)


def test_export_of_an_unfinished_run_warns_and_takes_the_last_checkpoint(
    best_runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json
    import shutil

    run_dir = tmp_path / "stopped"
    shutil.copytree(best_runs["rigl"], run_dir)
    final = json.loads((run_dir / "summary.json").read_text())["final"]
    (run_dir / "summary.json").unlink()
    out = tmp_path / "m.pt"
    assert main(["export", str(run_dir), "--format", "dense", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"warning: {run_dir} is unfinished (no summary.json)")
    assert "exporting its last checkpoint" in err and "--resume" in err
    assert _exported_test_loss(run_dir, out) == pytest.approx(final["test_loss"], rel=1e-9)

    (run_dir / "best_model.pt").unlink()
    capsys.readouterr()
    args = ["export", str(run_dir), "--format", "dense", "--out", str(tmp_path / "b.pt")]
    assert main([*args, "--checkpoint", "best"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no best_model.pt in" in err and len(err.splitlines()) == 1
