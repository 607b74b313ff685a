"""The run's workdir: owned by one run at a time, and holding the record of its config.

* `lock`: an OS lock (`fcntl.flock`) on ``WORKDIR/.lock``, held while the run lives and released
  by the kernel when the process ends, however it ends (a SIGKILLed run never blocks the next);
  a second run on the same workdir stops at once naming the running process.
* `check_config`: before anything is restored or written, the config is compared with the
  workdir's ``config.json``. A change to a field that can alter the trajectory stops the run
  (`ConfigChangedError`, one line naming each field with its old and new value); changes that
  cannot (evaluation, logging and checkpoint cadence, ``keep_checkpoints``, ``data_dir``,
  diagnostics, devices and steps per dispatch) are allowed and recorded in
  ``config_changes.jsonl``, and ``config.json`` then holds the current values.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os

import jax
import ml_collections

from trainer.errors import ConfigError, WorkdirError
from trainer.files import write_atomic
from trainer.metrics import append_record

CONFIG_FILE = "config.json"
CONFIG_CHANGES_FILE = "config_changes.jsonl"
LOCK_FILE = ".lock"
# Fields whose change cannot alter the parameters a run ends with: how often it evaluates, logs,
# checkpoints and measures, what and how it evaluates, where the data lives, and how the same
# steps are spread over devices and dispatches (equal up to rounding).
RESUMABLE_CHANGES = frozenset(
  {
    "eval_every_steps",
    "log_every_steps",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "data_dir",
    "diagnostics_every_steps",
    "eval_split",
    "validation_split",
    "eval_batch_size",
    "num_devices",
    "steps_per_dispatch",
    "loader_workers",
  }
)


# Gradient transform names of config.json files written before the library named the transforms
# after its functions: read as the new name (the trajectory is the same).
RENAMED_TRANSFORMS = {"clip": "clip_by_global_norm", "clip_layer": "clip_by_layer_norm"}


class ConfigChangedError(ConfigError):
  """A trajectory-relevant field differs from the workdir's config.json."""


def prepare(workdir: str) -> str:
  """The absolute workdir, created if needed; a one-line `WorkdirError` if it cannot be."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise WorkdirError(
      f"cannot create --workdir={workdir}: {e.strerror}; choose a writable directory"
    ) from None
  if not os.access(workdir, os.W_OK):
    raise WorkdirError(f"--workdir={workdir} is not writable; choose a writable directory")
  return workdir


def lock(workdir: str):
  """Takes the workdir's lock for the life of this process (returns the open lock file).

  Raises:
    WorkdirError: another live process holds it; the message names its pid and command.
  """
  name = LOCK_FILE if jax.process_index() == 0 else f"{LOCK_FILE}.{jax.process_index()}"
  f = open(os.path.join(workdir, name), "a+")  # noqa: SIM115  (held open until exit)
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    if e.errno not in (errno.EAGAIN, errno.EACCES):
      raise
    f.seek(0)
    holder = f.read().strip() or "another process"
    f.close()
    raise WorkdirError(
      f"--workdir={workdir} is in use by {holder}; wait for it or choose another --workdir"
    ) from None
  f.seek(0)
  f.truncate()
  f.write(f"pid {os.getpid()} ({_command()})")
  f.flush()
  return f


def _command() -> str:
  try:
    with open(f"/proc/{os.getpid()}/cmdline", "rb") as f:
      return " ".join(f.read().decode(errors="replace").split("\0")).strip()[:120]
  except OSError:
    return "python"


def _flat(config: dict, prefix: str = "") -> dict:
  out = {}
  for key, value in config.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def changed_fields(old: dict, new: dict) -> dict[str, tuple]:
  """``{field: (old, new)}`` for the (dotted) fields whose values differ; a field only one side
  has counts as changed from/to None, except new fields at their default (None)."""
  old, new = _flat(old), _flat(new)
  return {
    k: (old.get(k), new.get(k))
    for k in sorted(set(old) | set(new))
    if old.get(k) != new.get(k) and not (k not in old and new.get(k) is None)
  }


def read_config(workdir: str) -> tuple[dict | None, list[str]]:
  """The workdir's config.json (None if there is none), with old names read as the new ones
  (`RENAMED_TRANSFORMS`), and one line per renamed value saying so."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None, []
  with open(path) as f:
    config = json.load(f)
  notes = []
  old_name = config.get("grad_transform")
  if old_name in RENAMED_TRANSFORMS:
    config["grad_transform"] = RENAMED_TRANSFORMS[old_name]
    notes.append(
      f"{path}: grad_transform {old_name!r} is now called {config['grad_transform']!r} "
      "(the same transform); read as such"
    )
  return config, notes


def config_changes(workdir: str, config: ml_collections.ConfigDict) -> dict[str, tuple]:
  """``{field: (old, new)}`` between the workdir's config.json ({} if none) and ``config``."""
  old, _ = read_config(workdir)
  return {} if old is None else changed_fields(old, json.loads(config.to_json()))


def refusal(
  workdir: str,
  changes: dict[str, tuple],
  resumable: frozenset[str] = RESUMABLE_CHANGES,
  fix: str = "start it in a new --workdir (or restore config.json's values)",
) -> str | None:
  """One line of at most 300 characters naming each change outside ``resumable`` with its old
  and new value, and ``fix``; None if every change is resumable."""
  refused = {k: v for k, v in changes.items() if k.split(".")[0] not in resumable}
  if not refused:
    return None
  listed = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in refused.items())
  head = f"{workdir} holds a run with other settings: "
  room = 300 - len(head) - len(fix) - 2
  if len(listed) > room:
    listed = listed[: room - 5].rsplit(", ", 1)[0] + ", ..."
  return f"{head}{listed}; {fix}"


def check_config(workdir: str, config: ml_collections.ConfigDict, step: int) -> list[str]:
  """Compares ``config`` with the workdir's config.json (if any) before a resume.

  Returns:
    The lines that say which old names of config.json were read as new ones.

  Raises:
    ConfigChangedError: a trajectory-relevant field changed (the `refusal` line).
  """
  old, notes = read_config(workdir)
  changes = {} if old is None else changed_fields(old, json.loads(config.to_json()))
  message = refusal(workdir, changes)
  if message:
    raise ConfigChangedError(message)
  if changes and jax.process_index() == 0:
    append_record(
      os.path.join(workdir, CONFIG_CHANGES_FILE),
      {"step": step, "changed": {k: list(v) for k, v in changes.items()}},
    )
  return notes


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Writes ``config.json`` atomically (a kill leaves the old one or the new one)."""
  write_atomic(os.path.join(workdir, CONFIG_FILE), config.to_json(indent=2, sort_keys=True) + "\n")
