"""The benchmarks' machine-load helper: PSI parsing, busy detection, ``--strict``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _machine

QUIET = """some avg10=0.10 avg60=0.05 avg300=0.00 total=1000000
full avg10=0.00 avg60=0.00 avg300=0.00 total=0
"""
BUSY = """some avg10=37.25 avg60=20.00 avg300=9.50 total=5000000
full avg10=0.00 avg60=0.00 avg300=0.00 total=0
"""


def args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    _machine.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_parse_pressure_reads_every_field_of_both_lines() -> None:
    p = _machine.parse_pressure(BUSY)
    assert p["some"] == {"avg10": 37.25, "avg60": 20.0, "avg300": 9.5, "total": 5e6}
    assert p["full"]["total"] == 0.0


def test_parse_pressure_refuses_malformed_text() -> None:
    with pytest.raises(ValueError, match="malformed"):
        _machine.parse_pressure("some avg10 1.0\n")
    with pytest.raises(ValueError, match="no 'some' line"):
        _machine.parse_pressure("full avg10=0.00 total=0\n")


def test_missing_pressure_file_reads_as_none(tmp_path: Path) -> None:
    assert _machine.read_pressure(tmp_path / "absent") is None


def test_window_share_is_waiting_time_over_wall_time(tmp_path: Path, monkeypatch) -> None:
    f = tmp_path / "cpu"
    f.write_text(QUIET)  # total 1 s of waiting so far
    clock = iter([100.0, 104.0])  # 4 s of wall time
    monkeypatch.setattr(_machine.time, "monotonic", lambda: next(clock))
    w = _machine.Window(f)
    f.write_text(BUSY)  # total 5 s: 4 s more waiting over 4 s of wall time
    assert w.share() == pytest.approx(100.0)


def test_busy_at_start_or_end_is_reported_and_quiet_is_not(tmp_path: Path, capsys) -> None:
    f = tmp_path / "cpu"
    f.write_text(QUIET)
    load = _machine.MachineLoad.start(args(), f)
    assert "CPU pressure avg10 0.10" in capsys.readouterr().out
    f.write_text(QUIET)
    assert load.finish() == []
    assert "WARNING" not in capsys.readouterr().out

    load = _machine.MachineLoad.start(args("--max-pressure", "30"), f)
    f.write_text(BUSY)
    reasons = load.finish()
    out = capsys.readouterr().out
    assert reasons[0] == "CPU pressure avg10 37.25 > 30 at end"
    assert "WARNING: the machine was busy" in out


def test_strict_refuses_a_busy_machine_before_measuring(tmp_path: Path, capsys) -> None:
    f = tmp_path / "cpu"
    f.write_text(BUSY)
    with pytest.raises(SystemExit) as exc:
        _machine.MachineLoad.start(args("--strict"), f)
    assert exc.value.code == 2
    assert "refusing to measure (--strict): CPU pressure avg10 37.25 > 5" in capsys.readouterr().out


def test_strict_exits_2_after_the_table_when_the_run_was_busy(tmp_path: Path) -> None:
    f = tmp_path / "cpu"
    f.write_text(QUIET)
    load = _machine.MachineLoad.start(args("--strict"), f)
    f.write_text(BUSY)
    with pytest.raises(SystemExit) as exc:
        load.finish()
    assert exc.value.code == 2


def test_without_pressure_information_nothing_counts_as_busy(tmp_path: Path, capsys) -> None:
    load = _machine.MachineLoad.start(args("--strict"), tmp_path / "absent")
    assert load.finish() == []
    assert "no CPU pressure information" in capsys.readouterr().out
