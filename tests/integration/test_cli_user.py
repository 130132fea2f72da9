"""The command line as a new user meets it: one-line errors, exit codes, what a run records.

In-process, on ``synthetic`` data with a 64-16-4 MLP (a run takes well under a second).
"""

from __future__ import annotations

import fcntl
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from sparsetrain.cli import main

pytestmark = pytest.mark.integration

CONFIG: dict[str, Any] = {
    "data": {"name": "synthetic", "n_train": 64, "n_test": 32},  # 58 train / 6 val: 4 batches
    "model": {"name": "mlp", "hidden_sizes": [16]},
    "method": {"name": "rigl", "sparsity": 0.8, "update_interval": 3},
    "optim": {"name": "sgd", "lr": 0.1, "schedule": "cosine"},
    "train": {"epochs": 1, "batch_size": 16, "plots": False},
}


def write_config(tmp_path: Path, name: str = "config.yaml", **sections: dict[str, Any]) -> Path:
    raw = {k: dict(v) for k, v in CONFIG.items()}
    for k, v in sections.items():
        if "name" in v and k in ("model", "method"):  # another entry: its own options only
            raw[k] = dict(v)
        else:
            raw.setdefault(k, {}).update(v)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def train(config: Path, out: Path, *extra: str) -> int:
    return main(["train", str(config), "--out", str(out), "--quiet", *extra])


def one_error_line(capsys: pytest.CaptureFixture[str], command: str = "train") -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"sparsetrain {command}: error: "), err
    return err.strip()


# --------------------------------------------------------------------------- compare


def test_compare_on_a_locked_folder_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_config(tmp_path)
    suite = tmp_path / "suite.yaml"
    grid = {"base": "config.yaml", "methods": ["rigl"], "sparsities": [0.8], "seeds": [0]}
    suite.write_text(yaml.safe_dump(grid))
    root = tmp_path / "grid"
    root.mkdir()
    with open(root / ".compare.lock", "w") as held:  # another compare holds the folder
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(["compare", str(suite), "--out", str(root)]) == 2
    err = one_error_line(capsys, "compare")
    assert f"another `sparsetrain compare` is running on {root}" in err
    assert not (root / "rigl-s0.8-seed0").exists()
