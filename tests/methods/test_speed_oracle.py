"""The straight-through methods' fast per-step path against their earlier code, bit for bit.

For each scenario two copies of one model are trained side by side on the same batches: one with
the library's method, one with the frozen earlier per-step code (``_reference.py``; its selection
is a full sort). At every step the losses, the raw weights' gradients the optimizer sees, the raw
weights, the effective weights used by the next forward, the masks and the thresholds must be
*identical* (``torch.equal``, not a tolerance): the fast exact selection returns the same order
statistics, and every float operation that feeds a weight is the same operation on the same
values in the same order.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch
from _reference import reference_of
from torch import nn

from sparsetrain.methods import create_method

STEPS = 240


def _model() -> nn.Sequential:
    torch.manual_seed(0)  # first layer 256·48 = 12288 weights: large enough for the fast path
    return nn.Sequential(
        nn.Linear(256, 48), nn.ReLU(), nn.Linear(48, 24), nn.ReLU(), nn.Linear(24, 10)
    )


def _batches(n: int = 6) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    teacher = torch.randn(256, 10, generator=g)
    out = []
    for _ in range(n):
        x = torch.randn(32, 256, generator=g)
        out.append((x, (x @ teacher).argmax(1)))
    return out


def _run(method: Any, opt_name: str, lr: float, wd: float) -> list[dict[str, Any]]:
    """Train STEPS steps; per step the records the two implementations must share."""
    model = _model()
    if opt_name == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=wd)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    method.attach(model, opt)
    targets = method.targets
    records: list[dict[str, Any]] = []
    rec: dict[str, Any] = {}

    def pre(*_: Any) -> None:  # registered after the method's hook: gradients as transformed
        rec["grad"] = [t.param.grad.clone() for t in targets]
        rec["raw_before"] = [t.param.detach().clone() for t in targets]

    def post(*_: Any) -> None:  # after the method's post-hook: next forward's weights, masks
        rec["raw"] = [method.raw_weight(i).clone() for i in range(len(targets))]
        rec["eff"] = [t.param.detach().clone() for t in targets]
        rec["mask"] = [t.mask.clone() for t in targets]
        rec["bias"] = [m.bias.detach().clone() for m in model if isinstance(m, nn.Linear)]
        for key in ("_tau", "_cut", "_lam", "lam"):
            if hasattr(method, key):
                value = getattr(method, key)
                rec[key] = (
                    [v.clone() if isinstance(v, torch.Tensor) else v for v in value]
                    if (isinstance(value, list))
                    else value
                )

    opt.register_step_pre_hook(pre)
    opt.register_step_post_hook(post)
    batches = _batches()
    for step in range(STEPS):
        x, y = batches[step % len(batches)]
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        rec["loss"] = loss.detach().clone()
        records.append(dict(rec))
    return records


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


SCENARIOS: dict[str, tuple[str, dict[str, Any], str, float, float]] = {
    # ramp from step 10 to 150, hold, fix at 200 (exact top-k), fine-tune to the end
    "st3": ("st3", {"sparsity": 0.9, "total_steps": STEPS, "begin_step": 10,
                    "end_step": 150, "freeze_step": 200}, "sgd", 0.05, 5e-4),
    "st3_sigma": ("st3_sigma", {"sparsity": 0.8, "total_steps": STEPS, "begin_step": 0,
                                "end_step": 120, "freeze_step": 200}, "sgd", 0.05, 5e-4),
    "st3_hard_interval": ("st3", {"sparsity": 0.95, "total_steps": STEPS, "soft": False,
                                  "rescale": False, "update_interval": 3, "end_step": 60},
                          "adamw", 1e-3, 1e-2),
    "dnw_layer": ("dnw", {"sparsity": 0.9, "total_steps": STEPS}, "sgd", 0.05, 5e-4),
    "dnw_global_ramp": ("dnw", {"sparsity": 0.95, "total_steps": STEPS, "scope": "global",
                                "end_step": 100}, "sgd", 0.1, 0.0),
    "dnw_interval": ("dnw", {"sparsity": 0.8, "total_steps": STEPS, "update_interval": 4},
                     "adamw", 1e-3, 1e-2),
    "scl_adaptive": ("scl", {"lambda_mode": "adaptive", "sparsity": 0.8, "lam": 0.5,
                             "mask_lr": 0.5, "total_steps": STEPS}, "sgd", 0.05, 5e-4),
    "scl_leaky_adamw": ("scl", {"lam": 0.3, "ste": "leaky_relu", "normalization": "mean_abs",
                                "mask_lr": 0.2, "freeze_step": 200, "total_steps": STEPS},
                        "adamw", 1e-3, 1e-2),
    "str": ("str", {"s_init": -5.0, "threshold_weight_decay": 0.05, "total_steps": STEPS},
            "sgd", 0.05, 5e-4),
}  # fmt: skip


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_fast_path_equals_earlier_code_bit_for_bit(scenario: str) -> None:
    name, kwargs, opt_name, lr, wd = SCENARIOS[scenario]
    fast = _run(create_method(name, **kwargs), opt_name, lr, wd)
    ref = _run(reference_of(name, **kwargs), opt_name, lr, wd)
    moves = sum(not _equal(a["mask"], b["mask"]) for a, b in itertools.pairwise(ref))
    assert moves > 10, "the scenario must move the masks"
    for step, (a, b) in enumerate(zip(fast, ref, strict=True), 1):
        for key in b:
            assert _equal(a[key], b[key]), f"{scenario}: {key} differs at step {step}"
