"""The machine's state while a benchmark runs: CPU pressure, load, threads, versions, CPU model.

Every benchmark script prints these lines with its table, so a number can be read together with
the conditions it was measured in::

    load = MachineLoad.start(args)          # after argparse (adds --strict / --max-pressure)
    ...  # measure; Window() around each measured block gives its own pressure
    load.finish()                           # prints the lines; warns or exits 2 if busy

CPU pressure is Linux PSI (``/proc/pressure/cpu``, kernel 4.20+): ``some avg10`` is the share of
the last 10 s (in %) in which at least one runnable task waited for a CPU, and the ``total``
counter (microseconds of such waiting) gives the same share over any interval, here the whole
run. A machine is called busy when avg10 before or after the run, or the share over the run,
exceeds ``--max-pressure`` (default :data:`MAX_PRESSURE` %). A benchmark that keeps every core
busy with its own threads adds no pressure by itself; other jobs do. Without PSI (other
kernels, containers without it) the check is skipped and said so.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

PRESSURE_FILE = Path("/proc/pressure/cpu")
MAX_PRESSURE = 5.0
"""Default busy threshold: % of time at least one task waited for a CPU (PSI ``some``)."""


def parse_pressure(text: str) -> dict[str, dict[str, float]]:
    """Parse PSI text: ``{"some": {"avg10": .., "avg60": .., "avg300": .., "total": ..}, ...}``.

    >>> parse_pressure("some avg10=1.50 avg60=0.20 avg300=0.00 total=1200")["some"]["avg10"]
    1.5
    """
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        kind, *fields = line.split()
        if not fields:
            continue
        values = {}
        for f in fields:
            key, sep, value = f.partition("=")
            if not sep:
                raise ValueError(f"malformed pressure field {f!r} in line {line!r}")
            values[key] = float(value)
        out[kind] = values
    if "some" not in out:
        raise ValueError(f"no 'some' line in pressure text {text!r}")
    return out


def read_pressure(path: Path = PRESSURE_FILE) -> dict[str, float] | None:
    """The ``some`` line of the CPU pressure file, or ``None`` where the kernel has no PSI."""
    try:
        return parse_pressure(path.read_text())["some"]
    except (OSError, ValueError):
        return None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def load_average() -> tuple[float, float, float] | None:
    """1, 5 and 15 minute load averages (``None`` where the OS has none)."""
    try:
        return os.getloadavg()
    except OSError:
        return None


@dataclass
class Window:
    """CPU pressure over an interval: the share of wall time (in %) some task waited for a CPU.

    ``Window()`` starts it; :meth:`share` reads it (``None`` without PSI).
    """

    path: Path = PRESSURE_FILE
    _t0: float = field(default=0.0, init=False)
    _total0: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        """Start the interval now."""
        p = read_pressure(self.path)
        self._t0, self._total0 = time.monotonic(), None if p is None else p["total"]

    def share(self) -> float | None:
        """% of the wall time since the start in which some task waited for a CPU."""
        p = read_pressure(self.path)
        elapsed = time.monotonic() - self._t0
        if p is None or self._total0 is None or elapsed <= 0:
            return None
        return 100.0 * (p["total"] - self._total0) / 1e6 / elapsed


def fmt(value: float | None, spec: str = ".1f") -> str:
    """A number for a table, or ``n/a``."""
    return "n/a" if value is None else format(value, spec)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--strict`` and ``--max-pressure`` to a benchmark's parser."""
    parser.add_argument(
        "--strict",
        action="store_true",
        help="refuse (exit 2) when the machine is busy: before measuring, or if it was busy "
        "during the run (the table is still printed)",
    )
    parser.add_argument(
        "--max-pressure",
        type=float,
        default=MAX_PRESSURE,
        help=f"busy threshold, %% of time a task waited for a CPU (default {MAX_PRESSURE})",
    )


@dataclass
class MachineLoad:
    """The machine's state at the start of a benchmark, finished by :meth:`finish`."""

    max_pressure: float = MAX_PRESSURE
    strict: bool = False
    path: Path = PRESSURE_FILE
    before: dict[str, float] | None = None
    after: dict[str, float] | None = None
    run_share: float | None = None
    load_before: tuple[float, float, float] | None = None
    load_after: tuple[float, float, float] | None = None
    window: Window | None = None

    @classmethod
    def start(cls, args: argparse.Namespace | None = None, path: Path = PRESSURE_FILE):
        """Record the state now; with ``--strict``, exit 2 at once if the machine is busy."""
        load = cls(
            max_pressure=MAX_PRESSURE if args is None else args.max_pressure,
            strict=False if args is None else args.strict,
            path=path,
        )
        load.before, load.load_before = read_pressure(path), load_average()
        load.window = Window(path)
        print(load.header(), flush=True)
        if load.strict and load.busy_reasons():
            print(f"refusing to measure (--strict): {'; '.join(load.busy_reasons())}")
            sys.exit(2)
        return load

    def header(self) -> str:
        """One line: versions, threads, CPU model and the pressure at the start."""
        return (
            f"machine: {cpu_model()}, {os.cpu_count()} CPUs; torch {torch.__version__}, numpy "
            f"{np.__version__}, {torch.get_num_threads()} intra-op threads; at start: "
            f"{self._state(self.before, self.load_before)}"
        )

    @staticmethod
    def _state(p: dict[str, float] | None, la: tuple[float, float, float] | None) -> str:
        cpu = (
            "CPU pressure n/a (no /proc/pressure/cpu)"
            if p is None
            else (f"CPU pressure avg10 {p['avg10']:.2f} avg60 {p['avg60']:.2f}")
        )
        return cpu + ("" if la is None else f", load average {la[0]:.2f}")

    def busy_reasons(self) -> list[str]:
        """Why the machine counts as busy (empty: quiet, or nothing to tell without PSI)."""
        limit, out = self.max_pressure, []
        for when, p in (("at start", self.before), ("at end", self.after)):
            if p is not None and p["avg10"] > limit:
                out.append(f"CPU pressure avg10 {p['avg10']:.2f} > {limit:g} {when}")
        if self.run_share is not None and self.run_share > limit:
            out.append(f"CPU pressure {self.run_share:.2f} > {limit:g} over the run")
        return out

    def finish(self) -> list[str]:
        """Record the state at the end, print it (and a warning if busy); exit 2 if strict."""
        self.after, self.load_after = read_pressure(self.path), load_average()
        self.run_share = None if self.window is None else self.window.share()
        print()
        print(
            f"machine at end: {self._state(self.after, self.load_after)}; CPU pressure over the "
            f"run {fmt(self.run_share, '.2f')}% (busy above {self.max_pressure:g})"
        )
        reasons = self.busy_reasons()
        if reasons:
            print(
                f"WARNING: the machine was busy ({'; '.join(reasons)}): these timings are not "
                "comparable with a quiet run"
            )
            if self.strict:
                sys.exit(2)
        elif self.before is None:
            print("note: no CPU pressure information on this machine; load not checked")
        return reasons
