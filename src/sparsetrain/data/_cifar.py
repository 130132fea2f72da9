"""CIFAR-10 and CIFAR-100 from the python-pickle batches of the official archives.

Searched in ``data_dir`` (default ``~/.cache/sparsetrain``) and its ``cifar-10-batches-py`` or
``cifar-100-python`` subfolder. Normalisation (0.4914, 0.4822, 0.4465) / (0.2023, 0.1994, 0.2010)
as in ST-3 and Fantastic Weights; training augmentation is a random crop with 4-pixel padding and
a horizontal flip (:class:`~sparsetrain.data.RandomCropFlip`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from sparsetrain.data._core import RawData, register_dataset
from sparsetrain.data._formats import (
    CorruptDatasetError,
    candidate_dirs,
    describe,
    labels_tensor,
    load_pickle,
    require,
    str_keys,
)
from sparsetrain.data._tensor import PadMode, RandomCropFlip

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


def _cifar_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, torch.Tensor]:
    entry = str_keys(load_pickle(path), path)
    data = np.asarray(require(entry, "data", path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise CorruptDatasetError(
            f"corrupt CIFAR batch {path}: 'data' must be uint8 (N, 3072), got {data.dtype}"
            f" {data.shape}"
        )
    labels = labels_tensor(require(entry, label_key, path), data.shape[0], num_classes, path)
    return data.reshape(-1, 3, 32, 32), labels


def _normalise_rgb(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images.astype(np.float32))
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    return x.mul_(1.0 / (255.0 * std)).sub_(mean / std)  # (x / 255 - mean) / std, in place


def _load_cifar(
    data_dir: Path | None,
    *,
    dataset: str,
    subdir: str,
    archive: str,
    train_files: Sequence[str],
    test_file: str,
    label_key: str,
    num_classes: int,
    augment: bool,
    padding: int,
    pad_mode: PadMode,
) -> RawData:
    fill = [-m / s for m, s in zip(CIFAR_MEAN, CIFAR_STD, strict=True)]  # a black pixel
    transform = RandomCropFlip(padding, pad_mode, fill)  # built first: checks the options early
    folders = candidate_dirs(data_dir, (subdir,))
    folder = next((f for f in folders if (f / train_files[0]).is_file()), None)
    if folder is None:
        raise FileNotFoundError(
            f"{dataset} not found: looked for {train_files[0]} in {describe(folders)}; download"
            f" {archive} from https://www.cs.toronto.edu/~kriz/cifar.html, extract it and pass"
            " data_dir=DIR (CLI: --data-dir DIR)"
        )
    missing = [n for n in (*train_files, test_file) if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{dataset}: {folder} lacks {', '.join(missing)}")
    parts = [_cifar_batch(folder / n, label_key, num_classes) for n in train_files]
    x_test, y_test = _cifar_batch(folder / test_file, label_key, num_classes)
    return RawData(
        _normalise_rgb(np.concatenate([p[0] for p in parts])),
        torch.cat([p[1] for p in parts]),
        _normalise_rgb(x_test),
        y_test,
        num_classes=num_classes,
        train_transform=transform if augment else None,
    )


@register_dataset("cifar10", description="CIFAR-10 colour images, 3x32x32, 10 classes")
def cifar10(
    *, data_dir: Path | None, augment: bool, padding: int = 4, pad_mode: PadMode = "constant"
) -> RawData:
    """CIFAR-10 from its python batches (``data_batch_1..5``, ``test_batch``).

    Training augmentation: random crop 32 after ``padding`` pixels of padding, and horizontal
    flip. ``pad_mode="constant"`` pads with black (torchvision's default); FW's CIFAR-10 code uses
    ``"reflect"`` and ST-3's uses ``"replicate"`` (edge).
    """
    return _load_cifar(
        data_dir,
        dataset="cifar10",
        subdir="cifar-10-batches-py",
        archive="cifar-10-python.tar.gz",
        train_files=[f"data_batch_{i}" for i in range(1, 6)],
        test_file="test_batch",
        label_key="labels",
        num_classes=10,
        augment=augment,
        padding=padding,
        pad_mode=pad_mode,
    )


@register_dataset("cifar100", description="CIFAR-100 colour images, 3x32x32, 100 fine classes")
def cifar100(
    *, data_dir: Path | None, augment: bool, padding: int = 4, pad_mode: PadMode = "constant"
) -> RawData:
    """CIFAR-100 from its python files (``train``, ``test``), with the 100 ``fine_labels``.

    Same augmentation and normalisation as :func:`cifar10`.
    """
    return _load_cifar(
        data_dir,
        dataset="cifar100",
        subdir="cifar-100-python",
        archive="cifar-100-python.tar.gz",
        train_files=["train"],
        test_file="test",
        label_key="fine_labels",
        num_classes=100,
        augment=augment,
        padding=padding,
        pad_mode=pad_mode,
    )
