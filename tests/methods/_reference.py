"""Frozen reference: the per-step code of ST-3, DNW, SCL and STR before their speed work.

``test_speed_oracle.py`` trains a model with each reference class and one with the library's
class side by side and requires equal losses, gradients, effective weights, raw weights and
masks at every step. Each ``Ref*`` class subclasses the library's class and overrides every
method on the per-step path with its earlier body, so only configuration, attach-time
validation and schedules are shared. Selection here is a full sort (the earlier band selector
was exact, so its values were those of a sort; the earlier quantile arithmetic is kept).
"""

from __future__ import annotations

import math
from itertools import pairwise
from typing import Any

import torch
from torch import Tensor

from sparsetrain.masking.topk import select_topk
from sparsetrain.methods._inplace import InPlaceMethod
from sparsetrain.methods._st3_parts import decay_only_weights, set_bn_momentum, sigma_of
from sparsetrain.methods.dnw import DNW
from sparsetrain.methods.scl import SCL, adapt_lambda
from sparsetrain.methods.soft_threshold import STR
from sparsetrain.methods.st3 import ST3


def sorted_ranks(x: Tensor, ranks: list[int]) -> list[float]:
    return x.sort().values[ranks].tolist()


def ref_quantile(x: Tensor, q: float) -> float:
    n = x.numel()
    rank = torch.tensor(q, dtype=torch.float32 if n <= 1 << 24 else torch.float64) * (n - 1)
    lo = int(rank)
    frac = (rank - lo).float()
    if frac.item() == 0.0 or lo + 1 >= n:
        return sorted_ranks(x, [lo])[0]
    v_lo, v_hi = sorted_ranks(x, [lo, lo + 1])
    return torch.lerp(torch.tensor(v_lo), torch.tensor(v_hi), frac).item()


def ref_abs_buffer(targets, cache, scales=None) -> Tensor:
    n = sum(t.numel for t in targets)
    dev = targets[0].param.device
    if not cache or cache[0].numel() != n or cache[0].device != dev:
        cache[:] = [torch.empty(n, dtype=torch.float32, device=dev)]
    buf, start = cache[0], 0
    for i, t in enumerate(targets):
        dst = buf[start : start + t.numel].view(t.shape)
        torch.abs(t.param.detach().float(), out=dst)
        if scales is not None and scales[i] != 1.0:
            dst.mul_(scales[i])
        start += t.numel
    return buf


def ref_flat_layout(targets, sigmas):
    spans, start, dev = [], 0, targets[0].param.device
    for t in targets:
        spans.append(slice(start, start + t.numel))
        start += t.numel
    rows = [(t.shape[0], g * t.shape[0] / t.numel) for t, g in zip(targets, sigmas, strict=True)]
    return spans, torch.cat([torch.full((r,), v, device=dev) for r, v in rows])


def ref_exact_mask(x: Tensor, tau: float, keep: int) -> Tensor:
    mask = torch.gt(x, tau, out=torch.empty_like(x))
    if int(mask.sum(dtype=torch.float64)) != keep:
        mask.copy_(select_topk(x, keep))
    return mask


def ref_ste_grad(ste: str, m_hat: Tensor, slope: float, mask: Tensor | None) -> Tensor | None:
    if ste == "identity":
        return None
    if ste == "softplus":
        return torch.sigmoid(m_hat)
    pos = torch.gt(m_hat, 0).to(m_hat.dtype) if mask is None else mask
    return pos if ste == "relu" else pos * (1.0 - slope) + slope


def ref_normalize_per_feature(g: Tensor, kind: str, eps: float = 1e-12) -> Tensor:
    if kind == "none":
        return g
    rows = g.reshape(g.shape[0], -1)
    order = math.inf if kind == "max_abs" else 1 if kind == "mean_abs" else 2
    scale = torch.linalg.vector_norm(rows, order, dim=1, keepdim=True)
    if kind in ("rms", "mean_abs"):
        scale.mul_(rows.shape[1] ** (-0.5 if kind == "rms" else -1.0))
    scale.add_(eps)
    return rows.div_(scale).view_as(g)


class _OldInPlace:
    """``InPlaceMethod``'s earlier publish / unpublish."""

    @torch.no_grad()
    def publish(self) -> None:
        for i, t in enumerate(self.targets):
            raw = t.param.data
            spare = self._spare[i]
            if spare is None or spare.shape != raw.shape or spare.device != raw.device:
                spare = torch.empty_like(raw)
            t.module._buffers[self._buffer_name(i)] = raw
            if self.effective(i, raw, spare):
                t.param.data, self._spare[i], self._is_q[i] = spare, None, True
            elif t.aliases:
                t.param.data, self._spare[i], self._is_q[i] = spare.copy_(raw), None, True
            else:
                self._spare[i], self._is_q[i] = spare, False

    @torch.no_grad()
    def unpublish(self) -> None:
        for i, t in enumerate(self.targets):
            if self._is_q[i]:
                q = t.param.data
                t.param.data = t.module._buffers[self._buffer_name(i)]
                self._spare[i], self._is_q[i] = q, False

    def republish(self) -> None:
        self.unpublish()
        self.publish()


class RefST3(_OldInPlace, ST3):
    def _on_attach(self) -> None:
        sig = self.sigma
        self._sigmas = [1.0 if sig is None else sigma_of(t.shape, sig) for t in self.targets]
        self._scale = [None] * len(self.targets)
        self._spans, self._row_k = ref_flat_layout(self.targets, self._sigmas)
        InPlaceMethod._on_attach(self)
        model, opt = self._require_attached(), self.optimizer
        if opt is not None and self.weight_decay_scope == "weights":
            self._free, undo = decay_only_weights(model, opt, self.targets)
            self._undo.append(undo)
        if self.bn_momentum == "as_released":
            self._undo.append(set_bn_momentum(model, 0.99))

    def _before_step(self, step: int) -> None:
        self.grad_transform()
        self.unpublish()

    def _after_step(self, step: int) -> None:
        if self._free is not None:
            self._free.step()
            self._free.zero_grad()
        self.refresh(step)
        self.publish()

    def refresh(self, step: int) -> None:
        if self._fixed:
            return
        if step == self.freeze_step:
            self._fix()
        elif step % self.update_interval == 0 or step <= self.begin_step + 1:
            self._update(self.sparsity_at(step))

    def effective(self, index: int, raw: Tensor, out: Tensor) -> bool:
        if self._fixed or self._tau is None:
            return False
        self._shrink(index, raw, out, self.targets[index].mask)
        return True

    def _shrink(self, i: int, raw: Tensor, out: Tensor, mask: Tensor | None) -> None:
        shrink = torch._C._nn.softshrink if self.soft else torch.hardshrink
        shrink(raw, self._tau[i], out=out)
        if mask is not None:
            mask.copy_(out)
        scale = self._scale[i]
        if scale is not None:
            out.mul_(scale)

    def grad_transform(self) -> None:
        if self._fixed:
            for t, m in zip(self.targets, self._masks_f, strict=True):
                if t.param.grad is not None:
                    t.param.grad.mul_(m)

    @torch.no_grad()
    def _update(self, s: float, exact: bool = False) -> None:
        if s <= 0.0:
            self._tau = None
            self._scale = [None] * len(self.targets)
            for t in self.targets:
                t.mask.fill_(True)
            return
        buf = ref_abs_buffer(self.targets, self._buf, [1.0 / g for g in self._sigmas])
        tau = ref_quantile(buf, s)
        if not math.isfinite(tau):
            raise FloatingPointError(f"{self.name}: threshold {tau} (non-finite weights)")
        self._tau = [tau * g for g in self._sigmas]
        views = list(zip(self._spans, self.targets, strict=True))
        full = torch.cat([buf[v].view(t.shape[0], -1).sum(1) for v, t in views])
        if exact:
            mf = ref_exact_mask(buf, tau, round((1.0 - s) * buf.numel()))
            self._masks_f = [mf[v].view(t.shape).to(t.param.dtype, copy=True) for v, t in views]
            for t, m in zip(self.targets, self._masks_f, strict=True):
                t.mask.copy_(m)
            kept_buf = mf.mul_(buf)
        else:
            kept_buf = torch.nn.functional.threshold_(buf, tau, 0.0)
        if self.rescale:
            kept = torch.cat([kept_buf[v].view(t.shape[0], -1).sum(1) for v, t in views])
            k = self._row_k
            c = 1.01 / ((kept * k + 1e-6) / (full * k + 1e-6) + 0.01)
            rows = [t.shape[0] for t in self.targets]
            for i, (part, t) in enumerate(zip(c.split(rows), self.targets, strict=True)):
                self._scale[i] = part.to(t.param.dtype).view(-1, *([1] * (len(t.shape) - 1)))

    @torch.no_grad()
    def _fix(self) -> None:
        self._masks_f = []
        if self.sparsity > 0.0:
            self._update(self.sparsity, exact=True)
            for i, t in enumerate(self.targets):
                q = torch.empty_like(t.param)
                self._shrink(i, t.param.data, q, None)
                t.param.copy_(q.mul_(self._masks_f[i]))
        else:
            self._masks_f = [torch.ones_like(t.param) for t in self.targets]
        self._fixed, self._tau = True, None
        self.apply_masks()
        nnz = sum(t.nnz for t in self.targets)
        self.history.append({"step": self.step, "event": "fix", "nnz": nnz})


class RefDNW(_OldInPlace, DNW):
    def _before_step(self, step: int) -> None:
        self.grad_transform()
        self.unpublish()

    def _after_step(self, step: int) -> None:
        self.refresh(step)
        self.publish()

    def refresh(self, step: int) -> None:
        last = step == self.total_steps or step == self.end_step
        if step % self.update_interval == 0 or last:
            self._update(self.sparsity_at(step))

    def effective(self, index: int, raw: Tensor, out: Tensor) -> bool:
        cut = self._cut[index]
        if cut is None:
            return False
        if isinstance(cut, float):
            torch.hardshrink(raw, cut, out=out)
        else:
            torch.mul(raw, cut, out=out)
        return True

    @torch.no_grad()
    def _magnitudes(self) -> Tensor:
        if all(t.param.dtype != torch.float64 for t in self.targets):
            if self._buf and self._buf[0].dtype != torch.float32:
                self._buf.clear()
            return ref_abs_buffer(self.targets, self._buf)
        n, dev = sum(t.numel for t in self.targets), self.targets[0].param.device
        if not self._buf or self._buf[0].numel() != n or self._buf[0].dtype != torch.float64:
            self._buf[:] = [torch.empty(n, dtype=torch.float64, device=dev)]
        buf, start = self._buf[0], 0
        for t in self.targets:
            buf[start : start + t.numel].view(t.shape).copy_(t.param.detach()).abs_()
            start += t.numel
        return buf

    @torch.no_grad()
    def _update(self, s: float) -> None:
        buf = self._magnitudes()
        keep = self._keep(s)
        ends = [0]
        for t in self.targets:
            ends.append(ends[-1] + t.numel)
        if self.scope == "global":
            cut = self._ref_select(buf, keep[0])
            cuts = [cut if isinstance(cut, float | None) else cut[a:b] for a, b in pairwise(ends)]
        else:
            spans = zip(pairwise(ends), keep, strict=True)
            cuts = [self._ref_select(buf[a:b], k) for (a, b), k in spans]
        self._cut = []
        for t, c, (a, b) in zip(self.targets, cuts, pairwise(ends), strict=True):
            if c is None:
                t.mask.fill_(True)
            elif isinstance(c, float):
                t.mask.copy_(torch.gt(buf[a:b], c, out=torch.empty(b - a)).view(t.shape))
            else:
                c = c.view(t.shape).to(t.param.dtype)
                t.mask.copy_(c)
            self._cut.append(c)

    @staticmethod
    def _ref_select(a: Tensor, k: int) -> float | Tensor | None:
        n = a.numel()
        if k >= n:
            return None
        if k > 0:
            lam, v = sorted_ranks(a, [n - k - 1, n - k])
            if lam < v:
                return lam
        return select_topk(a, k).float()


class RefSCL(_OldInPlace, SCL):
    def mask_grad(self, index: int, grad: Tensor, weight: Tensor) -> Tensor:
        out = ref_normalize_per_feature(grad * weight, self.normalization)
        out.add_(self.lam * self.costs[index])
        m_hat = self.mask_vars[index].detach()
        d = ref_ste_grad(self.ste, m_hat, self.ste_slope, self._fmasks[index])
        return out if d is None else out.mul_(d)

    def _before_step(self, step: int) -> None:
        self.grad_transform()
        self.unpublish()
        if self._mask_opt is not None and not self.frozen:
            self._mask_opt.step()

    @torch.no_grad()
    def grad_transform(self) -> None:
        group_of = self._group_of() if self.masked_weight_decay else {}
        for i, t in enumerate(self.targets):
            g, w, q = t.param.grad, self.raw_weight(i), t.param.data
            self.mask_vars[i].grad = None if g is None or self.frozen else self.mask_grad(i, g, w)
            if g is None:
                continue
            g.mul_(self._fmasks[i])
            group = group_of.get(id(t.param), {})
            wd = float(group.get("weight_decay", 0.0)) if self.masked_weight_decay else 0.0
            if wd and group.get("decoupled_weight_decay", False):
                self._decoupled.append((t.param, w - q, float(group["lr"]) * wd))
            elif wd:
                g.sub_(w, alpha=wd).add_(q, alpha=wd)

    @torch.no_grad()
    def _after_step(self, step: int) -> None:
        for p, pruned_w, lr_wd in self._decoupled:
            p.add_(pruned_w, alpha=lr_wd)
        self._decoupled = []
        self.refresh(step)
        self.publish()

    @torch.no_grad()
    def refresh(self, step: int) -> None:
        if self.frozen:
            return
        for t, m_hat, fm in zip(self.targets, self.mask_vars, self._fmasks, strict=True):
            torch.gt(m_hat, 0, out=fm)
            t.mask.copy_(fm)
        if self.lambda_mode == "adaptive" and step > 0:
            active = sum(float(fm.sum()) for fm in self._fmasks)
            now = 1.0 - active / sum(t.numel for t in self.targets)
            ratio = self._mask_opt.groups[0]["lr"] / self.mask_lr if self._mask_opt else 1.0
            self.lam = adapt_lambda(
                self.lam,
                now,
                self._last_sparsity,
                self.target_at(step),
                gain=self.lambda_gain,
                damping=self.lambda_damping,
                lr_ratio=ratio,
            )
            self._last_sparsity = now
        if self.freeze_step is not None and step >= self.freeze_step:
            self.frozen = True
            self.history.append({"step": step, "event": "freeze", "lam": self.lam})

    def effective(self, index: int, raw: Tensor, out: Tensor) -> bool:
        torch.mul(raw, self._fmasks[index], out=out)
        return True


class RefSTR(_OldInPlace, STR):
    def _before_step(self, step: int) -> None:
        self.grad_transform()
        self.unpublish()
        if self._threshold_opt is not None:
            self._threshold_opt.step()

    def _after_step(self, step: int) -> None:
        self.refresh(step)
        self.publish()

    def refresh(self, step: int) -> None:
        with torch.no_grad():
            sig = torch.sigmoid(self.threshold)
            self._lam, self._dsig = sig.tolist(), sig * (1.0 - sig)

    def effective(self, index: int, raw: Tensor, out: Tensor) -> bool:
        torch._C._nn.softshrink(raw, self._lam[index], out=out)
        self.targets[index].mask.copy_(out)
        return True  # the earlier density-0 warning changes no number

    @torch.no_grad()
    def grad_transform(self) -> None:
        s = self.threshold
        dots = []
        for t in self.targets:
            g = t.param.grad
            if g is None:
                dots.append(torch.zeros((), device=s.device))
                continue
            sign = torch.sign(t.param.data)
            dots.append(torch.dot(g.reshape(-1), sign.reshape(-1)).to(s.dtype))
            g.mul_(sign.abs_())
        if s is not None and s.requires_grad:
            d = torch.stack(dots).mul_(self._dsig).neg_()
            s.grad = d


def reference_of(name: str, **kwargs: Any):
    """The reference class for a registered method name, built with ``kwargs``."""
    if name == "st3_sigma":
        return RefST3(sigma="dims", **kwargs)
    return {"st3": RefST3, "dnw": RefDNW, "scl": RefSCL, "str": RefSTR}[name](**kwargs)
