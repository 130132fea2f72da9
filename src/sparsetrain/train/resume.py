"""A run's one-dict checkpoint and restoring it into freshly built objects (``--resume``).

Under ``torchrun`` the checkpoint also holds the world size and every rank's random streams
(:func:`rank_states`), so a resumed multi-process run continues bit for bit.
"""

from __future__ import annotations

from typing import Any

from sparsetrain.distributed import is_distributed, rank_and_world
from sparsetrain.train.checkpoint import CheckpointError, rng_to_plain, set_rng_state
from sparsetrain.train.loop import Run, TrainState
from sparsetrain.train.summary import data_files, versions


def checkpoint_dict(run: Run) -> dict[str, Any]:
    """The one-dict checkpoint of ``run`` as of its last completed step."""
    st = run.state
    return {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "method": run.method.state_dict(),
        "lr_schedule": {
            "schedule": run.cfg.optim.schedule,
            "unit": run.cfg.optim.schedule_unit,
            "base_lrs": list(run.base_lrs),
        },
        "step": st.step,
        "epoch": st.epoch,
        "batch": st.batch,
        "steps_per_epoch": run.steps_per_epoch,
        "data_order": {"perm": st.perm, "generator": st.data_rng},
        "sums": list(st.sums),
        "rng": rng_to_plain(st.rng),
        "history": list(st.history),
        "best": st.best,
        "elapsed": st.elapsed,
        "config": run.cfg.to_dict(),
        "data_files": data_files(run),
        "versions": versions(),
        **rank_states(run),  # under torchrun: world size and every rank's random streams
    }


def check_same_data(run: Run, ckpt: dict[str, Any]) -> None:
    """Refuse a checkpoint whose run read other data files (compared by content, not path)."""
    saved = ckpt.get("data_files")
    if saved is None:  # a checkpoint from before files were recorded
        return
    now = data_files(run)
    for was, new in zip(saved, now, strict=False):
        if was["sha256"] != new["sha256"]:
            raise CheckpointError(
                f"the data file {new['path']} (sha256 {new['sha256'][:12]}...) differs from the "
                f"one the checkpoint's run read ({was['path']}, sha256 {was['sha256'][:12]}...); "
                "resume on the data the run was trained on (--data-dir)"
            )
    if len(saved) != len(now):
        raise CheckpointError(
            f"the checkpoint's run read {len(saved)} data files, this one {len(now)}"
        )


def restore(run: Run, ckpt: dict[str, Any]) -> None:
    """Load a checkpoint into freshly built objects (model, optimizer, method, RNGs, state)."""
    check_same_data(run, ckpt)
    if ckpt.get("steps_per_epoch") != run.steps_per_epoch:
        raise CheckpointError(
            f"checkpoint has {ckpt.get('steps_per_epoch')} steps per epoch, the data now gives "
            f"{run.steps_per_epoch}: was the dataset changed?"
        )
    try:
        run.method.adopt_execution(ckpt["method"])  # execution="auto": the checkpoint's choices
        run.model.load_state_dict(ckpt["model"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.method.load_state_dict(ckpt["method"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint does not match the model: {exc}") from None
    order = ckpt["data_order"]
    run.state = TrainState(
        step=ckpt["step"],
        epoch=ckpt["epoch"],
        batch=ckpt["batch"],
        perm=order["perm"],
        data_rng=order["generator"],
        sums=list(ckpt["sums"]),
        history=list(ckpt["history"]),
        best=ckpt["best"],
        elapsed=ckpt["elapsed"],
        rng=ckpt["rng"],
    )
    set_rng_state(ckpt["rng"])


def rank_states(run: Run) -> dict[str, Any]:
    """Checkpoint entries of a multi-process run: world size and every rank's streams.

    A collective: every rank calls it at the same point (rank 0 writes the result).
    """
    if not is_distributed():
        return {}
    import torch.distributed as dist

    mine = {"rng": rng_to_plain(run.state.rng), "data_rng": run.state.data_rng}
    every: list[Any] = [None] * rank_and_world()[1]
    dist.all_gather_object(every, mine)
    return {"world_size": len(every), "ranks": every}


def restore_rank(run: Run, ckpt: dict[str, Any]) -> None:
    """After ``restore``: this rank's random streams from a multi-process checkpoint."""
    rank = rank_and_world()[0]
    ranks = ckpt.get("ranks")
    if not ranks or rank == 0:
        return
    mine = ranks[rank]
    run.state.rng, run.state.data_rng = mine["rng"], mine["data_rng"]
    set_rng_state(mine["rng"])
