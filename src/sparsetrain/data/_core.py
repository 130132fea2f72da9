"""The dataset registry: ``register_dataset``, ``load_dataset``, ``list_datasets``.

A registered loader turns ``(data_dir, augment, **options)`` into :class:`RawData` (train and test
tensors, already normalised, plus the training transform). :func:`load_dataset` then holds out the
validation split and wraps each split in an :class:`~sparsetrain.data.InMemoryDataset`, so every
dataset gets the same split logic and the same guarantee: validation data is never augmented.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from sparsetrain._registry import Registry, plain_name
from sparsetrain.data._formats import DataFile, recording_reads
from sparsetrain.data._tensor import BatchTransform, InMemoryDataset

FILE_USES = ("read", "cache", "none")
"""How a dataset uses ``data_dir``: reads its files there, caches generated data there, or none."""


@dataclass(frozen=True)
class DatasetSplits:
    """The splits of a loaded dataset and what a model needs to know about them.

    Attributes:
        train: Training split; yields ``(x, y)`` with ``x`` a ``float32`` tensor of
            ``input_shape`` and ``y`` an ``int64`` scalar tensor; augmented if requested.
        val: Validation split held out of the training set (never augmented), or None when
            ``val_fraction == 0``.
        test: Test split (never augmented).
        num_classes: Number of classes; labels are ``0 .. num_classes - 1``.
        input_shape: Per-example input shape, e.g. ``(1, 28, 28)`` or ``(1, 40)``.
        name: Registry name of the dataset.
        files: The files the loader read, with their sizes and SHA-256 (empty for generated
            datasets).
    """

    train: Dataset[tuple[torch.Tensor, torch.Tensor]]
    val: Dataset[tuple[torch.Tensor, torch.Tensor]] | None
    test: Dataset[tuple[torch.Tensor, torch.Tensor]]
    num_classes: int
    input_shape: tuple[int, ...]
    name: str
    files: tuple[DataFile, ...] = ()


@dataclass(frozen=True)
class RawData:
    """What a dataset loader returns: normalised tensors before the validation split.

    Attributes:
        x_train: Training inputs ``(N, *input_shape)``, ``float32``.
        y_train: Training labels ``(N,)``, ``int64``.
        x_test: Test inputs ``(M, *input_shape)``.
        y_test: Test labels ``(M,)``.
        num_classes: Number of classes.
        train_transform: Augmentation of training batches, or None.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    train_transform: BatchTransform | None = None


Loader = Callable[..., RawData]


@dataclass(frozen=True)
class DatasetInfo:
    """A registered dataset.

    Attributes:
        name: Registry key.
        loader: ``loader(data_dir=..., augment=..., **options) -> RawData``.
        description: One line for ``sparsetrain list``.
        files: ``read`` (the dataset's files are read from ``data_dir``, which must exist),
            ``cache`` (generated data is cached in ``data_dir``, created if missing) or
            ``none`` (generated in memory: a ``data_dir`` is refused rather than ignored).
    """

    name: str
    loader: Loader
    description: str
    files: str = "read"

    def options(self) -> dict[str, Any]:
        """Dataset-specific keyword options of the loader, with their defaults."""
        params = inspect.signature(self.loader).parameters.values()
        return {p.name: p.default for p in params if p.name not in ("data_dir", "augment")}


_DATASETS: Registry[DatasetInfo] = Registry("dataset", normalise=plain_name)


def register_dataset(
    name: str, *, description: str, files: str = "read"
) -> Callable[[Loader], Loader]:
    """Decorator registering a dataset loader under ``name`` (warns on duplicates).

    ``files`` says how the loader uses ``data_dir`` (see :class:`DatasetInfo`).
    """
    if files not in FILE_USES:
        raise ValueError(f"unknown files={files!r}; valid: {', '.join(FILE_USES)}")

    def deco(loader: Loader) -> Loader:
        _DATASETS.add(name, DatasetInfo(name, loader, description, files))
        return loader

    return deco


def get_dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of a registered dataset (``-`` and ``_`` are interchangeable)."""
    return _DATASETS.lookup(name)


def list_datasets(pattern: str | None = None) -> dict[str, str]:
    """Registered datasets as ``{name: one-line description}``, sorted, optionally glob-filtered.

    >>> "mnist1d" in list_datasets()
    True
    """
    return {name: _DATASETS[name].description for name in _DATASETS.names(pattern)}


def load_dataset(
    name: str,
    *,
    data_dir: str | Path | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    augment: bool = True,
    train_size: int | None = None,
    **options: Any,
) -> DatasetSplits:
    """Load a dataset by name into train, validation and test splits held in memory.

    Args:
        name: Registry name (see :func:`list_datasets`).
        data_dir: Folder holding the dataset files, or where generated datasets are cached.
            Defaults to ``~/.cache/sparsetrain`` (plus system folders such as
            ``/usr/share/datasets/fashion-mnist``). A given folder is the only place searched
            (with its usual subfolders); it must exist for datasets read from files, and is
            refused for datasets generated in memory. Nothing is ever downloaded.
        val_fraction: Fraction of the training set held out for validation by a permutation
            seeded with ``seed``; 0 gives ``val=None``.
        seed: Seed of the validation split (and of nothing else: test sets never depend on it).
        augment: Apply the dataset's training augmentation (CIFAR crop and flip) to ``train``.
        train_size: Keep only this many training examples (a subset seeded with ``seed``, taken
            after the validation split), for small-scale runs; ``None`` keeps all.
        **options: Dataset-specific options, e.g. ``n_train`` for ``synthetic``.

    Returns:
        The splits, with ``num_classes``, the per-example ``input_shape`` and the ``files``
        read (path, size, SHA-256). Each split is an :class:`~sparsetrain.data.InMemoryDataset`,
        whose ``batches()`` is the fast path.

    Raises:
        FileNotFoundError: The dataset's files are not found, or ``data_dir`` does not exist;
            the message says where it looked and how to get them.
        CorruptDatasetError: A file exists but cannot be read (a ``ValueError``).
        ValueError: Unknown name or invalid ``val_fraction``.
        TypeError: Unknown option for this dataset.

    >>> splits = load_dataset("synthetic", n_train=100, n_test=20, val_fraction=0.2)
    >>> len(splits.train), len(splits.val), len(splits.test), splits.input_shape
    (80, 20, 20, (1, 8, 8))
    """
    info = get_dataset_info(name)
    _check_split_args(val_fraction, seed)
    valid = info.options()
    bad = sorted(k for k in options if k not in valid)
    if bad:
        listed = ", ".join(valid) or "none"
        raise TypeError(f"dataset {info.name!r} got unknown option(s) {bad}; valid: {listed}")
    root = None if data_dir is None else Path(data_dir).expanduser()
    if root is not None and info.files == "read" and not root.is_dir():
        raise FileNotFoundError(
            f"data_dir {root} is not a folder; dataset {info.name!r} reads its files from it "
            "(pass the folder that holds them)"
        )
    if root is not None and info.files == "none":
        raise ValueError(
            f"dataset {info.name!r} is generated in memory and reads no files: remove data_dir "
            f"(--data-dir), it would be ignored"
        )
    with recording_reads() as files:
        raw = info.loader(data_dir=root, augment=bool(augment), **options)
    train_idx, val_idx = split_indices(raw.x_train.shape[0], val_fraction, seed)
    if train_size is not None:
        if isinstance(train_size, bool) or not 1 <= int(train_size) <= len(train_idx):
            raise ValueError(
                f"train_size must be an int in [1, {len(train_idx)}] for {info.name}, "
                f"got {train_size!r}"
            )
        pick = torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(seed + 1))
        train_idx = train_idx[pick[: int(train_size)].sort().values]
    train = InMemoryDataset(raw.x_train[train_idx], raw.y_train[train_idx], raw.train_transform)
    val = None
    if val_idx is not None:
        val = InMemoryDataset(raw.x_train[val_idx], raw.y_train[val_idx])
    return DatasetSplits(
        train=train,
        val=val,
        test=InMemoryDataset(raw.x_test, raw.y_test),
        num_classes=raw.num_classes,
        input_shape=tuple(raw.x_train.shape[1:]),
        name=info.name,
        files=tuple(files),
    )


def _check_split_args(val_fraction: object, seed: object) -> None:
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, int | float):
        raise TypeError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")


def split_indices(
    n: int, val_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Train and validation indices from a permutation seeded with ``seed``, each sorted.

    ``round(n * val_fraction)`` examples (at least one when ``val_fraction > 0``) go to
    validation. Sorting keeps each split in the original file order, so only membership depends
    on the seed.

    >>> split_indices(10, 0.2, seed=0)[1].tolist()
    [1, 4]
    """
    if val_fraction == 0:
        return torch.arange(n), None
    n_val = max(1, round(n * val_fraction))
    if n_val >= n:
        raise ValueError(f"val_fraction={val_fraction} leaves no training examples out of {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_val:].sort().values, perm[:n_val].sort().values
