"""Sparsity diagnostics: per-layer target vs actual, the global row, mask memory, churn.

``SparsityReport`` is what ``method.report()`` returns; it prints as a table and serialises to
CSV/JSON rows for the run directory.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field


class SparsityTargetError(RuntimeError):
    """A tensor (or the global count) missed its sparsity target by more than one weight."""


@dataclass(frozen=True)
class LayerRow:
    """One tensor's line in the report."""

    name: str
    shape: tuple[int, ...]
    numel: int
    nnz: int
    target_nnz: int | None

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nnz / self.numel if self.numel else 0.0

    @property
    def target_sparsity(self) -> float | None:
        if self.target_nnz is None:
            return None
        return 1.0 - self.target_nnz / self.numel if self.numel else 0.0

    @property
    def missed(self) -> bool:
        return self.target_nnz is not None and abs(self.nnz - self.target_nnz) > 1


@dataclass
class SparsityReport:
    """Per-tensor and global sparsity of a method's masks.

    Attributes:
        method: Registry name of the method.
        step: Optimizer steps taken when the report was made.
        rows: One row per masked tensor.
        global_target_nnz: Target active count over all masked tensors (``None``: emergent).
        mask_bytes: Memory held by the masks.
        churn: Topology-update history (step, pruned, grown, churn).
    """

    method: str
    step: int
    rows: list[LayerRow]
    global_target_nnz: int | None
    mask_bytes: int
    churn: list[dict[str, float]] = field(default_factory=list)

    @property
    def numel(self) -> int:
        return sum(r.numel for r in self.rows)

    @property
    def nnz(self) -> int:
        return sum(r.nnz for r in self.rows)

    @property
    def sparsity(self) -> float:
        """Global sparsity over the masked tensors only."""
        return 1.0 - self.nnz / self.numel if self.numel else 0.0

    @property
    def target_sparsity(self) -> float | None:
        if self.global_target_nnz is None:
            return None
        return 1.0 - self.global_target_nnz / self.numel

    def misses(self) -> list[str]:
        """Human-readable list of every tensor (or the global count) off target by > 1 weight."""
        out = [
            f"{r.name}: {r.nnz} active, target {r.target_nnz} (sparsity {r.sparsity:.4f} vs "
            f"{r.target_sparsity:.4f})"
            for r in self.rows
            if r.missed
        ]
        if self.global_target_nnz is not None and abs(self.nnz - self.global_target_nnz) > 1:
            out.append(f"global: {self.nnz} active, target {self.global_target_nnz}")
        return out

    def check(self) -> None:
        """Raise :class:`SparsityTargetError` if any target is missed by more than one weight."""
        missed = self.misses()
        if missed:
            raise SparsityTargetError(
                f"{self.method}: sparsity target missed by more than one weight: "
                + "; ".join(missed)
            )

    def to_rows(self) -> list[dict[str, object]]:
        """Rows for CSV/JSON: one per tensor plus a final ``global`` row."""
        rows: list[dict[str, object]] = []
        for r in self.rows:
            rows.append(
                {
                    "name": r.name,
                    "shape": "x".join(map(str, r.shape)),
                    "numel": r.numel,
                    "nnz": r.nnz,
                    "target_sparsity": _round(r.target_sparsity),
                    "sparsity": round(r.sparsity, 6),
                }
            )
        rows.append(
            {
                "name": "global",
                "shape": "",
                "numel": self.numel,
                "nnz": self.nnz,
                "target_sparsity": _round(self.target_sparsity),
                "sparsity": round(self.sparsity, 6),
            }
        )
        return rows

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(self.to_rows()[0]))
        writer.writeheader()
        writer.writerows(self.to_rows())
        return buf.getvalue()

    def to_json(self) -> str:
        return json.dumps(
            {
                "method": self.method,
                "step": self.step,
                "mask_bytes": self.mask_bytes,
                "layers": self.to_rows(),
                "churn": self.churn,
            },
            indent=2,
        )

    def __str__(self) -> str:
        head = ("tensor", "shape", "numel", "nnz", "target", "actual")
        lines = [
            (
                str(r["name"]),
                str(r["shape"]),
                str(r["numel"]),
                str(r["nnz"]),
                "-" if r["target_sparsity"] is None else f"{r['target_sparsity']:.4f}",
                f"{r['sparsity']:.4f}",
            )
            for r in self.to_rows()
        ]
        widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head))]
        fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
        out = [fmt.format(*head), "  ".join("-" * w for w in widths)]
        out += [fmt.format(*x) for x in lines[:-1]]
        out += ["  ".join("-" * w for w in widths), fmt.format(*lines[-1])]
        out.append(f"masks: {self.mask_bytes / 2**20:.2f} MiB ({self.method}, step {self.step})")
        return "\n".join(out)


def _round(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else round(x, 6)
