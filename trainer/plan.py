"""Config -> the plan of a run: its devices, checked config and step counts, before any data is
read or anything compiled.

`validate_config` turns every bad value into a one-line `ConfigError` naming the field and the fix;
`RunPlan` says what happens after which step (evaluation, checkpoint, diagnostics, the end) and
how many steps the next dispatch runs.
"""

from __future__ import annotations

import dataclasses

import jax
import ml_collections

from trainer import datasets
from trainer.errors import ConfigError
from trainer.optimizers import create_optimizer, one_of
from trainer.state import DTYPES, create_model


def local_devices(config: ml_collections.ConfigDict) -> list:
  """The local devices pmap runs on: the first `config.num_devices` (-1 = all; with several
  processes each one maps over all its devices)."""
  devices = jax.local_devices()
  n = config.num_devices
  if n is None or n < 0 or (jax.process_count() > 1 and n == len(devices)):
    return devices
  if jax.process_count() > 1:
    raise ConfigError(
      f"num_devices={n}: with {jax.process_count()} processes each one trains on all its "
      f"{len(devices)} devices; use --config.num_devices=-1"
    )
  if not 1 <= n <= len(devices):
    raise ConfigError(
      f"num_devices={n} but this host has {len(devices)} devices; use -1 for all of them"
    )
  return devices[:n]


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Checks the config before any data is read or anything compiled.

  Raises:
    ConfigError: with a one-line message naming the bad field and the valid values or the fix.
  """
  one_of("input", config.input or "resident", ("resident", "stream"))
  if config.input != "stream":  # a streamed dataset's classes and statistics come from it
    one_of("dataset", config.dataset, tuple(datasets.DATASETS))
  one_of("dtype", config.dtype, tuple(DTYPES))
  create_model(config, 10)  # the model and its widths
  if config.input == "stream" and config.diagnostics_every_steps:
    raise ConfigError(
      "--config.diagnostics_every_steps needs the device-resident input path; set it to 0 "
      "with --config.input=stream"
    )
  if config.image_size is not None and config.image_size < 8:
    raise ConfigError(f"image_size={config.image_size}: use at least 8 (or None: the data's)")
  create_optimizer(config, max(1, config.num_train_steps))
  for field in ("batch_size", "eval_batch_size"):
    bs = config[field]
    if field == "eval_batch_size" and bs == -1:
      continue
    if bs <= 0 or bs % num_devices:
      raise ConfigError(
        f"{field}={bs} is not divisible by the {num_devices} devices in use; "
        f"set --config.{field} to a positive multiple of {num_devices}"
      )
  if config.num_train_steps == 0 or (config.num_train_steps < 0 and config.num_epochs <= 0):
    raise ConfigError("nothing to train: set num_train_steps > 0 or num_epochs > 0")
  for field in ("diagnostics_every_steps", "steps_per_dispatch"):
    minimum = 1 if field == "steps_per_dispatch" else 0
    if config[field] < minimum:
      raise ConfigError(f"{field}={config[field]} must be >= {minimum}")


@dataclasses.dataclass(frozen=True)
class RunPlan:
  """The step counts of a run (steps are counted as updates done: step ``s`` is after ``s``
  updates)."""

  total_steps: int
  steps_per_epoch: int
  batch_size: int
  eval_every: int
  checkpoint_every: int
  log_every: int
  diagnostics_every: int  # 0 = off
  steps_per_dispatch: int
  eval_batch_size: int

  @classmethod
  def create(cls, config: ml_collections.ConfigDict, num_train: int) -> RunPlan:
    steps_per_epoch = num_train // config.batch_size
    if steps_per_epoch == 0:
      raise ConfigError(
        f"batch_size={config.batch_size} exceeds the {num_train} examples of {config.train_split!r}"
      )

    def every(value: int) -> int:  # -1 = once per epoch
      return value if value > 0 else steps_per_epoch

    return cls(
      total_steps=(
        config.num_train_steps
        if config.num_train_steps > 0
        else config.num_epochs * steps_per_epoch
      ),
      steps_per_epoch=steps_per_epoch,
      batch_size=config.batch_size,
      eval_every=every(config.eval_every_steps),
      checkpoint_every=every(config.checkpoint_every_steps),
      log_every=config.log_every_steps,
      diagnostics_every=config.diagnostics_every_steps,
      steps_per_dispatch=config.steps_per_dispatch,
      eval_batch_size=(config.eval_batch_size if config.eval_batch_size > 0 else config.batch_size),
    )

  def _due(self, step: int, every: int) -> bool:
    return step % every == 0 or step == self.total_steps

  def evaluates_after(self, step: int) -> bool:
    return self._due(step, self.eval_every)

  def checkpoints_after(self, step: int) -> bool:
    return self._due(step, self.checkpoint_every)

  def logs_after(self, step: int) -> bool:
    return self._due(step, self.log_every)

  def measures_before(self, step: int) -> bool:
    """Whether the diagnostics measure the update that takes the run from ``step`` to
    ``step + 1`` (the first update and every ``diagnostics_every``-th)."""
    n = self.diagnostics_every
    return n > 0 and (step == 0 or (step + 1) % n == 0)

  def dispatch_size(self, step: int) -> int:
    """How many steps the dispatch starting after ``step`` runs: ``steps_per_dispatch`` when
    that many fit before the next evaluation, checkpoint, diagnostic or the end, else 1 (so
    only two step counts ever compile, and every boundary falls between two dispatches)."""
    k = self.steps_per_dispatch
    for n in range(1, k):
      s = step + n
      if self.evaluates_after(s) or self.checkpoints_after(s) or self.measures_before(s):
        return 1
    return k if step + k <= self.total_steps else 1
