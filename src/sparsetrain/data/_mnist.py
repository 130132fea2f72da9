"""The MNIST family: ``mnist`` (IDX files or ``mnist.pkl.gz``) and ``fashion_mnist`` (IDX files).

Searched, in order, in ``data_dir`` (default ``~/.cache/sparsetrain``), its usual subfolders
(``mnist``, ``MNIST/raw``, ``fashion-mnist``, ``FashionMNIST/raw``, ...) and, for Fashion-MNIST
without a ``data_dir``, ``/usr/share/datasets/fashion-mnist`` (Debian package
``dataset-fashion-mnist``). IDX files may
be gzipped and may use the ``train-images.idx3-ubyte`` spelling. Nothing is downloaded.

Normalisation: MNIST (0.1307, 0.3081); Fashion-MNIST (0.5, 0.5) as in Fantastic Weights. No
augmentation for either.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sparsetrain.data._core import RawData, register_dataset
from sparsetrain.data._formats import (
    CorruptDatasetError,
    candidate_dirs,
    describe,
    find_file,
    labels_tensor,
    load_pickle,
    read_idx,
)

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
FASHION_MEAN, FASHION_STD = 0.5, 0.5
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")

_IDX = {
    "train-images": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "train-labels": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "t10k-images": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "t10k-labels": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}


def _idx_split(folder: Path, prefix: str, dataset: str) -> tuple[np.ndarray, torch.Tensor]:
    paths = {}
    for kind in ("images", "labels"):
        path = find_file(folder, _IDX[f"{prefix}-{kind}"])
        if path is None:
            raise FileNotFoundError(
                f"{dataset}: {folder} has the training images but no"
                f" {_IDX[f'{prefix}-{kind}'][0]}(.gz); put all four IDX files in one folder"
            )
        paths[kind] = path
    images = read_idx(paths["images"])
    if images.ndim != 3:
        raise CorruptDatasetError(
            f"corrupt IDX file {paths['images']}: expected 3 dimensions (N, H, W),"
            f" got shape {images.shape}"
        )
    raw_labels = read_idx(paths["labels"])
    return images, labels_tensor(raw_labels, images.shape[0], 10, paths["labels"])


def _normalise_gray(images: np.ndarray, scale: float, mean: float, std: float) -> torch.Tensor:
    x = torch.from_numpy(images.astype(np.float32))
    x.mul_(1.0 / (scale * std)).sub_(mean / std)  # (x / scale - mean) / std, in place
    return x.reshape(images.shape[0], 1, *images.shape[-2:])


def _load_idx_dataset(folder: Path, dataset: str, mean: float, std: float) -> RawData:
    x_train, y_train = _idx_split(folder, "train", dataset)
    x_test, y_test = _idx_split(folder, "t10k", dataset)
    return RawData(
        _normalise_gray(x_train, 255.0, mean, std),
        y_train,
        _normalise_gray(x_test, 255.0, mean, std),
        y_test,
        num_classes=10,
    )


def _load_mnist_pickle(path: Path) -> RawData:
    obj = load_pickle(path)
    if not (isinstance(obj, tuple | list) and len(obj) == 3):
        raise CorruptDatasetError(
            f"corrupt {path}: expected ((train_x, train_y), (val_x, val_y), (test_x, test_y))"
        )
    xs, ys = [], []
    for part in obj:
        if not (isinstance(part, tuple | list) and len(part) == 2):
            raise CorruptDatasetError(f"corrupt {path}: each split must be a pair (x, y)")
        x = np.asarray(part[0])
        if x.ndim != 2 or x.shape[1] != 784 or not np.issubdtype(x.dtype, np.floating):
            raise CorruptDatasetError(
                f"corrupt {path}: images must be floats of shape (N, 784), got {x.dtype} {x.shape}"
            )
        xs.append(_normalise_gray(x.reshape(-1, 28, 28), 1.0, MNIST_MEAN, MNIST_STD))
        ys.append(labels_tensor(part[1], x.shape[0], 10, path))
    # The pickle's 50k/10k train/val split is the original 60k training set cut in two; it is
    # merged back so `val_fraction` means the same for both MNIST formats.
    return RawData(torch.cat(xs[:2]), torch.cat(ys[:2]), xs[2], ys[2], num_classes=10)


@register_dataset("mnist", description="MNIST digits, 1x28x28, 10 classes (IDX or mnist.pkl.gz)")
def mnist(*, data_dir: Path | None, augment: bool) -> RawData:
    """MNIST from the four IDX files (gzipped or not) or from the classic ``mnist.pkl.gz``.

    60k training and 10k test images, normalised with (0.1307, 0.3081); no augmentation.
    """
    folders = candidate_dirs(data_dir, ("mnist", "MNIST/raw", "MNIST"))
    for folder in folders:
        if find_file(folder, _IDX["train-images"]) is not None:
            return _load_idx_dataset(folder, "mnist", MNIST_MEAN, MNIST_STD)
        pkl = find_file(folder, ("mnist.pkl",))
        if pkl is not None:
            return _load_mnist_pickle(pkl)
    raise FileNotFoundError(
        f"mnist not found: looked for train-images-idx3-ubyte(.gz) or mnist.pkl.gz in"
        f" {describe(folders)}; put the four MNIST IDX files (or mnist.pkl.gz) in a folder DIR and"
        " pass data_dir=DIR (CLI: --data-dir DIR)"
    )


@register_dataset(
    "fashion_mnist", description="Fashion-MNIST clothing images, 1x28x28, 10 classes (IDX)"
)
def fashion_mnist(*, data_dir: Path | None, augment: bool) -> RawData:
    """Fashion-MNIST from the four IDX files, normalised with (0.5, 0.5) as in Fantastic Weights.

    Without ``data_dir``, also found in ``/usr/share/datasets/fashion-mnist`` (``apt-get install
    dataset-fashion-mnist``). 60k training and 10k test images; no augmentation.
    """
    subdirs = ("fashion-mnist", "fashion_mnist", "FashionMNIST/raw", "FashionMNIST")
    folders = candidate_dirs(data_dir, subdirs)
    if data_dir is None:  # a given folder is the only place searched
        folders.append(FASHION_SYSTEM_DIR)
    for folder in folders:
        if find_file(folder, _IDX["train-images"]) is not None:
            return _load_idx_dataset(folder, "fashion_mnist", FASHION_MEAN, FASHION_STD)
    raise FileNotFoundError(
        f"fashion_mnist not found: looked for train-images-idx3-ubyte(.gz) in {describe(folders)};"
        " run `apt-get install dataset-fashion-mnist` or pass data_dir=DIR (CLI: --data-dir DIR)"
        " with the four Fashion-MNIST IDX files"
    )
