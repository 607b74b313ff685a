"""The trainer under faults, interruptions and bad input: every case ends with a clear answer and
nothing already written is lost or corrupted (the README's Reliability table lists them).

Runs are tiny (ResNet-20 at widths 4/8/16, one device, `tfds.testing.mock_data`); each test
works on a copy of one finished reference run.
"""

import dataclasses
import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds

from tests.helpers import (
  ROOT,
  TINY,
  subprocess_env,
  tiny_config,
)
from trainer import checkpoints, loop, metrics, optimizers, state
from trainer import workdir as workdir_lib
from trainer.errors import CheckpointError, DivergedError, TrainerError, WorkdirError
from trainer.loop import train_and_evaluate
from trainer.metrics import read_metrics

# The tests' tiny run made shorter: 8 steps on one device, 8 per dispatch.
SMALL = {
  **TINY,
  "eval_batch_size": 16,
  "num_train_steps": 8,
  "num_devices": 1,
  "log_every_steps": 50,
  "steps_per_dispatch": 8,
}


def config(**overrides):
  return tiny_config(**{**SMALL, **overrides})


def run(workdir, **overrides):
  with tfds.testing.mock_data(num_examples=64):
    return train_and_evaluate(config(**overrides), str(workdir))


def leaves(state) -> list[np.ndarray]:
  return [np.asarray(x) for x in jax.tree.leaves(state)]


def tree_digest(path) -> dict[str, str]:
  out = {}
  for root, _, files in os.walk(path):
    for name in files:
      full = os.path.join(root, name)
      with open(full, "rb") as f:
        out[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
  return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """A finished run: checkpoints 4, 6 and 8, evaluations at 4 and 8."""
  workdir = tmp_path_factory.mktemp("reference") / "work"
  return workdir, leaves(run(workdir))


@pytest.fixture
def copy(reference, tmp_path):
  workdir = tmp_path / "work"
  shutil.copytree(reference[0], workdir)
  return workdir


def assert_same_final(state, reference):
  for got, want in zip(leaves(state), reference[1], strict=True):
    np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------------------------
# A changed config on resume
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
  "overrides, named",
  [
    ({"learning_rate": 2e-3}, "learning_rate 0.001 -> 0.002"),
    ({"model": "resnet56"}, "model 'resnet20' -> 'resnet56'"),
    ({"optimizer": "sgd", "seed": 3}, "optimizer 'adam' -> 'sgd', seed 0 -> 3"),
    ({"grad_transform": "centralize"}, "grad_transform 'znorm' -> 'centralize'"),
  ],
)
def test_a_trajectory_change_stops_before_touching_the_workdir(copy, overrides, named):
  before = tree_digest(copy)
  with pytest.raises(ValueError) as info:
    run(copy, **overrides)
  message = str(info.value)
  assert named in message and "new --workdir" in message, message
  assert "\n" not in message and len(message) <= 300, message
  assert tree_digest(copy) == before


def test_a_long_refusal_is_cut_to_one_line_keeping_the_fix():
  changes = {f"field_{i:02d}": (i, i + 1) for i in range(40)}
  changes["eval_every_steps"] = (4, 2)
  message = workdir_lib.refusal("/w", changes, fix="do this")
  assert len(message) <= 300 and "\n" not in message, message
  assert message.startswith("/w holds a run with other settings: field_00 0 -> 1, ")
  assert message.endswith(", ...; do this") and "eval_every_steps" not in message
  assert workdir_lib.refusal("/w", {"eval_every_steps": (4, 2)}) is None


@pytest.mark.slow
def test_a_change_of_cadence_is_allowed_and_recorded(copy, reference):
  state = run(copy, eval_every_steps=2, num_train_steps=8)
  assert_same_final(state, reference)
  record = metrics.read_records(copy / workdir_lib.CONFIG_CHANGES_FILE)
  assert record == [{"step": 8, "changed": {"eval_every_steps": [4, 2]}}]
  assert json.loads((copy / "config.json").read_text())["eval_every_steps"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("old, new", list(workdir_lib.RENAMED_TRANSFORMS.items()))
def test_a_config_json_with_an_old_transform_name_resumes_and_says_the_new_name(
  copy, old, new, capsys
):
  """A workdir written when the transforms had other names: read as the new name (the same
  transform), said in one line, and config.json then holds the new name."""
  path = copy / "config.json"
  saved = json.loads(path.read_text())
  path.write_text(json.dumps({**saved, "grad_transform": old}))
  notes = workdir_lib.check_config(str(copy), config(grad_transform=new), 8)
  assert notes == [
    f"{path}: grad_transform {old!r} is now called {new!r} (the same transform); read as such"
  ]
  assert not (copy / workdir_lib.CONFIG_CHANGES_FILE).exists()  # no change of the run
  with pytest.raises(ValueError, match=f"grad_transform '{new}' -> 'znorm'"):
    workdir_lib.check_config(str(copy), config(), 8)  # compared as the new name
  if new == "clip_by_global_norm":  # a real resume (the run is finished: nothing to train)
    run(copy, grad_transform=new)
    assert notes[0] in capsys.readouterr().out
    assert json.loads(path.read_text())["grad_transform"] == new


@pytest.mark.slow
def test_any_other_restore_failure_is_one_short_line(copy):
  """Without config.json nothing can be compared: a checkpoint of another model then fails in
  Orbax, whose message holds whole arrays; the trainer says one short line instead."""
  (copy / "config.json").unlink()
  with pytest.raises(CheckpointError, match="checkpoint 8 in .* holds another model") as info:
    run(copy, model_widths=(8, 16, 32))
  assert "\n" not in str(info.value) and len(str(info.value)) < 400, str(info.value)


# ---------------------------------------------------------------------------------------------
# Damaged checkpoints
# ---------------------------------------------------------------------------------------------


def damage(workdir, step):
  """Alters one byte of the largest file of checkpoint ``step``."""
  files = [
    os.path.join(root, f)
    for root, _, names in os.walk(workdir / "checkpoints" / str(step))
    for f in names
    if f != checkpoints.CHECKSUM_FILE
  ]
  target = max(files, key=os.path.getsize)
  with open(target, "r+b") as f:
    f.seek(os.path.getsize(target) // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.slow
def test_every_checkpoint_has_checksums_that_verify(reference):
  for step in checkpoints.saved_steps(str(reference[0])):
    assert checkpoints.verify(str(reference[0]), step) is True


@pytest.mark.slow
def test_a_damaged_latest_checkpoint_is_skipped_and_the_run_ends_the_same(copy, reference, capsys):
  damage(copy, 8)
  state = run(copy)
  out = capsys.readouterr().out
  assert "checkpoint 8" in out and "damaged" in out and "Resumed from step 6" in out
  assert (copy / "checkpoints" / "8.damaged").is_dir()  # kept, not deleted
  assert_same_final(state, reference)
  assert [r["step"] for r in read_metrics(copy)] == [4, 8]  # one line per evaluation


@pytest.mark.slow
def test_all_checkpoints_damaged_is_an_error_not_a_fresh_start(copy):
  for step in checkpoints.saved_steps(str(copy)):
    damage(copy, step)
  with pytest.raises(CheckpointError, match="all 3 checkpoints .* are damaged"):
    run(copy)


# ---------------------------------------------------------------------------------------------
# Divergence
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_divergence_stops_with_the_step_and_saves_nothing_non_finite(tmp_path):
  overrides = dict(
    optimizer="sgd",
    momentum=0.0,
    learning_rate=1e30,
    grad_transform="none",
    warmup_fraction=0.0,
    schedule="constant",
    log_every_steps=1,
  )
  pattern = r"training diverged: .* at step \d+.*; (no checkpoint|the last good)"
  with pytest.raises(DivergedError, match=pattern) as info:
    run(tmp_path, **overrides)
  assert "\n" not in str(info.value)
  like = run_state_like(overrides)
  for step in checkpoints.saved_steps(str(tmp_path)):
    state, _ = checkpoints.restore_checkpoint(str(tmp_path), like, step)
    assert all(np.isfinite(x).all() for x in leaves(state) if x.dtype.kind == "f")


def run_state_like(overrides):
  c = config(**overrides)
  model = state.create_model(c, 10)
  return state.create_train_state(c, model, optimizers.create_optimizer(c, 8).tx, (32, 32, 3))


# ---------------------------------------------------------------------------------------------
# One run per workdir
# ---------------------------------------------------------------------------------------------


def test_a_workdir_in_use_is_refused_naming_the_process(tmp_path):
  held = workdir_lib.lock(str(tmp_path))
  try:
    with pytest.raises(WorkdirError, match=f"in use by pid {os.getpid()}"):
      run(tmp_path)
  finally:
    held.close()


@pytest.mark.slow
def test_the_lock_of_a_killed_run_does_not_block(tmp_path):
  holder = subprocess.Popen(
    [
      sys.executable,
      "-c",
      "import sys, time\nfrom trainer import workdir\n"
      f"f = workdir.lock({str(tmp_path)!r})\nprint('locked', flush=True)\ntime.sleep(60)",
    ],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    text=True,
  )
  assert holder.stdout.readline().strip() == "locked"
  with pytest.raises(WorkdirError, match=f"pid {holder.pid}"):
    workdir_lib.lock(str(tmp_path))
  holder.send_signal(signal.SIGKILL)
  holder.wait()
  workdir_lib.lock(str(tmp_path)).close()  # the kernel released it


# ---------------------------------------------------------------------------------------------
# Unwritable workdir, full disk
# ---------------------------------------------------------------------------------------------


def test_a_workdir_that_cannot_be_created_is_one_line(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.raises(WorkdirError, match="cannot create --workdir=.*a_file/work"):
    run(blocker / "work")


@pytest.mark.slow
def test_a_full_disk_during_a_checkpoint_keeps_the_last_good_one(tmp_path, reference, monkeypatch):
  original = ocp.CheckpointManager.save

  def save(self, step, *args, **kwargs):
    if step == 6:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return original(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", save)
  with pytest.raises(CheckpointError, match="could not write checkpoint 6 .*No space left"):
    run(tmp_path)
  monkeypatch.setattr(ocp.CheckpointManager, "save", original)
  assert checkpoints.saved_steps(str(tmp_path)) == [2, 4]
  assert checkpoints.verify(str(tmp_path), 4) is True
  assert_same_final(run(tmp_path), reference)  # resumes from 4


@pytest.mark.slow
def test_a_full_disk_during_a_metrics_write_is_one_line(tmp_path, reference, monkeypatch):
  def append(path, record):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(metrics, "append_record", append)
  with pytest.raises(TrainerError, match="could not write .*metrics.jsonl: No space left"):
    run(tmp_path)
  monkeypatch.undo()
  assert checkpoints.saved_steps(str(tmp_path)) == [2]  # step 4 evaluates, then saves
  assert_same_final(run(tmp_path), reference)
  assert [r["step"] for r in read_metrics(tmp_path)] == [4, 8]


# ---------------------------------------------------------------------------------------------
# SIGKILL at many moments
# ---------------------------------------------------------------------------------------------

RUN_SMALL = f"""
import sys
import tensorflow_datasets as tfds
from configs import default
from trainer.loop import train_and_evaluate
config = default.get_config()
config.update({SMALL!r})
with tfds.testing.mock_data(num_examples=64):
  train_and_evaluate(config, sys.argv[1])
"""


def _tmp_checkpoint(workdir):
  path = workdir / "checkpoints"
  return path.is_dir() and any("tmp" in d for d in os.listdir(path))


def _metrics_grew(workdir, size=[0]):  # noqa: B006  (remembers the last size seen)
  path = workdir / metrics.METRICS_FILE
  grew = path.exists() and path.stat().st_size > size[0]
  if grew:
    size[0] = path.stat().st_size
  return grew


# (what the kill waits for, seconds after the start): a timer alone, or an event first.
MOMENTS = [
  ("start", 0.5),  # importing
  ("start", 2.0),  # loading data, compiling
  ("start", 4.0),
  ("checkpoint write", 0.0),  # an Orbax temporary directory exists
  ("metrics write", 0.0),  # metrics.jsonl just grew
  ("start", 3.0),
  ("checkpoint write", 0.0),
  ("start", 5.0),
  ("metrics write", 0.0),
  ("start", 6.0),
  ("checkpoint write", 0.0),
  ("start", 7.0),
  ("start", 1.0),  # once the run is done a re-run only imports and restores: early kills land
  ("start", 1.5),
  ("start", 2.5),
]
EVENTS = {"checkpoint write": _tmp_checkpoint, "metrics write": _metrics_grew}


@pytest.mark.slow
def test_sigkill_at_many_moments_then_the_run_ends_as_an_uninterrupted_one(tmp_path, reference):
  """train.py's run killed with SIGKILL at up to 15 moments, at least 10 landing (importing,
  compiling, mid-step, during
  checkpoint and metrics writes), each time re-run from what is on disk: the last run ends
  bit-identical to the uninterrupted one, with one metrics line per evaluation."""
  workdir = tmp_path / "work"
  env = subprocess_env(tmp_path / "cache")
  killed = []
  for what, seconds in MOMENTS:
    proc = subprocess.Popen(
      [sys.executable, "-c", RUN_SMALL, str(workdir)],
      cwd=ROOT,
      env=env,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
      text=True,
    )
    start = time.monotonic()
    while proc.poll() is None and time.monotonic() - start < 60:
      if time.monotonic() - start >= seconds and (what == "start" or EVENTS[what](workdir)):
        proc.send_signal(signal.SIGKILL)
        killed.append(what)
        break
      time.sleep(0.005)
    proc.wait()
    assert proc.returncode in (0, -signal.SIGKILL), proc.stderr.read()[-2000:]
  assert len(killed) >= 10, killed
  final = subprocess.run(
    [sys.executable, "-c", RUN_SMALL, str(workdir)],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert final.returncode == 0, final.stderr[-2000:]
  lines = (workdir / metrics.METRICS_FILE).read_text().splitlines()
  assert [json.loads(line)["step"] for line in lines] == [4, 8]  # no cut or doubled line
  like = run_state_like({})
  state, _ = checkpoints.restore_checkpoint(str(workdir), like)
  for got, want in zip(leaves(state), reference[1], strict=True):
    np.testing.assert_array_equal(got, want)
  for step in checkpoints.saved_steps(str(workdir)):
    assert checkpoints.verify(str(workdir), step) is not False


@pytest.mark.slow
def test_the_host_stays_at_most_two_dispatches_ahead(tmp_path, monkeypatch):
  """A signal is served within a dispatch or two, not at the next evaluation: dispatches return
  at once (on CPU too), and without a bound the host would queue a whole epoch of them before
  the evaluation's blocking read, where a SIGTERM waits (a CPU study run once took 3 minutes to
  stop). Before each dispatch the loop waits for the one before last."""
  ahead = []
  make_steps = loop.config_steps

  def counting_steps(*args, **kwargs):
    fns = make_steps(*args, **kwargs)
    sent = []

    def train(*inputs):
      ahead.append(sum(not m.is_ready() for m in sent))
      r_state, metrics = fns.train(*inputs)
      sent.append(jax.tree.leaves(metrics)[0])
      return r_state, metrics

    return dataclasses.replace(fns, train=train)

  monkeypatch.setattr(loop, "config_steps", counting_steps)
  # 8 slow steps per evaluation (256 examples, batch 32) and no logging in between.
  slow = dict(
    model_widths=(8, 16, 32),
    batch_size=32,
    num_train_steps=16,
    log_every_steps=100,
    steps_per_dispatch=1,
  )
  with tfds.testing.mock_data(num_examples=256):
    train_and_evaluate(config(**slow, eval_every_steps=8, checkpoint_every_steps=8), str(tmp_path))
  assert len(ahead) == 16 and max(ahead) <= loop.DISPATCHES_IN_FLIGHT, ahead
