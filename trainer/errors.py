"""The trainer's expected failures: each one line naming what happened and the fix.

`train.py` prints them as ``error: ...`` and exits 1 (`Interrupted` exits 130); code that calls
`train_and_evaluate` catches them like any exception.
"""


class TrainerError(RuntimeError):
  """A run that cannot go on; the message is one line naming the fix."""


class WorkdirError(TrainerError):
  """The workdir is in use by another run, or cannot be created or written."""


class CheckpointError(TrainerError):
  """A checkpoint cannot be restored or written; nothing already saved is touched."""


class DivergedError(TrainerError):
  """The training loss or the parameters became NaN or infinite."""


class Interrupted(KeyboardInterrupt):
  """Ctrl-C: the run saved a checkpoint at a step boundary and stopped (re-run to resume)."""
