"""The method comparison of the paper (its Figure 3 and table): Adam, Adam + gradient
centralization, Adam + clipping and Adam + ZNorm on CIFAR-10, same model, schedule and budget,
over several seeds.

Usage (from the project root)::

  python -m experiments.paper_study --budget cpu --data_dir ~/tensorflow_datasets
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
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from absl import logging

from experiments import runs
from experiments.study_report import METHODS, RESULTS_NAME, parse_method, write_report


def report_seeds(preset, seeds: Sequence[int] | None) -> tuple[int, ...]:
  """The seeds a report expects: the preset's and any others asked for."""
  return tuple(sorted({*preset.seeds, *(seeds or ())}))


def planned_runs(
  models: Sequence[str], methods: Sequence[str], seeds: Sequence[int]
) -> list[tuple[str, str, int]]:
  """``(model, method, seed)`` in run order: model by model, seed group by seed group."""
  return [(model, method, seed) for model in models for seed in seeds for method in methods]


def run_study(
  preset,
  *,
  models: Sequence[str] | None = None,
  methods: Sequence[str] = METHODS,
  seeds: Sequence[int] | None = None,
  data_dir: str | None = None,
  workdir_root: str | os.PathLike = runs.RUNS_DIR / RESULTS_NAME,
  results_dir: str | os.PathLike = runs.RESULTS_DIR,
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
  planned = planned_runs(models, methods, seeds)

  def report(records: list[dict]) -> None:
    for path in write_report(records, preset, results_dir, seeds=report_seeds(preset, seeds)):
      log(f"paper_study: wrote {path}")

  return runs.run_missing(
    preset,
    lambda records: planned,
    Path(results_dir) / f"{RESULTS_NAME}.jsonl",
    data_dir=data_dir,
    workdir_root=workdir_root,
    max_runs=max_runs,
    trainer=trainer,
    log=log,
    after_each=report,
  )


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
    choices=("cpu", "gpu", "test"),
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
    default=str(runs.RUNS_DIR / RESULTS_NAME),
    help="run workdirs go to WORKDIR_ROOT/BUDGET/MODEL/METHOD/seedSEED",
  )
  parser.add_argument(
    "--results",
    default=str(runs.RESULTS_DIR),
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
  preset = runs.load_preset(args.budget)
  if args.report_only:
    records = runs.read_study_records(Path(args.results) / f"{RESULTS_NAME}.jsonl")
    for path in write_report(records, preset, args.results, seeds=report_seeds(preset, args.seeds)):
      print(f"wrote {path}")
    return []

  logging.set_verbosity(logging.WARNING)  # orbax and tfds are chatty at INFO
  with runs.one_line_errors("paper_study"):
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


if __name__ == "__main__":
  main()
