"""One experiment end to end: config → run directory with metrics, checkpoints and a summary.

    from sparsetrain.config import load_config
    from sparsetrain.train import RunOptions, run_experiment
    result = run_experiment(load_config("configs/mnist1d_mlp_rigl.yaml"), "runs/demo")

The run directory (see ``docs/cli.md``)::

    config.yaml      the resolved config (written first)
    train.log        every line printed during training
    steps.csv        step, epoch, lr, loss, acc, sparsity, planned_sparsity (every log_every steps)
    metrics.csv      one row per epoch: lr, train/val/test loss and accuracy, sparsity, time
    topology.csv     one row per topology update (method.history: pruned, grown, churn, ...)
    checkpoint.pt    the latest resumable checkpoint (every epoch end, and on SIGINT/SIGTERM)
    best_model.pt    model weights and masks at the best-validation epoch
    sparsity.csv/.json  per-layer target vs actual sparsity (method.report())
    summary.json     final and best-val metrics, sparsity, FLOPs, wall time, versions (last)
    plots/*.png      per-layer sparsity, sparsity vs step, loss and accuracy by epoch, churn

``summary.json`` is written last: its presence marks a finished run (``compare`` skips those).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from sparsetrain._names import plural
from sparsetrain.config import ConfigError, ExperimentConfig, diff_configs, load_config, read_yaml
from sparsetrain.data import DatasetSplits, load_dataset
from sparsetrain.models import uses_channels_last
from sparsetrain.train import ddp
from sparsetrain.train.build import (
    build_method,
    build_model,
    build_optimizer,
    resolve_config,
    resolved_dict,
    steps_per_epoch,
)
from sparsetrain.train.checkpoint import CheckpointError, load_checkpoint, seed_everything
from sparsetrain.train.loop import Run
from sparsetrain.train.recorder import (
    HARNESS_DIRS,
    HARNESS_FILES,
    Experiment,
    Follower,
    RunOptions,
    RunResult,
)
from sparsetrain.train.resume import restore, restore_rank

# What to do about a damaged checkpoint.pt when resuming (train --resume, or compare).
RESUME_WAY_OUT = (
    "start the run over with `sparsetrain train ... --overwrite`, or delete checkpoint.pt "
    "(a re-run `compare` then starts that run over)"
)

# Files written into a run directory by `sparsetrain export`, one relative path per line.
EXPORTS_FILE = "exports.txt"

# Keys that may differ between a run and its resumption without changing any number.
RESUME_FREE_KEYS = ("data.data_dir", "train.plots", "train.device")
CHECKPOINTS = ("last", "best")

__all__ = [
    "Experiment",
    "RunOptions",
    "RunResult",
    "load_best_model",
    "load_run",
    "prepare",
    "run_experiment",
]


def run_experiment(
    cfg: ExperimentConfig, run_dir: str | Path, options: RunOptions | None = None
) -> RunResult:
    """Train ``cfg`` into ``run_dir`` and write every output; see the module docstring.

    Raises:
        ConfigError: A config or run-directory problem (before anything is written).
        CheckpointError: The checkpoint to resume from is unreadable or from another run.
        FileNotFoundError: The dataset's files are missing (the loader's message).
    """
    prepared = prepare(cfg, run_dir, options or RunOptions())
    return prepared if isinstance(prepared, RunResult) else prepared.execute()


def run_dir_state(run_dir: Path) -> str:
    """The state of a run directory: ``empty``, ``finished``, ``resumable`` or ``other``.

    ``empty``: missing or no files; ``finished``: has ``summary.json``; ``resumable``: has
    ``checkpoint.pt``; ``other``: files but neither.
    """
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return "empty"
    if (run_dir / "summary.json").is_file():
        return "finished"
    if (run_dir / "checkpoint.pt").is_file():
        return "resumable"
    return "other"


def prepare(cfg: ExperimentConfig, run_dir: str | Path, opts: RunOptions) -> Experiment | RunResult:
    """Validate everything and build the objects; nothing in ``run_dir`` changes on error."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run directory {run_dir} exists and is not a directory")
    if opts.resume and opts.overwrite:
        raise ConfigError("--resume and --overwrite exclude each other; pick one")
    state = ddp.on_rank0(lambda: run_dir_state(run_dir))  # under torchrun: rank 0 decides
    if state != "empty" and not (opts.resume or opts.overwrite):
        raise ConfigError(
            f"run directory {run_dir} is not empty; pass --resume to continue it or "
            "--overwrite to start over"
        )
    cfg = resolve_config(cfg)
    if opts.resume and state == "finished":
        summary = _read_summary(run_dir)
        _check_same_run(cfg, _finished_config(run_dir, summary), run_dir, finished=True)
        return RunResult("already_finished", run_dir, summary, 0, f"{run_dir}: already finished")
    if opts.resume and state == "other":
        raise ConfigError(
            f"nothing to resume in {run_dir} (no checkpoint.pt); pass --overwrite to start over"
        )
    ckpt = (
        ddp.on_rank0(lambda: load_checkpoint(run_dir / "checkpoint.pt", RESUME_WAY_OUT))
        if opts.resume and state == "resumable"
        else None
    )
    if ckpt is not None:
        _check_same_run(cfg, ckpt.get("config", {}), run_dir)
        ddp.check_world_size(ckpt, run_dir)

    splits = load_splits(cfg, opts.data_dir, augment=cfg.data.augment)
    if len(splits.train) < 2:
        raise ConfigError(f"dataset {cfg.data.name!r} has {len(splits.train)} training examples")
    run = build_run(cfg, splits)
    if ckpt is not None:
        restore(run, ckpt)
        restore_rank(run, ckpt)
    elif state != "empty" and ddp.is_writer():  # --overwrite: only now that everything built
        clear_run_dir(run_dir)
    recorder = Experiment if ddp.is_writer() else Follower
    return recorder(run, run_dir, opts, resumed=ckpt is not None)


def load_splits(cfg: ExperimentConfig, data_dir: str | None, *, augment: bool) -> DatasetSplits:
    """The config's dataset splits (``data_dir`` overrides ``data.data_dir``)."""
    d = cfg.data
    return load_dataset(
        d.name,
        data_dir=data_dir or d.data_dir,
        val_fraction=d.val_fraction,
        seed=cfg.train.seed,
        augment=augment,
        train_size=d.train_size,
        **d.options,
    )


def plan_experiment(cfg: ExperimentConfig, data_dir: str | None = None, points: int = 11) -> str:
    """Dry run: the method's sparsity curve and topology-update steps, as text.

    Loads the data (for the steps per epoch) and builds the model and method; trains nothing.
    """
    cfg = resolve_config(cfg)
    splits = load_splits(cfg, data_dir, augment=False)
    run = build_run(cfg, splits)
    t = cfg.train
    head = (
        f"{cfg.method.name} on {cfg.model.name} / {cfg.data.name}: {plural(t.epochs, 'epoch')} x "
        f"{plural(run.steps_per_epoch, 'step')} = {plural(run.total_steps, 'optimizer step')} "
        f"({len(splits.train)} examples, batch {t.batch_size}, grad_accum {t.grad_accum})"
    )
    return f"{head}\n{run.method.plan(run.total_steps, points=points)}"


def load_run(run_dir: str | Path, data_dir: str | None = None, checkpoint: str = "last") -> Run:
    """Rebuild a run from its directory: ``config.yaml`` + ``checkpoint.pt``, method attached.

    The model, optimizer and method are built exactly as for training (same execution mode) and
    the latest checkpoint is loaded into them, as ``--resume`` does. With ``checkpoint="best"``
    the weights and masks of ``best_model.pt`` (the best-validation epoch) are then loaded over
    them (:func:`load_best_model`): a model to evaluate or export, not to continue training.

    Raises:
        ConfigError: ``run_dir`` is missing or has no ``config.yaml`` / ``checkpoint.pt``, or
            ``checkpoint`` is neither ``last`` nor ``best``.
        CheckpointError: A checkpoint is missing, unreadable or does not match the config.
    """
    if checkpoint not in CHECKPOINTS:
        raise ConfigError(f"unknown checkpoint {checkpoint!r}; valid: {', '.join(CHECKPOINTS)}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run directory {run_dir} does not exist")
    for name in ("config.yaml", "checkpoint.pt"):
        if not (run_dir / name).is_file():
            raise ConfigError(f"{run_dir} has no {name}; is it a sparsetrain run directory?")
    cfg = resolve_config(load_config(run_dir / "config.yaml"))
    ckpt = load_checkpoint(run_dir / "checkpoint.pt")
    splits = load_splits(cfg, data_dir, augment=False)
    run = build_run(cfg, splits)
    restore(run, ckpt)
    if checkpoint == "best":
        load_best_model(run, run_dir / "best_model.pt")
    return run


def load_best_model(run: Run, path: str | Path) -> int:
    """Load ``best_model.pt`` (weights and masks of the best-validation epoch) into ``run``.

    ``run`` must be restored from the same run's ``checkpoint.pt`` first (:func:`load_run`):
    the file holds the model's ``state_dict`` (for in-place methods, the effective weights in
    the parameters and the raw ones in ``*_raw`` buffers; sparse layers save a dense weight)
    and each target's mask, not the optimizer or the method's other state.

    Returns:
        The epoch the weights are from.

    Raises:
        CheckpointError: The file is missing, unreadable, from another model, or from another
            epoch than the checkpoint's best-validation record.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"no {path.name} in {path.parent}: no epoch qualified as best-validation yet "
            "(no validation split, or not yet at final sparsity); use the last checkpoint"
        )
    best = load_checkpoint(path)
    recorded = run.state.best
    if recorded is not None and int(recorded["epoch"]) != int(best.get("epoch", -1)):
        raise CheckpointError(
            f"{path} holds epoch {best.get('epoch')}, but the checkpoint's best-validation "
            f"epoch is {recorded['epoch']}"
        )
    method = run.method
    try:
        masks = best["masks"]
        names = [t.name for t in method.targets]
        if sorted(masks) != sorted(names):
            raise ValueError(f"masks for {sorted(masks)}, the method's targets are {names}")
        state = best["model"]
        run.model.load_state_dict(state)
        sparse = method.sparse_layers()  # their targets' parameters are placeholders
        with torch.no_grad():
            for t in method.targets:
                t.mask.copy_(masks[t.name].to(torch.bool))
                stored = None if t.name in sparse else state.get(t.name)
                if stored is not None and not torch.equal(t.param.detach().cpu(), stored):
                    # the parameter shared its storage with the raw-weight buffer (loaded
                    # after it): give it back the stored (effective) weight
                    t.param.data = stored.to(t.param.device, t.param.dtype).clone()
        method.sync_sparse_layers()  # sparse layers follow the best epoch's masks
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{path} does not match the model: {exc}") from None
    return int(best["epoch"])


def build_run(cfg: ExperimentConfig, splits: Any) -> Run:
    """Seed, then build the model, optimizer and attached method for ``cfg``."""
    seed_everything(cfg.train.seed)
    try:
        device = ddp.device_for(cfg.train.device)
    except RuntimeError as exc:
        raise ConfigError(f"train.device: {exc}") from None
    model = build_model(cfg, splits.num_classes, tuple(splits.input_shape))
    cl = cfg.train.channels_last == "on" or (
        cfg.train.channels_last == "auto" and uses_channels_last(cfg.model.name)
    )
    model = model.to(device, memory_format=torch.channels_last) if cl else model.to(device)
    spe = steps_per_epoch(len(splits.train), cfg.train.batch_size, cfg.train.grad_accum)
    try:
        ddp.check_batches(len(splits.train), cfg.train.batch_size)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    method = build_method(cfg, spe)
    optimizer = build_optimizer(model, cfg.optim, method)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    if method.execution == "auto" and method.execution_batch_size is None:
        method.execution_batch_size = cfg.train.batch_size  # measure at the run's batch size
    try:
        method.attach(model, optimizer, hook=False)  # the loop calls the hooks by name
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"method {cfg.method.name!r}: {exc}") from None
    ddp.seed_rank(cfg.train.seed)  # rank r > 0: its own dropout stream (rank 0: unchanged)
    run = Run(cfg, model, optimizer, method, splits, device, cl, spe, base_lrs)
    run.ddp = ddp.wrap(model, device)
    return run


def clear_run_dir(run_dir: Path) -> None:
    """Delete the files and folders the harness writes (and nothing else).

    That is the training outputs and the files ``sparsetrain export`` wrote into the run
    directory, as listed in its ``exports.txt``; any other file stays.
    """
    for path in recorded_exports(run_dir):
        path.unlink(missing_ok=True)
    for name in (*HARNESS_FILES, EXPORTS_FILE):
        (run_dir / name).unlink(missing_ok=True)
    for name in HARNESS_DIRS:
        if (run_dir / name).is_dir():
            shutil.rmtree(run_dir / name)


def record_export(run_dir: str | Path, path: str | Path) -> None:
    """Note in ``run_dir/exports.txt`` that ``path`` was written by ``sparsetrain export``.

    Only files inside the run directory are noted (``--overwrite`` deletes them with the run);
    files written elsewhere are the user's.
    """
    run_dir, path = Path(run_dir).resolve(), Path(path).resolve()
    if not path.is_relative_to(run_dir) or path == run_dir:
        return
    name = path.relative_to(run_dir).as_posix()
    manifest = run_dir / EXPORTS_FILE
    known = manifest.read_text().splitlines() if manifest.is_file() else []
    if name not in known:
        with open(manifest, "a") as f:
            f.write(name + "\n")


def recorded_exports(run_dir: Path) -> list[Path]:
    """The exported files listed in ``run_dir/exports.txt`` (inside ``run_dir`` only)."""
    manifest = run_dir / EXPORTS_FILE
    if not manifest.is_file():
        return []
    root = run_dir.resolve()
    out = []
    for line in manifest.read_text().splitlines():
        path = (run_dir / line.strip()).resolve()
        if line.strip() and path.is_relative_to(root) and path != root and path.is_file():
            out.append(path)
    return out


def _check_same_run(
    cfg: ExperimentConfig, saved: dict[str, Any], run_dir: Path, *, finished: bool = False
) -> None:
    """Refuse to resume ``run_dir`` (saved config ``saved``) with a differing ``cfg``.

    Both sides are compared resolved (defaults written out), so a config saved before a
    default was written out still matches.
    """
    saved, now = resolved_dict(saved), cfg.to_dict()
    diff = [k for k in diff_configs(saved, now) if k not in RESUME_FREE_KEYS]
    if not diff:
        return
    key = diff[0]
    was, new = _lookup(saved, key), _lookup(now, key)
    if finished:
        raise ConfigError(
            f"cannot resume {run_dir}: it finished with a config that differs at {key} "
            f"(run: {was!r}, now: {new!r}); pass --overwrite to train it again with this config, "
            "or choose another --out"
        )
    raise ConfigError(
        f"cannot resume {run_dir}: the config differs from the checkpoint's at {key} "
        f"(checkpoint: {was!r}, now: {new!r}); resume with {run_dir / 'config.yaml'}"
    )


def _finished_config(run_dir: Path, summary: dict[str, Any] | None) -> dict[str, Any]:
    """The config a finished run was trained with: its ``config.yaml``, else the summary's."""
    try:
        return read_yaml(run_dir / "config.yaml")
    except ConfigError:
        return (summary or {}).get("config") or {}


def _lookup(d: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None  # type: ignore[assignment]
    return d


def _read_summary(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
