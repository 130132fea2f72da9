"""Config loading, overrides and validation: every error names its key."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from sparsetrain.config import (
    ConfigError,
    ExperimentConfig,
    apply_overrides,
    diff_configs,
    load_config,
    parse_override,
)
from sparsetrain.train.build import check_config, lr_factor, method_kwargs, steps_per_epoch

BASE = {
    "data": {"name": "synthetic", "n_train": 64},
    "model": {"name": "mlp", "hidden_sizes": [16]},
    "method": {"name": "rigl", "sparsity": 0.8},
    "train": {"epochs": 2, "batch_size": 16},
}


def cfg(**sections: dict) -> ExperimentConfig:
    raw = {k: dict(v) for k, v in BASE.items()}
    for k, v in sections.items():
        raw.setdefault(k, {}).update(v)
    return ExperimentConfig.from_dict(raw)


def test_defaults_and_flat_options() -> None:
    c = cfg()
    assert c.optim.name == "sgd" and c.optim.nesterov and c.train.select == "best_val"
    assert c.method.options == {"sparsity": 0.8}
    assert c.data.options == {"n_train": 64}
    assert c.to_dict()["model"] == {"name": "mlp", "hidden_sizes": [16]}


def test_round_trip_through_yaml(tmp_path: Path) -> None:
    c = cfg(optim={"milestones": [1, 2], "betas": [0.8, 0.9]})
    (tmp_path / "c.yaml").write_text(c.to_yaml())
    again = load_config(tmp_path / "c.yaml")
    assert again == c and again.optim.milestones == (1, 2)


def test_overrides_are_yaml_typed(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(cfg().to_yaml())
    c = load_config(
        p, ["method.sparsity=0.95", "train.epochs=3", "optim.nesterov=false", "optim.lr=1e-3"]
    )
    assert c.method.options["sparsity"] == 0.95
    assert c.train.epochs == 3 and c.optim.nesterov is False and c.optim.lr == 1e-3
    assert parse_override("optim.milestones=[5, 8]") == (["optim", "milestones"], [5, 8])


def test_yaml_11_exponent_strings_read_as_floats() -> None:
    assert cfg(optim={"weight_decay": "5e-4"}).optim.weight_decay == 5e-4


@pytest.mark.parametrize(
    ("sections", "needle"),
    [
        ({"train": {"epoch": 3}}, "train.epoch; did you mean 'epochs'"),
        ({"train": {"epochs": "three"}}, "train.epochs must be an integer"),
        ({"train": {"epochs": 1.5}}, "train.epochs must be an integer"),
        ({"optim": {"nesterov": "yes"}}, "optim.nesterov must be true or false"),
        ({"optim": {"name": "adam"}}, "optim.name='adam'; did you mean 'adamw'"),
        ({"method": {"sparsity": 1.2}}, "method.sparsity must be in [0, 1)"),
        ({"train": {"batch_size": 0}}, "train.batch_size must be >= 1"),
        ({"optim": {"momentum": 0.0}}, "optim.nesterov=true needs optim.momentum > 0"),
        ({"data": {"val_fraction": 0.0}}, "train.select=best_val needs a validation split"),
    ],
)
def test_invalid_values_name_the_key(sections: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        cfg(**sections)
    assert needle in str(info.value)


def test_unknown_section_and_missing_data() -> None:
    with pytest.raises(ConfigError, match=r"unknown config section 'optimizer'.*'optim'"):
        ExperimentConfig.from_dict({**BASE, "optimizer": {}})
    with pytest.raises(ConfigError, match=r"missing config section 'data'"):
        ExperimentConfig.from_dict({"model": {"name": "mlp"}})
    with pytest.raises(ConfigError, match=r"missing model.name"):
        ExperimentConfig.from_dict({**BASE, "model": {"hidden_sizes": [4]}})


def test_registry_names_and_options_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"unknown method 'rigel'.*Did you mean 'rigl'"):
        check_config(cfg(method={"name": "rigel"}))
    with pytest.raises(ConfigError, match=r"method.update_intreval.*'update_interval'.*valid:"):
        check_config(cfg(method={"update_intreval": 5}))
    with pytest.raises(ConfigError, match=r"method.update_interval must be an integer"):
        check_config(cfg(method={"update_interval": "often"}))
    with pytest.raises(ConfigError, match=r"method.total_steps is set by the harness"):
        check_config(cfg(method={"total_steps": 10}))
    with pytest.raises(ConfigError, match=r"data.n_trian.*'n_train'"):
        check_config(cfg(data={"n_trian": 5}))
    with pytest.raises(ConfigError, match=r"unknown dataset 'cifar11'"):
        check_config(cfg(data={"name": "cifar11"}))
    with pytest.raises(ConfigError, match=r"model.hidden.*'hidden_sizes'"):
        check_config(cfg(model={"hidden": [3]}))


def test_harness_derives_total_steps_and_seed() -> None:
    c = cfg(train={"seed": 7, "grad_accum": 2})
    spe = steps_per_epoch(58, 16, 2)  # 4 batches -> 2 steps
    assert spe == 2
    kw = method_kwargs(c, spe)
    assert kw["total_steps"] == 4 and kw["seed"] == 7 and "steps_per_epoch" not in kw
    assert method_kwargs(cfg(method={"name": "optg"}), 3)["steps_per_epoch"] == 3


def test_bad_override_syntax() -> None:
    with pytest.raises(ConfigError, match=r"expected section.key=value"):
        apply_overrides({}, ["epochs"])
    with pytest.raises(ConfigError, match=r"unknown section 'trian'.*'train'"):
        apply_overrides({}, ["trian.epochs=3"])


def test_lr_schedules() -> None:
    c = cfg(optim={"schedule": "cosine", "warmup_epochs": 1.0, "lr": 1.0}, train={"epochs": 4})
    f = [lr_factor(s, c.optim, 2, 4) for s in range(8)]
    assert f[:2] == [0.5, 1.0]  # linear warmup over 2 steps
    assert f[2] == 1.0 and f[-1] < 0.1 and all(a >= b for a, b in itertools.pairwise(f[1:]))
    m = cfg(optim={"schedule": "multistep"}, train={"epochs": 4}).optim
    assert [lr_factor(s, m, 2, 4) for s in range(8)] == pytest.approx(
        [1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01]
    )
    e = cfg(optim={"schedule": "cosine", "schedule_unit": "epoch"}, train={"epochs": 4}).optim
    per_epoch = [lr_factor(s, e, 2, 4) for s in range(8)]
    assert per_epoch[0] == per_epoch[1] == 1.0 and per_epoch[2] == per_epoch[3] < 1.0


def test_diff_configs() -> None:
    a, b = cfg().to_dict(), cfg(train={"epochs": 3}).to_dict()
    assert diff_configs(a, b) == ["train.epochs"]
