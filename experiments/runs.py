"""The studies' runs: one configured training run -> one JSON-lines record, and the loop that
runs what a study plans and its records do not hold yet.

A run trains with `trainer.loop.train_and_evaluate` in its own workdir
``{workdir_root}/{preset}/{model}/{method}/seed{seed}`` from ``configs/paper_{base}.py`` (see
`study_report.parse_method`: ``adam`` is ``paper_adam``, no transform; ``znorm_lr2e-3`` is ZNorm
at learning rate 2e-3) with the preset's model, epochs, splits, batch, learning rate and
schedule, evaluated and checkpointed once per epoch: an interrupted run resumes from its last
epoch when the study is started again. A completed run appends one record to the study's
jsonl; `run_missing` skips the runs recorded there, so a study completes over several sittings.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import ml_collections

import configs
from experiments.study_report import migrate, parse_method, planned_run, preset_records
from trainer import workdir as workdir_lib
from trainer.errors import TrainerError
from trainer.loop import train_and_evaluate
from trainer.metrics import append_record, column, read_metrics, read_records

RESULTS_DIR = configs.ROOT / "experiments" / "results"
RUNS_DIR = configs.ROOT / "runs"
# configs/study_*.py: the paper and depth studies', then the tuned-learning-rate studies'.
PRESETS = (
  "cpu",
  "gpu",
  "test",
  "tuned_cpu",
  "tuned_gpu",
  "tuned_test",
  "tuned_long_cpu",
  "tuned_long_gpu",
  "tuned_long_test",
)
# Config fields copied into each record (the report describes the methods from them).
RECORDED_CONFIG = (
  "optimizer",
  "learning_rate",
  "schedule",
  "warmup_fraction",
  "batch_size",
  "augment",
  "grad_transform",
  "grad_transform_kwargs",
  "grad_transform_params",
  "model_widths",
)


@contextlib.contextmanager
def one_line_errors(name: str):
  """At a study's command line: the project's own errors (a bad setting, absent data, a
  workdir of another run) as one line and exit status 1; anything else keeps its traceback."""
  try:
    yield
  except TrainerError as e:
    raise SystemExit(f"{name}: error: {' '.join(str(e).split())}") from None


def read_study_records(
  jsonl: str | os.PathLike, log: Callable[[str], None] | None = print
) -> list[dict]:
  """The records of a study's jsonl ([] if none), old method names read as the new ones
  (`study_report.migrate`), each rename said once through ``log``."""
  records, notes = migrate(read_records(jsonl))
  for note in notes if log else ():
    log(f"{Path(jsonl).name}: {note}")
  return records


def load_preset(name: str) -> ml_collections.ConfigDict:
  """The preset of ``configs/study_{name}.py``."""
  if name not in PRESETS:
    raise ValueError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}")
  return importlib.import_module(f"configs.study_{name}").get_config()


def make_config(method: str, model: str, seed: int, preset, data_dir: str | None = None):
  """The ``configs/paper_{method}.py`` config with the preset's model, budget and seed.

  ``method`` may carry its own learning rate (``adam_lr2e-3``), replacing the preset's.
  """
  base, learning_rate = parse_method(method)
  return configs.make_config(
    f"paper_{base}",
    model=model,
    seed=seed,
    data_dir=data_dir,
    train_split=preset.train_split,
    eval_split=preset.eval_split,
    validation_split=preset.get("validation_split"),
    batch_size=preset.batch_size,
    learning_rate=learning_rate or preset.learning_rate,
    schedule=preset.schedule,
    num_epochs=preset.epochs,
    num_train_steps=-1,  # num_epochs * steps per epoch
    eval_every_steps=-1,  # once per epoch: the per-epoch accuracies of the study
    checkpoint_every_steps=-1,  # once per epoch: an interrupted run resumes from there
    **preset.overrides,
  )


def workdir_for(root: str | os.PathLike, budget: str, model: str, method: str, seed: int) -> Path:
  return Path(root) / budget / model / method / f"seed{seed}"


def _check_workdir(workdir: Path, config) -> None:
  """Refuses to resume in a workdir whose run had another config (e.g. another preset); unlike
  the trainer, also other evaluated splits, since a record's accuracies must share them."""
  message = workdir_lib.refusal(
    str(workdir),
    workdir_lib.config_changes(str(workdir), config),
    resumable=workdir_lib.RESUMABLE_CHANGES - {"eval_split", "validation_split"},
    fix="delete that workdir or choose another --workdir_root",
  )
  if message:
    raise SystemExit(f"error: {message}")


def _has_checkpoint(workdir: Path) -> bool:
  ckpt = workdir / "checkpoints"
  return ckpt.is_dir() and any(d.isdigit() for d in os.listdir(ckpt))


def _device_description() -> str:
  devices = jax.local_devices()
  kind = devices[0].device_kind
  if devices[0].platform == "cpu":
    kind = f"cpu ({os.cpu_count()} cores)"
  return f"{len(devices)} x {kind}"


def run_one(
  preset,
  model: str,
  method: str,
  seed: int,
  *,
  data_dir: str | None,
  workdir_root: str | os.PathLike,
  trainer: Callable | None = None,
) -> dict | None:
  """Trains one run (resuming if its workdir has a checkpoint) and returns its record.

  Returns None when the run stopped early (SIGTERM saves a checkpoint and returns).
  """
  trainer = trainer or train_and_evaluate
  workdir = workdir_for(workdir_root, preset.name, model, method, seed)
  config = make_config(method, model, seed, preset, data_dir)
  _check_workdir(workdir, config)
  resumed = _has_checkpoint(workdir)
  start = time.time()
  trainer(config, str(workdir))
  wall = time.time() - start

  rows = read_metrics(workdir)
  epochs, accuracies = column(rows, "epoch", "eval_accuracy")
  _, train_losses = column(rows, "epoch", "train_loss")
  if not epochs or not math.isclose(epochs[-1], preset.epochs, rel_tol=1e-6):
    return None
  last = max(rows, key=lambda r: r.get("step", -1))
  throughput = [r["images_per_second"] for r in rows if r.get("images_per_second")]
  best = max(range(len(accuracies)), key=lambda i: accuracies[i])
  record = {
    "method": method,
    "seed": seed,
    "model": model,
    "budget": preset.name,
    "epochs": preset.epochs,
    "train_split": preset.train_split,
    "eval_split": preset.eval_split,
    "steps": int(last["step"]),
    "final_accuracy": accuracies[-1],
    "best_accuracy": accuracies[best],
    "best_epoch": epochs[best],
    "eval_epochs": epochs,
    "epoch_accuracies": accuracies,
    "epoch_train_losses": train_losses,
  }
  if config.validation_split:
    validation = column(rows, "epoch", "validation_accuracy")[1]
    record.update(
      validation_split=config.validation_split,
      epoch_validation_accuracies=validation,
      final_validation_accuracy=validation[-1],
    )
  record.update(
    wall_time_s=round(wall, 1),
    resumed=resumed,  # wall_time_s then covers the last sitting only
    images_per_second=statistics.median(throughput) if throughput else None,
    device=_device_description(),
    config={f: v for f, v in json.loads(config.to_json()).items() if f in RECORDED_CONFIG},
    workdir=str(workdir),
    finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
  )
  return json.loads(json.dumps(record))  # as read back from the jsonl (lists, not tuples)


def run_missing(
  preset,
  plan: Callable[[list[dict]], Sequence[tuple[str, str, int]]],
  jsonl: str | os.PathLike,
  *,
  data_dir: str | None = None,
  workdir_root: str | os.PathLike,
  max_runs: int | None = None,
  trainer: Callable | None = None,
  log: Callable[[str], None] = print,
  after_each: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
  """Runs, one at a time, the first ``(model, method, seed)`` of ``plan(records)`` that the
  preset's records in ``jsonl`` lack, appending its record, until none is left (or
  ``max_runs`` new runs). The plan is asked again after every run, so it may depend on the runs
  recorded (a learning rate chosen once its grid is complete). ``after_each(records)`` runs
  after each recorded run (the study's report).

  Returns:
    The records of the runs completed by this call; it stops at a run that ended early.
  """
  new: list[dict] = []
  while max_runs is None or len(new) < max_runs:
    records = read_study_records(jsonl, log=None if new else log)
    done = {planned_run(r) for r in preset_records(records, preset)}
    planned = list(plan(records))
    todo = [p for p in planned if p not in done]
    if not new:
      log(
        f"{preset.name}: {len(planned)} runs planned so far, {len(planned) - len(todo)} "
        f"already in {jsonl}, {len(todo)} to run"
        + (f" (at most {max_runs} now)" if max_runs is not None else "")
      )
    if not todo:
      break
    model, method, seed = todo[0]
    log(f"{preset.name}: {model} {method} seed {seed} ({len(todo)} left) ...")
    record = run_one(
      preset, model, method, seed, data_dir=data_dir, workdir_root=workdir_root, trainer=trainer
    )
    if record is None:
      log(
        f"{preset.name}: {model} {method} seed {seed} stopped before its last epoch; "
        "run the study again to resume it"
      )
      break
    append_record(jsonl, record)
    new.append(record)
    log(
      f"{preset.name}: {model} {method} seed {seed}: final {100 * record['final_accuracy']:.2f}% "
      f"best {100 * record['best_accuracy']:.2f}% in {record['wall_time_s']:.0f} s"
    )
    if after_each is not None:
      after_each([*records, record])
  return new
