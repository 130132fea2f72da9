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

_COUNTED = (nn.Linear, nn.modules.conv._ConvNd, nn.MultiheadAttention, nn.RNNBase)


def _positions(t: torch.Tensor, channel_dim: int) -> int:
    """Entries of ``t`` per channel: output positions (tokens, pixels, time steps)."""
    return t.numel() // max(1, t.shape[channel_dim]) if t.dim() else 1


def _macs(weights: Sequence[tuple[torch.Tensor, int]]) -> tuple[int, int]:
    """(dense, sparse) multiply-adds of weights each applied at a number of positions."""
    dense = sum(w.numel() * n for w, n in weights)
    sparse = sum(int(torch.count_nonzero(w).item()) * n for w, n in weights)
    return dense, sparse


def _layer_macs(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
) -> tuple[int, int]:
    """Multiply-adds of one call of a counted layer (see :func:`count_flops`)."""
    if isinstance(module, nn.MultiheadAttention):
        names = ("query", "key", "value")
        q, k, v = (args[i] if len(args) > i else kwargs[n] for i, n in enumerate(names))
        tq, tk, tv = (_positions(x, -1) for x in (q, k, v))
        if module.in_proj_weight is not None:
            e = module.embed_dim
            w = module.in_proj_weight
            parts = [(w[:e], tq), (w[e : 2 * e], tk), (w[2 * e :], tv)]
        else:
            parts = [(module.q_proj_weight, tq), (module.k_proj_weight, tk)]
            parts.append((module.v_proj_weight, tv))
        return _macs([*parts, (module.out_proj.weight, tq)])
    if isinstance(module, nn.RNNBase):
        seq = out[0]
        steps = seq.data.shape[0] if isinstance(seq, nn.utils.rnn.PackedSequence) else None
        steps = _positions(seq, -1) if steps is None else steps
        names = [n for n in module._flat_weights_names if n.startswith("weight")]
        return _macs([(getattr(module, n), steps) for n in names])
    weight = module.weight  # the effective weight when parametrized
    if isinstance(module, nn.modules.conv._ConvTransposeNd):  # the kernel meets every input
        return _macs([(weight, _positions(args[0], 1))])
    channel_dim = -1 if isinstance(module, nn.Linear) else 1
    return _macs([(weight, _positions(out, channel_dim))])


@torch.no_grad()
def count_flops(
    model: nn.Module,
    input_shape: Sequence[int],
    device: str | torch.device = "cpu",
    *,
    input_dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """Multiply-adds per example of every weight layer, dense and with the masks.

    One forward pass of a zero example with hooks. Each layer costs the entries of the weights
    it actually uses (dense), or their non-zero entries (sparse; a parametrized or in-place
    method's effective weight), times the positions each weight is applied at:

    - ``Linear``, ``Conv``: output positions (tokens, pixels);
    - ``ConvTranspose``: input positions (each input position meets the whole kernel);
    - ``MultiheadAttention``: query, key and value blocks of the in-projection times the query,
      key and value tokens, plus ``out_proj`` times the query tokens (the attention products
      themselves involve no weights and are not counted);
    - ``RNN``/``LSTM``/``GRU``: every ``weight_*`` matrix times the time steps.

    Other layers (embeddings, norms, activations, pooling) are not counted.

    Args:
        model: The (masked) model.
        input_shape: Per-example input shape.
        device: Device of the model.
        input_dtype: Dtype of the example (``torch.long`` for token ids).

    Returns:
        ``{"dense": int, "sparse": int, "ratio": sparse / dense, "layers": [...]}``.
    """
    layers: list[dict[str, Any]] = []

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        dense, sparse = _layer_macs(module, args, kwargs, out)
        layers.append({"name": names[module], "dense": dense, "sparse": sparse})

    names = {m: n for n, m in model.named_modules() if isinstance(m, _COUNTED)}
    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in names]
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, *input_shape, dtype=input_dtype, device=device))
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
            from torch.utils.tensorboard import SummaryWriter  # optional: the `log` extra
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
