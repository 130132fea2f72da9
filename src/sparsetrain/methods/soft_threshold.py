"""STR: soft threshold weight reparameterization with a learnable threshold per layer."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sparsetrain.masking.targets import Target
from sparsetrain.methods._inplace import InPlaceMethod
from sparsetrain.methods.registry import register_method
from sparsetrain.optim import remove_params


class STR(InPlaceMethod):
    """Soft Threshold Reparameterization: w_eff = sign(w)·ReLU(|w| − sigmoid(s_l)).

    Each target layer l has one learnable scalar s_l (entry l of the parameter ``threshold``),
    trained by the user's optimizer. The gradient flows through the soft threshold (the true
    gradient, not an STE): ∂L/∂w = g·1[|w| > t_l] and ∂L/∂s_l = σ'(s_l)·Σ −g·sign(w_eff), the
    values plain autograd through the formula gives (formed from g = ∂L/∂w_eff in the step
    pre-hook; between steps ``weight`` holds w_eff and ``weight_raw`` holds w, see
    :mod:`~sparsetrain.methods._inplace`). Sparsity is **emergent**: nothing sets it directly;
    it grows as weight decay on s_l (and on w) raises the threshold, so it is steered only
    indirectly by ``s_init``, the weight decays and the run length. ``sparsity=`` is refused
    with a ``ValueError`` (no option targets a sparsity); the report never fails. The reported
    mask is w_eff ≠ 0, refreshed after every optimizer step.

    ``s_init`` sets the initial threshold sigmoid(s_init). The STR code's ImageNet ResNet-50
    configs use -3200 (threshold exactly 0 until weight decay has pulled s up over ~500k
    steps); the default -10 here (threshold 4.5e-5, a practically dense start) lets weight
    decay act within ordinary CPU-scale runs. Choose it with the run length and weight decay.

    References:
        Kusupati et al., "Soft Threshold Weight Reparameterization for Learnable Sparsity",
        ICML 2020, arXiv 2002.03231.

    Args:
        s_init: Initial value of every s_l.
        threshold_weight_decay: Weight decay of the s_l; ``None`` (default, as STR's
            ``st_decay``): that of the parameter group holding the first target.
        threshold_lr: Learning rate of the s_l; ``None``: that of the same group. When both
            match that group, the s_l join it; otherwise they get their own group (as STR's
            code); either way they are removed from the optimizer at ``detach``.
        **kwargs: Common options of :class:`~sparsetrain.methods.base.SparsityMethod`.
    """

    name = "str"
    sparsity_mode = "emergent"
    emergent_sparsity_note = (
        "the weight decay raises the per-layer thresholds: steer it with threshold_weight_decay, "
        "s_init and the run length; no option targets a sparsity"
    )

    def __init__(
        self,
        *,
        s_init: float = -10.0,
        threshold_weight_decay: float | None = None,
        threshold_lr: float | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("sparsity", 0.0)  # no target: reports show it as emergent, not 0.9
        super().__init__(**kwargs)
        if threshold_weight_decay is not None and threshold_weight_decay < 0:
            raise ValueError(f"threshold_weight_decay must be >= 0, got {threshold_weight_decay}")
        if threshold_lr is not None and threshold_lr <= 0:
            raise ValueError(f"threshold_lr must be > 0, got {threshold_lr}")
        self.s_init = float(s_init)
        self.threshold_weight_decay, self.threshold_lr = threshold_weight_decay, threshold_lr
        self.threshold: nn.Parameter | None = None  # s, one entry per target (s_l = s[l])
        self._lam: list[float] = []
        self._dsig = torch.empty(0)
        self._tmp: torch.Tensor | None = None

    def _validate(self, targets: list[Target], optimizer: torch.optim.Optimizer | None) -> None:
        if optimizer is None:
            raise ValueError("str trains one threshold per layer: attach(model, optimizer)")

    def refresh(self, step: int) -> None:
        if self.threshold is None:  # at attach; trained by the user's optimizer
            dev = self.targets[0].param.device
            self.threshold = nn.Parameter(torch.full((len(self.targets),), self.s_init, device=dev))
            self._join_optimizer(self.threshold)
        with torch.no_grad():
            sig = torch.sigmoid(self.threshold)
            self._lam, self._dsig = sig.tolist(), sig * (1.0 - sig)

    def effective(self, index: int, raw: torch.Tensor, out: torch.Tensor) -> bool:
        torch._C._nn.softshrink(raw, self._lam[index], out=out)  # sign(w)·ReLU(|w| − t)
        self.targets[index].mask.copy_(out)  # w_eff ≠ 0
        return True

    @torch.no_grad()
    def grad_transform(self) -> None:
        s = self.threshold
        dots = []
        for t in self.targets:
            g = t.param.grad
            if g is None:
                dots.append(torch.zeros((), device=s.device))
                continue
            sign = self._sign(t.param.data)  # sign(w_eff) = sign(w)·1[|w| > t]
            dots.append(torch.dot(g.reshape(-1), sign.reshape(-1)).to(s.dtype))
            g.mul_(sign.abs_())  # ∂L/∂w = g·1[|w| > t]
        if s is not None and s.requires_grad:  # ∂L/∂s_l = σ'(s_l) · Σ −g·sign(w_eff)
            d = torch.stack(dots).mul_(self._dsig).neg_()
            s.grad = d if s.grad is None else s.grad.add_(d)

    def _sign(self, q: torch.Tensor) -> torch.Tensor:
        if self._tmp is None or self._tmp.numel() < q.numel() or self._tmp.device != q.device:
            self._tmp = torch.empty(max(t.numel for t in self.targets), device=q.device)
        return torch.sign(q, out=self._tmp[: q.numel()].view(q.shape))

    def _join_optimizer(self, s: nn.Parameter) -> None:
        """Put s in the weights' group if the options agree (saves a group), else in its own."""
        opt = self.optimizer
        if opt is None:
            raise ValueError("str trains one threshold per layer: attach(model, optimizer)")
        first = self.targets[0].param
        home = next(g for g in opt.param_groups if any(p is first for p in g["params"]))
        wd = home.get("weight_decay", 0.0)
        wd = wd if self.threshold_weight_decay is None else self.threshold_weight_decay
        lr = home.get("lr") if self.threshold_lr is None else self.threshold_lr
        if wd == home.get("weight_decay", 0.0) and lr == home.get("lr"):
            home["params"].append(s)
        else:
            opt.add_param_group({"params": [s], "weight_decay": wd, "lr": lr})

    def _on_detach(self) -> None:
        super()._on_detach()
        opt, s = self.optimizer, self.threshold
        if opt is not None and s is not None:
            remove_params(opt, [s])

    def threshold_values(self) -> dict[str, float]:
        """The current threshold sigmoid(s_l) of every target."""
        return {t.name: lam for t, lam in zip(self.targets, self._lam, strict=True)}

    def _extra_state(self) -> dict[str, Any]:
        return {"s": None if self.threshold is None else self.threshold.detach().clone()}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        if self.threshold is not None:
            with torch.no_grad():
                self.threshold.copy_(state["s"])
        self.unpublish()
        self.refresh(self.step)
        self.publish()


register_method(
    "str",
    description="STR: learnable per-layer soft threshold, sparsity emergent from weight decay",
    paper="Kusupati et al., ICML 2020, arXiv 2002.03231",
    sparsity_mode="emergent",
)(STR)
