"""The reference training loop: a plain PyTorch loop with sparsetrain in two lines.

    .venv/bin/python examples/train_loop.py      # dense vs RigL at 90% on MNIST-1D
    .venv/bin/python examples/train_loop.py --methods dense set static --sparsity 0.95

Trains the small 1-D CNN on MNIST-1D (generated locally by the ``mnist1d`` package, nothing is
downloaded) once per method, then prints the test accuracy of each run and the per-layer
sparsity table of the last sparse one. The hook order this loop relies on is documented in
``sparsetrain/methods/base.py``: ``optimizer.step()`` runs the method's ``after_backward`` and
``after_optimizer_step`` hooks, so the loop itself stays unchanged. ``make demo`` runs
``examples/demo.py``: this loop around an MLP, a converging recipe per method, timed and plotted.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import sparsetrain
from sparsetrain.data import load_dataset
from sparsetrain.methods import get_method_info
from sparsetrain.models import create_model


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator):
    """Shuffled mini-batches of in-memory tensors."""
    order = torch.randperm(len(x), generator=generator)
    for i in range(0, len(x), batch_size):
        idx = order[i : i + batch_size]
        yield x[idx], y[idx]


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    model.eval()
    correct = sum(
        (model(x[i : i + 1000]).argmax(1) == y[i : i + 1000]).sum().item()
        for i in range(0, len(x), 1000)
    )
    model.train()
    return 100.0 * correct / len(x)


def train(
    method_name: str, args: argparse.Namespace, data
) -> tuple[float, sparsetrain.SparsityMethod]:
    """One run: build model and optimizer, attach the method, train, evaluate."""
    torch.manual_seed(args.seed)
    x_train, y_train = data.train.tensors
    x_test, y_test = data.test.tensors
    model = create_model("cnn1d", num_classes=data.num_classes, input_shape=data.input_shape)
    steps_per_epoch = -(-len(x_train) // args.batch_size)
    total_steps = args.epochs * steps_per_epoch

    # --- the two lines of sparsetrain (three with the method's parameter groups) -------
    options = {"total_steps": total_steps}
    if method_name != "dense" and get_method_info(method_name).sparsity_mode == "target":
        options["sparsity"] = args.sparsity  # emergent methods (STR, SCL) set their own
    if method_name in ("rigl", "set", "mest", "dst"):
        options["update_interval"] = args.update_interval
    if method_name == "optg":
        options["steps_per_epoch"] = steps_per_epoch
    method = sparsetrain.create_method(method_name, **options)
    groups = sparsetrain.param_groups(model, method, weight_decay=1e-4)  # ST-3: no decay on biases
    optimizer = torch.optim.AdamW(groups, lr=args.lr)
    method.attach(model, optimizer)
    # -----------------------------------------------------------------------------------
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=total_steps)

    generator = torch.Generator().manual_seed(args.seed)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(args.epochs):
        for xb, yb in batches(x_train, y_train, args.batch_size, generator):
            loss = loss_fn(model(xb), yb)  # forward on the masked model
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # dense gradients, read by the method if needed
            optimizer.step()  # hooks: mask grads, update, topology changes
            scheduler.step()
        if args.verbose:
            print(f"  {method_name} epoch {epoch + 1}: loss {loss.item():.3f}")
    method.finish()  # raises if any tensor missed its target by more than one weight
    return accuracy(model, x_test, y_test), method


def main() -> None:
    """Train each requested method and print the comparison."""
    parser = argparse.ArgumentParser(description="sparsetrain reference loop on MNIST-1D")
    parser.add_argument("--methods", nargs="+", default=["dense", "rigl"])
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--update-interval", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()

    data = load_dataset("mnist1d", val_fraction=0.0, seed=args.seed)
    print(f"MNIST-1D: {len(data.train)} train / {len(data.test)} test, input {data.input_shape}")
    results, last_sparse = [], None
    for name in args.methods:
        start = time.perf_counter()
        acc, method = train(name, args, data)
        results.append((name, acc, method.report().sparsity, time.perf_counter() - start))
        if name != "dense":
            last_sparse = method
    print(f"\n{'method':<10} {'test acc':>9} {'sparsity':>9} {'time':>7}")
    for name, acc, sparsity, secs in results:
        print(f"{name:<10} {acc:>8.2f}% {sparsity:>9.3f} {secs:>6.1f}s")
    if last_sparse is not None:
        print(f"\nper-layer sparsity of {last_sparse.name}:\n{last_sparse.report()}")


if __name__ == "__main__":
    main()
