"""The one registry type behind methods, models, datasets and criteria."""

from __future__ import annotations

import pytest

from sparsetrain._registry import Registry, plain_name


def test_lookup_normalises_and_unknown_names_list_valid_and_close_ones() -> None:
    reg: Registry[int] = Registry("model", normalise=plain_name)
    reg.add("wide_resnet", 20)
    reg.add("mlp", 1)
    assert reg.lookup(" Wide-ResNet ") == 20
    with pytest.raises(ValueError) as exc:
        reg.lookup("wide_resnt")
    assert (
        str(exc.value)
        == "unknown model 'wide_resnt'; valid: mlp, wide_resnet. Did you mean 'wide_resnet'?"
    )
    with pytest.raises(TypeError, match="model name must be a string, got int"):
        reg.lookup(3)


def test_registration_order_is_kept_and_valid_names_may_be_listed_in_it() -> None:
    reg: Registry[str] = Registry("prune criterion", sort_valid=False, strings_only=False)
    reg.add("set", "a")
    reg.add("magnitude", "b")
    assert list(reg) == ["set", "magnitude"]
    assert reg.names() == ["magnitude", "set"]
    assert reg.names("m*") == ["magnitude"]
    with pytest.raises(ValueError, match=r"valid: set, magnitude\.$"):
        reg.lookup(3)


def test_second_registration_warns_and_wins_and_entries_can_be_removed() -> None:
    reg: Registry[int] = Registry("method")
    reg.add("rigl", 1)
    with pytest.warns(UserWarning, match="method 'rigl' registered twice; the later one wins"):
        reg.add("rigl", 2)
    assert reg["rigl"] == 2 and len(reg) == 1
    assert reg.pop("rigl") == 2 and "rigl" not in reg
