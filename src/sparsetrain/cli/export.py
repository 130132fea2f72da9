"""``sparsetrain export RUN_DIR --format {compressed,dense,sparse-inference} [--checkpoint ...]``.

Rebuilds the run's model from ``config.yaml`` and ``checkpoint.pt`` (as ``--resume`` does,
dense or sparse execution alike), loads the chosen weights, squashes it to plain
``nn.Linear``/``nn.Conv`` layers with the original parameter names and zeros at pruned
positions, and writes:

- ``compressed``: a :func:`sparsetrain.export.save_compressed` safetensors file (default
  ``RUN_DIR/model.compressed.safetensors``); load it with ``load_compressed``.
- ``dense``: a plain ``state_dict`` saved with ``torch.save`` (default ``RUN_DIR/model.dense.pt``).
- ``sparse-inference``: Linear layers measured faster on CSR at ``--batch-size`` become
  ``SparseInferenceLinear``; the per-layer decision table is printed and the model is written
  as a compressed file (default ``RUN_DIR/model.sparse.safetensors``).

``--checkpoint best`` exports the best-validation model (``best_model.pt``), ``last`` the
last checkpoint; the default is the model behind ``summary.json``'s headline accuracy (best
for ``train.select: best_val``, else last). A run without ``summary.json`` is unfinished: its
last checkpoint is exported by default, with a warning. Every file is written atomically
(temp file + rename).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from sparsetrain._io import atomic_path
from sparsetrain.cli._common import USER_ERRORS, fail
from sparsetrain.export import format_decisions, save_compressed, squash, to_sparse_inference
from sparsetrain.train.checkpoint import CheckpointError
from sparsetrain.train.experiment import load_run, record_export

FORMATS = ("compressed", "dense", "sparse-inference")
DEFAULT_NAMES = {
    "compressed": "model.compressed.safetensors",
    "dense": "model.dense.pt",
    "sparse-inference": "model.sparse.safetensors",
}


def add_parser(sub: Any) -> None:
    """Register the ``export`` subcommand."""
    p = sub.add_parser(
        "export",
        help="squash a run's model and write it compressed, dense or for sparse inference",
        description="Rebuild the model of RUN_DIR from its config and checkpoint.pt, load the "
        "chosen weights (default: the model behind the headline accuracy), squash it (plain "
        "layers, original names) and write it in the chosen format.",
    )
    p.add_argument("run_dir", help="a run directory written by `sparsetrain train`")
    p.add_argument("--format", required=True, choices=FORMATS, help="output format")
    p.add_argument("--out", help="output file (default: a file in RUN_DIR named by the format)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="serving batch size to measure at (sparse-inference only; default 1)",
    )
    p.add_argument(
        "--checkpoint",
        choices=("best", "last"),
        help="best: the best-validation model (best_model.pt); last: the last checkpoint "
        "(checkpoint.pt); default: the model behind summary.json's headline accuracy",
    )
    p.add_argument("--data-dir", help="dataset folder (overrides data.data_dir)")
    p.set_defaults(func=run)


def _atomic_torch_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _read_summary(run_dir: Path) -> dict[str, Any] | None:
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def headline_checkpoint(summary: dict[str, Any] | None) -> str:
    """``best`` when the run's headline is its best-validation epoch, else ``last``."""
    if summary is None:
        return "last"
    head = summary.get("headline") or {}
    return "best" if head.get("select") == "best_val" and summary.get("best_val") else "last"


def run(args: argparse.Namespace) -> int:
    """Rebuild, load the chosen weights, squash and write; prints what was written."""
    run_dir = Path(args.run_dir)
    out = Path(args.out) if args.out else run_dir / DEFAULT_NAMES[args.format]
    try:
        if not run_dir.is_dir():
            raise ValueError(f"run directory {run_dir} does not exist")
        if out.exists() and not args.overwrite:
            raise ValueError(f"output file {out} exists; pass --overwrite to replace it")
        if out.exists() and not out.is_file():
            raise ValueError(f"output path {out} exists and is not a file")
        if not out.parent.is_dir():
            raise ValueError(f"output folder {out.parent} does not exist")
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
        summary = _read_summary(run_dir)
        which = args.checkpoint or headline_checkpoint(summary)
        loaded = load_run(run_dir, args.data_dir, checkpoint=which)
        st = loaded.state
        if which == "best":
            what = f"best-validation model, epoch {st.best['epoch']}"  # type: ignore[index]
        else:
            what = f"last checkpoint, step {st.step} of {loaded.total_steps}"
        if summary is None:
            print(
                f"warning: {run_dir} is unfinished (no summary.json): exporting its {what}; "
                "finish it with `sparsetrain train CONFIG --out RUN_DIR --resume`",
                file=sys.stderr,
            )
        model = squash(loaded.method)
        model.eval()
        if args.format == "dense":
            _atomic_torch_save(model.state_dict(), out)
        elif args.format == "compressed":
            save_compressed(model, out)
        else:
            decisions = to_sparse_inference(model, batch_size=args.batch_size)
            print(format_decisions(decisions))
            save_compressed(model, out)
    except (*USER_ERRORS, CheckpointError) as exc:
        return fail(exc, "export")
    record_export(run_dir, out)  # `train --overwrite` deletes it with the run
    print(f"wrote {out} ({args.format}; {what})")
    return 0
