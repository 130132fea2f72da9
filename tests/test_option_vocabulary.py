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
from sparsetrain.config import ConfigError, ExperimentConfig
from sparsetrain.methods import (
    SparsityMethod,
    create_method,
    get_method_info,
    list_methods,
    method_options,
    method_renames,
)
from sparsetrain.methods.options import declared_checks
from sparsetrain.methods.registry import method_class
from sparsetrain.train.aggregate import flatten
from sparsetrain.train.build import check_method, resolve_config, resolved_dict

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

# (method, old name, value, other options the method needs)
RENAMES: list[tuple[str, str, Any, dict[str, Any]]] = [
    ("gmp", "interval", 7, {"total_steps": 100}),
    ("granet", "interval", 7, {"total_steps": 100}),
    ("st3", "ramp_begin_step", 4, {"total_steps": 100}),
    ("st3", "ramp_end_step", 40, {"total_steps": 100}),
    ("st3", "fix_step", 90, {"total_steps": 100}),
    ("st3_sigma", "ramp_begin_step", 4, {"total_steps": 100}),
    ("st3_sigma", "ramp_end_step", 40, {"total_steps": 100}),
    ("st3_sigma", "fix_step", 90, {"total_steps": 100}),
    ("dnw", "ramp_begin_step", 2, {"end_step": 10}),
    ("dnw", "ramp_end_step", 10, {}),
    ("optg", "first_layer_dense", True, {"total_steps": 10, "steps_per_epoch": 2}),
    ("optg", "last_layer_dense", True, {"total_steps": 10, "steps_per_epoch": 2}),
    ("optg", "mask_lr", 0.3, {"total_steps": 10, "steps_per_epoch": 2}),
    ("optg", "mask_lr_mode", "as_released", {"total_steps": 10, "steps_per_epoch": 2}),
    ("scl", "target_sparsity", 0.7, {"lambda_mode": "adaptive"}),
]


def _settings(method: SparsityMethod) -> dict[str, Any]:
    """What an unattached method holds: its option values and schedules (no tensors)."""
    plain = int | float | str | bool | tuple | None
    return {
        k: v for k, v in vars(method).items() if isinstance(v, plain) or dataclasses.is_dataclass(v)
    }


def test_every_rename_is_listed_here() -> None:
    listed = {(m, old) for m, old, _, _ in RENAMES}
    registry = {
        (name, old)
        for name in list_methods()
        for old in method_renames(get_method_info(name).factory)
    }
    assert listed == registry


@pytest.mark.parametrize(("name", "old", "value", "extra"), RENAMES)
def test_old_name_warns_and_builds_the_same_method(
    name: str, old: str, value: Any, extra: dict[str, Any]
) -> None:
    new = method_renames(get_method_info(name).factory)[old]
    with pytest.warns(DeprecationWarning, match=rf"^{name}: option {old} is deprecated.*{new}"):
        legacy = create_method(name, **{old: value}, **extra)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        current = create_method(name, **{new: value}, **extra)
    assert _settings(legacy) == _settings(current)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        default = create_method(name, **extra) if name != "scl" else create_method(name)
    assert _settings(legacy) != _settings(default)  # the value counted
    with pytest.raises(TypeError, match=rf"^{name}: {old} and {new} both given"):
        create_method(name, **{old: value, new: value}, **extra)


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


def test_a_config_with_old_names_warns_and_resolves_to_the_new_ones() -> None:
    cfg = ExperimentConfig.from_dict(_config({"name": "gmp", "interval": 10}))
    with pytest.warns(DeprecationWarning, match=r"method\.interval .* method\.update_interval"):
        assert check_method(cfg) == {"update_interval": 10}
    with pytest.warns(DeprecationWarning):
        resolved = resolve_config(cfg).to_dict()["method"]
    assert resolved["update_interval"] == 10 and "interval" not in resolved
    both = _config({"name": "gmp", "interval": 10, "update_interval": 10})
    with pytest.raises(ConfigError, match=r"method\.interval and method\.update_interval both"):
        check_method(ExperimentConfig.from_dict(both))


def _renamed_section(method: dict[str, Any]) -> dict[str, Any]:
    """A saved method section as the new version writes it: old keys renamed (OR for OptG)."""
    renamed = method_renames(get_method_info(method["name"]).factory)
    out = {k: v for k, v in method.items() if k not in renamed}
    for old, new in renamed.items():
        if old in method and method[old] not in (None, False):
            out[new] = method[old]
    return out


@pytest.mark.parametrize(
    "run",
    [
        "cnn1d_mnist1d/optg-dense-first-s0.9-seed0",  # first_layer_dense: true, mask_lr: null
        "cnn1d_mnist1d/scl-adaptive-dense-first-s0.9-seed0",  # target_sparsity: 0.9
        "cnn1d_mnist1d/gmp-s0.9-seed0",  # interval: 100
    ],
)
def test_committed_runs_with_old_names_pool_with_new_ones(run: str) -> None:
    saved = yaml.safe_load((RESULTS / run / "config.yaml").read_text())
    old_keys = set(method_renames(get_method_info(saved["method"]["name"]).factory))
    assert old_keys & set(saved["method"])  # written with the old names
    new = {**saved, "method": _renamed_section(saved["method"])}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a report over old runs warns about nothing
        old_resolved, new_resolved = resolved_dict(saved), resolved_dict(new)
    assert not old_keys & set(old_resolved["method"])
    assert flatten(old_resolved) == flatten(new_resolved)  # the pooling key of `report`


def test_saved_optg_config_keeps_the_or_of_both_dense_first_names() -> None:
    base = {"name": "optg", "dense_first": False, "dense_last": False}
    old = _config({**base, "first_layer_dense": True, "last_layer_dense": False})
    assert resolved_dict(old)["method"]["dense_first"] is True
    assert resolved_dict(old)["method"]["dense_last"] is False
    clash = _config({"name": "gmp", "interval": 10, "update_interval": 20})
    assert resolved_dict(clash) == clash  # a real conflict: compared as saved


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


def test_readme_renamed_table_is_the_registry_s() -> None:
    text = (ROOT / "README.md").read_text()
    table = re.findall(r"^\| `(\w+)` \| `(\w+)` \| (`.*`) \|$", text, flags=re.M)
    readme = {(old, new, m) for old, new, ms in table for m in re.findall(r"`(\w+)`", ms)}
    registry = {
        (old, new, name)
        for name in list_methods()
        for old, new in method_renames(get_method_info(name).factory).items()
    }
    assert readme == registry
    every = {o for n in list_methods() for o in method_options(get_method_info(n).factory)}
    for old in {old for old, _, _ in registry} - every:  # (mask_lr stays SCL's own option)
        lines = [x for x in text.splitlines() if f"`{old}`" in x or f"`{old}=" in x]
        assert all(x.startswith(f"| `{old}` |") for x in lines), old


@pytest.mark.parametrize("name", ["optg", "scl", "st3", "gmp", "dnw", "rigl"])
def test_list_methods_shows_the_new_names_only(name: str) -> None:
    text = method_details(name)
    table, _, renamed_line = text.partition("\nrenamed")
    listed = [line.split()[0] for line in table.splitlines()[4:]]
    options = method_options(get_method_info(name).factory)
    assert set(listed) <= set(options)
    assert set(options) - set(listed) <= {"sparsity"}  # dense / purely emergent methods only
    renames = method_renames(get_method_info(name).factory)
    for old, new in renames.items():
        assert old not in listed and new in listed
        assert f"{old} -> {new}" in renamed_line
    if not renames:
        assert not renamed_line


def test_the_command_line_shows_one_line_per_old_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sparsetrain.cli import main

    config = tmp_path / "c.yaml"
    raw = _config({"name": "gmp", "sparsity": 0.8, "interval": 2})
    config.write_text(yaml.safe_dump({**raw, "train": {"epochs": 4}}))  # 2 steps per epoch
    assert main(["plan", str(config)]) == 0
    out, err = capsys.readouterr()
    assert err == (
        "warning: gmp: option method.interval is deprecated; it is now called "
        "method.update_interval (the old name works until the next release)\n"
    )
    assert "topology updates: 3 at steps 2, 4, 6\n" in out  # every 2 steps to 0.75 x 8


def test_switching_to_scl_drops_the_base_target_unless_given() -> None:
    from sparsetrain.config import switch_entry

    options = {"name": "rigl", "sparsity": 0.8, "update_interval": 5}
    dropped, reset = switch_entry(options, "method", "rigl", "scl")
    assert (dropped, reset) == (["sparsity", "update_interval"], [])
    adaptive = {"name": "rigl", "sparsity": 0.8, "lambda_mode": "adaptive"}
    assert switch_entry(adaptive, "method", "rigl", "scl", keep=["sparsity", "lambda_mode"])
    assert adaptive["sparsity"] == 0.8
