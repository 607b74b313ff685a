"""The trainer's expected failures: each one line naming what happened and the fix.

`train.py` prints a `TrainerError` as ``error: ...`` and exits 1 (`Interrupted` exits 130);
anything else is a bug and keeps its traceback. Code that calls `train_and_evaluate` catches
them like any exception (`ConfigError` is also a ValueError, `trainer.datasets.
DatasetNotFoundError` also a FileNotFoundError).
"""


class TrainerError(RuntimeError):
  """A run that cannot go on; the message is one line naming the fix."""


class ConfigError(TrainerError, ValueError):
  """A bad config value, or one that the workdir's run did not have; the message names the
  field and the valid values or the fix."""


class DataError(TrainerError):
  """The dataset is absent and cannot be downloaded, or its files are damaged."""


class WorkdirError(TrainerError):
  """The workdir is in use by another run, or cannot be created or written."""


class CheckpointError(TrainerError):
  """A checkpoint cannot be restored or written; nothing already saved is touched."""


class DivergedError(TrainerError):
  """The training loss or the parameters became NaN or infinite."""


class Interrupted(KeyboardInterrupt):
  """Ctrl-C: the run saved a checkpoint at a step boundary and stopped (re-run to resume)."""
