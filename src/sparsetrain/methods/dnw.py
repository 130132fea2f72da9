"""DNW: hard top-k by magnitude in the forward pass, straight-through gradient to every weight."""

from __future__ import annotations

import itertools
from itertools import pairwise
from typing import Any

import torch

from sparsetrain.distributions import allocate
from sparsetrain.masking.topk import select_topk
from sparsetrain.methods import structured
from sparsetrain.methods._inplace import InPlaceMethod
from sparsetrain.methods._st3_parts import OrderStatistics, abs_buffer
from sparsetrain.methods.options import checks, integer, one_of, option_error
from sparsetrain.methods.registry import register_method
from sparsetrain.schedules import PolynomialRamp, Schedule, StepRamp, UpdateSchedule

SCOPES = ("layer", "global")


class DNW(InPlaceMethod):
    """Discovering Neural Wirings: W_eff = W ⊙ TopK(|W|), with ∂L/∂W = g for every raw weight.

    The mask holds exactly the k largest |W| (ties broken by ``torch.topk``), recomputed from the
    raw weights after every optimizer step (and at attach), which is what the official code's
    per-forward selection sees. Between steps ``weight`` holds W ⊙ M and ``weight_raw`` holds W
    (see :mod:`~sparsetrain.methods._inplace`). ``scope="layer"`` keeps a uniform fraction per
    tensor (as the DNW layers of the STR code base, ``prune_rate`` per layer); ``scope="global"``
    ranks all tensors together. By default the network is at the target from step 0;
    ``end_step > begin_step`` adds a cubic ramp (dense until ``begin_step``).
    Equals ST-3 with a hard threshold, no rescale and an exact top-k in place of the quantile.
    With ``structure``: the top-|W| N_t of every group (N:M; N_t decays M → N on the ramp, if
    any), or the blocks of largest summed |W| per layer or globally
    (:mod:`~sparsetrain.methods.structured`); SR-STE is DNW at N:M plus its decay term.

    References:
        Wortsman, Farhadi & Rastegari, "Discovering Neural Wirings", NeurIPS 2019,
        arXiv 1906.00586.

    Args:
        scope: ``layer`` (default) or ``global``.
        begin_step: Start of the optional cubic ramp (formerly ``ramp_begin_step``).
        end_step: End of the ramp; equal to ``begin_step`` (default 0): no ramp (formerly
            ``ramp_end_step``).
        update_interval: Re-select every this many steps (default 1, as the official code's
            per-forward top-k). Larger values are a speed option: in between, the forward keeps
            |W| > λ with the last cut λ (count exact again at each update and the last step).
        **kwargs: Common options of :class:`~sparsetrain.methods.base.SparsityMethod`.
    """

    name = "dnw"
    supported_structures = ("unstructured", "nm", "block")
    CHECKS = checks(
        scope=one_of(SCOPES),
        begin_step=integer(0),
        end_step=integer(0),
        update_interval=integer(1),
    )

    def __init__(
        self,
        *,
        scope: str = "layer",
        begin_step: int = 0,
        end_step: int = 0,
        update_interval: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not begin_step <= end_step:
            raise option_error(
                self.name, f"need 0 <= begin_step <= end_step, got {begin_step} and {end_step}"
            )
        self.scope, self.begin_step, self.end_step = scope, begin_step, end_step
        self.update_interval = update_interval
        ramp = (
            StepRamp(self.sparsity, begin_step)  # no ramp: the target from begin_step on
            if end_step == begin_step
            else PolynomialRamp(0.0, self.sparsity, begin_step, end_step)
        )
        # re-select every update_interval steps, at the end of the ramp and at the last step
        at = (end_step,) if end_step >= 1 else ()
        updates = UpdateSchedule(
            update_interval, phase=0, at=at, final="always", total=self.total_steps
        )
        self.schedule = Schedule(ramp, (updates,))
        self._cut: list[float | torch.Tensor | None] = []  # per target: λ (|W| > λ), mask, all
        self._fresh: list[bool] = []  # per target: its mask still to be set from the new cut
        self._ends: list[int] = []  # each target's span in the magnitude buffer
        self._selects: list[OrderStatistics] = []
        self._buf: list[torch.Tensor] = []
        self._counts: tuple[float, list[int]] = (-1.0, [])

    def refresh(self, step: int) -> None:
        if step == 0 or self.schedule.is_update(step):
            self._update(self.sparsity_at(step))

    def effective(self, index: int, raw: torch.Tensor, out: torch.Tensor) -> bool:
        cut = self._cut[index]
        if cut is None:
            return False
        if isinstance(cut, float):
            torch.hardshrink(raw, cut, out=out)  # keeps |W| > λ: exactly the top k
            if self._fresh[index]:  # the mask of a new cut: out ≠ 0, i.e. |W| > λ
                self.targets[index].mask.copy_(out)
                self._fresh[index] = False
        else:
            torch.mul(raw, cut, out=out)
        return True

    def _keep(self, s: float) -> list[int]:
        """Active count per tensor (``layer``) or in total (``global``) at sparsity ``s``."""
        if self._counts[0] != s:
            total = sum(t.numel for t in self.targets)
            if self.scope == "global":
                counts = [round((1.0 - s) * total)]
            else:
                counts = list(
                    allocate({t.name: t.shape for t in self.targets}, s, "uniform").values()
                )
            self._counts = (s, counts)
        return self._counts[1]

    @torch.no_grad()
    def _magnitudes(self) -> torch.Tensor:
        """|W| of all targets in one reused buffer, float64 if any target is (else float32).

        The cut λ must be exact in the weights' own precision: ``hardshrink`` compares the
        float64 weights with λ, so ranking a float32 copy could leave an entry that rounds to λ
        live in the forward but out of the mask.
        """
        if all(t.param.dtype != torch.float64 for t in self.targets):
            if self._buf and self._buf[0].dtype != torch.float32:
                self._buf.clear()
            return abs_buffer(self.targets, self._buf)  # float32 holds bf16/fp16/fp32 exactly
        n, dev = sum(t.numel for t in self.targets), self.targets[0].param.device
        if not self._buf or self._buf[0].numel() != n or self._buf[0].dtype != torch.float64:
            self._buf[:] = [torch.empty(n, dtype=torch.float64, device=dev)]
        buf, start = self._buf[0], 0
        for t in self.targets:
            buf[start : start + t.numel].view(t.shape).copy_(t.param.detach()).abs_()
            start += t.numel
        return buf

    @torch.no_grad()
    def _update_structured(self, s: float) -> None:
        scores = [t.param.detach().abs() for t in self.targets]
        keep = self._keep(s)
        counts = keep[0] if self.scope == "global" else keep
        masks = structured.keep_masks(
            self.structure, self.targets, scores, density=1.0 - s, counts=counts
        )
        self._cut, self._fresh = [], []
        for t, m in zip(self.targets, masks, strict=True):
            t.mask.copy_(m)
            self._cut.append(None if s <= 0.0 else m.to(t.param.dtype))
            self._fresh.append(False)

    @torch.no_grad()
    def _update(self, s: float) -> None:
        if self.structure.structured:
            self._update_structured(s)
            return
        buf = self._magnitudes()
        keep = self._keep(s)
        if len(self._selects) != len(keep):
            self._selects = [OrderStatistics() for _ in keep]
        if len(self._ends) != len(self.targets) + 1:
            self._ends = list(itertools.accumulate((t.numel for t in self.targets), initial=0))
        spans = list(pairwise(self._ends))
        if self.scope == "global":
            cut = self._select(buf, keep[0], self._selects[0])
            cuts = [cut if isinstance(cut, float | None) else cut[a:b] for a, b in spans]
        else:
            cuts = [
                self._select(buf[a:b], k, sel)
                for (a, b), k, sel in zip(spans, keep, self._selects, strict=True)
            ]
        self._cut, self._fresh = [], []
        for t, c in zip(self.targets, cuts, strict=True):
            if c is None:
                t.mask.fill_(True)
            elif not isinstance(c, float):
                c = c.view(t.shape).to(t.param.dtype)
                t.mask.copy_(c)
            self._cut.append(c)
            self._fresh.append(isinstance(c, float))  # effective() sets that mask, one pass

    @staticmethod
    def _select(a: torch.Tensor, k: int, select: OrderStatistics) -> float | torch.Tensor | None:
        """λ with exactly the ``k`` largest of ``a`` above it; a float mask on a tie at the cut."""
        n = a.numel()
        if k >= n:
            return None
        if k > 0:
            lam, v = select(a, [n - k - 1, n - k])
            if lam < v:
                return lam
        return select_topk(a, k).float()

    def target_counts(self) -> dict[str, int] | None:
        if self.scope == "global" and self.structure.kind != "nm":
            return None
        counts = allocate({t.name: t.shape for t in self.targets}, self.sparsity, "uniform")
        return {
            t.name: structured.target_count(self.structure, t, counts[t.name]) for t in self.targets
        }

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self._cut = [t.mask.to(t.param.dtype) for t in self.targets]
        self.republish()


register_method(
    "dnw",
    description="Discovering Neural Wirings: hard top-k |w| forward, straight-through backward",
    paper="Wortsman, Farhadi & Rastegari, NeurIPS 2019, arXiv 1906.00586",
    dense_grad="always",
)(DNW)
