"""Model registry: the networks of the sparse-training papers, in plain ``torch.nn``.

>>> model = create_model("resnet20", num_classes=10, input_shape=(3, 32, 32))
>>> round(count_parameters(model) / 1e6, 2), uses_channels_last("resnet20")
(0.27, True)

Every module of this package is imported here, so a model registers by existing: a file with a
function decorated by :func:`register_model` is all a new model needs (``list_models()`` or
``sparsetrain list models`` shows them all). Every model takes ``num_classes`` and the
per-example ``input_shape`` and returns logits. Models that the papers initialise with
Kaiming-normal (ResNets, VGG, WRN) do so here; MLPs and the small conv nets keep PyTorch's
default initialisation, as their reference code does.
"""

import importlib
import pkgutil

from sparsetrain.models._registry import (
    ModelInfo,
    count_parameters,
    create_model,
    get_model_info,
    list_models,
    register_model,
    uses_channels_last,
)
from sparsetrain.models.convnets import CNN1d, LeNet5, SmallConvNet
from sparsetrain.models.mlp import MLP
from sparsetrain.models.resnet import BasicBlock, Bottleneck, ResNet, kaiming_init
from sparsetrain.models.vgg import VGG
from sparsetrain.models.wide_resnet import PreActBlock, WideResNet

__all__ = [
    "MLP",
    "VGG",
    "BasicBlock",
    "Bottleneck",
    "CNN1d",
    "LeNet5",
    "ModelInfo",
    "PreActBlock",
    "ResNet",
    "SmallConvNet",
    "WideResNet",
    "count_parameters",
    "create_model",
    "get_model_info",
    "kaiming_init",
    "list_models",
    "register_model",
    "uses_channels_last",
]

for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")
