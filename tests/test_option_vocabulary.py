"""One option vocabulary: renamed options, one validation format, old configs, README and list.

Every old option name builds the same method as its new name (with a ``DeprecationWarning``
naming the new one); both together are a ``TypeError``; a bad value is refused as
``"<method>: <option> must be <rule>, got <value>"`` or ``"<method>: unknown <option> <value>;
valid: ..."``; saved configs written with the old names resolve (and so pool in reports) like
new ones; the README's tables name only options that exist.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml

from sparsetrain.cli.listing import method_details
from sparsetrain.config import ExperimentConfig
from sparsetrain.methods import (
    SparsityMethod,
    create_method,
    get_method_info,
    list_methods,
    method_options,
)
from sparsetrain.methods.options import declared_checks
from sparsetrain.methods.registry import method_class
from sparsetrain.train.build import check_method

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

# (method, an old option name, its value, other options the method needs): the names the
# method layer accepted before the library's first release, now unknown options
OLD_NAMES: list[tuple[str, str, Any, dict[str, Any]]] = [
    ("gmp", "interval", 7, {"total_steps": 100}),
    ("granet", "interval", 7, {"total_steps": 100}),
    ("st3", "ramp_begin_step", 4, {"total_steps": 100}),
    ("st3_sigma", "fix_step", 90, {"total_steps": 100}),
    ("dnw", "ramp_end_step", 10, {}),
    ("optg", "first_layer_dense", True, {"total_steps": 10, "steps_per_epoch": 2}),
    ("optg", "mask_lr", 0.3, {"total_steps": 10, "steps_per_epoch": 2}),
    ("scl", "target_sparsity", 0.7, {"lambda_mode": "adaptive"}),
    ("rigl", "order", "before", {"total_steps": 10}),
]


@pytest.mark.parametrize(("name", "old", "value", "extra"), OLD_NAMES)
def test_an_old_name_is_an_unknown_option_with_the_valid_names(
    name: str, old: str, value: Any, extra: dict[str, Any]
) -> None:
    kind = ValueError if old == "order" else TypeError  # an old *value* of order
    with pytest.raises(kind) as got:
        create_method(name, **{old: value}, **extra)
    assert "\n" not in str(got.value)
    assert ("valid: auto, pre_step, post_step" if old == "order" else "valid: ") in str(got.value)


def test_committed_runs_use_only_current_option_names() -> None:
    for path in sorted(RESULTS.rglob("config.yaml")):
        raw = yaml.safe_load(path.read_text())
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            check_method(ExperimentConfig.from_dict(raw))  # unknown options raise


def _settings(method: SparsityMethod) -> dict[str, Any]:
    """What an unattached method holds: its option values and schedules (no tensors)."""
    plain = int | float | str | bool | tuple | None
    return {
        k: v for k, v in vars(method).items() if isinstance(v, plain) or dataclasses.is_dataclass(v)
    }


# (method, options, error type, the whole message after "<method>: ")
BAD_VALUES: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    ("gmp", {"update_interval": 0}, ValueError, "update_interval must be an int >= 1, got 0"),
    ("gmp", {"update_interval": 2.5}, TypeError, "update_interval must be an int >= 1, got 2.5"),
    ("granet", {"regrow_scope": "x"}, ValueError, "unknown regrow_scope 'x'; valid: layer, global"),
    ("rigl", {"scope": "x"}, ValueError, "unknown scope 'x'; valid: layer, global"),
    ("dst", {"drop_fraction": 0}, ValueError, "drop_fraction must be a number in (0, 1], got 0"),
    ("set", {"execution": "x"}, ValueError, "unknown execution 'x'; valid: dense, sparse, auto"),
    (
        "static",
        {"distribution": "x"},
        ValueError,
        "unknown distribution 'x'; valid: uniform, er, erk, global",
    ),
    ("mest", {"total_steps": 0}, ValueError, "total_steps must be an int >= 1 or None, got 0"),
    ("dnw", {"scope": "x"}, ValueError, "unknown scope 'x'; valid: layer, global"),
    (
        "srste",
        {"structure": "1:0"},
        ValueError,
        "bad structure '1:0'; valid: 'unstructured', an 'N:M' pattern such as '2:4', or "
        "'block:RxC' such as 'block:4x4'",
    ),
    ("st3", {"update_interval": 0}, ValueError, "update_interval must be an int >= 1, got 0"),
    ("st3_sigma", {"sigma": "x"}, ValueError, "unknown sigma 'x'; valid: None, dims, glorot"),
    ("optg", {"beta": 0}, ValueError, "beta must be a number > 0, got 0"),
    ("optg", {"score_lr": -1.0}, ValueError, "score_lr must be a number > 0 or None, got -1.0"),
    (
        "scl",
        {"mask_momentum": 1.0},
        ValueError,
        "mask_momentum must be a number in [0, 1), got 1.0",
    ),
    ("scl", {"freeze_step": "5"}, TypeError, "freeze_step must be an int >= 0 or None, got '5'"),
    ("str", {"threshold_lr": 0}, ValueError, "threshold_lr must be a number > 0 or None, got 0"),
    (
        "dense",
        {"weight_init": "x"},
        ValueError,
        "unknown weight_init 'x'; valid: default, kaiming_normal, sparse_layer_scaled, "
        "sparse_unit_scaled",
    ),
]


@pytest.mark.parametrize(("name", "options", "kind", "message"), BAD_VALUES)
def test_one_error_format(
    name: str, options: dict[str, Any], kind: type[Exception], message: str
) -> None:
    needs = {"total_steps": 100, "steps_per_epoch": 10} if name == "optg" else {"total_steps": 100}
    with pytest.raises(kind) as err:
        create_method(name, **{**needs, **options})
    assert str(err.value) == f"{name}: {message}"


def test_unknown_option_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"^method 'gmp' got unknown option\(s\) \['intervall'\]"):
        create_method("gmp", intervall=5, total_steps=100)


@pytest.mark.parametrize("name", list_methods())
def test_every_declared_check_names_an_option_of_the_method(name: str) -> None:
    factory = get_method_info(name).factory
    options = method_options(factory)
    declared = declared_checks(method_class(factory))
    assert declared and set(declared) <= set(options)


def test_create_method_checks_every_declared_option() -> None:
    with pytest.raises(ValueError, match=r"^gmp: update_interval must be an int >= 1, got 0$"):
        create_method("gmp", update_interval=0, total_steps=10)


# --------------------------------------------------------------------------- configs


def _config(method: dict[str, Any]) -> dict[str, Any]:
    return {
        "data": {"name": "synthetic"},
        "model": {"name": "mlp"},
        "method": method,
        "train": {"epochs": 1},
    }


# --------------------------------------------------------------------------- README and list


def _readme_method_rows() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \|(.*)\|$", text, flags=re.M)
    return {name: body for name, body in rows if name in list_methods()}


def test_readme_methods_table_names_only_options_of_each_method() -> None:
    every = {o for n in list_methods() for o in method_options(get_method_info(n).factory)}
    rows = _readme_method_rows()
    assert set(rows) == set(list_methods())
    for name, body in rows.items():
        own = method_options(get_method_info(name).factory)
        for option in re.findall(r"`(\w+)=", body):
            assert option in own, f"README row {name}: `{option}=` is not an option of {name}"
        for word in re.findall(r"`(\w+)`", body):
            assert word not in every or word in own, f"README row {name}: `{word}`"


@pytest.mark.parametrize("name", ["optg", "scl", "st3", "gmp", "dnw", "rigl"])
def test_list_methods_shows_the_new_names_only(name: str) -> None:
    text = method_details(name)
    table = text
    listed = [line.split()[0] for line in table.splitlines()[4:]]
    options = method_options(get_method_info(name).factory)
    assert set(listed) <= set(options)
    assert set(options) - set(listed) <= {"sparsity"}  # dense / purely emergent methods only
    assert "renamed" not in text


def test_switching_to_scl_drops_the_base_target_unless_given() -> None:
    from sparsetrain.config import switch_entry

    options = {"name": "rigl", "sparsity": 0.8, "update_interval": 5}
    dropped, reset = switch_entry(options, "method", "rigl", "scl")
    assert (dropped, reset) == (["sparsity", "update_interval"], [])
    adaptive = {"name": "rigl", "sparsity": 0.8, "lambda_mode": "adaptive"}
    assert switch_entry(adaptive, "method", "rigl", "scl", keep=["sparsity", "lambda_mode"])
    assert adaptive["sparsity"] == 0.8
