"""On-disk formats (IDX, NumPy pickles) and where dataset files are searched for.

Pickles are read with a restricted unpickler that only rebuilds NumPy arrays, dtypes and plain
Python containers, so pointing ``data_dir`` at an untrusted folder cannot run code. Every problem
with a file that exists is a :class:`CorruptDatasetError` naming the file and what is wrong.
"""

from __future__ import annotations

import contextlib
import contextvars
import gzip
import hashlib
import io
import os
import pickle
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


class CorruptDatasetError(ValueError):
    """A dataset file exists but cannot be read (bad header, truncated, wrong contents)."""


_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class DataFile:
    """A dataset file that was read: where, how big, and its SHA-256 (of the bytes on disk).

    Attributes:
        path: Absolute path of the file.
        bytes: Size in bytes.
        sha256: Hex SHA-256 of the file's bytes as stored (before any gunzip).
    """

    path: str
    bytes: int
    sha256: str


_READS: contextvars.ContextVar[list[DataFile] | None] = contextvars.ContextVar(
    "sparsetrain_data_reads", default=None
)


@contextlib.contextmanager
def recording_reads() -> Iterator[list[DataFile]]:
    """Collect every file :func:`read_bytes` reads while open (the loaders of file datasets).

    Hashing costs one SHA-256 pass over bytes already in memory (about 0.1 s for
    Fashion-MNIST's 30 MB), so no cache is kept.
    """
    files: list[DataFile] = []
    token = _READS.set(files)
    try:
        yield files
    finally:
        _READS.reset(token)


def read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it starts with the gzip magic (whatever its name)."""
    raw = path.read_bytes()
    reads = _READS.get()
    if reads is not None:
        reads.append(DataFile(str(path.resolve()), len(raw), hashlib.sha256(raw).hexdigest()))
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise CorruptDatasetError(f"corrupt gzip file {path}: {err}") from None


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file of unsigned bytes (``train-images-idx3-ubyte`` etc.), gzipped or not.

    Layout: two zero bytes, a type byte (0x08 = ubyte), the number of dimensions, then one
    big-endian uint32 per dimension and the data in C order.

    Args:
        path: The file.

    Returns:
        A ``uint8`` array of the stored shape.

    Raises:
        CorruptDatasetError: Bad magic number, unsupported type or wrong data length.
    """
    raw = read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] == 0:
        raise CorruptDatasetError(
            f"corrupt IDX file {path}: bad magic number {raw[:4].hex() or '(empty file)'},"
            " expected 000008NN (unsigned bytes, NN dimensions)"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise CorruptDatasetError(f"corrupt IDX file {path}: truncated header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise CorruptDatasetError(
            f"corrupt IDX file {path}: header says shape {dims} ({expected} bytes)"
            f" but {len(raw) - header} data bytes follow"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _numpy_globals() -> dict[tuple[str, str], Any]:
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's array _reconstruct
    scalar = np.float64(0).__reduce__()[0]  # numpy's scalar constructor
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]  # numpy's _frombuffer (pickle protocol 5)
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _codecs_encode,
    }
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = reconstruct
        allowed[(mod, "scalar")] = scalar
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(mod, "_frombuffer")] = frombuffer
    return allowed


def _codecs_encode(text: str, encoding: str = "utf-8") -> bytes:
    # Python 3 pickles bytes as _codecs.encode(str, "latin1") under protocol 2.
    return text.encode(encoding)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds NumPy arrays and builtin containers."""

    allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: only NumPy arrays are allowed"
            ) from None


def load_pickle(path: Path) -> Any:
    """Load a (possibly gzipped) pickle of NumPy arrays and builtin containers.

    ``encoding="latin1"`` reads both Python 2 pickles (the original CIFAR and ``mnist.pkl.gz``
    files) and Python 3 ones; dictionary keys may come back as ``str`` or ``bytes``.

    Raises:
        CorruptDatasetError: The file is not such a pickle.
    """
    raw = read_bytes(path)
    try:
        return _ArrayUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise CorruptDatasetError(f"corrupt pickle {path}: {err}") from None


def str_keys(obj: Any, path: Path) -> dict[str, Any]:
    """A pickled dict with its keys decoded to ``str`` (CIFAR pickles may use ``bytes`` keys)."""
    if not isinstance(obj, dict):
        raise CorruptDatasetError(
            f"corrupt pickle {path}: expected a dict, got {type(obj).__name__}"
        )
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def require(entry: dict[str, Any], key: str, path: Path) -> Any:
    """``entry[key]``, or a :class:`CorruptDatasetError` listing the keys that are there."""
    if key not in entry:
        raise CorruptDatasetError(
            f"corrupt pickle {path}: no {key!r} entry (found: {', '.join(sorted(entry))})"
        )
    return entry[key]


def find_file(folder: Path, names: Sequence[str]) -> Path | None:
    """The first of ``names`` (each also tried with ``.gz``) that is a file in ``folder``."""
    for name in names:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def candidate_dirs(data_dir: Path | None, subdirs: Sequence[str]) -> list[Path]:
    """``data_dir`` (or :func:`default_root`) followed by its ``subdirs``, in search order."""
    root = data_dir if data_dir is not None else default_root()
    return [root, *(root / sub for sub in subdirs)]


def default_root() -> Path:
    """Where datasets and generated caches live when no ``data_dir`` is given.

    ``$XDG_CACHE_HOME/sparsetrain`` if that variable is set, else ``~/.cache/sparsetrain``.
    """
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sparsetrain"


def describe(folders: Sequence[Path]) -> str:
    """The folders as one comma-separated line, for "looked in ..." messages."""
    return ", ".join(str(f) for f in folders)


def labels_tensor(values: object, n: int, num_classes: int, path: Path) -> torch.Tensor:
    """``n`` integer labels in ``0 .. num_classes - 1`` as ``int64``, else a corrupt-file error."""
    y = np.asarray(values)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise CorruptDatasetError(f"corrupt labels in {path}: expected {n} integers, got {y.shape}")
    if n and (y.min() < 0 or y.max() >= num_classes):
        raise CorruptDatasetError(
            f"corrupt labels in {path}: values {y.min()}..{y.max()} outside 0..{num_classes - 1}"
        )
    return torch.from_numpy(y.astype(np.int64))
