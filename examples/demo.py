"""Why sparse training is worth it, in about a minute: dense vs four ways to train 90% sparse.

    make demo
    .venv/bin/python examples/demo.py --methods dense st3 gmp granet rigl set static
    .venv/bin/python examples/demo.py --sparsity 0.95 --execution dense

Trains a 40-256-256-10 MLP on MNIST-1D (50,000 signals generated locally by the ``mnist1d``
package: 40,000 train, 10,000 test; nothing is downloaded) once per method, all with the same
recipe: SGD with Nesterov momentum 0.9, learning rate 0.4, weight decay 5e-4, batch 128, 20 epochs,
a linear warm-up over the first 5% of the steps then cosine decay to zero (no LR cut inside any
sparsity ramp). The learning rate was picked for dense on a validation split held out from the
training set. Each method keeps its paper's schedule, scaled to the run by the library's defaults,
and its own initialisation: Kaiming-normal (fan_in, ReLU) for the methods that start dense, as in
ST-3's code; Kaiming-normal divided by √(layer density) for the ones that start sparse, as in
RigL's code. The methods:

- ``dense``: the baseline.
- ``st3`` (Vanderschueren & De Vleeschouwer, WACV 2023), ``gmp`` (Zhu & Gupta 2017) and ``granet``
  (Liu et al., NeurIPS 2021): dense-to-sparse; they train dense at first and prune along a ramp.
- ``rigl`` (Evci et al., ICML 2020) and ``set`` (Mocanu et al. 2018): sparse from the first step,
  the connections move during training (dynamic sparse training).
- ``static``: a random ERK mask fixed at the start (the baseline dynamic methods must beat).

All methods train in lockstep on the same batches: for every batch each method takes its step in
turn (the order rotating), so the per-step time ratio against dense compares steps taken within
milliseconds of each other on the same data, which keeps it honest on a shared machine. Methods
that can (static and the dynamic family) run on sparse kernels (``execution="sparse"``); the
others run masked-dense, which costs at least a dense step. The reference loop without any of
this bookkeeping is ``examples/train_loop.py``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import sparsetrain
from sparsetrain import get_method_info
from sparsetrain.data import DatasetSplits, load_dataset
from sparsetrain.export import squash
from sparsetrain.models import create_model
from sparsetrain.train import count_flops

DEFAULT_METHODS = ("dense", "st3", "granet", "rigl", "static")
START_SPARSE = ("rigl", "set", "mest", "dst", "static")
"""Methods whose masks exist from step 0: RigL's sparsity-scaled init applies to them."""


@dataclass
class Recipe:
    """Everything a run needs besides the method: shared by all methods of the demo."""

    sparsity: float = 0.9
    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup: float = 0.05
    hidden: tuple[int, ...] = (256, 256)
    execution: str = "sparse"
    seed: int = 0


@dataclass
class Run:
    """One method being trained: its model, optimizer, schedule and what was measured."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    method: sparsetrain.SparsityMethod
    step_times: list[float] = field(default_factory=list)
    eval_time: float = 0.0
    curve: list[tuple[int, float, float]] = field(default_factory=list)
    """(step, test accuracy %, sparsity) after every epoch."""
    density: list[tuple[int, float]] = field(default_factory=list)
    """(step, fraction of live weights) sampled along training: forward FLOPs vs dense here."""


def target_methods() -> list[str]:
    """The registered methods that reach a set sparsity (emergent ones need their own tuning)."""
    return [m for m in sparsetrain.list_methods() if get_method_info(m).sparsity_mode == "target"]


def method_options(
    name: str, recipe: Recipe, total_steps: int, steps_per_epoch: int
) -> dict[str, Any]:
    """The options of ``name`` in this demo: the method's defaults plus its own init."""
    options: dict[str, Any] = {"total_steps": total_steps, "seed": recipe.seed}
    if name == "optg":  # its sigmoid ramp and mask updates count epochs
        options["steps_per_epoch"] = steps_per_epoch
    if name != "dense":
        options["sparsity"] = recipe.sparsity
    options["weight_init"] = "sparse_layer_scaled" if name in START_SPARSE else "kaiming_normal"
    if get_method_info(name).sparse_execution:
        options["execution"] = recipe.execution
    return options


def lr_lambda(total_steps: int, warmup: float) -> Callable[[int], float]:
    """Linear warm-up over ``warmup`` of the steps, then cosine decay to zero at the end."""
    warm = max(1, round(warmup * total_steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, total_steps - warm)))

    return factor


def build_run(
    name: str, recipe: Recipe, data: DatasetSplits, total_steps: int, steps_per_epoch: int
) -> Run:
    """Model, optimizer, the method attached (two lines), then the LR schedule."""
    torch.manual_seed(recipe.seed)
    model = create_model(
        "mlp",
        num_classes=data.num_classes,
        input_shape=data.input_shape,
        hidden_sizes=recipe.hidden,
    )
    options = method_options(name, recipe, total_steps, steps_per_epoch)
    method = sparsetrain.create_method(name, **options)
    groups = sparsetrain.param_groups(model, method, weight_decay=recipe.weight_decay)  # recipe
    optimizer = torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=True)
    method.attach(model, optimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total_steps, recipe.warmup))
    return Run(name, model, optimizer, scheduler, method)


def train_step(run: Run, xb: torch.Tensor, yb: torch.Tensor, loss_fn: nn.Module) -> None:
    """The plain PyTorch step; ``optimizer.step()`` drives the method through its hooks."""
    loss = loss_fn(run.model(xb), yb)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    run.scheduler.step()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    model.eval()
    correct = sum(
        (model(x[i : i + 2000]).argmax(1) == y[i : i + 2000]).sum().item()
        for i in range(0, len(x), 2000)
    )
    model.train()
    return 100.0 * correct / len(x)


def live_fraction(method: sparsetrain.SparsityMethod) -> float:
    """Live fraction of the masked weights: for an MLP, forward multiply-adds vs dense."""
    report = method.report()
    return report.nnz / report.numel if report.numel else 1.0


def dense_grad_fraction(run: Run, total_steps: int) -> float:
    """Fraction of the steps on which the method needs the gradient of every weight."""
    info = get_method_info(run.name)
    if info.dense_grad == "always" or run.name == "dense":
        return 1.0
    if info.dense_grad == "never":
        return 0.0
    updates = run.method.update_steps(total_steps)
    if info.sparse_execution:  # the DST family knows exactly (SET's random growth needs none)
        updates = [s for s in updates if run.method.needs_dense_grad(s)]
    return len(updates) / total_steps


def train_flops(run: Run, total_steps: int) -> float:
    """Training multiply-adds vs dense training, counted as in Evci et al. (RigL, ICML 2020).

    A step costs a forward pass and the input gradient on the live weights (2 × the live
    fraction) plus the weight gradient: on the live weights only, or on every weight on the
    steps where the method reads the dense gradient (ST-3's straight-through estimator: every
    step; RigL and GraNet: on topology updates). Dense costs 3.
    """
    live = statistics.fmean(d for _, d in run.density)
    dense = dense_grad_fraction(run, total_steps)
    return (2.0 * live + dense + (1.0 - dense) * live) / 3.0


def train_all(names: Sequence[str], recipe: Recipe, data: DatasetSplits) -> list[Run]:
    """Train every method in lockstep on the same shuffled batches; time each step."""
    x, y = data.train.tensors
    x_test, y_test = data.test.tensors
    steps_per_epoch = -(-len(x) // recipe.batch_size)
    total_steps = recipe.epochs * steps_per_epoch
    sample_every = max(1, total_steps // 300)  # ~300 sparsity samples per run
    runs = [build_run(name, recipe, data, total_steps, steps_per_epoch) for name in names]
    generator = torch.Generator().manual_seed(recipe.seed)
    loss_fn = nn.CrossEntropyLoss()
    for run in runs:
        run.density.append((0, live_fraction(run.method)))
    step = 0
    for _ in range(recipe.epochs):
        order = torch.randperm(len(x), generator=generator)
        for i in range(0, len(x), recipe.batch_size):
            idx = order[i : i + recipe.batch_size]
            xb, yb = x[idx], y[idx]
            shift = step % len(runs)
            for run in runs[shift:] + runs[:shift]:
                start = time.perf_counter()
                train_step(run, xb, yb, loss_fn)
                run.step_times.append(time.perf_counter() - start)
                if (step + 1) % sample_every == 0:
                    run.density.append((step + 1, live_fraction(run.method)))
            step += 1
        for run in runs:
            start = time.perf_counter()
            acc = accuracy(run.model, x_test, y_test)
            run.eval_time += time.perf_counter() - start
            run.curve.append((step, acc, 1.0 - live_fraction(run.method)))
    return runs


def summarise(runs: Sequence[Run], input_shape: tuple[int, ...]) -> list[dict[str, Any]]:
    """One row per run: final test accuracy, sparsity, FLOPs, step time vs dense, wall time."""
    dense = next((r for r in runs if r.name == "dense"), None)
    rows = []
    for run in runs:
        report = run.method.finish()  # raises if a tensor missed its target by > 1 weight
        execution = "sparse" if run.method.execution != "dense" else "masked"
        if run.name == "dense":
            execution = "dense"
        ratio = None
        if dense is not None:
            pairs = zip(run.step_times, dense.step_times, strict=True)
            ratio = statistics.median(t / d for t, d in pairs)
        plain = squash(run.method)  # plain nn.Linear layers, zeros at pruned weights
        rows.append(
            {
                "method": run.name,
                "accuracy": run.curve[-1][1],
                "sparsity": report.sparsity,
                "train_flops": train_flops(run, len(run.step_times)),
                "final_flops": count_flops(plain, input_shape)["ratio"],
                "step_ratio": ratio,
                "execution": execution,
                "wall": sum(run.step_times) + run.eval_time,
            }
        )
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The printed comparison."""
    lines = [
        f"{'method':<8} {'test acc':>8} {'sparsity':>8} {'train FLOPs':>11} {'final FLOPs':>11} "
        f"{'step time vs dense':>19} {'wall':>6}"
    ]
    for r in rows:
        step = "-" if r["step_ratio"] is None else f"{r['step_ratio']:.2f}x {r['execution']}"
        lines.append(
            f"{r['method']:<8} {r['accuracy']:>7.2f}% {r['sparsity']:>8.3f} "
            f"{r['train_flops']:>10.2f}x {r['final_flops']:>10.2f}x {step:>19} {r['wall']:>5.1f}s"
        )
    return "\n".join(lines)


def free_path(path: Path) -> Path:
    """``path``, or ``name-2.png``, ``name-3.png``, ... if it exists (never overwrite)."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def plot(runs: Sequence[Run], title: str, path: Path) -> Path | None:
    """Test accuracy and sparsity vs training step, one line per method; None without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    fig = Figure(figsize=(10, 4), layout="constrained")
    acc_ax, sp_ax = fig.subplots(1, 2)
    for i, run in enumerate(runs):
        style = {"linestyle": ("-", "--", "-.", ":")[i % 4], "color": f"C{i}", "label": run.name}
        acc_ax.plot(
            *zip(*[(s, a) for s, a, _ in run.curve], strict=True), marker="o", ms=3, **style
        )
        sp_ax.plot(*zip(*[(s, 1.0 - d) for s, d in run.density], strict=True), **style)
    acc_ax.set(xlabel="training step", ylabel="test accuracy (%)", title="test accuracy")
    late = [a for run in runs for _, a, _ in run.curve[len(run.curve) // 4 :]]
    acc_ax.set_ylim(max(0.0, min(late) - 2.0), min(100.0, max(late) + 1.0))
    acc_ax.grid(alpha=0.3)
    sp_ax.set(xlabel="training step", ylabel="sparsity of the weights", title="sparsity")
    sp_ax.set_ylim(-0.02, 1.0)
    sp_ax.grid(alpha=0.3)
    sp_ax.legend()
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    path = free_path(path)
    fig.savefig(path, dpi=100)
    return path


def positive_int(text: str) -> int:
    """An argparse type: an int >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description="sparsetrain demo: why sparse training")
    parser.add_argument(
        "--methods", nargs="+", default=list(DEFAULT_METHODS), choices=target_methods()
    )
    parser.add_argument("--sparsity", type=float, default=Recipe.sparsity)
    parser.add_argument("--epochs", type=positive_int, default=Recipe.epochs)
    parser.add_argument("--execution", choices=("sparse", "dense"), default=Recipe.execution)
    parser.add_argument(
        "--num-samples", type=positive_int, default=50_000, help="MNIST-1D signals (80%% train)"
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="cache of generated data")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="picture folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=positive_int, default=1, help="CPU threads (1: fastest at this size)"
    )
    return parser.parse_args(argv)


def run_demo(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Train the methods, print the table, save the picture; return the table's rows."""
    start = time.perf_counter()
    recipe = Recipe(
        sparsity=args.sparsity, epochs=args.epochs, execution=args.execution, seed=args.seed
    )
    data = load_dataset(
        "mnist1d", num_samples=args.num_samples, val_fraction=0.0, data_dir=args.data_dir
    )
    width = "-".join(map(str, (math.prod(data.input_shape), *recipe.hidden, data.num_classes)))
    print(
        f"MNIST-1D {len(data.train)} train / {len(data.test)} test, MLP {width}, "
        f"{recipe.epochs} epochs, sparsity {recipe.sparsity:g}, {torch.get_num_threads()} thread(s)"
    )
    runs = train_all(args.methods, recipe, data)
    rows = summarise(runs, data.input_shape)
    print(format_table(rows))
    note = (
        "train FLOPs: multiply-adds of the whole training run vs dense (forward, input and weight "
        "gradients; ST-3 back-propagates to every weight, RigL and GraNet take dense gradients on "
        "topology updates); final FLOPs: per example, trained model. step time: median over all "
        "steps of step time / dense's step time on the same batch (sparse: CSR kernels; masked: "
        "dense kernels with masks). wall: training + evaluation of this method alone."
    )
    print(textwrap.fill(note, width=100))
    title = f"MNIST-1D, MLP {width}, sparsity {recipe.sparsity:g}"
    picture = plot(runs, title, args.out / "demo.png")
    print(f"picture: {picture}" if picture else "picture skipped: pip install matplotlib")
    print(f"total {time.perf_counter() - start:.0f}s")
    return rows


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run the demo with ``--threads`` CPU threads (restored afterwards)."""
    args = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return run_demo(args)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
