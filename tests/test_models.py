from collections.abc import Iterator

import pytest
import torch
from torch import nn

from sparsetrain.models import (
    ModelInfo,
    count_parameters,
    create_model,
    get_model_info,
    list_models,
    uses_channels_last,
)

EXPECTED = {
    "mlp", "lenet300_100", "mlp_cifar", "lenet5", "small_convnet", "cnn1d",
    "resnet20", "resnet32", "resnet56", "resnet50", "vgg16", "vgg19", "wrn34_2",
}  # fmt: skip
INPUT_SHAPES = {
    "mlp": (1, 28, 28),
    "lenet300_100": (1, 28, 28),
    "lenet5": (1, 28, 28),
    "cnn1d": (1, 40),
}  # everything else: (3, 32, 32)
NOT_CONV2D = {"mlp", "lenet300_100", "mlp_cifar", "cnn1d"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # The test machine is shared; one thread is faster than oversubscribed cores.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build(name: str, num_classes: int = 10, seed: int = 0, **options) -> nn.Module:
    torch.manual_seed(seed)
    shape = INPUT_SHAPES.get(name, (3, 32, 32))
    return create_model(name, num_classes=num_classes, input_shape=shape, **options)


def test_registry_lists_every_model() -> None:
    models = list_models()
    assert set(models) == EXPECTED | {"gpt_tiny"}  # the language model: test_language_model.py
    assert list(models) == sorted(models)
    assert all(isinstance(d, str) and d and "\n" not in d for d in models.values())
    assert list(list_models("vgg*")) == ["vgg16", "vgg19"]
    assert isinstance(get_model_info("resnet20"), ModelInfo)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_model_builds_and_forwards(name: str) -> None:
    model = build(name, num_classes=7)
    shape = INPUT_SHAPES.get(name, (3, 32, 32))
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape == (2, 7) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert uses_channels_last(name) == (name not in NOT_CONV2D)


@pytest.mark.parametrize(
    ("name", "shape", "count"),
    [
        ("lenet300_100", (1, 28, 28), 266_610),  # 784*300+300 + 300*100+100 + 100*10+10
        ("mlp", (1, 28, 28), 266_610),
        ("lenet5", (1, 28, 28), 431_080),  # 520 + 25,050 + 400,500 + 5,010
        ("mlp_cifar", (3, 32, 32), 3_676_682),  # 3072*1024+1024 + 1024*512+512 + 5130
        ("small_convnet", (3, 32, 32), 94_538),  # 896 + 18,496 + 73,856 + 1,290
        ("cnn1d", (1, 40), 29_258),  # 192 + 10,304 + 12,352 + 6,410
        # CIFAR ResNets: option-A counts (269,722 / 464,154 / 853,018) plus the two 1x1-conv + BN
        # projections, 16*32 + 2*32 + 32*64 + 2*64 = 2,752 parameters.
        ("resnet20", (3, 32, 32), 272_474),
        ("resnet32", (3, 32, 32), 466_906),
        ("resnet56", (3, 32, 32), 855_770),
    ],
)
def test_pinned_parameter_counts(name: str, shape: tuple[int, ...], count: int) -> None:
    model = create_model(name, num_classes=10, input_shape=shape)
    assert count_parameters(model) == count


def test_resnet50_stems() -> None:
    small = create_model("resnet50", num_classes=10, input_shape=(3, 32, 32))
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, nn.Identity)
    big = create_model("resnet50", num_classes=1000, input_shape=(3, 224, 224))
    assert big.conv1.kernel_size == (7, 7) and isinstance(big.maxpool, nn.MaxPool2d)
    assert count_parameters(big) == 25_557_032  # torchvision's ResNet-50


def test_lenet5_flatten_size_follows_input() -> None:
    assert create_model("lenet5", num_classes=10, input_shape=(1, 28, 28)).fc1.in_features == 800
    model = create_model("lenet5", num_classes=10, input_shape=(3, 32, 32))
    assert model.fc1.in_features == 50 * 5 * 5
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_mlp_options_and_names() -> None:
    model = create_model("mlp", num_classes=3, input_shape=(2, 5), hidden_sizes=[4])
    assert [n for n, _ in model.named_parameters()] == [
        "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias",
    ]  # fmt: skip
    assert count_parameters(model) == 10 * 4 + 4 + 4 * 3 + 3
    linear = create_model("mlp", num_classes=3, input_shape=(4,), hidden_sizes=(), bias=False)
    assert count_parameters(linear) == 12


def test_same_seed_same_weights() -> None:
    for name in ("lenet5", "resnet20", "cnn1d", "wrn34_2"):
        a, b, c = build(name, seed=0), build(name, seed=0), build(name, seed=1)
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
            assert ka == kb and torch.equal(va, vb)
        assert not torch.equal(a.state_dict()["conv1.weight"], c.state_dict()["conv1.weight"])


def test_kaiming_init_scale() -> None:
    model = build("resnet56")
    w = model.layer3[0].conv2.weight  # fan-in 64 * 3 * 3
    expected = (2.0 / (64 * 9)) ** 0.5
    assert abs(w.std().item() / expected - 1) < 0.05
    assert torch.equal(model.layer3[0].bn2.weight, torch.ones(64))
    assert torch.equal(model.fc.bias, torch.zeros(10))


def test_wrn_dropout_option_and_depth() -> None:
    plain = build("wrn34_2")
    assert len(plain.layer1) == 5 and plain.fc.in_features == 128
    assert not any(isinstance(m, nn.Dropout) for m in plain.modules())
    dropped = build("wrn34_2", dropout=0.2)
    assert sum(isinstance(m, nn.Dropout) and m.p == 0.2 for m in dropped.modules()) == 15
    with pytest.raises(ValueError, match="dropout must be in"):
        build("wrn34_2", dropout=1.5)


def test_channels_last_gives_same_output() -> None:
    model = build("resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.to(memory_format=torch.channels_last))
    assert torch.allclose(ref, out, atol=1e-4)


def test_count_parameters_counts_shared_once_and_trainable() -> None:
    shared = nn.Linear(3, 3)
    model = nn.Sequential(shared, shared)
    assert count_parameters(model) == 12
    shared.bias.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 9


def test_unknown_name_and_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'resnet2'.*Did you mean .*'resnet20'"):
        create_model("resnet2", num_classes=10, input_shape=(3, 32, 32))
    with pytest.raises(ValueError, match="Did you mean 'lenet5'"):
        uses_channels_last("lenet_5")
    assert get_model_info("LeNet300-100").name == "lenet300_100"
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['hiden_sizes'\]; valid: hidden"):
        create_model("mlp", num_classes=10, input_shape=(1, 28, 28), hiden_sizes=(3,))
    with pytest.raises(TypeError, match=r"unknown option.*valid: none"):
        create_model("lenet5", num_classes=10, input_shape=(1, 28, 28), width=2)
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        create_model("mlp", num_classes=0, input_shape=(4,))
    with pytest.raises(TypeError, match="num_classes must be an int"):
        create_model("mlp", num_classes="10", input_shape=(4,))
    with pytest.raises(ValueError, match="input_shape must be positive ints"):
        create_model("mlp", num_classes=10, input_shape=(0, 4))
    with pytest.raises(ValueError, match=r"lenet5 needs input_shape with 3 dims"):
        create_model("lenet5", num_classes=10, input_shape=(1, 40))
    with pytest.raises(ValueError, match="at least 16x16"):
        create_model("lenet5", num_classes=10, input_shape=(1, 8, 8))
    with pytest.raises(ValueError, match=r"cnn1d needs input_shape with 2 dims, e\.g\. \(1, 40\)"):
        create_model("cnn1d", num_classes=10, input_shape=(1, 28, 28))


def test_models_register_themselves_by_module() -> None:
    # the package imports each of its modules: every decorated factory is registered, no list
    import re
    from pathlib import Path

    import sparsetrain.models as pkg

    declared = {
        name
        for path in Path(pkg.__file__).parent.glob("*.py")
        for name in re.findall(r'@register_model\(\s*"(\w+)"', path.read_text())
    }
    assert declared == EXPECTED | {"gpt_tiny"} == set(list_models())
