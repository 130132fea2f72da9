"""Small convolutional nets: LeNet-5-Caffe, the DST study's small ConvNet, and a 1-D CNN.

References:
    LeNet-5-Caffe: the Caffe variant of LeCun et al. 1998 used by the sparse-training literature
    (Fantastic Weights, https://arxiv.org/abs/2306.12230); no padding in conv1, so
    28x28 inputs reach 50x4x4 before the first fully connected layer.
    Small ConvNet: the Fantastic Weights ``small_conv`` setting.
    CNN1d: sparsetrain's own small model for MNIST-1D (Greydanus 2020,
    https://arxiv.org/abs/2011.14439), sized to train to over 90 % test accuracy in seconds.

All layers use PyTorch's default initialisation, as the reference code does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sparsetrain.models._registry import expect_rank, register_model


def _conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class LeNet5(nn.Module):
    """LeNet-5-Caffe: conv5 20 → max-pool 2 → conv5 50 → max-pool 2 → fc 500 → fc classes.

    ReLU after each conv and after ``fc1``. The flatten size is computed from the input size
    (50·4·4 = 800 for 28x28, giving 431,080 parameters with 10 classes).

    Args:
        in_channels: Input channels.
        num_classes: Output size.
        image_size: Input ``(height, width)``; each side must be at least 16.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: tuple[int, int]) -> None:
        super().__init__()
        if min(image_size) < 16:
            raise ValueError(f"lenet5 needs images of at least 16x16, got {image_size}")
        h, w = (_conv_out(_conv_out(s, 5) // 2, 5) // 2 for s in image_size)
        self.conv1 = nn.Conv2d(in_channels, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(50 * h * w, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` for images ``(B, C, H, W)``."""
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (B, 20, (H-4)/2, (W-4)/2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (B, 50, h, w)
        x = F.relu(self.fc1(x.flatten(1)))  # (B, 500)
        return self.fc2(x)


class SmallConvNet(nn.Module):
    """conv3x3 32 → pool → conv3x3 64 → pool → conv3x3 128 → global avg-pool → fc classes.

    No padding, ReLU after each conv, 2x2 max-pools; 94,538 parameters for 3x32x32 and 10
    classes.

    Args:
        in_channels: Input channels.
        num_classes: Output size.
        image_size: Input ``(height, width)``; each side must be at least 18.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: tuple[int, int]) -> None:
        super().__init__()
        if min(image_size) < 18:
            raise ValueError(f"small_convnet needs images of at least 18x18, got {image_size}")
        self.conv1 = nn.Conv2d(in_channels, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.conv3 = nn.Conv2d(64, 128, 3)
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` for images ``(B, C, H, W)``."""
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (B, 32, 15, 15) for 32x32
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (B, 64, 6, 6)
        x = F.relu(self.conv3(x))  # (B, 128, 4, 4)
        return self.fc(x.mean(dim=(2, 3)))


class CNN1d(nn.Module):
    """A small 1-D CNN: three conv1d + ReLU layers (strides 1, 2, 2), then a linear head.

    Kernel sizes 5, 5, 3 with "same" padding, so a length-40 signal leaves the last conv at
    length 10 and the head sees ``channels[-1] * 10`` features (29,258 parameters by default).

    Args:
        in_channels: Input channels.
        num_classes: Output size.
        length: Input signal length.
        channels: Output channels of the three conv layers.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        length: int,
        channels: Sequence[int] = (32, 64, 64),
    ) -> None:
        super().__init__()
        if len(channels) != 3 or not all(isinstance(c, int) and c > 0 for c in channels):
            raise ValueError(f"channels must be 3 positive ints, got {tuple(channels)!r}")
        c1, c2, c3 = channels
        self.conv1 = nn.Conv1d(in_channels, c1, 5, padding=2)
        self.conv2 = nn.Conv1d(c1, c2, 5, stride=2, padding=2)
        self.conv3 = nn.Conv1d(c2, c3, 3, stride=2, padding=1)
        out_len = _conv_out(_conv_out(length, 5, 2, 2), 3, 2, 1)
        self.fc = nn.Linear(c3 * out_len, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` for signals ``(B, C, L)``."""
        x = F.relu(self.conv1(x))  # (B, c1, L)
        x = F.relu(self.conv2(x))  # (B, c2, ceil(L/2))
        x = F.relu(self.conv3(x))  # (B, c3, ceil(L/4))
        return self.fc(x.flatten(1))


@register_model(
    "lenet5",
    description="LeNet-5-Caffe: conv 20, conv 50, fc 500 (MNIST family)",
    channels_last=True,
)
def lenet5(*, num_classes: int, input_shape: tuple[int, ...]) -> LeNet5:
    """LeNet-5-Caffe for ``(C, H, W)`` inputs (28x28 in the papers)."""
    expect_rank("lenet5", input_shape, 3, "(1, 28, 28)")
    return LeNet5(input_shape[0], num_classes, (input_shape[1], input_shape[2]))


@register_model(
    "small_convnet",
    description="Fantastic Weights' small ConvNet: conv 32/64/128, global avg-pool, fc",
    channels_last=True,
)
def small_convnet(*, num_classes: int, input_shape: tuple[int, ...]) -> SmallConvNet:
    """The DST study's small ConvNet for ``(C, H, W)`` inputs (3x32x32 in the paper)."""
    expect_rank("small_convnet", input_shape, 3, "(3, 32, 32)")
    return SmallConvNet(input_shape[0], num_classes, (input_shape[1], input_shape[2]))


@register_model("cnn1d", description="small 1-D CNN (3 conv1d layers + linear) for MNIST-1D")
def cnn1d(
    *, num_classes: int, input_shape: tuple[int, ...], channels: Sequence[int] = (32, 64, 64)
) -> CNN1d:
    """The 1-D CNN for ``(C, L)`` inputs such as MNIST-1D's ``(1, 40)``."""
    expect_rank("cnn1d", input_shape, 2, "(1, 40)")
    return CNN1d(input_shape[0], num_classes, input_shape[1], tuple(channels))
