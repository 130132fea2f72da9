import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import sparsetrain.data._mnist as mnist_module
from sparsetrain.data import (
    CorruptDatasetError,
    DatasetSplits,
    InMemoryDataset,
    RandomCropFlip,
    list_datasets,
    load_dataset,
    split_indices,
)

CIFAR_MEAN = torch.tensor([0.4914, 0.4822, 0.4465])
CIFAR_STD = torch.tensor([0.2023, 0.1994, 0.2010])


@pytest.fixture(autouse=True)
def _hermetic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Never read or write the user's ~/.cache, never pick up system datasets by accident.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(mnist_module, "FASHION_SYSTEM_DIR", tmp_path / "no-system-dir")


# --------------------------------------------------------------------------------------------
# Writers for tiny files in the real formats


def idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def write(path: Path, data: bytes, gz: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


def make_idx_dir(folder: Path, n_train: int = 20, n_test: int = 6, gz: bool = False) -> dict:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) * 3) % 10,
    }
    arrays["train-images-idx3-ubyte"][0, 0, :2] = [0, 255]  # hand-checkable pixels
    for name, arr in arrays.items():
        write(folder / name, idx_bytes(arr), gz)
    return arrays


def cifar_batch(n: int, labels_key: str, num_classes: int, offset: int) -> dict:
    rng = np.random.default_rng(offset)
    data = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
    data[0, :3] = [0, 255, 51]  # channel 0, row 0, pixels 0..2 of the first image
    labels = [(i + offset) % num_classes for i in range(n)]
    # Bytes keys and protocol 2, like the original Python 2 pickles.
    return {b"batch_label": b"x", b"data": data, labels_key.encode(): labels}


def make_cifar10(folder: Path, n: int = 4, gz: bool = False) -> None:
    folder.mkdir(parents=True)
    for i in range(1, 6):
        blob = pickle.dumps(cifar_batch(n, "labels", 10, i), protocol=2)
        (folder / f"data_batch_{i}").write_bytes(blob)
    (folder / "test_batch").write_bytes(pickle.dumps(cifar_batch(3, "labels", 10, 0), protocol=2))
    meta = {b"label_names": [f"c{i}".encode() for i in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))


def make_cifar100(folder: Path) -> None:
    folder.mkdir(parents=True)
    for name, n, off in (("train", 30, 1), ("test", 5, 0)):
        batch = cifar_batch(n, "fine_labels", 100, off * 97)
        batch[b"coarse_labels"] = [0] * n
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": []}, protocol=2))


# --------------------------------------------------------------------------------------------
# Registry and splits


def test_list_datasets_names_and_descriptions() -> None:
    names = list_datasets()
    expected = {"mnist1d", "mnist", "fashion_mnist", "cifar10", "cifar100", "digits", "pydoc"}
    expected.add("synthetic")
    assert set(names) == expected
    assert all(isinstance(d, str) and d and "\n" not in d for d in names.values())
    assert list(list_datasets("cifar*")) == ["cifar10", "cifar100"]


def test_unknown_name_suggests_close_match() -> None:
    with pytest.raises(ValueError, match=r"unknown dataset 'mnsit'.*Did you mean 'mnist'"):
        load_dataset("mnsit")
    with pytest.raises(TypeError):
        load_dataset(3)  # type: ignore[arg-type]


def test_unknown_option_and_bad_split_arguments() -> None:
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['n_tarin'\]; valid: n_train"):
        load_dataset("synthetic", n_tarin=3)
    with pytest.raises(ValueError, match="val_fraction must be in"):
        load_dataset("synthetic", val_fraction=1.0)
    with pytest.raises(TypeError, match="val_fraction"):
        load_dataset("synthetic", val_fraction="0.1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="leaves no training examples"):
        load_dataset("synthetic", n_train=2, val_fraction=0.9)


def test_split_indices_by_hand() -> None:
    train, val = split_indices(10, 0.2, seed=0)
    assert val is not None and len(val) == 2 and len(train) == 8
    assert sorted([*train.tolist(), *val.tolist()]) == list(range(10))
    assert train.tolist() == sorted(train.tolist())
    assert split_indices(10, 0.2, seed=0)[1].tolist() == val.tolist()
    vals = {tuple(split_indices(10, 0.2, seed=s)[1].tolist()) for s in range(5)}
    assert len(vals) > 1  # the seed matters
    assert split_indices(10, 0.0, seed=0)[1] is None
    assert len(split_indices(10, 0.01, seed=0)[1]) == 1  # at least one example


def test_synthetic_splits_shapes_dtypes_and_determinism() -> None:
    a = load_dataset("synthetic", n_train=50, n_test=10, num_classes=5, input_shape=(3, 4))
    b = load_dataset("synthetic", n_train=50, n_test=10, num_classes=5, input_shape=[3, 4])
    assert isinstance(a, DatasetSplits) and a.name == "synthetic"
    assert (len(a.train), len(a.val), len(a.test)) == (45, 5, 10)
    assert a.input_shape == (3, 4) and a.num_classes == 5
    x, y = a.train[0]
    assert x.shape == (3, 4) and x.dtype == torch.float32
    assert y.shape == () and y.dtype == torch.int64
    for split_a, split_b in ((a.train, b.train), (a.val, b.val), (a.test, b.test)):
        assert torch.equal(split_a.tensors[0], split_b.tensors[0])
        assert torch.equal(split_a.tensors[1], split_b.tensors[1])
    c = load_dataset("synthetic", n_train=50, n_test=10, num_classes=5, input_shape=(3, 4), seed=1)
    assert torch.equal(c.test.tensors[0], a.test.tensors[0])  # test set independent of seed
    assert not torch.equal(c.val.tensors[0], a.val.tensors[0])
    none = load_dataset("synthetic", val_fraction=0)
    assert none.val is None and len(none.train) == 256


def test_batches_fast_path_and_dataloader() -> None:
    ds = InMemoryDataset(torch.arange(10.0).view(10, 1), torch.arange(10))
    ordered = list(ds.batches(4, shuffle=False))
    assert [b[1].tolist() for b in ordered] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert len(list(ds.batches(4, drop_last=True))) == 2
    seen = torch.cat([y for _, y in ds.batches(3, generator=torch.Generator().manual_seed(0))])
    assert sorted(seen.tolist()) == list(range(10))
    x, y = next(iter(DataLoader(ds, batch_size=4)))
    assert x.shape == (4, 1) and y.tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="batch_size"):
        next(ds.batches(0))


# --------------------------------------------------------------------------------------------
# MNIST family


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_idx(tmp_path: Path, gz: bool) -> None:
    arrays = make_idx_dir(tmp_path / "fashion-mnist", gz=gz)  # found in the subfolder
    s = load_dataset("fashion_mnist", data_dir=tmp_path, val_fraction=0.25)
    assert s.input_shape == (1, 28, 28) and s.num_classes == 10
    assert (len(s.train), len(s.val), len(s.test)) == (15, 5, 6)
    x_all = torch.cat([s.train.tensors[0], s.val.tensors[0]])
    assert x_all.shape == (20, 1, 28, 28)
    # (pixel / 255 - 0.5) / 0.5: black is -1, white is +1.
    expected = torch.tensor(arrays["train-images-idx3-ubyte"], dtype=torch.float32) / 127.5 - 1
    train_idx, val_idx = split_indices(20, 0.25, seed=0)
    assert torch.allclose(s.train.tensors[0][:, 0], expected[train_idx], atol=1e-6)
    assert torch.allclose(s.val.tensors[0][:, 0], expected[val_idx], atol=1e-6)
    assert torch.allclose(expected[0, 0, :2], torch.tensor([-1.0, 1.0]))
    assert s.train.tensors[1].tolist() == (train_idx % 10).tolist()
    assert s.test.tensors[1].tolist() == [0, 3, 6, 9, 2, 5]


def test_mnist_idx_dot_names_and_normalisation(tmp_path: Path) -> None:
    make_idx_dir(tmp_path)
    for f in tmp_path.iterdir():  # Kaggle-style names: train-images.idx3-ubyte
        f.rename(f.with_name(f.name.replace("-idx", ".idx")))
    s = load_dataset("mnist", data_dir=tmp_path, val_fraction=0)
    x = s.train.tensors[0][0, 0, 0, :2]
    expected = (torch.tensor([0.0, 1.0]) - 0.1307) / 0.3081
    assert torch.allclose(x, expected, atol=1e-6)
    assert len(s.train) == 20 and len(s.test) == 6 and s.val is None


def test_mnist_pickle_merges_train_and_val(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    parts = [
        (rng.random((n, 784)).astype(np.float32), (np.arange(n) % 10).astype(np.int64))
        for n in (8, 4, 5)
    ]
    parts[0][0][0, :2] = [0.0, 1.0]
    with gzip.open(tmp_path / "mnist.pkl.gz", "wb") as f:
        pickle.dump(tuple(parts), f, protocol=2)
    s = load_dataset("mnist", data_dir=tmp_path, val_fraction=0.25)
    assert (len(s.train), len(s.val), len(s.test)) == (9, 3, 5)
    assert s.input_shape == (1, 28, 28)
    x_all = torch.cat([s.train.tensors[0], s.val.tensors[0]])
    assert x_all.shape == (12, 1, 28, 28)
    expected = (torch.from_numpy(parts[2][0]).view(5, 1, 28, 28) - 0.1307) / 0.3081
    assert torch.allclose(s.test.tensors[0], expected, atol=1e-6)
    assert s.test.tensors[1].tolist() == [0, 1, 2, 3, 4]


def test_missing_dataset_messages(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("fashion_mnist", data_dir=tmp_path)
    msg = str(err.value)
    assert (
        "\n" not in msg and str(tmp_path) in msg and "apt-get install dataset-fashion-mnist" in msg
    )
    with pytest.raises(FileNotFoundError, match=r"mnist\.pkl\.gz") as err:
        load_dataset("mnist")  # default root: $XDG_CACHE_HOME/sparsetrain
    assert str(tmp_path / "xdg" / "sparsetrain") in str(err.value)
    with pytest.raises(FileNotFoundError, match=r"cifar-10-python.tar.gz") as err:
        load_dataset("cifar10", data_dir=tmp_path)
    assert str(tmp_path / "cifar-10-batches-py") in str(err.value)
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        load_dataset("cifar100", data_dir=tmp_path)


def test_partial_idx_folder_names_missing_file(tmp_path: Path) -> None:
    make_idx_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="no t10k-labels-idx1-ubyte"):
        load_dataset("mnist", data_dir=tmp_path)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b"\x00\x00\x09\x03" + b[4:], "bad magic number"),
        (lambda b: b[:-5], "but 15675 data bytes follow"),
        (lambda b: gzip.compress(b)[:-20], "corrupt gzip"),
    ],
)
def test_corrupt_idx(tmp_path: Path, damage, message: str) -> None:
    make_idx_dir(tmp_path)
    target = tmp_path / "train-images-idx3-ubyte"
    target.write_bytes(damage(target.read_bytes()))
    with pytest.raises(CorruptDatasetError, match=message):
        load_dataset("mnist", data_dir=tmp_path)


def test_label_count_mismatch_is_corrupt(tmp_path: Path) -> None:
    make_idx_dir(tmp_path)
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(np.zeros(19)), gz=False)
    with pytest.raises(CorruptDatasetError, match="expected 20 integers"):
        load_dataset("mnist", data_dir=tmp_path)


# --------------------------------------------------------------------------------------------
# CIFAR


def test_cifar10_shapes_labels_normalisation(tmp_path: Path) -> None:
    make_cifar10(tmp_path / "cifar-10-batches-py")
    s = load_dataset("cifar10", data_dir=tmp_path, val_fraction=0.2, augment=False)
    assert s.input_shape == (3, 32, 32) and s.num_classes == 10
    assert (len(s.train), len(s.val), len(s.test)) == (16, 4, 3)
    x_test, y_test = s.test.tensors
    assert y_test.tolist() == [0, 1, 2]
    expected = (torch.tensor([0.0, 1.0, 0.2]) - CIFAR_MEAN[0]) / CIFAR_STD[0]
    assert torch.allclose(x_test[0, 0, 0, :3], expected, atol=1e-5)
    raw = cifar_batch(3, "labels", 10, 0)[b"data"].reshape(3, 3, 32, 32)
    manual = (torch.from_numpy(raw).float() / 255 - CIFAR_MEAN.view(3, 1, 1)) / CIFAR_STD.view(
        3, 1, 1
    )
    assert torch.allclose(x_test, manual, atol=1e-5)
    train_labels = torch.cat([s.train.tensors[1], s.val.tensors[1]]).sort().values
    assert train_labels.tolist() == sorted((i + b) % 10 for b in range(1, 6) for i in range(4))


def test_cifar100_fine_labels_from_folder_itself(tmp_path: Path) -> None:
    make_cifar100(tmp_path / "c100")
    s = load_dataset("cifar100", data_dir=tmp_path / "c100", val_fraction=0.1)
    assert s.num_classes == 100 and s.input_shape == (3, 32, 32)
    assert (len(s.train), len(s.val), len(s.test)) == (27, 3, 5)
    assert s.test.tensors[1].tolist() == [0, 1, 2, 3, 4]
    train_labels = sorted(torch.cat([s.train.tensors[1], s.val.tensors[1]]).tolist())
    assert train_labels == sorted((i + 97) % 100 for i in range(30))


def test_cifar_augmentation_changes_train_only(tmp_path: Path) -> None:
    make_cifar10(tmp_path / "cifar-10-batches-py")
    s = load_dataset("cifar10", data_dir=tmp_path, val_fraction=0.2, seed=3)
    plain = load_dataset("cifar10", data_dir=tmp_path, val_fraction=0.2, seed=3, augment=False)
    g = torch.Generator().manual_seed(0)
    xb, yb = s.train.get_batch(torch.arange(16), g)
    assert not torch.equal(xb, s.train.tensors[0]) and torch.equal(yb, s.train.tensors[1])
    assert torch.equal(s.train.tensors[0], plain.train.tensors[0])  # stored data un-augmented
    for split in (s.val, s.test):
        assert split.transform is None
        assert torch.equal(torch.stack([split[i][0] for i in range(len(split))]), split.tensors[0])
    # Same generator seed, same augmented batch.
    again, _ = s.train.get_batch(torch.arange(16), torch.Generator().manual_seed(0))
    assert torch.equal(xb, again)


def test_cifar_corrupt_and_unsafe_pickles(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar10(folder)
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"labels": [1]}, protocol=2))
    with pytest.raises(CorruptDatasetError, match=r"data_batch_3: no 'data' entry"):
        load_dataset("cifar10", data_dir=tmp_path)
    (folder / "data_batch_3").write_bytes(pickle.dumps(os.getcwd, protocol=2))
    with pytest.raises(CorruptDatasetError, match=r"refusing to load posix\.getcwd"):
        load_dataset("cifar10", data_dir=tmp_path)
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(CorruptDatasetError, match="corrupt pickle"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_cifar_pad_mode_option(tmp_path: Path) -> None:
    make_cifar10(tmp_path / "cifar-10-batches-py")
    s = load_dataset("cifar10", data_dir=tmp_path, pad_mode="reflect", padding=2)
    assert s.train.transform.pad_mode == "reflect" and s.train.transform.padding == 2
    with pytest.raises(ValueError, match="unknown pad_mode 'edge'; valid: constant, reflect"):
        load_dataset("cifar10", data_dir=tmp_path, pad_mode="edge")


# --------------------------------------------------------------------------------------------
# Augmentation by hand


def _is_crop_of(out: torch.Tensor, padded: torch.Tensor, size: int) -> bool:
    side = padded.shape[-1] - size + 1
    for top in range(side):
        for left in range(side):
            window = padded[:, top : top + size, left : left + size]
            if torch.equal(out, window) or torch.equal(out, window.flip(-1)):
                return True
    return False


@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate"])
def test_random_crop_flip_outputs_are_padded_windows(mode: str) -> None:
    x = torch.arange(2 * 2 * 5 * 5, dtype=torch.float32).view(2, 2, 5, 5)
    aug = RandomCropFlip(padding=2, pad_mode=mode, fill=(-1.0, -2.0))
    out = aug(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    for i in range(2):
        if mode == "constant":
            padded = torch.tensor([-1.0, -2.0]).view(2, 1, 1).expand(2, 9, 9).clone()
            padded[:, 2:7, 2:7] = x[i]
        else:
            padded = torch.nn.functional.pad(x[i : i + 1], (2, 2, 2, 2), mode=mode)[0]
        assert _is_crop_of(out[i], padded, 5)


def test_random_crop_flip_without_padding_only_flips() -> None:
    x = torch.arange(8 * 3 * 4, dtype=torch.float32).view(8, 1, 3, 4)
    out = RandomCropFlip(padding=0)(x, torch.Generator().manual_seed(1))
    flipped = [torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x, strict=True)]
    kept = [torch.equal(o, xi) for o, xi in zip(out, x, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert any(flipped) and any(kept)


# --------------------------------------------------------------------------------------------
# Generated and packaged datasets


def test_mnist1d_small_cached_and_deterministic(tmp_path: Path) -> None:
    pytest.importorskip("mnist1d")
    np_state = np.random.get_state()[1].copy()
    a = load_dataset("mnist1d", data_dir=tmp_path, num_samples=200)
    assert np.array_equal(np.random.get_state()[1], np_state)  # global RNG untouched
    assert a.input_shape == (1, 40) and a.num_classes == 10
    assert (len(a.train), len(a.val), len(a.test)) == (144, 16, 40)
    cached = list(tmp_path.glob("mnist1d-*.npz"))
    assert len(cached) == 1
    b = load_dataset("mnist1d", data_dir=tmp_path, num_samples=200)  # from the cache
    assert torch.equal(a.train.tensors[0], b.train.tensors[0])
    cached[0].unlink()
    c = load_dataset("mnist1d", data_dir=tmp_path, num_samples=200)  # regenerated
    assert torch.equal(a.test.tensors[0], c.test.tensors[0])
    assert torch.equal(a.test.tensors[1], c.test.tensors[1])


def test_mnist1d_broken_cache_is_regenerated(tmp_path: Path) -> None:
    pytest.importorskip("mnist1d")
    load_dataset("mnist1d", data_dir=tmp_path, num_samples=100)
    (cached,) = tmp_path.glob("mnist1d-*.npz")
    cached.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="regenerating"):
        s = load_dataset("mnist1d", data_dir=tmp_path, num_samples=100)
    assert len(s.test) == 20


def test_digits_split() -> None:
    pytest.importorskip("sklearn")
    s = load_dataset("digits", val_fraction=0.1)
    assert s.input_shape == (1, 8, 8) and s.num_classes == 10
    assert (len(s.train), len(s.val), len(s.test)) == (1294, 144, 359)
    x = torch.cat([s.train.tensors[0], s.val.tensors[0], s.test.tensors[0]])
    assert abs(x.mean().item()) < 0.01 and abs(x.std().item() - 1) < 0.01


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(),
    reason="needs apt-get install dataset-fashion-mnist",
)
def test_real_fashion_mnist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        mnist_module, "FASHION_SYSTEM_DIR", Path("/usr/share/datasets/fashion-mnist")
    )
    s = load_dataset("fashion_mnist")
    assert (len(s.train), len(s.val), len(s.test)) == (54000, 6000, 10000)
    x, y = s.test.tensors
    assert x.shape == (10000, 1, 28, 28)
    assert x.min().item() == -1.0 and abs(x.max().item() - 1.0) < 1e-6
    assert torch.bincount(y).tolist() == [1000] * 10
