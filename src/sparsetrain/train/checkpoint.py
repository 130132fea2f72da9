"""One-dict checkpoints, written atomically and read with ``torch.load(weights_only=True)``.

A checkpoint is a single dict (the nanoGPT shape)::

    {"format": "sparsetrain.checkpoint", "format_version": 1,
     "model": model.state_dict(), "optimizer": optimizer.state_dict(),
     "method": method.state_dict(),          # masks, step counter, history, method extras
     "lr_schedule": {...},                   # kind and base LRs; the LR is a function of the step
     "step": int, "epoch": int, "batch": int,  # optimizer steps done; epoch; next batch in epoch
     "data_order": {"perm": LongTensor, "generator": ByteTensor},  # this epoch's order, aug RNG
     "rng": {"torch": ByteTensor, "cuda": [...], "numpy": {...}, "python": [...]},
     "history": [...], "best": {...},        # per-epoch metrics so far, best-validation record
     "elapsed": float, "config": {...},      # wall time so far, resolved config
     "versions": {...}}

Everything is a tensor or a plain Python type, so ``weights_only=True`` loads it without running
arbitrary pickled code. RNG states are converted accordingly (NumPy's to a dict of a tensor and
ints, Python's to a list).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparsetrain._io import atomic_path

FORMAT = "sparsetrain.checkpoint"
FORMAT_VERSION = 1


DEFAULT_WAY_OUT = "restore it from a copy, or delete it and train the run again"


class CheckpointError(ValueError):
    """A checkpoint cannot be used: missing, truncated, corrupt, foreign or of another version."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` (plus format tags) to ``path`` atomically: temp file, fsync, rename.

    A crash during the write leaves the previous checkpoint intact.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **state}, f)


def load_checkpoint(path: str | Path, way_out: str = DEFAULT_WAY_OUT) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` onto the CPU.

    Args:
        path: The checkpoint file.
        way_out: What the user can do about a damaged file; ends that error's message.

    Raises:
        CheckpointError: One line naming the file, what is wrong with it and (when damaged)
            the way out.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"no checkpoint at {p}")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types on damaged files (KeyError, ...)
        first = (str(exc).strip().splitlines() or [""])[0]
        reason = first if 0 < len(first) <= 100 else type(exc).__name__  # never cut mid-way
        raise CheckpointError(
            f"checkpoint {p} cannot be read: the file is truncated or corrupt ({reason}); {way_out}"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{p} is not a sparsetrain checkpoint (no {FORMAT!r} tag)")
    version = state.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{p} has checkpoint format version {version}; this sparsetrain reads "
            f"version {FORMAT_VERSION}"
        )
    return state


# --------------------------------------------------------------------------- RNG states


def capture_rng() -> tuple[Any, ...]:
    """The global RNG states as returned by each library (cheap: taken after every step)."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return (torch.get_rng_state(), cuda, np.random.get_state(), random.getstate())


def rng_to_plain(raw: tuple[Any, ...] | dict[str, Any]) -> dict[str, Any]:
    """Convert :func:`capture_rng` output to tensors and plain types (weights-only loadable)."""
    if isinstance(raw, dict):
        return raw
    torch_state, cuda, (kind, keys, pos, has_gauss, cached), (version, internal, gauss) = raw
    return {
        "torch": torch_state,
        "cuda": list(cuda),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": [int(version), [int(v) for v in internal], gauss],
    }


def get_rng_state() -> dict[str, Any]:
    """The global RNG states of torch (CPU and CUDA), NumPy and Python, as plain types."""
    return rng_to_plain(capture_rng())


def set_rng_state(state: dict[str, Any] | tuple[Any, ...]) -> None:
    """Restore the states saved by :func:`get_rng_state` (or taken by :func:`capture_rng`)."""
    state = rng_to_plain(state)
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
