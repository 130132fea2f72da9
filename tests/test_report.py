"""``sparsetrain report`` on hand-made run directories: pooling, n=1, gaps, paired intervals."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from sparsetrain.cli import main
from sparsetrain.train.aggregate import aggregate, find_runs
from sparsetrain.train.reporting import build_report
from sparsetrain.train.stats import _t_quantile_exact, paired_interval, t_quantile

BASE: dict[str, Any] = {
    "data": {"name": "mnist1d", "data_dir": None, "val_fraction": 0.1},
    "model": {"name": "mlp", "hidden_sizes": [16]},
    "method": {"name": "rigl", "sparsity": 0.9},
    "optim": {"name": "sgd", "lr": 0.1},
    "train": {"epochs": 6, "seed": 0, "device": "cpu", "plots": True, "label": None},
}


def make_run(
    root: Path,
    name: str,
    acc: float,
    *,
    seed: int = 0,
    method: dict[str, Any] | None = None,
    label: str | None = None,
    actual: float | None = None,
    **sections: dict[str, Any],
) -> Path:
    """A finished run directory with a summary.json as the harness writes it (the fields read)."""
    cfg = json.loads(json.dumps(BASE))
    if method is not None:
        cfg["method"] = method
    for section, values in sections.items():
        cfg[section].update(values)
    cfg["train"]["seed"] = seed
    cfg["train"]["label"] = label
    sparsity = float(cfg["method"].get("sparsity", 0.0))
    d = root / name
    d.mkdir(parents=True)
    summary = {
        "status": "finished",
        "method": label or cfg["method"]["name"],
        "model": cfg["model"]["name"],
        "dataset": cfg["data"]["name"],
        "seed": seed,
        "headline": {"select": "best_val", "epoch": 2, "test_acc": acc, "test_loss": 2 - acc},
        "final": {"epoch": 3, "test_acc": acc - 0.01, "test_loss": 2.01 - acc},
        "best_val": {"epoch": 2, "test_acc": acc, "test_loss": 2 - acc},
        "sparsity": {
            "requested": sparsity,
            "actual": sparsity if actual is None else actual,
            "target_met": True,
        },
        "flops": {"ratio": 1.0 - sparsity},
        "config": cfg,
    }
    (d / "summary.json").write_text(json.dumps(summary))
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    return d


def rows_by_label(root: Path) -> dict[str, dict[str, Any]]:
    summaries, _ = find_runs([root])
    return {r["label"]: r for r in aggregate(summaries)}


def test_runs_differing_in_more_than_the_seed_are_separate_labelled_rows(tmp_path: Path) -> None:
    make_run(tmp_path, "a0", 0.80, seed=0)
    make_run(tmp_path, "a1", 0.84, seed=1)
    make_run(tmp_path, "b2", 0.50, seed=2, train={"epochs": 3})
    make_run(tmp_path, "c3", 0.40, seed=3, train={"epochs": 1}, data={"train_size": 100})
    rows = rows_by_label(tmp_path)
    assert set(rows) == {
        "rigl 0.9 [data.train_size=null, train.epochs=6]",
        "rigl 0.9 [data.train_size=null, train.epochs=3]",
        "rigl 0.9 [data.train_size=100, train.epochs=1]",
    }
    six = rows["rigl 0.9 [data.train_size=null, train.epochs=6]"]
    assert six["n"] == 2 and six["seeds"] == [0, 1]
    assert six["acc_mean"] == pytest.approx(0.82)
    assert six["acc_std"] == pytest.approx(0.04 / math.sqrt(2))
    assert six["variant"] == {"data.train_size": "null", "train.epochs": "6"}


def test_seed_and_keys_that_change_no_number_pool_into_one_row(tmp_path: Path) -> None:
    make_run(tmp_path, "s0", 0.80, seed=0)
    make_run(tmp_path, "s1", 0.82, seed=1, data={"data_dir": "/elsewhere"})
    make_run(tmp_path, "s2", 0.84, seed=2, train={"plots": False, "device": "cuda"})
    rows = rows_by_label(tmp_path)
    assert list(rows) == ["rigl 0.9"]
    assert rows["rigl 0.9"]["n"] == 3 and rows["rigl 0.9"]["acc_mean"] == pytest.approx(0.82)


def test_sparse_and_dense_execution_of_one_seed_are_two_rows_of_n1(tmp_path: Path) -> None:
    make_run(tmp_path, "dense-exec", 0.80, method={"name": "rigl", "sparsity": 0.9})
    sparse = {"name": "rigl", "sparsity": 0.9, "execution": "sparse"}
    make_run(tmp_path, "sparse-exec", 0.80, method=sparse)
    rows = rows_by_label(tmp_path)
    assert sorted(rows) == [
        "rigl 0.9 [method.execution=dense]",
        "rigl 0.9 [method.execution=sparse]",
    ]
    assert all(r["n"] == 1 and r["acc_std"] is None for r in rows.values())
    text, _ = build_report([tmp_path])
    assert "± 0.00" not in text
    assert "| rigl [method.execution=sparse] | 0.9 | 1 | 0 | 80.00 (n=1) | 79.00 (n=1) |" in text
    assert "80.00 (n=1) <sub>" in text  # the pivot too


def test_a_method_option_tied_to_the_sparsity_does_not_split_a_method(tmp_path: Path) -> None:
    """STR tuned per target: its threshold decay changes with the sparsity it is reported at."""
    for s, wd in ((0.9, 2.0), (0.95, 5.0)):
        for seed in (0, 1):
            make_run(
                tmp_path,
                f"str-{s}-{seed}",
                0.5,
                seed=seed,
                method={"name": "str", "threshold_weight_decay": wd, "sparsity": s},
            )
    assert sorted(rows_by_label(tmp_path)) == ["str 0.9", "str 0.95"]


def test_settings_outside_the_method_split_a_method_across_sparsities(tmp_path: Path) -> None:
    make_run(tmp_path, "r9", 0.8)
    make_run(tmp_path, "r95", 0.7, method={"name": "rigl", "sparsity": 0.95}, train={"epochs": 3})
    rows = rows_by_label(tmp_path)
    assert sorted(rows) == ["rigl 0.9 [train.epochs=6]", "rigl 0.95 [train.epochs=3]"]
    text, _ = build_report([tmp_path])
    assert "Settings outside `method.*` that differ between rows: `train.epochs`" in text
    assert "| rigl [train.epochs=6] | 80.00 (n=1) <sub>" in text  # its own pivot row


def test_unfinished_runs_and_missing_seeds_are_listed(tmp_path: Path) -> None:
    for seed in (0, 1):
        make_run(tmp_path, f"dense-{seed}", 0.9, seed=seed, method={"name": "dense"})
    make_run(tmp_path, "rigl-0", 0.8, seed=0)
    stopped = tmp_path / "rigl-1"
    stopped.mkdir()
    cfg = json.loads(json.dumps(BASE))
    (stopped / "config.yaml").write_text(yaml.safe_dump(cfg))
    (stopped / "train.log").write_text("")
    (stopped / "checkpoint.pt").write_bytes(b"")
    (stopped / "metrics.csv").write_text("epoch,test_acc\n1,0.5\n2,0.6\n")
    never = tmp_path / "rigl-2"
    never.mkdir()
    (never / "config.yaml").write_text(yaml.safe_dump(cfg))
    (never / "train.log").write_text("")
    (tmp_path / "my-config-folder").mkdir()
    (tmp_path / "my-config-folder" / "config.yaml").write_text("not a run\n")

    text, data = build_report([tmp_path])
    assert "3 finished runs in 2 rows, 2 unfinished (listed below)" in text
    assert f"- {stopped}: 2 of 6 epochs done, no summary.json (resume: sparsetrain train " in text
    assert f"- {never}: 0 of 6 epochs done, no summary.json (no checkpoint to resume from)" in text
    assert "- rigl 0.9: no seed 1" in text
    assert "my-config-folder" not in text
    assert [u["path"] for u in data["unfinished"]] == [str(stopped), str(never)]


def test_paired_differences_with_a_t_interval_computed_by_hand(tmp_path: Path) -> None:
    for seed, (dense, rigl) in enumerate([(0.90, 0.80), (0.92, 0.85), (0.91, 0.81)]):
        make_run(tmp_path, f"dense-{seed}", dense, seed=seed, method={"name": "dense"})
        make_run(tmp_path, f"rigl-{seed}", rigl, seed=seed)
    make_run(tmp_path, "rigl-7", 0.99, seed=7)  # no dense run of seed 7: not paired

    text, data = build_report([tmp_path])
    (pair,) = data["paired"]
    # differences -0.10, -0.07, -0.10: mean -0.09, sample std sqrt(0.0003); t(0.975, 2 dof) =
    # 0.95 / sqrt(2 * 0.975 * 0.025) = 4.3026527...; half width t * std / sqrt(3) = t * 0.01
    t2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)
    assert pair["label"] == "rigl 0.9" and pair["baseline"] == "dense"
    assert pair["seeds"] == [0, 1, 2] and pair["n"] == 3
    assert pair["mean"] == pytest.approx(-0.09)
    assert pair["std"] == pytest.approx(math.sqrt(0.0003))
    assert pair["low"] == pytest.approx(-0.09 - 0.01 * t2)
    assert pair["high"] == pytest.approx(-0.09 + 0.01 * t2)
    assert "| rigl 0.9 | dense | 3 | 0,1,2 | -9.00 | [-13.30, -4.70] |" in text


def test_a_loss_metric_is_tabulated_in_nats_lower_is_better(tmp_path: Path) -> None:
    for seed, (dense, rigl) in enumerate([(0.90, 0.80), (0.92, 0.85)]):  # loss = 2 - acc
        make_run(tmp_path, f"dense-{seed}", dense, seed=seed, method={"name": "dense"})
        make_run(tmp_path, f"rigl-{seed}", rigl, seed=seed)
    text, data = build_report([tmp_path], metric="test_loss")
    assert data["metric"] == "test_loss"
    assert "| test loss (nats) | final test loss (nats) |" in text
    assert "| rigl | 0.9 | 2 | 0,1 | 1.1750 ± 0.0354 | 1.1850 ± 0.0354 |" in text
    (pair,) = data["paired"]
    assert pair["mean"] == pytest.approx(0.085)  # losses 1.20, 1.15 minus 1.10, 1.08
    assert "| +0.0850 |" in text and "(lower is better)" in text
    with pytest.raises(ValueError, match="unknown metric 'loss'; valid: test_acc, test_loss"):
        build_report([tmp_path], metric="loss")


def test_one_pair_has_no_interval() -> None:
    one = paired_interval([0.05])
    assert one["n"] == 1 and one["mean"] == 0.05 and one["low"] is None and one["high"] is None


def test_baseline_series_compares_at_equal_sparsity(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for s, (static, rigl) in {0.9: (0.70, 0.75), 0.95: (0.60, 0.58)}.items():
        make_run(tmp_path, f"static-{s}", static, method={"name": "static", "sparsity": s})
        make_run(tmp_path, f"rigl-{s}", rigl, method={"name": "rigl", "sparsity": s})
    assert main(["report", str(tmp_path), "--baseline", "static"]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Paired differences vs static" in text
    assert "| rigl 0.9 | static 0.9 | 1 | 0 | +5.00 | n=1 |" in text
    assert "| rigl 0.95 | static 0.95 | 1 | 0 | -2.00 | n=1 |" in text

    assert main(["report", str(tmp_path), "--baseline", "rigl 0.9"]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| static 0.95 | rigl 0.9 | 1 | 0 | -15.00 | n=1 |" in text

    capsys.readouterr()
    assert main(["report", str(tmp_path), "--baseline", "gmp"]) == 2
    err = capsys.readouterr().err
    assert "unknown baseline 'gmp'; valid: rigl, static, rigl 0.9" in err
    assert len(err.strip().splitlines()) == 1


def test_t_quantile_matches_closed_forms_and_scipy() -> None:
    for p in (0.6, 0.9, 0.975, 0.995):
        assert _t_quantile_exact(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)
        two = (2 * p - 1) / math.sqrt(2 * p * (1 - p))
        assert _t_quantile_exact(p, 2) == pytest.approx(two, rel=1e-9)
        assert t_quantile(p, 2) == pytest.approx(two, rel=1e-9)
        assert _t_quantile_exact(1 - p, 3) == pytest.approx(-_t_quantile_exact(p, 3))
    stats = pytest.importorskip("scipy.stats")
    for df in (*range(1, 31), 57, 120):
        assert _t_quantile_exact(0.975, df) == pytest.approx(stats.t.ppf(0.975, df), rel=1e-9)
    with pytest.raises(ValueError, match="df >= 1"):
        t_quantile(0.975, 0)


def test_report_writes_beside_the_runs_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = tmp_path / "runs"
    make_run(runs, "a", 0.8)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["report", str(runs)]) == 0
    assert (runs / "report" / "report.md").is_file()
    assert (runs / "report" / "report.json").is_file()
    assert list(elsewhere.iterdir()) == []
    assert main(["report", str(runs)]) == 0  # again: the report folder is not a run


def test_report_never_overwrites_a_file_it_did_not_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_run(tmp_path / "runs", "a", 0.8)
    out = tmp_path / "notes"
    out.mkdir()
    (out / "report.md").write_text("my own notes\n")
    assert main(["report", str(tmp_path / "runs"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "report.md exists and was not written by sparsetrain report" in err
    assert "--overwrite" in err
    assert (out / "report.md").read_text() == "my own notes\n"
    assert not (out / "report.json").exists()

    assert main(["report", str(tmp_path / "runs"), "--out", str(out), "--overwrite"]) == 0
    assert (out / "report.md").read_text().startswith("# sparsetrain report\n")
    assert main(["report", str(tmp_path / "runs"), "--out", str(out)]) == 0  # ours: replaced

    (out / "report.json").write_text('{"mine": true}')
    assert main(["report", str(tmp_path / "runs"), "--out", str(out)]) == 2
    assert (out / "report.json").read_text() == '{"mine": true}'


def test_a_config_saved_before_an_option_existed_pools_with_its_default(tmp_path: Path) -> None:
    make_run(tmp_path, "old", 0.80, seed=0)  # no method.rank_check: saved before it existed
    method = {"name": "rigl", "sparsity": 0.9, "rank_check": True}  # its default, written out
    make_run(tmp_path, "new", 0.84, seed=1, method=method)
    rows = rows_by_label(tmp_path)
    assert list(rows) == ["rigl 0.9"] and rows["rigl 0.9"]["n"] == 2
