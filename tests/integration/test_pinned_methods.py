"""Pinned 8-step CLI losses of ST-3, OptG and SCL (the RigL pin is in ``test_cli.py``).

Same run as the RigL pin: ``synthetic`` data (58 train examples, 4 batches of 16), a 64-16-4
MLP, SGD lr 0.1 with a cosine schedule, 2 epochs = 8 optimizer steps, each method with options
that make it act within those steps. The numbers were measured on the torch version in
``PINNED_TORCH`` (CPU) and hold to rtol 1e-5 there. When a change moves them on purpose, update
the pins in the same change and say why next to them.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from sparsetrain.cli import main

pytestmark = pytest.mark.integration

PINNED_TORCH = "2.13.0"

CONFIG: dict[str, Any] = {
    "data": {"name": "synthetic", "n_train": 64, "n_test": 32},
    "model": {"name": "mlp", "hidden_sizes": [16]},
    "optim": {"name": "sgd", "lr": 0.1, "schedule": "cosine"},
    "train": {"epochs": 2, "batch_size": 16, "log_every": 1, "plots": False},
}

# method section -> (losses of steps 1..8, final sparsity per tensor and global)
PINS: dict[str, tuple[dict[str, Any], list[float], dict[str, float]]] = {
    "st3": (
        # dense until step 1, cubic ramp to 0.8 by step 5, baked and frozen after step 7
        {"name": "st3", "sparsity": 0.8, "begin_step": 1, "end_step": 5, "freeze_step": 7},
        [
            1.2994807958602905,
            1.1186723709106445,
            1.1740920543670654,
            1.0619771480560303,
            1.063268780708313,
            0.9287502765655518,
            0.6976988911628723,
            0.8211696743965149,
        ],
        {"fc1.weight": 0.826172, "fc2.weight": 0.375, "global": 0.799632},
    ),
    "optg": (
        # sigmoid ramp over epoch 1 (4 steps per epoch), epoch 2 at the target
        {"name": "optg", "sparsity": 0.8},
        [
            1.306780219078064,
            1.163495421409607,
            1.0203660726547241,
            0.7516158819198608,
            0.7122671008110046,
            0.6185179948806763,
            0.42539986968040466,
            0.5238996744155884,
        ],
        {"fc1.weight": 0.813477, "fc2.weight": 0.578125, "global": 0.799632},
    ),
    "scl": (
        # a fixed penalty strong enough (with a fast mask LR) to prune within 8 steps
        {"name": "scl", "lam": 0.5, "mask_lr": 1.0},
        [
            1.2994807958602905,
            0.9083241820335388,
            0.7799960374832153,
            0.5483089685440063,
            0.4517227113246918,
            0.3947722315788269,
            0.2536144256591797,
            0.30393117666244507,
        ],
        {"fc1.weight": 0.770508, "fc2.weight": 0.640625, "global": 0.762868},
    ),
}


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("key", sorted(PINS))
def test_pinned_losses_and_sparsity(key: str, tmp_path: Path) -> None:
    method, losses, sparsity = PINS[key]
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "method": method}))
    run = tmp_path / "run"
    assert main(["train", str(config), "--out", str(run), "--quiet"]) == 0
    where = f"pinned on torch {PINNED_TORCH}, running {torch.__version__}"
    got = [float(r["loss"]) for r in _rows(run / "steps.csv")]
    assert got == pytest.approx(losses, rel=1e-5), where
    got_sparsity = {r["name"]: float(r["sparsity"]) for r in _rows(run / "sparsity.csv")}
    assert got_sparsity == pytest.approx(sparsity, rel=1e-5), where
