"""benchmarks/dst_update_effects.py on a hand-written run folder."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import dst_update_effects


def _write_run(run: Path) -> None:
    run.mkdir()
    (run / "summary.json").write_text(
        json.dumps({"method": "dst-x", "sparsity": {"target": 0.9, "nnz": 100}})
    )
    # update at step 20: 10 grown, 4 of them fresh (churn 4/100) -> 60% in place
    (run / "topology.csv").write_text("step,drop_fraction,pruned,grown,churn\n20,0.1,10,10,0.04\n")
    # logged every 10 steps: loss 1.0 before the update, 1.5 after it
    rows = "".join(f"{s},1,0.1,{1.0 if s <= 20 else 1.5},0.5,0.9,0.9\n" for s in (10, 20, 30, 40))
    (run / "steps.csv").write_text("step,epoch,lr,loss,acc,sparsity,planned_sparsity\n" + rows)
    (run / "metrics.csv").write_text("epoch,step,train_acc\n1,40,0.75\n")


def test_in_place_share_loss_jump_and_train_acc(tmp_path: Path, capsys) -> None:
    _write_run(tmp_path / "dst-x-s0.9-seed0")
    in_place, jumps, acc = dst_update_effects.run_effects(tmp_path / "dst-x-s0.9-seed0", 20)
    assert in_place == pytest.approx(0.6)
    assert jumps == [pytest.approx(0.5)]  # steps 30, 40 (after) minus step 10 (before)
    assert acc == 0.75
    assert dst_update_effects.main([str(tmp_path), "--window", "20"]) == 0
    assert "| dst-x | 0.9 | 1 | 0.600 | +0.500 | 0.750 |" in capsys.readouterr().out
