"""The experiment harness: the training loop, checkpoints, metrics, plots and suites.

``run_experiment(cfg, run_dir)`` trains one config into a run directory; ``sparsetrain train``
is a thin wrapper around it. Not imported by ``import sparsetrain`` (it pulls in the data and
model registries).
"""

from sparsetrain.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from sparsetrain.train.experiment import RunOptions, RunResult, run_dir_state, run_experiment
from sparsetrain.train.loop import Run, TrainState, evaluate, train
from sparsetrain.train.metrics import count_flops

__all__ = [
    "CheckpointError",
    "Run",
    "RunOptions",
    "RunResult",
    "TrainState",
    "count_flops",
    "evaluate",
    "load_checkpoint",
    "run_dir_state",
    "run_experiment",
    "save_checkpoint",
    "train",
]
