"""Speed table: per-step overhead of every method and one RigL update, with their goals.

    .venv/bin/python benchmarks/speed.py              # full (1.5 min measured on 2 cores)
    .venv/bin/python benchmarks/speed.py --quick      # smoke run (25 s measured)

Runs the two measurements of ``overhead.py`` (interleaved per-step timings vs dense, LeNet-300-100
and LeNet-5-Caffe, batch 128, SGD momentum 0.9, topology updates pushed past the benchmark) and
``rigl_update.py`` (one RigL update over ResNet-50's 25.5M weights, 90%, ERK, momentum surgery),
then prints one Markdown table with each goal and whether it was met. Run it on a quiet machine:
timings taken while other jobs run are not comparable.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead
import rigl_update

# Our goals: masked-dense hard-mask methods within 5% of dense, methods with a
# forward function (thresholds, STEs, scores) within 20%; one RigL update on ResNet-50 <= 0.3 s.
HARD_MASK = ["static", "gmp", "set", "rigl"]
FORWARD_FN = ["optg", "st3", "st3_sigma", "scl", "str", "dnw", "granet"]
GOAL = {**dict.fromkeys(HARD_MASK, 1.05), **dict.fromkeys(FORWARD_FN, 1.20)}
RIGL_UPDATE_GOAL_S = 0.3


def verdict(value: float, goal: float) -> str:
    return "met" if value <= goal else f"missed by {100 * (value / goal - 1):.1f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds, one update repeat")
    parser.add_argument("--models", nargs="+", default=["lenet300_100", "lenet5"])
    parser.add_argument("--methods", nargs="+", default=HARD_MASK + FORWARD_FN)
    args = parser.parse_args()
    unknown = sorted(set(args.methods) - set(GOAL))
    if unknown:
        parser.error(f"no speed goal for {unknown}; valid: {sorted(GOAL)}")
    rounds, warmup, repeats = (20, 5, 1) if args.quick else (150, 20, 7)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, rounds {rounds}")
    print()
    print("| benchmark | model | method | median | dense | ratio | goal | verdict |")
    print("|---|---|---|---:|---:|---:|---:|---|")
    for row in overhead.measure(args.models, args.methods, rounds=rounds, warmup=warmup):
        goal = GOAL[str(row["method"])]
        ratio = float(row["ratio"])
        print(
            f"| step overhead | {row['model']} | {row['method']} | {row['step_ms']:.2f} ms "
            f"| {row['dense_ms']:.2f} ms | {ratio:.3f} | ≤ {goal:.2f} | {verdict(ratio, goal)} |",
            flush=True,
        )
    upd = rigl_update.time_update(0.9, repeats)
    print(
        f"| RigL update | ResNet-50 shapes ({upd['weights'] / 1e6:.1f}M weights) | rigl "
        f"| {upd['median_s']:.3f} s | | | ≤ {RIGL_UPDATE_GOAL_S} s "
        f"| {verdict(upd['median_s'], RIGL_UPDATE_GOAL_S)} |"
    )
    print()
    print(f"mask memory: {upd['mask_bytes_per_weight']:.2f} bytes per weight")


if __name__ == "__main__":
    main()
