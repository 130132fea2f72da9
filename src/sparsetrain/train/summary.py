"""What a finished run reports: ``summary.json``, the ``metrics.csv`` columns, versions."""

from __future__ import annotations

import copy
import dataclasses
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparsetrain._version import __version__
from sparsetrain.sparse import SparseLinear, to_dense_linear
from sparsetrain.train.loop import Run

EPOCH_FIELDS = (
    "epoch",
    "step",
    "lr",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "test_loss",
    "test_acc",
    "sparsity",
    "time",
)


def _source_commit() -> str | None:
    """``git describe --always --dirty`` of the sparsetrain source tree, if it is a checkout."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


_COMMIT = _source_commit()  # once per process: the code this process imported


def versions() -> dict[str, str | None]:
    """Versions of Python, torch, NumPy and sparsetrain (and its git commit, in a checkout)."""
    return {
        "sparsetrain": __version__,
        "sparsetrain_commit": _COMMIT,
        "torch": str(torch.__version__),
        "numpy": str(np.__version__),
        "python": platform.python_version(),
    }


def flops_view(model: torch.nn.Module) -> torch.nn.Module:
    """``model``, or a copy with its sparse layers as ``nn.Linear`` (for FLOP counting)."""
    if not any(isinstance(m, SparseLinear) for m in model.modules()):
        return model
    view = copy.deepcopy(model)
    for module in list(view.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, SparseLinear):
                setattr(module, name, to_dense_linear(child))
    return view


def data_files(run: Run) -> list[dict[str, Any]]:
    """The dataset files the run read: path, size in bytes and SHA-256, as plain dicts."""
    return [dataclasses.asdict(f) for f in getattr(run.splits, "files", ())]


def make_summary(
    run: Run, report: Any, flops: dict[str, Any], missed: str | None
) -> dict[str, Any]:
    """The ``summary.json`` dict."""
    st, cfg = run.state, run.cfg
    final = st.history[-1]
    best = st.best
    head = best if cfg.train.select == "best_val" and best is not None else final
    pick = tuple(f for f in EPOCH_FIELDS if f not in ("lr", "sparsity", "time"))
    return {
        "status": "target_missed" if missed else "finished",
        "method": cfg.train.label or cfg.method.name,
        "method_name": cfg.method.name,
        "model": cfg.model.name,
        "dataset": cfg.data.name,
        "seed": cfg.train.seed,
        "epochs": cfg.train.epochs,
        "steps": st.step,
        "headline": {"select": cfg.train.select, **{k: head[k] for k in pick}},
        "final": {k: final[k] for k in pick},
        "best_val": None if best is None else {k: best[k] for k in pick},
        "sparsity": {
            "target": report.target_sparsity,
            "requested": (
                run.method.sparsity
                if cfg.train.report_sparsity is None
                else cfg.train.report_sparsity
            ),
            "actual": report.sparsity,
            "nnz": report.nnz,
            "numel": report.numel,
            "mask_bytes": report.mask_bytes,
            "target_met": missed is None,
            "missed": missed,
            "layers_at_density_0": [t.name for t in run.method.targets if t.nnz == 0],
        },
        "layers": report.to_rows(),
        "flops": {k: flops[k] for k in ("dense", "sparse", "ratio")},
        "flops_layers": flops["layers"],
        "topology_updates": len(run.method.history),
        "wall_time_s": st.elapsed,
        "versions": versions(),
        "config": cfg.to_dict(),
        "data_files": data_files(run),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
