"""Suites: a grid of runs (methods × sparsities × seeds) over one base config.

A suite file::

    base: mnist1d_mlp_rigl.yaml      # a config path (relative to this file) or an inline mapping
    overrides: {train.epochs: 5}     # optional; also a list of "key=value" strings
    methods: [rigl, set, static]
    sparsities: [0.8, 0.9]
    seeds: [0, 1, 2]
    method_overrides:                # optional, per method
      set: {method.update_interval: 50}
    variants:                        # optional: named method settings usable in `methods`
      snip-gradient: {method.name: dst, method.prune: snip, method.grow: gradient}
    out: runs/mnist1d_grid           # optional; --out wins

Runs go seed by seed (every method and sparsity of the first seed, then the next seed), so a
suite stopped part-way has complete cells for its first seeds. Each run lives in
``<out>/<method>-s<sparsity>-seed<seed>``; a variant's runs use its name and
report under it (``train.label``); a variant value ``"{sparsity}"`` is replaced by the grid's
sparsity, and a mapping ``{0.9: a, 0.95: b}`` by the entry for the grid's sparsity (per-target
knobs such as STR's threshold weight decay). ``dense`` runs once per seed (sparsity 0), and so does
an emergent-sparsity method (SCL, STR) unless one of its variant values is tied to the sparsity:
then it runs per grid sparsity, ``train.report_sparsity`` records the sparsity it was tuned for
(reports group by it) and the sparsity it reached is reported next to it. The base config's
method options that a suite method does not take are dropped for that method (with a note);
``overrides``, ``variants`` and ``method_overrides`` are always validated strictly. Finished
runs (``summary.json``) are skipped and never touched; runs with a checkpoint resume; every
other run starts fresh. All configs are validated before anything runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sparsetrain.config import (
    ConfigError,
    ExperimentConfig,
    deep_copy,
    did_you_mean,
    parse_override,
    read_yaml,
    set_dotted,
    switch_entry,
    takes_sparsity,
)
from sparsetrain.train.build import check_config
from sparsetrain.train.ddp import is_writer
from sparsetrain.train.experiment import RunOptions, run_dir_state, run_experiment

SUITE_KEYS = (
    "base",
    "overrides",
    "methods",
    "sparsities",
    "seeds",
    "method_overrides",
    "variants",
    "out",
)


@dataclass(frozen=True)
class SuiteRun:
    """One cell of the grid."""

    name: str
    method: str
    sparsity: float
    seed: int
    cfg: ExperimentConfig
    run_dir: Path
    dropped: tuple[str, ...] = ()  # base method options this method does not take


@dataclass(frozen=True)
class SuiteOutcome:
    """How one run of a suite ended.

    ``status`` is ``skipped``, ``finished``, ``target_missed``, ``interrupted`` or ``failed``;
    ``signum`` is the signal that interrupted the run (SIGINT or SIGTERM), else None.
    """

    run: SuiteRun
    status: str
    message: str
    signum: int | None = None


def _pairs(value: Any, where: str) -> list[tuple[str, Any]]:
    if value is None:
        return []
    if isinstance(value, Mapping):
        return [(str(k), v) for k, v in value.items()]
    if isinstance(value, list):
        out = []
        for text in value:
            path, v = parse_override(str(text))
            out.append((".".join(path), v))
        return out
    raise ConfigError(f"{where} must be a mapping of section.key: value or a list of key=value")


def _list(raw: Mapping[str, Any], key: str, typ: type) -> list[Any]:
    value = raw.get(key)
    if not isinstance(value, list) or not value:
        raise ConfigError(f"suite key {key!r} must be a non-empty list")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, typ | int):
            raise ConfigError(f"suite {key} entries must be {typ.__name__}s, got {v!r}")
    return value


def load_suite(path: str | Path, out: str | Path | None = None) -> list[SuiteRun]:
    """Read a suite file and expand it into validated runs.

    Raises:
        ConfigError: A bad suite key, or a run whose config is invalid (named in the message).
    """
    p = Path(path)
    raw = read_yaml(p)
    for key in raw:
        if key not in SUITE_KEYS:
            raise ConfigError(
                f"unknown suite key {key!r}{did_you_mean(str(key), SUITE_KEYS)} "
                f"(valid: {', '.join(SUITE_KEYS)})"
            )
    base = raw.get("base")
    if isinstance(base, str):
        base = read_yaml(p.parent / base)
    if not isinstance(base, Mapping):
        raise ConfigError("suite key 'base' must be a config path or an inline config mapping")
    methods = _list(raw, "methods", str)
    sparsities = _list(raw, "sparsities", float)
    seeds = _list(raw, "seeds", int)
    per_method = raw.get("method_overrides") or {}
    if not isinstance(per_method, Mapping):
        raise ConfigError("suite key 'method_overrides' must map method names to overrides")
    for m in per_method:
        if m not in methods:
            raise ConfigError(f"method_overrides names {m!r}, which is not in methods {methods}")
    variants = raw.get("variants") or {}
    if not isinstance(variants, Mapping):
        raise ConfigError("suite key 'variants' must map variant names to method settings")
    root = Path(out) if out is not None else Path(raw.get("out") or Path("runs") / p.stem)
    runs = []
    for label in methods:
        variant = dict(_pairs(variants.get(label), f"variants.{label}"))
        method = str(variant.pop("method.name", label))
        takes = method != "dense" and takes_sparsity(method)
        # a run per grid sparsity only where something depends on it: a target method, or a
        # variant value tied to the grid's sparsity; otherwise once per seed at sparsity 0
        per_sparsity = takes or any(_tied_to_sparsity(v) for v in variant.values())
        for sparsity in sparsities if per_sparsity else [0.0]:
            for seed in seeds:
                cfg_raw = deep_copy(base)
                dropped = _drop_foreign_options(cfg_raw, method)
                for key, value in _pairs(raw.get("overrides"), "suite key 'overrides'"):
                    set_dotted(cfg_raw, key, value)
                set_dotted(cfg_raw, "method.name", method)
                if takes:
                    set_dotted(cfg_raw, "method.sparsity", sparsity)
                elif per_sparsity:  # an emergent method tuned for this sparsity
                    set_dotted(cfg_raw, "train.report_sparsity", sparsity)
                set_dotted(cfg_raw, "train.seed", seed)
                if label != method:
                    set_dotted(cfg_raw, "train.label", label)
                for key, value in variant.items():
                    set_dotted(cfg_raw, key, _at_sparsity(value, sparsity, f"{label}.{key}"))
                for key, value in _pairs(per_method.get(label), f"method_overrides.{label}"):
                    set_dotted(cfg_raw, key, value)
                name = f"{label}-s{sparsity:g}-seed{seed}"
                try:
                    cfg = ExperimentConfig.from_dict(cfg_raw)
                    check_config(cfg)
                except ConfigError as exc:
                    raise ConfigError(f"suite run {name}: {exc}") from None
                runs.append(
                    SuiteRun(name, label, float(sparsity), int(seed), cfg, root / name, dropped)
                )
    # seed-major order: a suite stopped part-way has every cell of its first seeds
    return sorted(runs, key=lambda r: seeds.index(r.seed))


def _tied_to_sparsity(value: Any) -> bool:
    return value == "{sparsity}" or isinstance(value, Mapping)


def _at_sparsity(value: Any, sparsity: float, where: str) -> Any:
    """A variant value at one grid sparsity: ``"{sparsity}"`` → it, ``{0.9: a, ...}`` → a."""
    if value == "{sparsity}":
        return sparsity
    if isinstance(value, Mapping):
        for k, v in value.items():
            try:
                if float(k) == sparsity:
                    return v
            except (TypeError, ValueError):
                raise ConfigError(
                    f"variants.{where}: per-sparsity keys must be sparsities, got {k!r}"
                ) from None
        raise ConfigError(
            f"variants.{where} has no value for sparsity {sparsity:g} "
            f"(it gives {', '.join(str(k) for k in value)})"
        )
    return value


def _drop_foreign_options(cfg_raw: dict[str, Any], method: str) -> tuple[str, ...]:
    """Remove the base config's method options that ``method`` does not take; return them.

    The base config's method options belong to the base's method (e.g. RigL's
    ``update_interval``); a suite that swaps in another method keeps only those the new method
    accepts, and lets the new method's defaults replace options left at the base method's
    defaults (a run's resolved ``config.yaml`` as the base). Options set by ``overrides`` and
    ``method_overrides`` are never dropped.
    """
    section = cfg_raw.get("method")
    if not isinstance(section, dict):
        return ()
    dropped, reset = switch_entry(section, "method", section.get("name", "dense"), method)
    return (*dropped, *reset)


def _options(run_dir: Path, data_dir: str | None) -> dict[str, Any]:
    state = run_dir_state(run_dir)
    return {
        "resume": state != "other",
        "overwrite": state == "other",  # started but no checkpoint: nothing to keep
        "quiet": True,
        "progress": False,
        "data_dir": data_dir,
    }


_STOP: Any = None  # in pool workers: the compare's stop event


def _init_worker(stop: Any) -> None:
    global _STOP
    _STOP = stop


def _run_one(
    cfg_raw: dict[str, Any], run_dir: str, opts: dict[str, Any], threads: int
) -> tuple[str, str, int | None]:
    """Worker: run one config; returns (status, message, signal that stopped it). Never raises."""
    if _STOP is not None and _STOP.is_set():  # compare was told to stop: start nothing new
        return "interrupted", "not started (compare stopped)", None
    if threads:
        torch.set_num_threads(threads)
    try:
        cfg = ExperimentConfig.from_dict(cfg_raw)
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):  # see train.log
            result = run_experiment(cfg, run_dir, RunOptions(**opts))
    except KeyboardInterrupt as exc:
        signum = signal.SIGTERM if isinstance(exc, _Terminated) else signal.SIGINT
        return "interrupted", "interrupted", int(signum)
    except Exception as exc:  # a failed run must not stop the rest of the suite
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return "failed", f"{type(exc).__name__}: {first}", None
    signum = result.exit_code - 128 if result.status == "interrupted" else None
    return result.status, result.message, signum


def run_suite(
    runs: list[SuiteRun],
    *,
    jobs: int = 1,
    data_dir: str | None = None,
    echo: Callable[[str], None] = print,
) -> list[SuiteOutcome]:
    """Run (or skip, or resume) every run of a suite, sequentially or in ``jobs`` processes.

    The suite's output folders are locked for the duration (``.compare.lock``, an OS file lock
    released when the process ends), so two ``compare`` commands never work on the same runs.

    Args:
        runs: From :func:`load_suite`.
        jobs: Worker processes (1: in this process). Workers share the CPU cores.
        data_dir: Dataset folder for every run.
        echo: Where progress lines go.

    Returns:
        One outcome per run, in grid order.

    Raises:
        ConfigError: Another ``compare`` holds the lock of one of the output folders.
    """
    with contextlib.ExitStack() as stack:
        for root in sorted({r.run_dir.parent for r in runs}):
            if not is_writer():  # under torchrun rank 0 holds the locks
                continue
            root.mkdir(parents=True, exist_ok=True)
            lock = stack.enter_context(open(root / ".compare.lock", "w"))
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise ConfigError(
                    f"another `sparsetrain compare` is running on {root}; wait for it to end"
                ) from None
        return _run_suite_locked(runs, jobs=jobs, data_dir=data_dir, echo=echo)


class _Terminated(KeyboardInterrupt):
    """SIGTERM received by the ``compare`` process."""


@contextlib.contextmanager
def _term_as_interrupt() -> Iterator[None]:
    """While open (main thread only), SIGTERM raises :class:`_Terminated`, a KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_signum: int, _frame: Any) -> None:
        raise _Terminated

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _run_suite_locked(
    runs: list[SuiteRun], *, jobs: int, data_dir: str | None, echo: Callable[[str], None]
) -> list[SuiteOutcome]:
    outcomes: dict[str, SuiteOutcome] = {}
    noted: set[str] = set()
    for r in runs:
        if r.dropped and r.method not in noted:
            noted.add(r.method)
            keys = ", ".join(f"method.{k}" for k in r.dropped)
            echo(
                f"note: {r.method}: dropped the base config's {keys} (options it does not take, "
                "or left at the base method's defaults)"
            )
    todo, skipped = [], []
    for r in runs:
        if run_dir_state(r.run_dir) == "finished":
            outcomes[r.name] = SuiteOutcome(r, "skipped", "already finished")
            skipped.append(r.name)
        else:
            todo.append(r)
    if skipped:  # one line, not one per run: a re-run of a big grid skips most of it
        more = f", ... (+{len(skipped) - 3})" if len(skipped) > 3 else ""
        echo(f"[skip]   {len(skipped)} already finished: {', '.join(skipped[:3])}{more}")

    def done(r: SuiteRun, status: str, message: str, signum: int | None = None) -> None:
        outcomes[r.name] = SuiteOutcome(r, status, message, signum)
        echo(f"[{status}] {r.name}: {message}")

    if jobs <= 1:
        try:
            with _term_as_interrupt():  # SIGTERM between two runs stops like one during a run
                for r in todo:
                    state = run_dir_state(r.run_dir)
                    echo(f"[{'resume' if state == 'resumable' else 'start'}]  {r.name}")
                    status, message, signum = _run_one(
                        r.cfg.to_dict(), str(r.run_dir), _options(r.run_dir, data_dir), 0
                    )
                    done(r, status, message, signum)
                    if status == "interrupted":
                        break
        except KeyboardInterrupt as exc:  # between two runs: the next one never starts
            signum = int(signal.SIGTERM if isinstance(exc, _Terminated) else signal.SIGINT)
            nxt = next((r for r in todo if r.name not in outcomes), None)
            if nxt is not None:
                done(nxt, "interrupted", "not started (compare stopped)", signum)
    else:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        ctx = multiprocessing.get_context("spawn")
        stop = ctx.Event()
        with (
            ProcessPoolExecutor(
                max_workers=jobs, mp_context=ctx, initializer=_init_worker, initargs=(stop,)
            ) as pool,
            _term_as_interrupt(),
        ):
            futures = {}
            for r in todo:
                state = run_dir_state(r.run_dir)
                echo(f"[{'resume' if state == 'resumable' else 'start'}]  {r.name}")
                opts = _options(r.run_dir, data_dir)
                futures[r.name] = (
                    r,
                    pool.submit(_run_one, r.cfg.to_dict(), str(r.run_dir), opts, threads),
                )
            try:
                for r, fut in futures.values():
                    done(r, *fut.result())
            except KeyboardInterrupt as exc:
                stop.set()  # queued runs return at once instead of starting
                signum = int(signal.SIGTERM if isinstance(exc, _Terminated) else signal.SIGINT)
                if isinstance(exc, _Terminated):
                    # a SIGTERM to this process alone (kill, a job scheduler) must not leave
                    # workers training on without the lock: ask each to stop at its next step
                    # (it saves a resumable checkpoint). Ctrl-C already reached them all.
                    for proc in list(getattr(pool, "_processes", {}).values()):
                        with contextlib.suppress(OSError):
                            os.kill(proc.pid, signal.SIGTERM)
                pool.shutdown(wait=True, cancel_futures=True)
                for r, fut in futures.values():
                    if r.name not in outcomes:
                        res = None
                        if fut.done() and not fut.cancelled() and fut.exception() is None:
                            res = fut.result()  # a worker stopped between runs: no result
                        done(r, *(res or ("interrupted", "interrupted", signum)))
    return [outcomes[r.name] for r in runs if r.name in outcomes]
