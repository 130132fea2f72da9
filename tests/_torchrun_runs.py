"""``torchrun --nproc-per-node 2 tests/_torchrun_runs.py DIR``: two CLI runs in one launch.

In one process group (one launch costs seconds on 2 cores): ``sparsetrain compare DIR/suite.yaml
--out DIR/suite`` (a straight run), then ``sparsetrain train DIR/base.yaml --out DIR/b`` stopped
by a SIGTERM that every rank sends itself after optimizer step 5 (as ``torchrun`` forwards a
SIGTERM to all of its workers). Rank 0 writes the exit codes to ``DIR/codes.json``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch.distributed as dist

from sparsetrain.cli import main
from sparsetrain.train import recorder

STOP_AT = 5


def _stop_at(cls: type, step: int) -> None:
    on_step = cls.on_step

    def wrapped(self, run, *args):  # type: ignore[no-untyped-def]
        on_step(self, run, *args)
        if self.run_dir.name == "b" and run.state.step == step:
            os.kill(os.getpid(), signal.SIGTERM)

    cls.on_step = wrapped


out = Path(sys.argv[1])
dist.init_process_group("gloo")  # kept for both runs (the CLI starts one only if none is)
_stop_at(recorder.Experiment, STOP_AT)
_stop_at(recorder.Follower, STOP_AT)
codes = {
    "compare": main(["compare", str(out / "suite.yaml"), "--out", str(out / "suite")]),
    "train": main(["train", str(out / "base.yaml"), "--out", str(out / "b"), "--quiet"]),
}
if dist.get_rank() == 0:
    (out / "codes.json").write_text(json.dumps(codes))
dist.barrier()  # both ranks done before the group goes
dist.destroy_process_group()
