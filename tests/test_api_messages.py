"""The Python API as the README shows it: the two lines for every method, and its errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import sparsetrain
from sparsetrain import create_method, list_methods

README = Path(__file__).resolve().parents[1] / "README.md"

# What the README says each method needs beyond `create_method(name, sparsity=0.9,
# total_steps=len(loader) * epochs)`: extra options, or no `sparsity=` at all (srste: its N:M
# pattern sets it).
EXTRA = {"optg": {"steps_per_epoch": 4}}
NO_SPARSITY = {"dense", "str", "scl", "srste"}
STEPS, PER_EPOCH = 8, 4


def two_lines(name: str, **kwargs: object) -> sparsetrain.SparsityMethod:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    method = create_method(name, total_steps=STEPS, **kwargs)
    method.attach(model, optimizer)
    for step in range(STEPS):
        g = torch.Generator().manual_seed(step)
        x = torch.randn(16, 8, generator=g)
        loss = nn.functional.cross_entropy(model(x), (x[:, 0] > 0).long())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    method.finish()
    return method


@pytest.mark.parametrize("name", list_methods())
def test_readme_two_lines_work_for_every_method_as_the_readme_says(name: str) -> None:
    kwargs = {} if name in NO_SPARSITY else {"sparsity": 0.9}
    method = two_lines(name, **kwargs, **EXTRA.get(name, {}))
    if name not in NO_SPARSITY:
        assert method.report().sparsity == pytest.approx(0.9, abs=0.02)
    text = " ".join(README.read_text().split())
    for needy in (*EXTRA, *NO_SPARSITY):
        assert f"`{needy}`" in text.split("What some methods need instead:")[1][:900], needy


def test_optg_without_steps_per_epoch_says_what_to_pass() -> None:
    with pytest.raises(ValueError, match=r"^optg: .*pass steps_per_epoch=len\(loader\)"):
        create_method("optg", sparsity=0.9, total_steps=STEPS)


@pytest.mark.parametrize("name", ["str", "scl"])
def test_emergent_methods_refuse_a_sparsity_target(name: str) -> None:
    with pytest.raises(ValueError, match=rf"^{name}: does not take sparsity=0.9: .*emergent") as e:
        create_method(name, sparsity=0.9, total_steps=STEPS)
    assert "target_sparsity=0.9" not in str(e.value)  # the user wrote sparsity=
    if name == "scl":  # the option that does target a sparsity is named
        assert "lambda_mode='adaptive'" in str(e.value)
        method = two_lines("scl", sparsity=0.5, lambda_mode="adaptive")
        assert method.sparsity == 0.5
    else:
        assert "no option targets a sparsity" in str(e.value)


@pytest.mark.parametrize("name", ["rigl", "set", "mest", "dst", "gmp", "granet", "st3_sigma"])
def test_missing_total_steps_names_the_method_the_user_asked_for(name: str) -> None:
    with pytest.raises(ValueError, match=rf"^{name}: needs .*total_steps"):
        create_method(name, sparsity=0.9)
