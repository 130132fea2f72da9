"""SCL: learned binary masks M = step(m̂) with an STE, normalised mask gradients and a λ penalty.

Tang et al. 2022. Mask variables m̂ (init +c: dense start) are trained by their own SGD (our
choice: base lr ``mask_lr``, momentum ``mask_momentum``, no weight decay), whatever optimizer
trains the weights; the mask LR is ``mask_lr`` times the weights' current LR over their base LR,
so it follows the weights' schedule (and the masks settle as it anneals). ``mask_optimizer="user"``
trains them with an optimizer of the user's class and hyper-parameters instead (weight decay 0,
``mask_momentum`` if it is SGD). Neither joins the user's optimizer (see
:class:`~sparsetrain.optim.Companion`). With Adam-type optimizers ``user`` makes every m̂ move by
about lr per step whatever its gradient, so the masks switch off together (MNIST-1D CNN with
AdamW: adaptive λ aimed at 90% overshot to 97%, at 95% to 99.9%).
Forward Ŵ ⊙ M; backward Ŵ.grad = g ⊙ M, m̂.grad = (N_o(g ⊙ Ŵ) + λ·a_l)·ste'(m̂) with N_o the
per-feature normalisation (feature = row of a Linear, filter of a Conv) and a_l = dR/dM of layer l.
Between steps ``weight`` holds Ŵ ⊙ M and ``weight_raw`` Ŵ (see
:mod:`~sparsetrain.methods._inplace`).

Our conventions (the paper leaves them open):

- λ is **not** divided by N: the penalty gradient of each mask variable is λ·a_l, on the scale
  of the normalised task gradient (O(1) per entry), so one λ suits any architecture.
- ste' multiplies the whole mask gradient (chain rule through M, penalty included), so the
  task/penalty balance point does not depend on the STE.
- ``regularizer="flops"``: a_l = output spatial size of layer l (forward hooks on the first
  forward; 1 for a Linear on 2-D input) over its mean across mask variables (mean a_l = 1).
- ``masked_weight_decay=True``: param groups stay as they are; the decay the optimizer is about
  to apply to pruned Ŵ is cancelled (L2-style: ``grad -= wd·Ŵ`` there before the step; AdamW's
  decoupled decay: added back after it).
- ``lambda_mode="adaptive"`` (an extension) steers λ to the target ``sparsity`` s* by PD control of
  log λ on the log density after every step (:func:`adapt_lambda`): the damping (in steps)
  anticipates masks in flight, the step of log λ is bounded and scaled by the masks' current LR
  (anti-windup), and λ stays in :data:`LAMBDA_RANGE`. The sparsity reached is reported; it can
  miss the target by a little (the report shows by how much).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from sparsetrain.methods._inplace import InPlaceMethod
from sparsetrain.methods.options import checks, integer, number, one_of, option_error
from sparsetrain.methods.registry import register_method
from sparsetrain.optim import Companion, group_of
from sparsetrain.schedules import cubic

STES = ("identity", "leaky_relu", "softplus", "relu")
NORMS = ("rms", "mean_abs", "max_abs", "l2", "none")
REGULARIZERS = ("count", "flops")
LAMBDA_MODES = ("fixed", "adaptive")
MASK_OPTIMIZERS = ("sgd", "user")


LAMBDA_RANGE = (1e-6, 1e3)
"""Bounds of the adaptive λ (anti-windup: it can never run away while the masks lag)."""
MAX_LOG_STEP = 0.05
"""Largest change of log λ in one step in adaptive mode."""


def adapt_lambda(
    lam: float,
    sparsity: float,
    previous: float,
    target: float,
    *,
    gain: float,
    damping: float,
    lr_ratio: float = 1.0,
) -> float:
    """One step of the adaptive-λ controller: PD control of log λ on the log density.

    With d = 1 − s the density: e = log(d / d*) (> 0: too dense, raise λ) and the change
    Δ = log(d / d_prev) (< 0 while masks are switching off). Then
    ``log λ += clip(gain · (e + damping · Δ) · lr_ratio, ±MAX_LOG_STEP)`` and λ is clipped to
    :data:`LAMBDA_RANGE`. Working on log density makes the error scale-free: 0.98 → 0.992 is a
    2.5× density error, where the absolute sparsity error (0.012) looked small. ``lr_ratio`` (the
    masks' current LR over their base LR) is the anti-windup: masks move in proportion to their
    LR, so while it is small (warmup, the end of a cosine schedule) λ integrates as slowly.
    """
    d = max(1.0 - sparsity, 1e-9)
    d_prev = max(1.0 - previous, 1e-9)
    d_target = max(1.0 - target, 1e-9)
    u = gain * (math.log(d / d_target) + damping * math.log(d / d_prev)) * max(lr_ratio, 0.0)
    u = min(MAX_LOG_STEP, max(-MAX_LOG_STEP, u))
    return min(LAMBDA_RANGE[1], max(LAMBDA_RANGE[0], lam * math.exp(u)))


def ste_grad(
    ste: str, m_hat: torch.Tensor, slope: float = 0.1, mask: torch.Tensor | None = None
) -> torch.Tensor | None:
    """The STE proxy derivative of step(m̂), or ``None`` for identity (1 everywhere).

    ``leaky_relu``: 1 if m̂ > 0 else ``slope``; ``softplus``: σ(m̂); ``relu``: 1 if m̂ > 0 else 0.
    ``mask`` is 1[m̂ > 0] as a float tensor, if already at hand.
    """
    one_of(STES)("scl", "ste", ste)
    if ste == "identity":
        return None
    if ste == "softplus":
        return torch.sigmoid(m_hat)
    pos = torch.gt(m_hat, 0).to(m_hat.dtype) if mask is None else mask
    return pos if ste == "relu" else pos * (1.0 - slope) + slope


def normalize_per_feature(
    g: torch.Tensor, kind: str = "rms", eps: float = 1e-12, *, inplace: bool = False
) -> torch.Tensor:
    """Divide each output feature g[o] by its RMS, mean |·|, max |·|, L2 norm (or by 1)."""
    if kind == "none":
        return g
    rows = g.reshape(g.shape[0], -1)  # (C_out, fan_in)
    order = math.inf if kind == "max_abs" else 1 if kind == "mean_abs" else 2
    scale = torch.linalg.vector_norm(rows, order, dim=1, keepdim=True)  # (C_out, 1)
    if kind in ("rms", "mean_abs"):
        scale.mul_(rows.shape[1] ** (-0.5 if kind == "rms" else -1.0))
    scale.add_(eps)
    return (rows.div_(scale) if inplace else rows / scale).view_as(g)


class SCL(InPlaceMethod):
    """Sparse connectivity learning: binary masks learned by STE against a connection penalty.

    References:
        Tang et al., "Automatic Sparse Connectivity Learning for Neural Networks", IEEE TNNLS
        2022, arXiv 2201.05020 (no official code; the conventions above are ours).

    Args:
        lam: λ ≥ 0, the penalty weight (the sparsity knob; the initial λ in adaptive mode).
        lambda_mode: ``fixed`` (emergent sparsity) or ``adaptive`` (λ steered to ``sparsity``).
        sparsity: Sparsity the adaptive mode steers to (formerly ``target_sparsity``); with
            ``lambda_mode="fixed"`` the sparsity is emergent and a target is refused.
        target_ramp: Adaptive mode: the controller tracks a cubic ramp from 0 to
            ``sparsity`` over this fraction of ``total_steps`` (as GMP and ST-3 prune),
            then the target itself; 0 aims at the target from the first step (which prunes an
            untrained network: on the MNIST-1D CNN at 90% it reached the target by epoch 5 of 40
            and ended 18 points below ST-3).
        lambda_gain: Adaptive mode: change of log λ per step per unit of log-density error.
        lambda_damping: Adaptive mode: weight (in steps) of the log-density change per step.
        ste: ``identity`` (default), ``leaky_relu``, ``softplus`` or ``relu``.
        ste_slope: Slope α of the leaky-ReLU STE for m̂ ≤ 0.
        normalization: ``rms`` (default), ``mean_abs``, ``max_abs``, ``l2`` or ``none``.
        regularizer: ``count`` (dR/dM = 1) or ``flops`` (output-size weighted).
        mask_init: c > 0, the initial value of every m̂ (dense start).
        mask_lr: Base learning rate of the m̂ (scaled by the weights' LR schedule).
        mask_momentum: Momentum of the m̂ SGD (with ``mask_optimizer="user"``: SGD only).
        mask_optimizer: ``sgd`` (default: the masks' own SGD) or ``user`` (an optimizer of the
            user's class and hyper-parameters).
        masked_weight_decay: Apply the optimizer's weight decay to active Ŵ only.
        freeze_step: After this step the mask is fixed (fine-tuning of Ŵ only).
        **kwargs: Common options of :class:`SparsityMethod`.
    """

    name = "scl"
    sparsity_mode = "emergent"
    structure_note = (
        "its masks come from thresholding learned mask variables and its sparsity is "
        "emergent; nothing ranks the weights to keep a structure"
    )
    emergent_sparsity_note = (
        "with lambda_mode='fixed' the penalty lam sets it (sparsity= is refused); to reach a "
        "target sparsity pass "
        "lambda_mode='adaptive' together with sparsity="
    )
    CHECKS = checks(
        lam=number(0),
        lambda_mode=one_of(LAMBDA_MODES),
        sparsity=number(0, 1, high_open=True, optional=True),
        target_ramp=number(0, 1),
        lambda_gain=number(0),
        lambda_damping=number(0),
        ste=one_of(STES),
        ste_slope=number(0, 1, low_open=True),
        normalization=one_of(NORMS),
        regularizer=one_of(REGULARIZERS),
        mask_init=number(0, low_open=True),
        mask_lr=number(0, low_open=True),
        mask_momentum=number(0, 1, high_open=True),
        mask_optimizer=one_of(MASK_OPTIMIZERS),
        freeze_step=integer(0, optional=True),
    )

    def __init__(
        self,
        *,
        lam: float = 0.1,
        lambda_mode: str = "fixed",
        sparsity: float | None = None,
        target_ramp: float = 0.5,
        lambda_gain: float = 0.2,
        lambda_damping: float = 30.0,
        ste: str = "identity",
        ste_slope: float = 0.1,
        normalization: str = "rms",
        regularizer: str = "count",
        mask_init: float = 1.0,
        mask_lr: float = 0.01,
        mask_momentum: float = 0.9,
        mask_optimizer: str = "sgd",
        masked_weight_decay: bool = True,
        freeze_step: int | None = None,
        **kwargs: Any,
    ) -> None:
        if lambda_mode == "adaptive" and not lam > 0:
            raise option_error(
                self.name, f"lam must be > 0 with lambda_mode='adaptive', got {lam!r}"
            )
        if lambda_mode == "adaptive" and sparsity is None:
            raise option_error(
                self.name,
                "lambda_mode='adaptive' needs a target: pass sparsity= (the sparsity to reach)",
            )
        self.targets_sparsity = lambda_mode == "adaptive"  # fixed: the base refuses sparsity > 0
        super().__init__(sparsity=0.0 if sparsity is None else sparsity, **kwargs)
        self.lam, self.lambda_mode, self.lambda_gain = float(lam), lambda_mode, lambda_gain
        self.target_ramp = float(target_ramp)
        self.lambda_damping, self._last_sparsity = lambda_damping, 0.0
        self.ste, self.ste_slope, self.normalization = ste, ste_slope, normalization
        self.regularizer, self.mask_init, self.mask_lr = regularizer, mask_init, mask_lr
        self.mask_momentum, self.masked_weight_decay = mask_momentum, masked_weight_decay
        self.freeze_step, self.frozen = freeze_step, False
        self.mask_optimizer = mask_optimizer
        self._mask_opt: Companion | None = None  # the masks' optimizer (see optim.Companion)
        self.mask_vars: list[torch.Tensor] = []
        self.costs: list[float] = []
        self._fmasks: list[torch.Tensor] = []
        self._decoupled: list[tuple[torch.Tensor, torch.Tensor, float]] = []
        self._probes: list[Any] = []
        self._spatial: dict[int, int] = {}
        self._groups_key: list[int] = []
        self._groups_map: dict[int, dict[str, Any]] = {}

    def target_at(self, step: int) -> float:
        """The sparsity the adaptive controller aims at after ``step`` steps (cubic ramp)."""
        end = self.target_ramp * (self.total_steps or 0)
        if end <= 0 or step >= end:
            return self.sparsity
        return cubic(step, final=self.sparsity, start=0, end=round(end))

    def mask_grad(
        self,
        index: int,
        grad: torch.Tensor,
        weight: torch.Tensor,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """dm̂ = (normalize_per_feature(g ⊙ Ŵ) + λ·a_l) · ste'(m̂) for target ``index``.

        Written into ``out`` (a tensor like ``grad``) if given, else into a new tensor.
        """
        prod = grad * weight if out is None else torch.mul(grad, weight, out=out)
        out = normalize_per_feature(prod, self.normalization, inplace=True)
        out.add_(self.lam * self.costs[index])
        d = ste_grad(self.ste, self.mask_vars[index].detach(), self.ste_slope, self._fmasks[index])
        return out if d is None else out.mul_(d)

    def _validate(self, targets: Any, optimizer: torch.optim.Optimizer | None) -> None:
        if optimizer is None:
            raise ValueError("scl trains its masks: attach(model, optimizer) needs an optimizer")
        if self.regularizer == "flops":
            conv_or_linear = (torch.nn.Linear, torch.nn.modules.conv._ConvNd)
            for t in targets:
                if not (t.param_name == "weight" and isinstance(t.module, conv_or_linear)):
                    raise ValueError(
                        f"scl regularizer='flops' weighs Linear/Conv weights by their output size; "
                        f"{t.name!r} ({type(t.module).__name__}) is neither: use "
                        f"regularizer='count' or exclude={[t.name]!r}"
                    )

    def _on_attach(self) -> None:
        opt = self.optimizer
        self.mask_vars = [
            torch.full_like(t.param, self.mask_init).requires_grad_() for t in self.targets
        ]
        self.costs = [1.0] * len(self.targets)
        self._fmasks = [torch.ones_like(t.param) for t in self.targets]
        super()._on_attach()  # raw-weight buffers, then refresh(0) and publish()
        anchor = self.targets[0].param  # the mask LR follows this weight's group
        home = group_of(opt, anchor)  # type: ignore[arg-type]
        lr0 = float(home.get("initial_lr", home["lr"]))  # mask LR = mask_lr · lr / lr0
        scale = self.mask_lr / lr0 if lr0 > 0 else 0.0  # saved with the companion's state
        if self.mask_optimizer == "sgd":
            self._mask_opt = Companion(opt, "sgd")  # type: ignore[arg-type]
            self._mask_opt.add(self.mask_vars, anchor, scale=scale, momentum=self.mask_momentum)
        else:
            hp: dict[str, Any] = {"weight_decay": 0.0}
            if isinstance(opt, torch.optim.SGD):
                hp["momentum"] = self.mask_momentum
            self._mask_opt = Companion(opt, "like")  # type: ignore[arg-type]
            self._mask_opt.add(self.mask_vars, anchor, scale=scale, **hp)
        if self.regularizer == "flops":
            self._probes = [
                t.module.register_forward_hook(self._probe(i)) for i, t in enumerate(self.targets)
            ]

    def _probe(self, index: int) -> Any:
        def hook(module: torch.nn.Module, args: Any, out: torch.Tensor) -> None:
            conv = isinstance(module, torch.nn.modules.conv._ConvNd)
            self._spatial[index] = math.prod(out.shape[2:] if conv else out.shape[1:-1])
            if len(self._spatial) == len(self.targets):  # all measured: a_l = size / mean size
                self._set_costs([self._spatial[i] for i in range(len(self.targets))])

        return hook

    def _set_costs(self, spatial: list[int]) -> None:
        for h in self._probes:
            h.remove()
        self._probes = []
        n = [t.numel for t in self.targets]
        mean = sum(a * k for a, k in zip(spatial, n, strict=True)) / sum(n)
        self.costs = [a / mean for a in spatial]

    def _before_step(self, step: int) -> None:
        super()._before_step(step)  # grad_transform(), then Ŵ back into the parameters
        if self._mask_opt is not None and not self.frozen:
            self._mask_opt.step()

    def _on_detach(self) -> None:
        if self._mask_opt is not None:
            self._mask_opt.release()
        self._mask_opt = None
        for h in self._probes:
            h.remove()
        super()._on_detach()

    @torch.no_grad()
    def grad_transform(self) -> None:
        """Dense g → m̂.grad (unless frozen), Ŵ.grad = g ⊙ M, decay kept off pruned Ŵ."""
        group_of = self._group_of() if self.masked_weight_decay else {}
        for i, t in enumerate(self.targets):
            g, w, q = t.param.grad, self.raw_weight(i), t.param.data  # Ŵ and W_eff = Ŵ ⊙ M
            # overwritten, not accumulated: g sums every backward since the last step
            m = self.mask_vars[i]
            if g is None or self.frozen:
                m.grad = None
            else:  # into last step's gradient: a fresh 1 MB tensor per step can cost page faults
                buf = m.grad if m.grad is not None and m.grad.shape == g.shape else None
                m.grad = self.mask_grad(i, g, w, buf)
            if g is None:
                continue
            g.mul_(self._fmasks[i])
            group = group_of.get(id(t.param), {})
            wd = float(group.get("weight_decay", 0.0)) if self.masked_weight_decay else 0.0
            if wd and group.get("decoupled_weight_decay", False):
                self._decoupled.append((t.param, w - q, float(group["lr"]) * wd))
            elif wd:  # the optimizer adds wd·Ŵ: cancel it at pruned entries, grad -= wd·(Ŵ − W_eff)
                g.sub_(w, alpha=wd).add_(q, alpha=wd)

    def _group_of(self) -> dict[int, dict[str, Any]]:
        groups = self.optimizer.param_groups if self.optimizer is not None else []
        key = [id(g) for g in groups]  # rebuilt when groups change (e.g. optimizer reload)
        if key != self._groups_key:
            self._groups_key = key
            self._groups_map = {id(p): g for g in groups for p in g["params"]}
        return self._groups_map

    @torch.no_grad()
    def _after_step(self, step: int) -> None:
        for p, pruned_w, lr_wd in self._decoupled:  # undo AdamW's decay of pruned Ŵ
            p.add_(pruned_w, alpha=lr_wd)
        self._decoupled = []
        super()._after_step(step)  # refresh(step), then publish()

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

    def effective(self, index: int, raw: torch.Tensor, out: torch.Tensor) -> bool:
        torch.mul(raw, self._fmasks[index], out=out)
        return True

    def _extra_state(self) -> dict[str, Any]:
        return {
            "mask_vars": [m.detach().clone() for m in self.mask_vars],
            "lam": self.lam,
            "last_sparsity": self._last_sparsity,
            "frozen": self.frozen,
            "costs": None if self._probes else list(self.costs),  # None: not measured yet
        } | ({} if self._mask_opt is None else {"mask_optimizer": self._mask_opt.state_dict()})

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for m, saved in zip(self.mask_vars, state["mask_vars"], strict=True):
                m.copy_(saved)
            for t, fm in zip(self.targets, self._fmasks, strict=True):
                fm.copy_(t.mask)
        self.lam, self.frozen = float(state["lam"]), bool(state["frozen"])
        self._last_sparsity = float(state["last_sparsity"])
        if self._mask_opt is not None and "mask_optimizer" in state:
            self._mask_opt.load_state_dict(state["mask_optimizer"])
        if state["costs"] is not None:
            self._set_costs([1] * len(self.targets))  # removes the probes
            self.costs = [float(c) for c in state["costs"]]
        self.republish()


register_method(
    "scl",
    description="SCL: learned binary masks (STE) with normalised mask gradients and a λ penalty",
    paper="Tang et al., IEEE TNNLS 2022, arXiv 2201.05020",
    sparsity_mode="emergent",
    dense_grad="always",
)(SCL)
