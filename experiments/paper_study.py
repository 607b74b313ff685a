"""The method comparison of the paper (its Figure 3 and table): Adam, Adam + gradient
centralization, Adam + clipping and Adam + ZNorm on CIFAR-10, same model, schedule and budget,
over several seeds.

Usage (from the project root)::

  python -m experiments.paper_study --budget cpu --data_dir ../shared/data/tfds
  python -m experiments.paper_study --budget gpu            # the paper-scale preset
  python -m experiments.paper_study --budget cpu --report_only

The presets are config files, ``configs/study_{budget}.py``. Each run trains with
``trainer.loop.train_and_evaluate`` in its own workdir
``{workdir_root}/{budget}/{model}/{method}/seed{seed}``, from the config of
``configs/paper_{method}.py`` (``adam`` = ``paper_adam``, no transform) with the preset's model,
epochs, splits, batch, learning rate and schedule, and one evaluation per epoch. An interrupted
run resumes from its last checkpoint (one per epoch) when the study is started again.

A completed run appends one line to ``{results}/paper_study.jsonl``; runs already recorded there
(same budget, model, method, seed, epochs and train split) are skipped, so the study can be
completed over several sittings (``--max_runs N`` stops after N new runs). Runs go seed group by
seed group (all methods of seed 0 of the first model, then seed 1, ...), so a partial study has
complete seed groups. After every run, and with ``--report_only``, `experiments.study_report`
rebuilds ``paper_study.md`` and ``paper_study.png`` from the jsonl records alone.
"""

from __future__ import annotations

import argparse
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
from absl import logging

from experiments.study_report import (
  METHODS,
  RESULTS_NAME,
  parse_method,
  run_key,
  write_report,
)
from trainer import workdir as workdir_lib
from trainer.loop import train_and_evaluate
from trainer.metrics import append_record, column, read_metrics, read_records

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ("cpu", "gpu", "test")  # configs/study_{name}.py
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
  config = importlib.import_module(f"configs.paper_{base}").get_config()
  config.model = model
  config.seed = seed
  config.data_dir = data_dir
  config.train_split = preset.train_split
  config.eval_split = preset.eval_split
  config.batch_size = preset.batch_size
  config.learning_rate = learning_rate or preset.learning_rate
  config.schedule = preset.schedule
  config.num_epochs = preset.epochs
  config.num_train_steps = -1  # num_epochs * steps per epoch
  config.eval_every_steps = -1  # once per epoch: the per-epoch accuracies of the study
  config.checkpoint_every_steps = -1  # once per epoch: an interrupted run resumes from there
  for field, value in preset.overrides.items():
    config[field] = value
  return config


def report_seeds(preset, seeds: Sequence[int] | None) -> tuple[int, ...]:
  """The seeds a report expects: the preset's and any others asked for."""
  return tuple(sorted({*preset.seeds, *(seeds or ())}))


def planned_runs(
  models: Sequence[str], methods: Sequence[str], seeds: Sequence[int]
) -> list[tuple[str, int, str]]:
  """``(model, seed, method)`` in run order: model by model, seed group by seed group."""
  return [(model, seed, method) for model in models for seed in seeds for method in methods]


def workdir_for(root: str | os.PathLike, budget: str, model: str, method: str, seed: int) -> Path:
  return Path(root) / budget / model / method / f"seed{seed}"


def _check_workdir(workdir: Path, config) -> None:
  """Refuses to resume in a workdir whose run had another config (e.g. another preset); unlike
  the trainer, also another evaluation split, since a record's accuracies must share one."""
  message = workdir_lib.refusal(
    str(workdir),
    workdir_lib.config_changes(str(workdir), config),
    resumable=workdir_lib.RESUMABLE_CHANGES - {"eval_split"},
    fix="delete that workdir or choose another --workdir_root",
  )
  if message:
    raise SystemExit(f"paper_study: error: {message}")


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
    "wall_time_s": round(wall, 1),
    "resumed": resumed,  # wall_time_s then covers the last sitting only
    "images_per_second": statistics.median(throughput) if throughput else None,
    "device": _device_description(),
    "config": {f: v for f, v in json.loads(config.to_json()).items() if f in RECORDED_CONFIG},
    "workdir": str(workdir),
    "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
  }
  return json.loads(json.dumps(record))  # as read back from the jsonl (lists, not tuples)


def run_study(
  preset,
  *,
  models: Sequence[str] | None = None,
  methods: Sequence[str] = METHODS,
  seeds: Sequence[int] | None = None,
  data_dir: str | None = None,
  workdir_root: str | os.PathLike = ROOT / "runs" / RESULTS_NAME,
  results_dir: str | os.PathLike = ROOT / "experiments" / "results",
  max_runs: int | None = None,
  trainer: Callable | None = None,
  log: Callable[[str], None] = print,
) -> list[dict]:
  """Runs the planned runs not yet in the jsonl, one at a time, rebuilding the report after each.

  Returns:
    The records of the runs completed by this call.
  """
  models = tuple(models or preset.models)
  seeds = tuple(preset.seeds if seeds is None else seeds)
  results_dir = Path(results_dir)
  jsonl = results_dir / f"{RESULTS_NAME}.jsonl"
  records = read_records(jsonl)
  done = {run_key(r) for r in records}
  plan = planned_runs(models, methods, seeds)
  todo = [
    p
    for p in plan
    if (preset.name, p[0], p[2], p[1], preset.epochs, preset.train_split) not in done
  ]
  log(
    f"paper_study: budget {preset.name}: {len(plan)} runs planned, {len(plan) - len(todo)} "
    f"already in {jsonl}, {len(todo)} to run"
    + (f" (at most {max_runs} now)" if max_runs is not None else "")
  )
  new = []
  for i, (model, seed, method) in enumerate(todo):
    if max_runs is not None and len(new) >= max_runs:
      break
    log(f"paper_study: [{i + 1}/{len(todo)}] {model} {method} seed {seed} ...")
    record = run_one(
      preset, model, method, seed, data_dir=data_dir, workdir_root=workdir_root, trainer=trainer
    )
    if record is None:
      log(
        f"paper_study: {model} {method} seed {seed} stopped before its last epoch; "
        "run the study again to resume it"
      )
      break
    append_record(jsonl, record)
    records.append(record)
    new.append(record)
    log(
      f"paper_study: {model} {method} seed {seed}: final {100 * record['final_accuracy']:.2f}% "
      f"best {100 * record['best_accuracy']:.2f}% in {record['wall_time_s']:.0f} s"
    )
    for path in write_report(records, preset, results_dir, seeds=report_seeds(preset, seeds)):
      log(f"paper_study: wrote {path}")
  return new


def _csv(kind: Callable = str):
  def parse(text: str):
    try:
      values = tuple(kind(v.strip()) for v in text.split(",") if v.strip())
    except ValueError as e:
      raise argparse.ArgumentTypeError(str(e)) from None
    if not values:
      raise argparse.ArgumentTypeError("empty list")
    return values

  return parse


def main(argv: Sequence[str] | None = None) -> list[dict]:
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument(
    "--budget",
    choices=PRESETS,
    required=True,
    help="preset configs/study_BUDGET.py: gpu (the paper's scale), cpu (both depths, minutes "
    "per run) or test (a smoke test)",
  )
  parser.add_argument(
    "--data_dir",
    default=None,
    help="tfds data dir holding cifar10 (default: tfds's own, downloading)",
  )
  parser.add_argument(
    "--workdir_root",
    default=str(ROOT / "runs" / RESULTS_NAME),
    help="run workdirs go to WORKDIR_ROOT/BUDGET/MODEL/METHOD/seedSEED",
  )
  parser.add_argument(
    "--results",
    default=str(ROOT / "experiments" / "results"),
    help="folder of paper_study.{jsonl,md,png}",
  )
  parser.add_argument(
    "--methods",
    type=_csv(),
    default=METHODS,
    help=f"comma-separated subset of {','.join(METHODS)} (default: all); a method may carry "
    "its own learning rate, as adam_lr2e-3",
  )
  parser.add_argument(
    "--models",
    type=_csv(),
    default=None,
    help="comma-separated models to run (default: the preset's)",
  )
  parser.add_argument(
    "--seeds",
    type=_csv(int),
    default=None,
    help="comma-separated seeds (default: the preset's, 0,1,2)",
  )
  parser.add_argument(
    "--max_runs",
    type=int,
    default=None,
    help="stop after this many new runs (recorded runs do not count)",
  )
  parser.add_argument(
    "--report_only",
    action="store_true",
    help="only rebuild paper_study.md and .png from paper_study.jsonl",
  )
  args = parser.parse_args(argv)
  for method in args.methods:
    try:
      parse_method(method)
    except ValueError as e:
      parser.error(str(e))
  preset = load_preset(args.budget)
  if args.report_only:
    records = read_records(Path(args.results) / f"{RESULTS_NAME}.jsonl")
    for path in write_report(records, preset, args.results, seeds=report_seeds(preset, args.seeds)):
      print(f"wrote {path}")
    return []

  logging.set_verbosity(logging.WARNING)  # orbax and tfds are chatty at INFO
  try:
    return run_study(
      preset,
      models=args.models,
      methods=args.methods,
      seeds=args.seeds,
      data_dir=args.data_dir,
      workdir_root=args.workdir_root,
      results_dir=args.results,
      max_runs=args.max_runs,
    )
  except (ValueError, FileNotFoundError) as e:  # bad config or absent data: one line
    raise SystemExit(f"paper_study: error: {' '.join(str(e).split())}") from None


if __name__ == "__main__":
  main()
