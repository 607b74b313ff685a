r"""Data-parallel CIFAR training of `models/` ResNets with `znorm_optax` gradient transforms.

  python train.py --workdir=runs/resnet20_znorm [--config=configs/default.py] \
    [--config.model=resnet56 --config.grad_transform=centralize ...]

The flags become `trainer.loop.train_and_evaluate(config, workdir)`, which resumes from the
workdir's last checkpoint; see `trainer/` for its parts and the README for the outputs.
The project's own errors (a bad flag or config value, a missing or damaged dataset, a workdir in
use, a changed config on resume, a damaged or unwritable checkpoint, divergence: the
`trainer.errors` types) end as one ``error: ...`` line on stderr and exit status 1; anything
else is a bug and keeps its traceback. Ctrl-C saves a checkpoint and exits 130 (a second Ctrl-C
at once).

Several hosts: run the same command on every host with ``--distributed``; JAX detects the
cluster (TPU pods, SLURM, ...), or give ``--coordinator_address=HOST:PORT --num_processes=N
--process_id=I``. A process lost without notice ends every other one within about
``--heartbeat_timeout_seconds`` with one ``error: process I of N stopped answering at step S;
...`` line naming the step to resume from, and exit status 1 (`trainer.hosts`).
"""

from __future__ import annotations

import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from trainer import hosts
from trainer.errors import Interrupted, TrainerError
from trainer.loop import train_and_evaluate

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "default.py")
CONFIG_ERRORS = (AttributeError, KeyError, TypeError, ValueError, OSError)


def define_flags() -> None:
  flags.DEFINE_string("workdir", None, "Directory for metrics, TensorBoard and checkpoints.")
  flags.DEFINE_bool(
    "distributed",
    False,
    "Call jax.distributed.initialize() first (multi-host, e.g. TPU pods: run the same command "
    "on every host).",
  )
  flags.DEFINE_string(
    "coordinator_address", None, "With --distributed: HOST:PORT of process 0 (default: detect)."
  )
  flags.DEFINE_integer("num_processes", None, "With --distributed: the number of processes.")
  flags.DEFINE_integer("process_id", None, "With --distributed: this process's index.")
  flags.DEFINE_integer(
    "heartbeat_timeout_seconds",
    hosts.HEARTBEAT_TIMEOUT_SECONDS,
    "With --distributed: a process not heard from for this long is lost; every other one then "
    "stops with one line naming the step to resume from.",
    lower_bound=5,
  )
  config_flags.DEFINE_config_file(
    "config", DEFAULT_CONFIG, "Training config file (ml_collections).", lock_config=True
  )
  flags.mark_flags_as_required(["workdir"])


def one_line(e: BaseException) -> str:
  return " ".join(str(e).strip("\"'").split())


def config_error(e: BaseException) -> SystemExit:
  if isinstance(e, (AttributeError, KeyError)):
    return SystemExit(f"error: the config has no field {one_line(e)!r} (bad --config.FIELD)")
  return SystemExit(f"error: bad --config: {one_line(e)}")


def parse_flags(argv):
  """absl's flag parsing, with a bad flag or `--config` as one line and exit status 1."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    raise SystemExit(f"error: {one_line(e)} (see --helpfull)") from None
  except CONFIG_ERRORS as e:  # raised by config_flags
    raise config_error(e) from None


def main(argv) -> None:
  if len(argv) > 1:
    raise SystemExit(f"error: unexpected arguments: {' '.join(argv[1:])} (see --helpfull)")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax and tfds are chatty at INFO
  try:
    config = flags.FLAGS.config  # config_flags reports a file that failed to load only here
    config.get("model")
  except OSError as e:
    raise config_error(e) from None
  FLAGS = flags.FLAGS
  if FLAGS.distributed and not hosts.is_child():  # the job runs in a child that we watch
    raise SystemExit(hosts.supervise(FLAGS.workdir, show=FLAGS.verbosity >= 1))
  if FLAGS.distributed:
    jax.distributed.initialize(
      coordinator_address=FLAGS.coordinator_address,
      num_processes=FLAGS.num_processes,
      process_id=FLAGS.process_id,
      heartbeat_timeout_seconds=FLAGS.heartbeat_timeout_seconds,
    )
    hosts.joined(jax.process_index(), jax.process_count())
  try:
    train_and_evaluate(config, FLAGS.workdir)
  except Interrupted as e:  # Ctrl-C after saving: the shell's 128 + SIGINT
    print(e, file=sys.stderr)
    raise SystemExit(130) from None
  except KeyboardInterrupt:  # the second Ctrl-C
    print("Ctrl-C: stopped at once (the last checkpoint is intact)", file=sys.stderr)
    raise SystemExit(130) from None
  except TrainerError as e:  # the project's own errors: one line, exit 1; others: a traceback
    logging.debug("error details", exc_info=True)
    raise SystemExit(f"error: {one_line(e)}") from None


if __name__ == "__main__":
  try:
    define_flags()  # config_flags already applies --config.FIELD overrides here
  except CONFIG_ERRORS as e:
    raise config_error(e) from None
  app.run(main, flags_parser=parse_flags)
