"""Datasets held in memory as tensors, with seeded validation splits; nothing is downloaded.

Registry: ``mnist1d`` (generated locally), ``mnist``, ``fashion_mnist`` (IDX files;
Fashion-MNIST is found in ``/usr/share/datasets/fashion-mnist`` after ``apt-get install
dataset-fashion-mnist``), ``cifar10``, ``cifar100`` (python pickle batches), ``digits``
(scikit-learn), ``pydoc`` (the standard library's docstrings as character tokens, for language
models) and ``synthetic`` (for tests).

>>> splits = load_dataset("synthetic", n_train=40, n_test=8, val_fraction=0.25)
>>> x, y = splits.train[0]
>>> x.shape, x.dtype, y.dtype, splits.num_classes
(torch.Size([1, 8, 8]), torch.float32, torch.int64, 4)

Errors: a dataset whose files are not found raises :class:`FileNotFoundError` with a one-line
message naming the folders searched and how to get the files; a file that exists but cannot be
read raises :class:`CorruptDatasetError` (a :class:`ValueError`). Every split is an
:class:`InMemoryDataset`; training loops can use ``splits.train.batches(128, generator=g)`` to
skip the ``DataLoader``'s per-item overhead (augmentation included).
"""

from sparsetrain.data import _cifar, _generated, _mnist, _text  # noqa: F401  (register the datasets)
from sparsetrain.data._core import (
    DatasetInfo,
    DatasetSplits,
    RawData,
    get_dataset_info,
    list_datasets,
    load_dataset,
    register_dataset,
    split_indices,
)
from sparsetrain.data._formats import CorruptDatasetError, DataFile
from sparsetrain.data._tensor import BatchTransform, InMemoryDataset, RandomCropFlip

__all__ = [
    "BatchTransform",
    "CorruptDatasetError",
    "DataFile",
    "DatasetInfo",
    "DatasetSplits",
    "InMemoryDataset",
    "RandomCropFlip",
    "RawData",
    "get_dataset_info",
    "list_datasets",
    "load_dataset",
    "register_dataset",
    "split_indices",
]
