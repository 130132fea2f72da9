"""The run directory as training goes: checkpoints, CSV tables, progress, report and summary.

:class:`Experiment` is the loop's recorder (``on_step``, ``on_epoch``, ``on_interrupt``) on
rank 0 and runs the end of training: ``method.finish()``, ``sparsity.csv``/``.json``, FLOPs,
plots, and ``summary.json`` last. :class:`Follower` is the recorder of a rank > 0 under
``torchrun``: it trains in step with rank 0 and writes nothing. See
:mod:`sparsetrain.train.experiment` for the directory layout.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sparsetrain._names import plural
from sparsetrain.distributed import rank_and_world
from sparsetrain.models import count_parameters
from sparsetrain.report import SparsityTargetError
from sparsetrain.train.checkpoint import save_checkpoint
from sparsetrain.train.loop import Run, mask_sparsity, train
from sparsetrain.train.metrics import (
    CsvAppender,
    TensorBoardSink,
    count_flops,
    write_csv,
    write_json,
    write_text,
)
from sparsetrain.train.plots import plot_run
from sparsetrain.train.resume import checkpoint_dict, rank_states
from sparsetrain.train.summary import EPOCH_FIELDS, data_files, flops_view, make_summary

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
            from tqdm.auto import tqdm  # optional: the `cli` extra
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
        dtype = run.splits.train[0][0].dtype  # token ids (long) for a language model
        flops = count_flops(
            flops_view(run.model), run.splits.input_shape, run.device, input_dtype=dtype
        )
        summary = make_summary(run, report, flops, missed)
        if run.cfg.train.plots:
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


class Follower:
    """A rank > 0 of a multi-process run: trains with rank 0 and writes nothing.

    It takes part in the collectives rank 0's recorder runs (checkpoint streams) and ends with
    the same status as rank 0.
    """

    def __init__(self, run: Run, run_dir: Path, opts: RunOptions, resumed: bool) -> None:
        self.run, self.run_dir, self.opts, self.resumed = run, run_dir, opts, resumed

    def on_step(self, run: Run, loss: torch.Tensor, correct: torch.Tensor, n: int) -> None:
        pass

    def on_epoch(self, run: Run, row: dict[str, Any], improved: bool) -> None:
        run.state.history.append(row)
        rank_states(run)  # rank 0 saves its checkpoint here

    def on_interrupt(self, run: Run, consistent: bool) -> None:
        if consistent:
            rank_states(run)

    def execute(self) -> RunResult:
        """Train to the end (or a signal) in step with rank 0."""
        signum = train(self.run, self)
        if signum is not None:
            return RunResult("interrupted", self.run_dir, None, 128 + int(signum), "interrupted")
        try:
            self.run.method.finish()
        except SparsityTargetError as exc:
            return RunResult("target_missed", self.run_dir, None, 1, str(exc))
        return RunResult("finished", self.run_dir, None, 0, "finished (rank > 0)")
