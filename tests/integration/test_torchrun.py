"""``sparsetrain compare`` and ``train`` under ``torchrun --nproc-per-node 2`` (gloo, CPU).

A run stopped by SIGTERM at step 5 of 8 and resumed with 2 processes ends bit-identical to a
straight 2-process run; resuming it with one process is refused with one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_cli import outputs, rows

from sparsetrain.cli import main

pytestmark = pytest.mark.integration

CONFIG = {
    "data": {"name": "synthetic", "n_train": 64, "n_test": 32},  # 58 train / 6 val: 4 batches
    "model": {"name": "mlp", "hidden_sizes": [16]},
    "method": {"name": "rigl", "sparsity": 0.8, "update_interval": 3},
    "optim": {"name": "sgd", "lr": 0.1, "schedule": "cosine"},
    "train": {"epochs": 2, "batch_size": 16, "log_every": 1, "plots": False},
}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
RUNS_SCRIPT = str(Path(__file__).parents[1] / "_torchrun_runs.py")


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [*TORCHRUN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=240
    )


def test_torchrun_compare_train_and_bit_exact_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "base.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    suite = {"base": "base.yaml", "methods": ["rigl"], "sparsities": [0.8], "seeds": [0]}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    # one launch: compare (a straight run) and train stopped by SIGTERM after step 5
    first = torchrun(RUNS_SCRIPT, str(tmp_path), cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    codes = json.loads((tmp_path / "codes.json").read_text())
    assert codes == {"compare": 0, "train": 128 + 15}
    assert first.stdout.count("1 finished") == 1  # printed by rank 0 only
    a, b = tmp_path / "suite" / "rigl-s0.8-seed0", tmp_path / "b"
    assert json.loads((a / "summary.json").read_text())["steps"] == 8
    ckpt = torch.load(b / "checkpoint.pt", weights_only=True)
    assert (ckpt["step"], ckpt["world_size"], len(ckpt["ranks"])) == (5, 2, 2)
    assert not (b / "summary.json").exists()

    # one process cannot continue a 2-process run: one line, exit 2, nothing touched
    capsys.readouterr()
    assert main(["train", str(config), "--out", str(b), "--resume", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert (
        "written by 2 process(es), this run has 1; resume with torchrun --nproc-per-node 2" in err
    )
    assert err.count("\n") == 1
    assert len(rows(b / "steps.csv")) == 5

    resumed = torchrun(
        "-m", "sparsetrain", "train", str(config), "--out", "b", "--resume", "--quiet", cwd=tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming b at step 5/8" in (b / "train.log").read_text()
    want, got = outputs(a), outputs(b)
    for key in want:
        if key in ("masks", "model"):
            assert want[key].keys() == got[key].keys(), key
            for name in want[key]:
                assert torch.equal(want[key][name], got[key][name]), f"{key}.{name}"
        else:
            assert want[key] == got[key], key
