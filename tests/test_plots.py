"""Run and report plots from hand-made CSV files: titles, units, markers, distinct series."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("matplotlib")

from sparsetrain.train.plots import (
    accuracy_figure,
    curves_figure,
    plot_run,
    run_title,
    series_style,
    steps_figure,
)

CONFIG: dict[str, Any] = {
    "data": {"name": "mnist1d"},
    "model": {"name": "mlp"},
    "method": {"name": "rigl", "sparsity": 0.9},
    "train": {"label": None, "report_sparsity": None},
}
EPOCHS = (
    "epoch,step,lr,train_loss,train_acc,val_loss,val_acc,test_loss,test_acc,sparsity,time\n"
    "1,10,0.1,2.0,0.30,1.9,0.35,1.95,0.33,0.9,1.0\n"
    "2,20,0.1,1.5,0.50,1.4,0.55,1.45,0.52,0.9,2.0\n"
    "3,30,0.1,1.2,0.60,1.6,0.50,1.50,0.51,0.9,3.0\n"
)


def make_run_dir(tmp_path: Path, topology: str) -> Path:
    d = tmp_path / "run"
    d.mkdir()
    (d / "metrics.csv").write_text(EPOCHS)
    (d / "steps.csv").write_text(
        "step,epoch,lr,loss,acc,sparsity,planned_sparsity\n"
        + "".join(f"{s},1,0.1,1.0,0.5,0.9,0.9\n" for s in range(5, 31, 5))
    )
    (d / "topology.csv").write_text(topology)
    (d / "sparsity.csv").write_text(
        "name,shape,numel,nnz,target_sparsity,sparsity\n"
        "fc1.weight,4x4,16,2,0.875,0.875\nglobal,,16,2,0.875,0.875\n"
    )
    summary = {"headline": {"select": "best_val", "epoch": 2}, "config": CONFIG}
    (d / "summary.json").write_text(json.dumps(summary))
    return d


def test_run_plots_of_a_dst_run_include_churn(tmp_path: Path) -> None:
    topology = "step,drop_fraction,pruned,grown,churn\n10,0.3,5,5,0.25\n20,0.1,2,2,0.1\n"
    d = make_run_dir(tmp_path, topology)
    assert plot_run(d) is None
    for name in ("sparsity_layers.png", "sparsity_steps.png", "accuracy.png", "churn.png"):
        assert (d / "plots" / name).stat().st_size > 1000, name


def test_run_plots_without_churn_have_no_churn_plot(tmp_path: Path) -> None:
    d = make_run_dir(tmp_path, "step,sparsity,pruned\n10,0.5,8\n20,0.9,6\n")
    assert plot_run(d) is None
    assert (d / "plots" / "accuracy.png").is_file()
    assert not (d / "plots" / "churn.png").exists()


def test_curves_show_loss_and_percent_accuracy_with_the_headline_epoch(tmp_path: Path) -> None:
    d = make_run_dir(tmp_path, "step\n")
    from sparsetrain.train.metrics import read_csv

    fig = curves_figure(read_csv(d / "metrics.csv"), run_title(CONFIG), 2, "best_val")
    title = fig._suptitle.get_text()
    assert title.startswith("rigl, sparsity 0.9, mlp on mnist1d")
    loss_ax, acc_ax = fig.axes
    assert loss_ax.get_ylabel() == "cross-entropy loss" and acc_ax.get_ylabel() == "accuracy (%)"
    test = next(line for line in acc_ax.lines if line.get_label() == "test")
    assert list(test.get_ydata()) == pytest.approx([33.0, 52.0, 51.0])
    star = next(line for line in acc_ax.lines if line.get_label() == "headline")
    assert list(star.get_xdata()) == [2] and list(star.get_ydata()) == pytest.approx([52.0])
    for ax in (loss_ax, acc_ax):
        marks = [ln for ln in ax.lines if ln.get_label().startswith("headline epoch 2")]
        assert len(marks) == 1 and list(marks[0].get_xdata()) == [2, 2]


def test_steps_plot_marks_every_topology_update(tmp_path: Path) -> None:
    d = make_run_dir(tmp_path, "step,churn\n10,0.2\n20,0.1\n")
    from sparsetrain.train.metrics import read_csv

    fig = steps_figure(read_csv(d / "steps.csv"), read_csv(d / "topology.csv"), "t")
    (rug,) = [c for c in fig.axes[0].collections if c.get_label() == "topology update"]
    assert sorted(seg[0][0] for seg in rug.get_segments()) == [10.0, 20.0]


def test_titles_name_method_sparsity_model_and_data() -> None:
    assert run_title({"config": CONFIG}) == "rigl, sparsity 0.9, mlp on mnist1d"
    str_cfg = {
        **CONFIG,
        "method": {"name": "str"},
        "train": {"label": "str-t", "report_sparsity": 0.95},
    }
    assert run_title(str_cfg) == "str-t, sparsity 0.95, mlp on mnist1d"
    assert (
        run_title({**CONFIG, "method": {"name": "scl"}}) == "scl, emergent sparsity, mlp on mnist1d"
    )
    assert run_title({**CONFIG, "method": {"name": "dense"}}) == "dense, no pruning, mlp on mnist1d"


def test_series_styles_are_distinct_for_many_series() -> None:
    styles = [series_style(i)[:2] for i in range(70)]
    assert len(set(styles)) == 70  # colour x marker


def test_accuracy_figure_draws_14_distinguishable_series_in_percent() -> None:
    rows = [
        {
            "series": f"m{i}",
            "method": f"m{i}",
            "sparsity": s,
            "actual_sparsity": s,
            "acc_mean": 0.5 + 0.01 * i,
            "acc_std": None if i % 2 else 0.01,
            "model": "mlp",
            "dataset": "mnist1d",
        }
        for i in range(14)
        for s in (0.9, 0.95)
    ]
    fig = accuracy_figure(rows)
    ax = fig.axes[0]
    series = {c.get_label(): c.lines[0] for c in ax.containers}  # errorbar: (data line, ...)
    assert sorted(series) == sorted(f"m{i}" for i in range(14))
    assert len({(ln.get_color(), ln.get_marker()) for ln in series.values()}) == 14
    m3 = series["m3"]
    assert list(m3.get_ydata()) == pytest.approx([53.0, 53.0])  # percent
    assert ax.get_ylabel() == "test accuracy (%)"
    assert "mlp on mnist1d" in fig._suptitle.get_text()
