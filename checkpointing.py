"""Checkpoints of `train.py`: Orbax in ``WORKDIR/checkpoints/``, and SIGTERM as a save-and-stop.

A checkpoint holds the `train.TrainState` (step, params, batch_stats and the optimizer state
without the statistics that gradient diagnostics add, see `saved_opt_state`) and the float64
running sums of the train loss/accuracy since the last evaluation.  Writes are synchronous and
atomic: a killed write leaves ``N.orbax-checkpoint-tmp-*``, which is ignored and cleaned up when
the run restarts, and the previous step intact.  Nothing is pickled.

  * `checkpoint_manager` / `save` / `restore`: what the training loop uses.
  * `restore_checkpoint`: reads a run's saved state from its workdir (read-only).
  * `Preemption`: turns SIGTERM into a flag the loop checks at every step boundary.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import TYPE_CHECKING

import jax
import numpy as np

from diagnostics import gradient_stats_of

if TYPE_CHECKING:
    from train import TrainState

CHECKPOINT_DIR = "checkpoints"


def checkpoint_manager(workdir: str, keep: int, read_only: bool = False):
    """Synchronous saves (deterministic tests, nothing in flight at a kill); the leftovers of a
    killed write (``N.orbax-checkpoint-tmp-*``) are ignored and cleaned up on restart."""
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=not read_only, enable_async_checkpointing=False,
        cleanup_tmp_directories=not read_only, read_only=read_only,
    )
    return ocp.CheckpointManager(os.path.join(workdir, CHECKPOINT_DIR), options=options)


def saved_opt_state(opt_state):
    """The optimizer state as checkpointed: without the `gradient_stats` entries that
    diagnostics add, so checkpoints are the same with diagnostics on and off (a run can
    switch them on or off when it resumes)."""
    import znorm_optax as zo

    if gradient_stats_of(opt_state) is None:
        return opt_state
    return tuple(s for s in opt_state if not isinstance(s, zo.GradientStatsState))


def _with_stats(opt_state, like):
    """Puts the `gradient_stats` entries of `like` (diagnostics on) back into a saved state."""
    import znorm_optax as zo

    if gradient_stats_of(like) is None:
        return opt_state
    rest = iter(opt_state)
    return tuple(s if isinstance(s, zo.GradientStatsState) else next(rest) for s in like)


def _checkpoint_item(state: TrainState, train_sums: np.ndarray) -> dict:
    return {
        "state": {
            "step": state.step,
            "params": state.params,
            "batch_stats": state.batch_stats,
            "opt_state": saved_opt_state(state.opt_state),
        },
        # float64 sums of the per-step train loss/accuracy since the last evaluation, and the
        # number of steps: the next metrics line after a resume is the same as without one.
        "train_sums": train_sums,
    }


def _from_checkpoint_item(item: dict, like: TrainState) -> tuple[TrainState, np.ndarray]:
    s = item["state"]
    opt_state = jax.tree.unflatten(
        jax.tree.structure(saved_opt_state(like.opt_state)), jax.tree.leaves(s["opt_state"])
    )
    opt_state = _with_stats(opt_state, like.opt_state)
    state = like.replace(
        step=np.asarray(s["step"]), params=s["params"], batch_stats=s["batch_stats"],
        opt_state=opt_state,
    )
    return state, np.asarray(item["train_sums"], np.float64)


def save(mngr, step: int, state: TrainState, train_sums: np.ndarray) -> None:
    """Writes the (host) `state` and `train_sums` as checkpoint `step` and waits for it."""
    import orbax.checkpoint as ocp

    mngr.save(step, args=ocp.args.StandardSave(_checkpoint_item(state, train_sums)))
    mngr.wait_until_finished()


def restore(mngr, step: int, like: TrainState) -> tuple[TrainState, np.ndarray]:
    """``(state, train_sums)`` of checkpoint `step`, with the tree structure of `like` (a state
    of the same config: diagnostics on or off need not match the saved run's)."""
    import orbax.checkpoint as ocp

    target = _checkpoint_item(like, np.zeros(3, np.float64))
    item = mngr.restore(step, args=ocp.args.StandardRestore(target))
    return _from_checkpoint_item(item, like)


def restore_checkpoint(workdir: str, like: TrainState, step: int | None = None):
    """Reads the state saved in ``WORKDIR/checkpoints`` at ``step`` (latest if None).

    Returns:
      ``(state, train_sums)``, or None when there is no checkpoint.
    """
    mngr = checkpoint_manager(workdir, keep=1 << 30, read_only=True)
    try:
        step = mngr.latest_step() if step is None else step
        if step is None:
            return None
        return restore(mngr, step, like)
    finally:
        mngr.close()


class Preemption:
    """Turns SIGTERM into a flag that the training loop checks at every step boundary."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        return False
