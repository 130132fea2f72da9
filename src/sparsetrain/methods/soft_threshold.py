"""STR: soft threshold weight reparameterization with a learnable threshold per layer."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from sparsetrain.masking.targets import Target
from sparsetrain.methods._inplace import InPlaceMethod
from sparsetrain.methods.diagnostics import SparsityTargetWarning
from sparsetrain.methods.options import checks, number
from sparsetrain.methods.registry import register_method
from sparsetrain.optim import Companion, group_of


class STR(InPlaceMethod):
    """Soft Threshold Reparameterization: w_eff = sign(w)·ReLU(|w| − sigmoid(s_l)).

    Each target layer l has one learnable scalar s_l (entry l of the parameter ``threshold``),
    trained by an optimizer of the user's class with the hyper-parameters of the weights' group
    (see :class:`~sparsetrain.optim.Companion`: the s_l follow that group's LR schedule and never
    join the user's optimizer). The gradient flows through the soft threshold (the true
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
        threshold_lr: Base learning rate of the s_l; ``None``: that of the same group. The s_l
            LR is ``threshold_lr`` times the group's current LR over its base LR, so it follows
            the group's schedule either way.
        **kwargs: Common options of :class:`~sparsetrain.methods.base.SparsityMethod`.
    """

    name = "str"
    CHECKS = checks(
        s_init=number(),
        threshold_weight_decay=number(0, optional=True),
        threshold_lr=number(0, low_open=True, optional=True),
    )
    sparsity_mode = "emergent"
    structure_note = (
        "a learned soft threshold decides every weight on its own and the sparsity is "
        "emergent; nothing ranks the weights to keep a structure"
    )
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
        self.s_init = float(s_init)
        self.threshold_weight_decay, self.threshold_lr = threshold_weight_decay, threshold_lr
        self.threshold: nn.Parameter | None = None  # s, one entry per target (s_l = s[l])
        self._threshold_opt: Companion | None = None
        self._lam: list[float] = []
        self._dsig = torch.empty(0)
        self._tmp: torch.Tensor | None = None
        self._dead: set[int] = set()  # targets that reached density 0 (warned once each)

    def _validate(self, targets: list[Target], optimizer: torch.optim.Optimizer | None) -> None:
        if optimizer is None:
            raise ValueError("str trains one threshold per layer: attach(model, optimizer)")

    def _on_attach(self) -> None:
        self._dead = set()
        first, opt = self.targets[0].param, self.optimizer
        dtype = torch.promote_types(first.dtype, torch.float32)  # float64 models: float64 s_l
        self.threshold = nn.Parameter(
            torch.full((len(self.targets),), self.s_init, dtype=dtype, device=first.device)
        )
        home = group_of(opt, first)  # type: ignore[arg-type]
        lr0 = float(home.get("initial_lr", home["lr"]))
        scale = 1.0 if self.threshold_lr is None or lr0 <= 0 else self.threshold_lr / lr0
        wd = self.threshold_weight_decay
        self._threshold_opt = Companion(opt, "like")  # type: ignore[arg-type]
        self._threshold_opt.add(
            [self.threshold], first, scale=scale, **({} if wd is None else {"weight_decay": wd})
        )
        super()._on_attach()

    def _before_step(self, step: int) -> None:
        super()._before_step(step)  # grad_transform(), then W back into the parameters
        if self._threshold_opt is not None:
            self._threshold_opt.step()

    def refresh(self, step: int) -> None:
        with torch.no_grad():
            sig = torch.sigmoid(self.threshold)
            self._lam, self._dsig = sig.tolist(), sig * (1.0 - sig)

    def effective(self, index: int, raw: torch.Tensor, out: torch.Tensor) -> bool:
        torch._C._nn.softshrink(raw, self._lam[index], out=out)  # sign(w)·ReLU(|w| − t)
        t = self.targets[index]
        t.mask.copy_(out)  # w_eff ≠ 0
        if index not in self._dead and not _any(t.mask):
            self._dead.add(index)  # the layer passes nothing on: the network output is constant
            self.history.append({"step": self.step, "event": "layer_at_density_0", "layer": t.name})
            warnings.warn(
                f"str: layer {t.name!r} reached density 0 at step {self.step} (threshold "
                f"{self._lam[index]:.4g} above every |w|); lower threshold_weight_decay or s_init",
                SparsityTargetWarning,
                stacklevel=2,
            )
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
            s.grad = d  # g already sums every backward since the last step

    def _sign(self, q: torch.Tensor) -> torch.Tensor:
        tmp = self._tmp
        if tmp is None or tmp.numel() < q.numel() or (tmp.device, tmp.dtype) != (q.device, q.dtype):
            n = max(t.numel for t in self.targets)
            self._tmp = torch.empty(n, dtype=q.dtype, device=q.device)
        return torch.sign(q, out=self._tmp[: q.numel()].view(q.shape))

    def _on_detach(self) -> None:
        super()._on_detach()
        if self._threshold_opt is not None:
            self._threshold_opt.release()
        self._threshold_opt = None

    def threshold_values(self) -> dict[str, float]:
        """The current threshold sigmoid(s_l) of every target."""
        return {t.name: lam for t, lam in zip(self.targets, self._lam, strict=True)}

    def _extra_state(self) -> dict[str, Any]:
        opt = self._threshold_opt
        return {
            "s": None if self.threshold is None else self.threshold.detach().clone(),
            "threshold_optimizer": {} if opt is None else opt.state_dict(),
        }

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        if self.threshold is not None:
            with torch.no_grad():
                self.threshold.copy_(state["s"])
        if self._threshold_opt is not None:
            self._threshold_opt.load_state_dict(state.get("threshold_optimizer", {}))
        dead = {h["layer"] for h in self.history if h.get("event") == "layer_at_density_0"}
        self._dead = {i for i, t in enumerate(self.targets) if t.name in dead}
        self.unpublish()
        self.refresh(self.step)
        self.publish()


def _any(mask: torch.Tensor) -> bool:
    """Whether a ``bool`` tensor has a true entry (numpy's is ~10x faster on a CPU tensor)."""
    return bool(mask.numpy().any()) if mask.device.type == "cpu" else bool(mask.any())


register_method(
    "str",
    description="STR: learnable per-layer soft threshold, sparsity emergent from weight decay",
    paper="Kusupati et al., ICML 2020, arXiv 2002.03231",
    sparsity_mode="emergent",
)(STR)
