"""The command line as a new user meets it: one-line errors, exit codes, what a run records.

In-process, on ``synthetic`` data with a 64-16-4 MLP (a run takes well under a second).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_cli import kill_at

from sparsetrain.cli import main

pytestmark = pytest.mark.integration

CONFIG: dict[str, Any] = {
    "data": {"name": "synthetic", "n_train": 64, "n_test": 32},  # 58 train / 6 val: 4 batches
    "model": {"name": "mlp", "hidden_sizes": [16]},
    "method": {"name": "rigl", "sparsity": 0.8, "update_interval": 3},
    "optim": {"name": "sgd", "lr": 0.1, "schedule": "cosine"},
    "train": {"epochs": 1, "batch_size": 16, "plots": False},
}


def write_config(tmp_path: Path, name: str = "config.yaml", **sections: dict[str, Any]) -> Path:
    raw = {k: dict(v) for k, v in CONFIG.items()}
    for k, v in sections.items():
        if "name" in v and k in ("data", "model", "method"):  # another entry: its own options
            raw[k] = dict(v)
        else:
            raw.setdefault(k, {}).update(v)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def train(config: Path, out: Path, *extra: str) -> int:
    return main(["train", str(config), "--out", str(out), "--quiet", *extra])


def stop_at(monkeypatch: pytest.MonkeyPatch, forward: int, how: str) -> None:
    """At the ``forward``-th training forward pass: SIGTERM to this process, or a Ctrl-C."""
    kill_at(monkeypatch, forward, "raise" if how == "sigint" else "signal")


def one_error_line(capsys: pytest.CaptureFixture[str], command: str = "train") -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"sparsetrain {command}: error: "), err
    return err.strip()


# --------------------------------------------------------------------------- compare


def test_compare_on_a_locked_folder_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_config(tmp_path)
    suite = tmp_path / "suite.yaml"
    grid = {"base": "config.yaml", "methods": ["rigl"], "sparsities": [0.8], "seeds": [0]}
    suite.write_text(yaml.safe_dump(grid))
    root = tmp_path / "grid"
    root.mkdir()
    with open(root / ".compare.lock", "w") as held:  # another compare holds the folder
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(["compare", str(suite), "--out", str(root)]) == 2
    err = one_error_line(capsys, "compare")
    assert f"another `sparsetrain compare` is running on {root}" in err
    assert not (root / "rigl-s0.8-seed0").exists()


def write_suite(tmp_path: Path, **more: Any) -> Path:
    write_config(tmp_path)
    suite = tmp_path / "suite.yaml"
    grid = {"base": "config.yaml", "methods": ["rigl"], "sparsities": [0.8], "seeds": [0, 1]}
    suite.write_text(yaml.safe_dump({**grid, **more}))
    return suite


@pytest.mark.parametrize(("how", "code"), [("sigterm", 143), ("sigint", 130)])
def test_compare_stopped_by_a_signal_exits_128_plus_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str, code: int
) -> None:
    suite = write_suite(tmp_path)
    stop_at(monkeypatch, 2, how)
    assert main(["compare", str(suite), "--out", str(tmp_path / "g")]) == code
    assert (tmp_path / "g" / "rigl-s0.8-seed0" / "checkpoint.pt").is_file()
    assert not (tmp_path / "g" / "rigl-s0.8-seed1").exists()  # the queued run never started


# --------------------------------------------------------------------------- one-line errors


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["method.sparsity=abc"], "method.sparsity must be a number, got 'abc'"),
        (["method.sparsity=[0.9]"], "method.sparsity must be a number, got [0.9]"),
    ],
    ids=["word", "list"],
)
def test_bad_values_name_the_key_and_the_type(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    assert train(write_config(tmp_path), tmp_path / "run", *args) == 2
    assert needle in one_error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_truncated_checkpoint_names_the_file_and_the_way_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, run = write_config(tmp_path), tmp_path / "run"
    assert train(config, run) == 0
    (run / "summary.json").unlink()
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    capsys.readouterr()
    assert train(config, run, "--resume") == 2
    err = one_error_line(capsys)
    assert (
        f"checkpoint {run / 'checkpoint.pt'} cannot be read: the file is truncated or corrupt ("
        in err
    )
    assert err.endswith("(a re-run `compare` then starts that run over)")  # whole, not cut
    assert train(config, run, "--overwrite") == 0  # the way out it names works


# --------------------------------------------------------------------------- what a run prints


def test_progress_lines_label_every_number_and_count_in_words(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert train(write_config(tmp_path), run) == 0
    log = (run / "train.log").read_text()
    assert "1 epoch x 4 steps" in log and "1 epochs" not in log
    line = next(x for x in log.splitlines() if x.startswith("epoch 1/1"))
    for label in ("train loss ", " acc ", "val loss ", "test loss ", "sparsity ", "elapsed "):
        assert label in line, label
    assert "/0." not in line  # no unlabelled loss/accuracy pair


# --------------------------------------------------------------------------- config on the CLI

ROOT = Path(__file__).resolve().parents[2]


def fake_cifar10(folder: Path) -> Path:
    """Five training batches of 4 images and a test batch of 3, as the python-pickle files."""
    import pickle

    import numpy as np

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in [*((f"data_batch_{i}", 4) for i in range(1, 6)), ("test_batch", 3)]:
        batch = {
            b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8),
            b"labels": [i % 10 for i in range(n)],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return folder


def test_switching_method_on_the_command_line_drops_the_old_methods_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command the CIFAR-10 GMP config's header suggests, planned on a tiny fake CIFAR-10."""
    config = ROOT / "configs" / "cifar10_resnet20_gmp.yaml"
    assert "method.name=rigl" in config.read_text()  # the header suggests it
    data = fake_cifar10(tmp_path / "cifar")
    args = ["plan", str(config), "method.name=rigl", "train.epochs=30", "--data-dir", str(data)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert not out.startswith("note:")  # update_interval is one option of both: kept
    assert "plan for 'rigl' over 30 optimizer steps" in out

    # an option of the old method only is dropped, with a note
    gmp_only = tmp_path / "gmp.yaml"
    gmp_only.write_text(
        config.read_text().replace(
            "  sparsity: 0.9\n", "  sparsity: 0.9\n  scope: global\n  initial_sparsity: 0.5\n"
        )
    )
    assert main(["plan", str(gmp_only), *args[2:]]) == 0
    assert capsys.readouterr().out.startswith(
        "note: method.name gmp -> rigl: dropped method.initial_sparsity (not an option of rigl)\n"
    )
    # an option given for the new method on the same command line is still checked strictly
    assert main([*args, "method.initial_sparsity=0.5"]) == 2
    assert "unknown key method.initial_sparsity for method 'rigl'" in one_error_line(capsys, "plan")
    # key=null removes a key, so its default applies (RigL's update_interval 100, not 3)
    mine = write_config(tmp_path)
    assert main(["plan", str(mine), "method.update_interval=null", "train.epochs=60"]) == 0
    assert "topology updates: 1 at steps 100\n" in capsys.readouterr().out


def test_run_config_yaml_holds_every_default_and_trains_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert train(write_config(tmp_path), run) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["method"]["update_interval"] == 3  # the user's
    assert saved["method"]["drop_fraction"] == 0.3 and saved["method"]["distribution"] == "erk"
    assert "total_steps" not in saved["method"] and "seed" not in saved["method"]  # derived
    assert saved["model"]["bias"] is True and saved["data"]["noise"] == 1.0
    capsys.readouterr()
    # the resolved file is a valid config; switched to SET, RigL's defaults give way to SET's
    assert train(run / "config.yaml", tmp_path / "set", "method.name=set") == 0
    note = capsys.readouterr().out.splitlines()[0]
    assert note.startswith("note: method.name rigl -> set: method.prune, method.grow, ")
    assert note.endswith(" back to set's defaults")
    again = yaml.safe_load((tmp_path / "set" / "config.yaml").read_text())["method"]
    assert again["distribution"] == "er" and again["drop_schedule"] == "constant"
    assert again["update_interval"] == 3 and again["sparsity"] == 0.8  # set by the user


def test_resume_of_a_finished_run_refuses_a_changed_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, run = write_config(tmp_path), tmp_path / "run"
    assert train(config, run) == 0
    before = (run / "summary.json").read_text()
    capsys.readouterr()
    assert train(config, run, "--resume", "train.epochs=3") == 2
    err = one_error_line(capsys)
    assert "cannot resume" in err and "differs at train.epochs (run: 1, now: 3)" in err
    assert (run / "summary.json").read_text() == before
    assert train(config, run, "--resume") == 0  # the same config: already finished
    assert "already finished" in capsys.readouterr().out


def test_overwrite_removes_the_previous_runs_exports_but_no_user_file(tmp_path: Path) -> None:
    config, run = write_config(tmp_path), tmp_path / "run"
    assert train(config, run) == 0
    assert main(["export", str(run), "--format", "compressed"]) == 0
    assert main(["export", str(run), "--format", "dense", "--out", str(run / "mine.pt")]) == 0
    outside = tmp_path / "elsewhere.pt"
    assert main(["export", str(run), "--format", "dense", "--out", str(outside)]) == 0
    (run / "model.dense.pt").write_text("the user's own file with an export's name")
    (run / "notes.txt").write_text("mine")
    assert (run / "model.compressed.safetensors").is_file()

    assert train(config, run, "--overwrite") == 0
    assert not (run / "model.compressed.safetensors").exists()
    assert not (run / "mine.pt").exists() and not (run / "exports.txt").exists()
    assert (run / "model.dense.pt").read_text().startswith("the user's own")  # not exported
    assert (run / "notes.txt").read_text() == "mine" and outside.is_file()
    assert (run / "summary.json").is_file()


# --------------------------------------------------------------------------- data files


def fake_fashion_mnist(folder: Path, n_train: int = 20, n_test: int = 6) -> Path:
    """The four Fashion-MNIST IDX files (unsigned bytes), tiny, seeded."""
    import struct

    import numpy as np

    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(n_test) % 10,
    }
    folder.mkdir(parents=True)
    for name, a in arrays.items():
        head = bytes([0, 0, 8, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
        (folder / name).write_bytes(head + a.astype(np.uint8).tobytes())
    return folder


FASHION = {"data": {"name": "fashion_mnist"}, "model": {"name": "mlp", "hidden_sizes": [8]}}


def test_data_dir_is_used_or_an_error_and_the_files_read_are_recorded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import hashlib

    config = write_config(tmp_path, **FASHION)
    for data_dir in ("/nonexistent", str(tmp_path)):  # missing; a folder without the files
        assert train(config, tmp_path / "run", "--data-dir", data_dir) == 2
        assert "fashion_mnist" in one_error_line(capsys)
        assert not (tmp_path / "run").exists()
    synthetic = write_config(tmp_path, "synthetic.yaml")
    assert train(synthetic, tmp_path / "run", "--data-dir", str(tmp_path)) == 2
    assert "reads no files: remove data_dir" in one_error_line(capsys)

    data = fake_fashion_mnist(tmp_path / "fmnist")
    run = tmp_path / "run"
    assert train(config, run, "--data-dir", str(data)) == 0
    files = json.loads((run / "summary.json").read_text())["data_files"]
    assert sorted(Path(f["path"]).name for f in files) == sorted(p.name for p in data.iterdir())
    for f in files:
        raw = Path(f["path"]).read_bytes()
        assert f["bytes"] == len(raw) and f["sha256"] == hashlib.sha256(raw).hexdigest()
    assert "data: read 4 files from " + str(data.resolve()) in (run / "train.log").read_text()


def test_resume_refuses_other_data_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config, run = write_config(tmp_path, **FASHION), tmp_path / "run"
    data = fake_fashion_mnist(tmp_path / "fmnist")
    with monkeypatch.context() as m:
        stop_at(m, 1, "sigint")
        assert train(config, run, "--data-dir", str(data)) == 130
    labels = data / "t10k-labels-idx1-ubyte"
    raw = bytearray(labels.read_bytes())
    raw[-1] = (raw[-1] + 1) % 10  # one test label changed: same size, same shapes
    labels.write_bytes(bytes(raw))
    capsys.readouterr()
    assert train(config, run, "--resume", "--data-dir", str(data)) == 2
    err = one_error_line(capsys)
    assert f"the data file {labels.resolve()} (sha256 " in err and "differs" in err


def test_a_given_data_dir_is_the_only_place_searched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sparsetrain.data import _mnist, load_dataset

    monkeypatch.setattr(_mnist, "FASHION_SYSTEM_DIR", fake_fashion_mnist(tmp_path / "system"))
    assert len(load_dataset("fashion_mnist", val_fraction=0).train) == 20  # no data_dir: found
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="fashion_mnist not found"):
        load_dataset("fashion_mnist", data_dir=tmp_path / "empty")  # no fallback to the system


# --------------------------------------------------------------------------- list


def test_list_methods_name_shows_options_defaults_and_help(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from sparsetrain.cli.listing import method_details
    from sparsetrain.config import sparsity_is_option
    from sparsetrain.methods import get_method_info, list_methods, method_options

    assert main(["list", "methods", "rigl"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("rigl: RigL")
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in out.splitlines()[3:]}
    assert rows["update_interval"][0] == "100" and rows["stop_fraction"][0] == "0.75"
    assert rows["drop_fraction"][1] == "ζ at ``begin_step``."  # from the docstring's Args
    assert "[CLI: train.epochs x steps per epoch]" in rows["total_steps"][1]
    for name in list_methods():  # every option of every method has a default and a help line
        text = method_details(name)
        for option in method_options(get_method_info(name).factory):
            line = next((x for x in text.splitlines() if x.split()[:1] == [option]), None)
            if option == "sparsity" and not sparsity_is_option(name):  # dense, STR
                assert line is None
                assert "sparsity: none" in text or "sparsity= is refused" in text
                continue
            assert line is not None and len(line.split()) >= 3, (name, option)

    assert main(["list", "methods", "rigel"]) == 2
    assert "Did you mean 'rigl'" in one_error_line(capsys, "list")
    assert main(["list", "models", "mlp"]) == 2
    assert "for methods only" in one_error_line(capsys, "list")


def test_sigterm_between_two_runs_of_compare_starts_no_more(tmp_path: Path) -> None:
    from sparsetrain.train.suite import load_suite, run_suite

    runs = load_suite(write_suite(tmp_path), tmp_path / "g")
    sent: list[str] = []

    def echo(line: str) -> None:
        if line.startswith("[start]  rigl-s0.8-seed1") and not sent:
            sent.append(line)
            os.kill(os.getpid(), signal.SIGTERM)  # after the first run, before the second

    outcomes = run_suite(runs, echo=echo)
    assert [(o.status, o.signum) for o in outcomes] == [("finished", None), ("interrupted", 15)]
    assert not (tmp_path / "g" / "rigl-s0.8-seed1").exists()
