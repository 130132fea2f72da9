"""Residual networks: CIFAR ResNet-20/32/56 (BasicBlocks) and the bottleneck ResNet-50.

References:
    He et al. 2016, "Deep Residual Learning for Image Recognition",
    https://arxiv.org/abs/1512.03385.

CIFAR ResNets follow the ST-3 and Fantastic Weights code: a 3x3 stem of 16
channels, three stages of 16/32/64 channels with (depth − 2)/6 BasicBlocks each, and 1x1-conv + BN
*projection* shortcuts where the shape changes (He et al.'s option B, not the parameter-free
option A), then global average pooling and a linear head.

ResNet-50 is the ImageNet bottleneck network (stride in the 3x3 conv, "v1.5"). For inputs of
side <= 64 the stem is a 3x3 stride-1 conv without max-pool (the usual CIFAR adaptation), so a
32x32 image still has 4x4 positions in the last stage; larger inputs get the 7x7 stride-2 conv
and the 3x3 max-pool. ``cifar_stem`` overrides the choice.

Initialisation follows the Kaiming-normal fan-in of ST-3's official code, applied here to every
conv and linear weight with the ReLU gain; biases zero; BatchNorm γ = 1, β = 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sparsetrain.models._registry import expect_rank, register_model


def kaiming_init(model: nn.Module) -> None:
    """Kaiming-normal (fan-in, ReLU) conv/linear weights, zero biases, BatchNorm γ = 1, β = 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _projection(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    """1x1-conv + BN shortcut where the shape changes, identity otherwise."""
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes)
    )


class BasicBlock(nn.Module):
    """conv3x3 → BN → ReLU → conv3x3 → BN, plus the shortcut, then ReLU."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _projection(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output ``(B, planes, H / stride, W / stride)``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """conv1x1 → conv3x3 (stride) → conv1x1 (×4 channels), BN after each, plus the shortcut."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = _projection(in_planes, out_planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output ``(B, 4 · planes, H / stride, W / stride)``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """A ResNet: stem, stages ``layer1..layerN`` of residual blocks, global avg-pool, ``fc``.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        blocks_per_stage: Number of blocks in each stage.
        widths: Base channels of each stage (the block's ``planes``); stage i > 1 has stride 2.
        in_channels: Input channels.
        num_classes: Output size.
        stem: ``"cifar"`` (3x3 stride-1 conv, no pool) or ``"imagenet"`` (7x7 stride-2 conv
            and 3x3 stride-2 max-pool).
        stem_width: Output channels of the stem.
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        blocks_per_stage: Sequence[int],
        widths: Sequence[int],
        in_channels: int,
        num_classes: int,
        stem: str = "cifar",
        stem_width: int = 16,
    ) -> None:
        super().__init__()
        if stem == "cifar":
            self.conv1 = nn.Conv2d(in_channels, stem_width, 3, padding=1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, stem_width, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(stem_width)
        planes_in = stem_width
        stages = []
        for i, (n, width) in enumerate(zip(blocks_per_stage, widths, strict=True)):
            blocks = []
            for j in range(n):
                blocks.append(block(planes_in, width, stride=2 if i > 0 and j == 0 else 1))
                planes_in = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.num_stages = len(stages)
        for i, stage in enumerate(stages, start=1):
            self.add_module(f"layer{i}", stage)
        self.fc = nn.Linear(planes_in, num_classes)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` for images ``(B, C, H, W)``."""
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(x.mean(dim=(2, 3)))  # global average pool: (B, C_last)


def cifar_resnet(depth: int, *, num_classes: int, input_shape: tuple[int, ...]) -> ResNet:
    """The CIFAR ResNet of depth 6n + 2 (20, 32, 44, 56, 110, …) with projection shortcuts."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n + 2 (20, 32, 56, ...), got {depth}")
    expect_rank(f"resnet{depth}", input_shape, 3, "(3, 32, 32)")
    n = (depth - 2) // 6
    return ResNet(BasicBlock, (n, n, n), (16, 32, 64), input_shape[0], num_classes)


@register_model(
    "resnet20", description="CIFAR ResNet-20 (16/32/64, 0.27M params)", channels_last=True
)
def resnet20(*, num_classes: int, input_shape: tuple[int, ...]) -> ResNet:
    """ResNet-20 for CIFAR (ST-3's CIFAR-10 backbone)."""
    return cifar_resnet(20, num_classes=num_classes, input_shape=input_shape)


@register_model(
    "resnet32", description="CIFAR ResNet-32 (16/32/64, 0.47M params)", channels_last=True
)
def resnet32(*, num_classes: int, input_shape: tuple[int, ...]) -> ResNet:
    """ResNet-32 for CIFAR."""
    return cifar_resnet(32, num_classes=num_classes, input_shape=input_shape)


@register_model(
    "resnet56", description="CIFAR ResNet-56 (16/32/64, 0.86M params)", channels_last=True
)
def resnet56(*, num_classes: int, input_shape: tuple[int, ...]) -> ResNet:
    """ResNet-56 for CIFAR (Fantastic Weights' CIFAR-10/100 backbone)."""
    return cifar_resnet(56, num_classes=num_classes, input_shape=input_shape)


@register_model(
    "resnet50",
    description="bottleneck ResNet-50 (3x3 stem without max-pool for inputs <= 64 px)",
    channels_last=True,
)
def resnet50(
    *, num_classes: int, input_shape: tuple[int, ...], cifar_stem: bool | None = None
) -> ResNet:
    """ResNet-50 (3, 4, 6, 3 bottlenecks; 23.5M parameters with 10 classes).

    Args:
        num_classes: Output size.
        input_shape: ``(C, H, W)``.
        cifar_stem: Use the 3x3 stride-1 stem without max-pool; None picks it when the input
            width is at most 64 pixels.
    """
    expect_rank("resnet50", input_shape, 3, "(3, 224, 224)")
    small = input_shape[-1] <= 64 if cifar_stem is None else cifar_stem
    return ResNet(
        Bottleneck,
        (3, 4, 6, 3),
        (64, 128, 256, 512),
        input_shape[0],
        num_classes,
        stem="cifar" if small else "imagenet",
        stem_width=64,
    )
