"""Checkpoints of the trainer: Orbax in ``WORKDIR/checkpoints/``, verified by checksums, and
SIGTERM / Ctrl-C as save-and-stop.

A checkpoint holds the `TrainState` (step, params, batch_stats, opt_state) and the float64
running sums of the train loss/accuracy since the last evaluation, so that the next metrics line
after a resume is the same as without one. Writes are synchronous and atomic: a killed write
leaves ``N.orbax-checkpoint-tmp-*``, which is ignored and cleaned up when the run restarts, and
the previous step intact. Nothing is pickled.

After Orbax commits step N, ``N/checksums.json`` records the SHA-256 of every file of the
checkpoint. Before restoring, `latest_good_step` checks the newest checkpoint against it: one
whose files were altered, lost or cut is set aside as ``N.damaged`` (kept, never deleted) with a
one-line warning, and the next newest is tried. A checkpoint without checksums (written before
they existed, or killed between the commit and the checksums) is restored as it is.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import threading

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from trainer.errors import CheckpointError, DivergedError
from trainer.files import write_atomic
from trainer.state import TrainState

CHECKPOINT_DIR = "checkpoints"
CHECKSUM_FILE = "checksums.json"


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, CHECKPOINT_DIR)


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
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def _checksums(path: str) -> dict[str, str]:
  sums = {}
  for root, _, files in os.walk(path):
    for name in files:
      full = os.path.join(root, name)
      rel = os.path.relpath(full, path)
      if rel.startswith(CHECKSUM_FILE):  # the record itself, and its temporary file
        continue
      digest = hashlib.sha256()
      with open(full, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
          digest.update(block)
      sums[rel] = digest.hexdigest()
  return dict(sorted(sums.items()))


def _write_checksums(workdir: str, step: int) -> None:
  path = os.path.join(checkpoint_dir(workdir), str(step))
  sums = _checksums(path)
  write_atomic(os.path.join(path, CHECKSUM_FILE), json.dumps(sums, indent=0), fsync=True)


def verify(workdir: str, step: int) -> bool | None:
  """Whether checkpoint ``step``'s files match its checksums (None: it has none)."""
  path = os.path.join(checkpoint_dir(workdir), str(step))
  try:
    with open(os.path.join(path, CHECKSUM_FILE)) as f:
      expected = json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return False
  return _checksums(path) == expected


def saved_steps(workdir: str) -> list[int]:
  """The committed checkpoint steps, oldest first."""
  path = checkpoint_dir(workdir)
  if not os.path.isdir(path):
    return []
  return sorted(int(d) for d in os.listdir(path) if d.isdigit())


def latest_good_step(workdir: str, warn=print) -> int | None:
  """The newest checkpoint whose files match their checksums (or that has none); damaged
  newer ones are renamed ``N.damaged`` with a warning. With several processes, process 0
  checks and renames and the others take its answer.

  Raises:
    CheckpointError: checkpoints exist but every one of them is damaged.
  """
  if jax.process_count() == 1:
    return _check_latest(workdir, warn)
  answer, error = -1, None
  if jax.process_index() == 0:
    try:
      answer = _check_latest(workdir, warn)
      answer = -1 if answer is None else answer
    except CheckpointError as e:
      answer, error = -2, e
  answer = int(multihost_utils.broadcast_one_to_all(np.int64(answer)))
  if answer == -2:
    raise error or CheckpointError(
      f"the checkpoints in {checkpoint_dir(workdir)} are damaged (process 0 says which)"
    )
  return None if answer == -1 else answer


def _check_latest(workdir: str, warn) -> int | None:
  steps = saved_steps(workdir)
  for step in reversed(steps):
    if verify(workdir, step) is not False:
      return step
    path = os.path.join(checkpoint_dir(workdir), str(step))
    os.replace(path, f"{path}.damaged")
    warn(
      f"warning: checkpoint {step} in {checkpoint_dir(workdir)} is damaged (its files do not "
      f"match checksums.json); set aside as {step}.damaged, trying the previous one"
    )
  if steps:
    raise CheckpointError(
      f"all {len(steps)} checkpoints in {checkpoint_dir(workdir)} are damaged (set aside as "
      "N.damaged); start in a new --workdir"
    )
  return None


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


def save(
  mngr: ocp.CheckpointManager, workdir: str, state: TrainState, train_sums: np.ndarray
) -> None:
  """Writes the (host) `state` and `train_sums` as checkpoint ``state.step``, waits for it and
  records its checksums.

  Raises:
    DivergedError: the state holds NaN or inf (it is not written).
    CheckpointError: the write failed (e.g. a full disk); earlier checkpoints are intact.
  """
  step = int(state.step)
  bad = [
    jax.tree_util.keystr(path)
    for path, leaf in jax.tree_util.tree_leaves_with_path(state)
    if np.issubdtype(np.asarray(leaf).dtype, np.inexact) and not np.isfinite(leaf).all()
  ]
  if bad:
    raise DivergedError(f"the state is not finite at step {step} (first: {bad[0]})")
  try:
    mngr.save(step, args=ocp.args.StandardSave(_item(state, train_sums)))
    mngr.wait_until_finished()
    if jax.process_index() == 0:
      _write_checksums(workdir, step)
  except OSError as e:
    raise CheckpointError(
      f"could not write checkpoint {step} in {checkpoint_dir(workdir)}: "
      f"{e.strerror or e}; free space or fix permissions and re-run to resume from the last "
      "good checkpoint"
    ) from None


def restore(
  mngr: ocp.CheckpointManager, step: int, like: TrainState
) -> tuple[TrainState, np.ndarray]:
  """``(state, train_sums)`` of checkpoint `step`, with the tree structure of `like`.

  Raises:
    CheckpointError: one line (never the arrays) when Orbax cannot restore it.
  """
  try:
    item = mngr.restore(step, args=ocp.args.StandardRestore(_item(like, np.zeros(3, np.float64))))
  except Exception as e:  # noqa: BLE001  (Orbax raises anything; its messages dump arrays)
    first = " ".join(str(e).split())[:160]
    raise CheckpointError(
      f"cannot restore checkpoint {step} in {mngr.directory}: {type(e).__name__}: {first}; "
      "start in a new --workdir"
    ) from None
  saved = item["state"]
  for (path, got), want in zip(
    jax.tree_util.tree_leaves_with_path(saved),
    jax.tree.leaves(_item(like, None)["state"]),
    strict=False,
  ):
    if np.shape(got) != np.shape(want):
      raise CheckpointError(
        f"checkpoint {step} in {mngr.directory} holds another model or optimizer: "
        f"{jax.tree_util.keystr(path)} has shape {np.shape(got)}, the config needs "
        f"{np.shape(want)}; start in a new --workdir"
      )
  state = like.replace(
    step=np.asarray(saved["step"]),
    params=saved["params"],
    batch_stats=saved["batch_stats"],
    opt_state=jax.tree.unflatten(
      jax.tree.structure(like.opt_state), jax.tree.leaves(saved["opt_state"])
    ),
  )
  return state, np.asarray(item["train_sums"], np.float64)


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


class StopRequest:
  """SIGTERM (preemption) and the first Ctrl-C (SIGINT) as a request to save and stop at a
  dispatch boundary, checked by `should_stop` after every dispatch; a second Ctrl-C raises
  KeyboardInterrupt at once.

  With several processes the stop must happen at the same dispatch everywhere (a checkpoint
  write is collective), so SIGTERM is left to JAX's preemption service
  (`multihost_utils.reached_preemption_sync_point`): it tells every process of a notice to any
  one of them and agrees on the next dispatch to stop at, without a collective per dispatch.
  Ctrl-C then sends this process a SIGTERM to enter the same protocol.
  """

  def __init__(self):
    self.signal: str | None = None
    self._synced = jax.process_count() > 1
    self._previous = {}
    self._dispatches = 0

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGINT,) if self._synced else (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    if signum == signal.SIGINT and self.signal == "SIGINT":
      raise KeyboardInterrupt
    if signum == signal.SIGINT:
      print(
        "Ctrl-C: saving a checkpoint at the next step boundary (Ctrl-C again to stop at once)",
        file=sys.stderr,
        flush=True,
      )
    self.signal = signal.Signals(signum).name
    if self._synced:
      os.kill(os.getpid(), signal.SIGTERM)  # to JAX's preemption notifier

  def should_stop(self) -> bool:
    """Whether to save and stop now; call once after every dispatch (with several processes,
    the n-th call of every process is the same dispatch)."""
    if not self._synced:
      return self.signal is not None
    self._dispatches += 1
    if multihost_utils.reached_preemption_sync_point(self._dispatches):
      self.signal = self.signal or "SIGTERM"
      return True
    return False

  def __exit__(self, *exc):
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)
    return False
