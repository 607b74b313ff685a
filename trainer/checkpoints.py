"""Checkpoints of the trainer: Orbax in ``WORKDIR/checkpoints/``, and SIGTERM as save-and-stop.

A checkpoint holds the `TrainState` (step, params, batch_stats, opt_state) and the float64
running sums of the train loss/accuracy since the last evaluation, so that the next metrics line
after a resume is the same as without one. Writes are synchronous and atomic: a killed write
leaves ``N.orbax-checkpoint-tmp-*``, which is ignored and cleaned up when the run restarts, and
the previous step intact. Nothing is pickled.
"""

from __future__ import annotations

import os
import signal
import threading

import jax
import numpy as np
import orbax.checkpoint as ocp

from trainer.state import TrainState

CHECKPOINT_DIR = "checkpoints"


def checkpoint_manager(workdir: str, keep: int, read_only: bool = False) -> ocp.CheckpointManager:
  """Synchronous saves (deterministic tests, nothing in flight at a kill); the leftovers of a
  killed write (``N.orbax-checkpoint-tmp-*``) are ignored and cleaned up on restart."""
  options = ocp.CheckpointManagerOptions(
    max_to_keep=keep,
    create=not read_only,
    enable_async_checkpointing=False,
    cleanup_tmp_directories=not read_only,
    read_only=read_only,
  )
  return ocp.CheckpointManager(os.path.join(workdir, CHECKPOINT_DIR), options=options)


def _item(state: TrainState, train_sums: np.ndarray) -> dict:
  return {
    "state": {
      "step": state.step,
      "params": state.params,
      "batch_stats": state.batch_stats,
      "opt_state": state.opt_state,
    },
    "train_sums": train_sums,  # loss, accuracy, steps since the last evaluation
  }


def save(mngr: ocp.CheckpointManager, state: TrainState, train_sums: np.ndarray) -> None:
  """Writes the (host) `state` and `train_sums` as checkpoint ``state.step`` and waits for it."""
  mngr.save(int(state.step), args=ocp.args.StandardSave(_item(state, train_sums)))
  mngr.wait_until_finished()


def restore(
  mngr: ocp.CheckpointManager, step: int, like: TrainState
) -> tuple[TrainState, np.ndarray]:
  """``(state, train_sums)`` of checkpoint `step`, with the tree structure of `like`."""
  item = mngr.restore(step, args=ocp.args.StandardRestore(_item(like, np.zeros(3, np.float64))))
  saved = item["state"]
  opt_state = _unflatten_like(like.opt_state, saved["opt_state"])
  state = like.replace(
    step=np.asarray(saved["step"]),
    params=saved["params"],
    batch_stats=saved["batch_stats"],
    opt_state=opt_state,
  )
  return state, np.asarray(item["train_sums"], np.float64)


def _unflatten_like(like, restored):
  """``restored``'s leaves in the tree structure of ``like`` (Orbax gives optax's named tuples
  back as plain containers)."""
  return jax.tree.unflatten(jax.tree.structure(like), jax.tree.leaves(restored))


def restore_checkpoint(workdir: str, like: TrainState, step: int | None = None):
  """Reads the state saved in ``WORKDIR/checkpoints`` at ``step`` (latest if None).

  Returns:
    ``(state, train_sums)``, or None when there is no checkpoint.
  """
  mngr = checkpoint_manager(workdir, keep=1 << 30, read_only=True)
  try:
    step = mngr.latest_step() if step is None else step
    return None if step is None else restore(mngr, step, like)
  finally:
    mngr.close()


class Preemption:
  """Turns SIGTERM into a flag that the training loop checks after every dispatch."""

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
