"""Pre-activation Wide ResNet (WRN-34-2 is ST-3's CIFAR-100 backbone, WACV 2023).

References:
    Zagoruyko & Komodakis 2016, "Wide Residual Networks", https://arxiv.org/abs/1605.07146.

Depth 6n + 4 gives n blocks per stage (5 for WRN-34); stage widths are 16k, 32k and 64k for width
factor k, after a 3x3 stem of 16 channels. Blocks are pre-activation (BN → ReLU → conv); where the
shape changes, the 1x1-conv shortcut takes the pre-activated input, as in the paper's code.
Dropout, when enabled, sits between the two convs of each block. Initialisation as
:func:`~sparsetrain.models.resnet.kaiming_init`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sparsetrain.models._registry import expect_rank, register_model
from sparsetrain.models.resnet import kaiming_init


class PreActBlock(nn.Module):
    """BN → ReLU → conv3x3 (stride) → BN → ReLU → dropout → conv3x3, plus the shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output ``(B, planes, H / stride, W / stride)``."""
        act = F.relu(self.bn1(x))
        out = self.conv1(act)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + (x if self.shortcut is None else self.shortcut(act))


class WideResNet(nn.Module):
    """WRN-depth-k: stem conv, three stages of pre-activation blocks, BN-ReLU, avg-pool, ``fc``.

    Args:
        depth: Total depth 6n + 4 (n blocks per stage).
        width: Width factor k.
        in_channels: Input channels.
        num_classes: Output size.
        dropout: Dropout probability inside each block (0 disables it).
    """

    def __init__(
        self, depth: int, width: int, in_channels: int, num_classes: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4 (16, 28, 34, ...), got {depth}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        n = (depth - 4) // 6
        widths = (16 * width, 32 * width, 64 * width)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        planes_in = 16
        for i, planes in enumerate(widths):
            blocks = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(PreActBlock(planes_in, planes, stride, dropout))
                planes_in = planes
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.bn = nn.BatchNorm2d(planes_in)
        self.fc = nn.Linear(planes_in, num_classes)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` for images ``(B, C, H, W)``."""
        x = self.conv1(x)
        x = self.layer3(self.layer2(self.layer1(x)))  # (B, 64k, H / 4, W / 4)
        x = F.relu(self.bn(x))
        return self.fc(x.mean(dim=(2, 3)))


@register_model(
    "wrn34_2",
    description="pre-activation WideResNet-34-2 (ST-3's CIFAR-100 model; dropout option)",
    channels_last=True,
)
def wrn34_2(*, num_classes: int, input_shape: tuple[int, ...], dropout: float = 0.0) -> WideResNet:
    """WRN-34-2 (5 blocks per stage, widths 32/64/128). ST-3's CIFAR-100 config uses dropout 0.2."""
    expect_rank("wrn34_2", input_shape, 3, "(3, 32, 32)")
    return WideResNet(34, 2, input_shape[0], num_classes, dropout)
