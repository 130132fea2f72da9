"""Why DNW trails on the language model: how fast its forward mask changes, AdamW vs SGD.

DNW keeps the top-k |W| of each tensor in the forward and sends the gradient to every raw
weight, so a pruned weight keeps training and can re-enter. This probe trains ``gpt_tiny`` on
``pydoc`` with DNW at 90% (the recipe of ``suites/pydoc_gpt_tiny.yaml``, written out as a plain
loop) and records, every 50 steps, the fraction of the kept weights that were not kept 50 steps
earlier (churn), and the final test loss. The same run with momentum SGD (lr 0.1, the vision
recipe's optimizer family) is the comparison.

    OMP_NUM_THREADS=1 python benchmarks/dnw_churn_lm.py            # ~2 min on one core per run
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

import sparsetrain
from sparsetrain.data import load_dataset
from sparsetrain.models import create_model


def run(opt_name: str, seed: int, epochs: int, every: int) -> dict[str, object]:
    """One DNW run; returns churn by step and the final test loss (nats/token)."""
    splits = load_dataset("pydoc", seq_len=64, val_fraction=0.1, seed=seed)
    torch.manual_seed(seed)
    model = create_model("gpt_tiny", num_classes=splits.num_classes, input_shape=(64,))
    if opt_name == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(
            model.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1
        )
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    per_epoch = math.ceil(len(splits.train) / 32)
    total = epochs * per_epoch
    warm = max(1, total // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.1 + 0.45 * (1 + math.cos(math.pi * (s - warm) / (total - warm)))
        ),
    )
    method = sparsetrain.create_method("dnw", sparsity=0.9, include=["blocks.*"], total_steps=total)
    method.attach(model, opt)
    gen = torch.Generator().manual_seed(seed)
    churn, before, step = [], [t.mask.clone() for t in method.targets], 0
    for _ in range(epochs):
        for x, y in splits.train.batches(32, generator=gen):
            loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            if step % every == 0:
                now = [t.mask.clone() for t in method.targets]
                new = sum(int((n & ~b).sum()) for n, b in zip(now, before, strict=True))
                churn.append((step, new / sum(int(n.sum()) for n in now)))
                before = now
    model.eval()
    with torch.no_grad():
        x, y = splits.test.tensors
        test = (
            sum(
                F.cross_entropy(
                    model(x[i : i + 512]).flatten(0, 1), y[i : i + 512].flatten(), reduction="sum"
                ).item()
                for i in range(0, len(x), 512)
            )
            / y.numel()
        )
    return {"optimizer": opt_name, "churn": churn, "test_loss": test}


def main() -> None:
    """Both optimizers, one seed; prints churn every ``--every`` steps and the test loss."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--every", type=int, default=50)
    args = p.parse_args()
    for name in ("adamw", "sgd"):
        r = run(name, args.seed, args.epochs, args.every)
        marks = r["churn"][:: max(1, len(r["churn"]) // 7)]
        shown = ", ".join(f"{s}: {100 * c:.1f}%" for s, c in marks)
        print(
            f"{name}: test loss {r['test_loss']:.4f} nats/token; "
            f"churn per {args.every} steps {shown}"
        )


if __name__ == "__main__":
    main()
