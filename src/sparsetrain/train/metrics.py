"""Run-directory outputs: FLOPs of the masked model, CSV and JSON files, optional TensorBoard.

FLOPs are theoretical multiply-adds per example (what the masks would cost on ideal sparse
kernels), never a speed claim: masked-dense training runs at dense speed.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsetrain._io import atomic_path

_COUNTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@torch.no_grad()
def count_flops(
    model: nn.Module, input_shape: Sequence[int], device: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Multiply-adds per example of every Linear and Conv layer, dense and with the masks.

    One forward pass of a zero example with hooks: each layer costs ``weight.numel()`` (dense) or
    the number of non-zero entries of the weight it actually uses (sparse; a parametrized
    layer's effective weight) times its number of output positions. Other layers (norms,
    activations, pooling) are not counted.

    Args:
        model: The (masked) model.
        input_shape: Per-example input shape.
        device: Device of the model.

    Returns:
        ``{"dense": int, "sparse": int, "ratio": sparse / dense, "layers": [...]}``.
    """
    layers: list[dict[str, Any]] = []

    def hook(module: nn.Module, _: Any, out: torch.Tensor) -> None:
        weight = module.weight  # the effective weight when parametrized
        channels = out.shape[-1] if isinstance(module, nn.Linear) else out.shape[1]
        positions = out.numel() // max(1, channels)
        layers.append(
            {
                "name": names[module],
                "dense": int(weight.numel() * positions),
                "sparse": int(torch.count_nonzero(weight).item() * positions),
            }
        )

    names = {m: n for n, m in model.named_modules() if isinstance(m, _COUNTED)}
    handles = [m.register_forward_hook(hook) for m in names]
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, *input_shape, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    dense = sum(x["dense"] for x in layers)
    sparse = sum(x["sparse"] for x in layers)
    return {
        "dense": dense,
        "sparse": sparse,
        "ratio": sparse / dense if dense else 1.0,
        "layers": layers,
    }


# --------------------------------------------------------------------------- files


def write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically (temp file + rename)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically (NaN written as null)."""
    write_text(path, json.dumps(_finite(obj), indent=2) + "\n")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> None:
    """Write ``rows`` (only ``fields``, in order) as CSV atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        writer.writerows([{k: _cell(r.get(k)) for k in fields} for r in rows])


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts of strings (empty list if the file does not exist)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)  # repr: the shortest exact form
    return value


class CsvAppender:
    """A CSV file that grows a row at a time, flushed after each row.

    On resume, :meth:`truncate` drops rows written after the checkpoint, so the file holds each
    step once, as if the run had never stopped.

    Args:
        path: CSV file.
        fields: Column names.
    """

    def __init__(self, path: Path, fields: Sequence[str]) -> None:
        self.path, self.fields = path, list(fields)
        self._file: Any = None

    def truncate(self, keep: Callable[[dict[str, str]], bool]) -> None:
        """Keep only the existing rows for which ``keep(row)`` is true."""
        write_csv(self.path, [r for r in read_csv(self.path) if keep(r)], self.fields)

    def append(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Append rows (the header is written first if the file is new or empty)."""
        if self._file is None:
            new = not self.path.is_file() or self.path.stat().st_size == 0
            self._file = open(self.path, "a", newline="")  # noqa: SIM115 (kept open across calls)
            self._writer = csv.DictWriter(self._file, fieldnames=self.fields, extrasaction="ignore")
            if new:
                self._writer.writeheader()
        for r in rows:
            self._writer.writerow({k: _cell(r.get(k)) for k in self.fields})
        self._file.flush()

    def close(self) -> None:
        """Close the file (appending again reopens it)."""
        if self._file is not None:
            self._file.close()
            self._file = None


class TensorBoardSink:
    """Scalars to TensorBoard when it is installed; otherwise a one-line ``note`` and nothing.

    Args:
        log_dir: Event file folder.
        enabled: Whether TensorBoard was asked for.
    """

    def __init__(self, log_dir: Path, enabled: bool) -> None:
        self.writer: Any = None
        self.note: str | None = None  # one line saying why TensorBoard is off, if asked for
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.note = (
                "note: --tensorboard ignored: tensorboard is not installed "
                "(pip install 'sparsetrain[log]')"
            )
            return
        self.writer = SummaryWriter(str(log_dir))

    def scalars(self, values: Mapping[str, float | None], step: int) -> None:
        """Log each non-None value under its name at ``step``."""
        if self.writer is None:
            return
        for name, value in values.items():
            if value is not None:
                self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        """Flush and close the event file."""
        if self.writer is not None:
            self.writer.close()
