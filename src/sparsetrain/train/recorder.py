"""The run directory as training goes: checkpoints, CSV tables, progress, report and summary.

:class:`Experiment` is the loop's recorder (``on_step``, ``on_epoch``, ``on_interrupt``) and runs
the end of training: ``method.finish()``, ``sparsity.csv``/``.json``, FLOPs, plots, and
``summary.json`` last. See :mod:`sparsetrain.train.experiment` for the directory layout.
"""

from __future__ import annotations

import copy
import dataclasses
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sparsetrain._names import plural
from sparsetrain.report import SparsityTargetError
from sparsetrain.train.checkpoint import (
    CheckpointError,
    rng_to_plain,
    save_checkpoint,
    set_rng_state,
)
from sparsetrain.train.ddp import rank_and_world, rank_states
from sparsetrain.train.loop import Run, TrainState, mask_sparsity, train
from sparsetrain.train.metrics import (
    CsvAppender,
    TensorBoardSink,
    count_flops,
    write_csv,
    write_json,
    write_text,
)

HARNESS_FILES = (
    "config.yaml",
    "train.log",
    "steps.csv",
    "metrics.csv",
    "topology.csv",
    "checkpoint.pt",
    "best_model.pt",
    "sparsity.csv",
    "sparsity.json",
    "summary.json",
)
HARNESS_DIRS = ("plots", "tensorboard")
STEP_FIELDS = ("step", "epoch", "lr", "loss", "acc", "sparsity", "planned_sparsity")
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


@dataclass(frozen=True)
class RunOptions:
    """How to run (not what to run: that is the config).

    Attributes:
        resume: Continue from ``checkpoint.pt`` in the run directory (a finished run is left
            as is; an empty directory starts fresh).
        overwrite: Start over in a non-empty run directory, deleting the previous run's files
            (only the files the harness writes, and those ``sparsetrain export`` wrote there as
            listed in ``exports.txt``; anything else stays).
        quiet: No progress bar and no per-epoch lines on stdout (``train.log`` has them).
        tensorboard: Also log scalars to ``<run>/tensorboard`` (skipped if not installed).
        data_dir: Dataset folder; overrides ``data.data_dir``.
        progress: Show the progress bar: None shows it when stderr is a terminal.
    """

    resume: bool = False
    overwrite: bool = False
    quiet: bool = False
    tensorboard: bool = False
    data_dir: str | None = None
    progress: bool | None = None


@dataclass(frozen=True)
class RunResult:
    """What a run ended with.

    Attributes:
        status: ``finished``, ``target_missed``, ``interrupted`` or ``already_finished``.
        run_dir: The run directory.
        summary: The contents of ``summary.json`` (None when interrupted).
        exit_code: 0, 1 for a missed sparsity target, or 128 + signal number.
        message: One line describing the outcome.
    """

    status: str
    run_dir: Path
    summary: dict[str, Any] | None
    exit_code: int
    message: str


# --------------------------------------------------------------------------- checkpoint <-> run


def checkpoint_dict(run: Run) -> dict[str, Any]:
    """The one-dict checkpoint of ``run`` as of its last completed step."""
    st = run.state
    return {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "method": run.method.state_dict(),
        "lr_schedule": {
            "schedule": run.cfg.optim.schedule,
            "unit": run.cfg.optim.schedule_unit,
            "base_lrs": list(run.base_lrs),
        },
        "step": st.step,
        "epoch": st.epoch,
        "batch": st.batch,
        "steps_per_epoch": run.steps_per_epoch,
        "data_order": {"perm": st.perm, "generator": st.data_rng},
        "sums": list(st.sums),
        "rng": rng_to_plain(st.rng),
        "history": list(st.history),
        "best": st.best,
        "elapsed": st.elapsed,
        "config": run.cfg.to_dict(),
        "data_files": data_files(run),
        "versions": versions(),
        **rank_states(run),  # under torchrun: world size and every rank's random streams
    }


def data_files(run: Run) -> list[dict[str, Any]]:
    """The dataset files the run read: path, size in bytes and SHA-256, as plain dicts."""
    return [dataclasses.asdict(f) for f in getattr(run.splits, "files", ())]


def check_same_data(run: Run, ckpt: dict[str, Any]) -> None:
    """Refuse a checkpoint whose run read other data files (compared by content, not path)."""
    saved = ckpt.get("data_files")
    if saved is None:  # a checkpoint from before files were recorded
        return
    now = data_files(run)
    for was, new in zip(saved, now, strict=False):
        if was["sha256"] != new["sha256"]:
            raise CheckpointError(
                f"the data file {new['path']} (sha256 {new['sha256'][:12]}...) differs from the "
                f"one the checkpoint's run read ({was['path']}, sha256 {was['sha256'][:12]}...); "
                "resume on the data the run was trained on (--data-dir)"
            )
    if len(saved) != len(now):
        raise CheckpointError(
            f"the checkpoint's run read {len(saved)} data files, this one {len(now)}"
        )


def restore(run: Run, ckpt: dict[str, Any]) -> None:
    """Load a checkpoint into freshly built objects (model, optimizer, method, RNGs, state)."""
    check_same_data(run, ckpt)
    if ckpt.get("steps_per_epoch") != run.steps_per_epoch:
        raise CheckpointError(
            f"checkpoint has {ckpt.get('steps_per_epoch')} steps per epoch, the data now gives "
            f"{run.steps_per_epoch}: was the dataset changed?"
        )
    try:
        run.method.adopt_execution(ckpt["method"])  # execution="auto": the checkpoint's choices
        run.model.load_state_dict(ckpt["model"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.method.load_state_dict(ckpt["method"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint does not match the model: {exc}") from None
    order = ckpt["data_order"]
    run.state = TrainState(
        step=ckpt["step"],
        epoch=ckpt["epoch"],
        batch=ckpt["batch"],
        perm=order["perm"],
        data_rng=order["generator"],
        sums=list(ckpt["sums"]),
        history=list(ckpt["history"]),
        best=ckpt["best"],
        elapsed=ckpt["elapsed"],
        rng=ckpt["rng"],
    )
    set_rng_state(ckpt["rng"])


def _source_commit() -> str | None:
    """``git describe --always --dirty`` of the sparsetrain source tree, if it is a checkout."""
    import subprocess

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
    import numpy as np

    from sparsetrain import __version__

    return {
        "sparsetrain": __version__,
        "sparsetrain_commit": _COMMIT,
        "torch": str(torch.__version__),
        "numpy": str(np.__version__),
        "python": platform.python_version(),
    }


def epoch_line(row: dict[str, Any], epochs: int, improved: bool) -> str:
    """The per-epoch progress line, every number labelled.

    For example (on one line)::

        epoch 2/10  step 64  lr 0.05  train loss 1.2000 acc 0.5000  val loss ... acc ...
        test loss 1.1000 acc 0.6250  sparsity 0.8000  elapsed 3.2s  (best val so far)

    ``elapsed`` is the training time since the run started, over all sessions.
    """
    parts = [f"epoch {row['epoch']}/{epochs}", f"step {row['step']}", f"lr {row['lr']:.4g}"]
    for split in ("train", "val", "test"):
        if row[f"{split}_acc"] is not None:
            loss, acc = row[f"{split}_loss"], row[f"{split}_acc"]
            parts.append(f"{split} loss {loss:.4f} acc {acc:.4f}")
    parts += [f"sparsity {row['sparsity']:.4f}", f"elapsed {row['time']:.1f}s"]
    return "  ".join(parts) + ("  (best val so far)" if improved else "")


# --------------------------------------------------------------------------- the experiment


class Experiment:
    """A prepared run: objects built, state restored; :meth:`execute` trains and reports.

    It is also the loop's recorder: ``on_step``, ``on_epoch`` and ``on_interrupt`` write the
    run directory as training goes.
    """

    def __init__(self, run: Run, run_dir: Path, opts: RunOptions, resumed: bool) -> None:
        self.run, self.run_dir, self.opts, self.resumed = run, run_dir, opts, resumed
        self.steps = CsvAppender(run_dir / "steps.csv", STEP_FIELDS)
        self.bar: Any = None
        self.tb: TensorBoardSink | None = None
        self._log_file: Any = None

    # ------------------------------------------------------------------ output helpers

    def log(self, line: str, *, always: bool = False) -> None:
        """Print ``line`` (unless quiet) and append it to ``train.log``."""
        if self._log_file is not None:
            self._log_file.write(line + "\n")
            self._log_file.flush()
        if self.opts.quiet and not always:
            return
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def _open_bar(self) -> None:
        show = self.opts.progress
        if show is None:
            show = sys.stderr.isatty()
        if self.opts.quiet or not show:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return
        self.bar = tqdm(
            total=self.run.total_steps, initial=self.run.state.step, unit="step", dynamic_ncols=True
        )

    # ------------------------------------------------------------------ recorder interface

    def on_step(self, run: Run, loss: torch.Tensor, correct: torch.Tensor, n: int) -> None:
        st = run.state
        if self.bar is not None:
            self.bar.update(1)
        if st.step % run.cfg.train.log_every and st.step != run.total_steps:
            return
        row = {
            "step": st.step,
            "epoch": st.epoch + 1,
            "lr": run.optimizer.param_groups[0]["lr"],
            "loss": loss.item(),
            "acc": correct.item() / n,
            "sparsity": mask_sparsity(run.method),
            "planned_sparsity": run.method.sparsity_at(st.step),
        }
        self.steps.append([row])
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{row['loss']:.4f}",
                acc=f"{row['acc']:.3f}",
                sparsity=f"{row['sparsity']:.3f}",
            )
        if self.tb is not None:
            self.tb.scalars(
                {
                    "train/loss": row["loss"],
                    "train/acc": row["acc"],
                    "lr": row["lr"],
                    "sparsity": row["sparsity"],
                },
                st.step,
            )

    def on_epoch(self, run: Run, row: dict[str, Any], improved: bool) -> None:
        st = run.state
        st.history.append(row)
        save_checkpoint(checkpoint_dict(run), self.run_dir / "checkpoint.pt")
        if improved:
            best = {
                "epoch": row["epoch"],
                "model": run.model.state_dict(),
                "masks": {t.name: t.mask.clone() for t in run.method.targets},
            }
            save_checkpoint(best, self.run_dir / "best_model.pt")
        self._write_tables()
        self.log(epoch_line(row, run.cfg.train.epochs, improved))
        if self.tb is not None:
            self.tb.scalars({f"epoch/{k}": v for k, v in row.items() if k != "epoch"}, st.step)

    def on_interrupt(self, run: Run, consistent: bool) -> None:
        if consistent:
            save_checkpoint(checkpoint_dict(run), self.run_dir / "checkpoint.pt")
            where = f"step {run.state.step} (epoch {run.state.epoch + 1}, batch {run.state.batch})"
            self.log(f"interrupted: resumable checkpoint saved at {where}", always=True)
        else:
            self.log(
                "interrupted inside an optimizer step: the last epoch-end checkpoint is kept",
                always=True,
            )

    def _write_tables(self) -> None:
        st = self.run.state
        write_csv(self.run_dir / "metrics.csv", st.history, EPOCH_FIELDS)
        history = self.run.method.history
        fields: list[str] = []
        for h in history:
            fields += [k for k in h if k not in fields]
        write_csv(self.run_dir / "topology.csv", history, fields or ["step"])

    # ------------------------------------------------------------------ run

    def execute(self) -> RunResult:
        """Train to the end (or a signal), then write the report, plots and summary."""
        run, d = self.run, self.run_dir
        d.mkdir(parents=True, exist_ok=True)
        if self.resumed:
            self.steps.truncate(lambda r: int(r["step"]) <= run.state.step)
        else:
            write_text(d / "config.yaml", run.cfg.to_yaml())
        self._log_file = open(d / "train.log", "a")  # noqa: SIM115 (closed in finally)
        self.tb = TensorBoardSink(d / "tensorboard", self.opts.tensorboard)
        if self.tb.note:
            self.log(self.tb.note, always=True)
        try:
            self._start_message()
            self._open_bar()
            signum = train(run, self)
            if self.bar is not None:
                self.bar.close()
                self.bar = None
            if signum is not None:
                return RunResult(
                    "interrupted",
                    d,
                    None,
                    128 + int(signum),
                    f"interrupted at step {run.state.step}; continue with --resume",
                )
            return self._finish()
        finally:
            if self.bar is not None:
                self.bar.close()
            self.steps.close()
            self.tb.close()
            self._log_file.close()
            self._log_file = None

    def _start_message(self) -> None:
        run, st = self.run, self.run.state
        from sparsetrain.models import count_parameters

        what = (
            f"resuming {self.run_dir} at step {st.step}/{run.total_steps} "
            f"(epoch {st.epoch + 1}, batch {st.batch})"
            if self.resumed
            else f"training into {self.run_dir}"
        )
        self.log(what)
        c = run.cfg
        self.log(
            f"{c.method.name} on {c.model.name} ({count_parameters(run.model):,} params) / "
            f"{c.data.name} (train {len(run.splits.train)}, "
            f"val {0 if run.splits.val is None else len(run.splits.val)}, "
            f"test {len(run.splits.test)}): {plural(c.train.epochs, 'epoch')} x "
            f"{plural(run.steps_per_epoch, 'step')}, target sparsity {run.method.sparsity}, "
            f"device {run.device}"
        )
        files = data_files(run)
        if files:
            where = sorted({str(Path(f["path"]).parent) for f in files})
            self.log(
                f"data: read {plural(len(files), 'file')} from {', '.join(where)} "
                "(paths, sizes and SHA-256 in summary.json)"
            )
        if run.method.execution != "dense":
            self.log(run.method.execution_report())
        world = rank_and_world()[1]
        if world > 1:
            self.log(f"{world} processes (torchrun): batch {c.train.batch_size} split over them")

    def _finish(self) -> RunResult:
        run, d = self.run, self.run_dir
        self._write_tables()
        report = run.method.report()
        missed: str | None = None
        try:
            run.method.finish()
        except SparsityTargetError as exc:
            missed = str(exc)
        (d / "sparsity.csv").write_text(report.to_csv())
        write_text(d / "sparsity.json", report.to_json() + "\n")
        self.log(str(report))
        flops = count_flops(_flops_view(run.model), run.splits.input_shape, run.device)
        summary = make_summary(run, report, flops, missed)
        if run.cfg.train.plots:
            from sparsetrain.train.plots import plot_run

            note = plot_run(d, summary)
            if note:
                self.log(note)
        write_json(d / "summary.json", summary)
        head = summary["headline"]
        line = (
            f"done: test acc {head['test_acc']:.4f} ({head['select']}, epoch {head['epoch']}), "
            f"final {summary['final']['test_acc']:.4f}, sparsity {report.sparsity:.4f}, "
            f"FLOPs {flops['ratio']:.3f}x dense, {summary['wall_time_s']:.1f}s -> {d}"
        )
        self.log(line, always=True)
        if missed:
            self.log(f"error: {missed}", always=True)
            return RunResult("target_missed", d, summary, 1, missed)
        return RunResult("finished", d, summary, 0, line)


def _flops_view(model: torch.nn.Module) -> torch.nn.Module:
    """``model``, or a copy with its sparse layers as ``nn.Linear`` (for FLOP counting)."""
    from sparsetrain.sparse import SparseLinear, to_dense_linear

    if not any(isinstance(m, SparseLinear) for m in model.modules()):
        return model
    view = copy.deepcopy(model)
    for module in list(view.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, SparseLinear):
                setattr(module, name, to_dense_linear(child))
    return view


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
