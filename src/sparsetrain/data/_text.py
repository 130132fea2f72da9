"""Text that ships with the machine: ``pydoc``, the docstrings of Python's own standard library.

Characters are the tokens (the 95 printable ASCII characters and the newline, plus one id for
every other character), so no tokenizer is needed. Every module, class and function docstring of
the standard library's ``.py`` files (test packages left out) is collected with :mod:`ast`,
cleaned as ``inspect.cleandoc`` does, and joined with blank lines, one module after another in
sorted path order. About one module in ten (chosen by a hash of its path, so the choice does not
depend on the seed) is the test split: the test text comes from modules the model never read.
Each example is a window of ``seq_len`` tokens and, as its label, the same window shifted by one
(next-token targets); windows do not overlap. The token stream is cached under ``data_dir``
(default ``~/.cache/sparsetrain``), keyed on the Python version whose library it was read from.
"""

from __future__ import annotations

import ast
import hashlib
import sys
import sysconfig
import zlib
from pathlib import Path

import numpy as np
import torch

from sparsetrain.data._core import RawData, register_dataset
from sparsetrain.data._formats import default_root
from sparsetrain.data._generated import read_npz, write_npz_atomic

CHARS = "\n" + "".join(chr(c) for c in range(32, 127))
"""The character vocabulary: newline and printable ASCII; anything else is ``UNKNOWN``."""
UNKNOWN = len(CHARS)
VOCAB = len(CHARS) + 1
TEST_EVERY = 10  # a module is in the test split when crc32(path) % TEST_EVERY == 0
_SKIP = {"test", "tests", "idle_test", "site-packages"}


def module_docstrings(path: Path) -> str:
    """Every docstring of one source file (module, classes, functions), blank-line separated."""
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError):
        return ""
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    docs = [ast.get_docstring(n, clean=True) for n in ast.walk(tree) if isinstance(n, kinds)]
    return "\n\n".join(d for d in docs if d)


def encode(text: str) -> np.ndarray:
    """Token ids (``uint8``) of ``text``; characters outside the vocabulary become ``UNKNOWN``."""
    table = np.full(0x110000, UNKNOWN, dtype=np.uint8)
    table[[ord(c) for c in CHARS]] = np.arange(len(CHARS), dtype=np.uint8)
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    return table[codes]


def _streams(root: Path) -> dict[str, np.ndarray]:
    files = sorted(p for p in root.rglob("*.py") if not _SKIP & set(p.relative_to(root).parts))
    train, test = [], []
    for p in files:
        text = module_docstrings(p)
        if text:
            held_out = zlib.crc32(str(p.relative_to(root)).encode()) % TEST_EVERY == 0
            (test if held_out else train).append(text)
    return {"train": encode("\n\n".join(train)), "test": encode("\n\n".join(test))}


def _windows(tokens: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = (len(tokens) - 1) // seq_len
    t = torch.from_numpy(tokens[: n * seq_len + 1].astype(np.int64))
    return t[:-1].view(n, seq_len), t[1:].view(n, seq_len)


@register_dataset(
    "pydoc",
    description=f"Python standard-library docstrings, character tokens (vocab {VOCAB}), "
    "next-token windows; test: held-out modules",
    files="cache",
)
def pydoc(*, data_dir: Path | None, augment: bool, seq_len: int = 64) -> RawData:
    """Next-token windows of the standard library's docstrings (``augment`` has no effect).

    Args:
        data_dir: Cache folder (default ``~/.cache/sparsetrain``).
        augment: Ignored (text has no augmentation).
        seq_len: Tokens per example.
    """
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len must be an int >= 1, got {seq_len!r}")
    root = Path(sysconfig.get_paths()["stdlib"])
    version = "{}.{}.{}".format(*sys.version_info[:3])
    digest = hashlib.sha256(f"{version}|{TEST_EVERY}|{CHARS}".encode()).hexdigest()[:12]
    path = (data_dir if data_dir is not None else default_root()) / f"pydoc-{digest}.npz"
    streams = read_npz(path, ("train", "test")) if path.exists() else None
    if streams is None:
        streams = _streams(root)
        write_npz_atomic(path, streams)
    x, y = _windows(streams["train"], seq_len)
    x_test, y_test = _windows(streams["test"], seq_len)
    return RawData(x, y, x_test, y_test, num_classes=VOCAB)
