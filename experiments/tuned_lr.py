"""Is ZNorm better than a tuned Adam? Each method at its own best learning rate, chosen on a
validation slice of the training split, at ResNet-20 and -56, then ResNet-110 at the rates
chosen at ResNet-56. The protocol, fixed before the first run: `tuned_lr_protocol.md`.

Usage (from the project root)::

  python -m experiments.tuned_lr --data_dir ~/tensorflow_datasets   # runs what is missing
  python -m experiments.tuned_lr --report_only

Runs are `experiments.runs` runs of the preset (``configs/study_tuned_cpu.py``) recorded in
``tuned_lr.jsonl``; the study resumes where it stopped. What runs, in order (`planned_runs`):

1. per model, the grid: every rate of ``learning_rates`` for both methods, seed by seed;
2. while a method's best rate (`choose`) is the largest or smallest it has, the next rate
   beyond it (x2 or /2), at most ``max_extensions`` per side;
3. the chosen rate of each method with the seeds of ``final_seeds`` that the grid lacks;
4. ``transfer_models`` at the rates chosen at the last grid model, ``final_seeds``. A run
   recorded in the paper study's jsonl whose protocol fields all match (same model, method,
   rate, seed, epochs, splits, batch and schedule: the validation slice does not change a
   run's training) is reused there, marked ``reused_from``.

`experiments.tuned_lr_report` writes ``tuned_lr.md`` and ``tuned_lr.png`` from the records.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from absl import logging

from experiments import runs, tuned_lr_report
from experiments.study_report import RESULTS_NAME as PAPER_RESULTS_NAME
from experiments.study_report import preset_records
from experiments.tuned_lr_plan import planned_runs
from trainer.metrics import append_record

NAME = tuned_lr_report.NAME
# The config fields that, with the model, seed, epochs and splits, fix what a run trained (a
# reused record must match them all): those every record keeps.
PROTOCOL_CONFIG = runs.RECORDED_CONFIG


def reusable_record(paper_records: Sequence[dict], preset, model: str, method: str, seed: int):
  """The newest paper-study record that trained exactly this run (the same model, seed, epochs,
  splits and every `PROTOCOL_CONFIG` field), relabelled for this study with ``reused_from``;
  None if there is none."""
  config = json.loads(runs.make_config(method, model, seed, preset).to_json())
  wanted = {
    "budget": "cpu",
    "model": model,
    "seed": seed,
    "epochs": preset.epochs,
    "train_split": preset.train_split,
    "eval_split": preset.eval_split,
  }
  for r in reversed(paper_records):
    same_run = all(r.get(k) == v for k, v in wanted.items())
    if same_run and all(r.get("config", {}).get(f) == config[f] for f in PROTOCOL_CONFIG):
      return {
        **r,
        "method": method,
        "budget": preset.name,
        "reused_from": {"file": f"{PAPER_RESULTS_NAME}.jsonl", "method": r["method"]},
      }
  return None


def run(preset, *, data_dir, results_dir, workdir_root, max_runs=None, trainer=None, log=print):
  """Runs the study's missing runs (reusing matching paper-study runs of the transfer models),
  rebuilding the report after each."""
  results_dir = Path(results_dir)
  jsonl = results_dir / f"{NAME}.jsonl"
  paper = runs.read_study_records(results_dir / f"{PAPER_RESULTS_NAME}.jsonl", log=None)

  def plan(records: list[dict]) -> list[tuple[str, str, int]]:
    planned = planned_runs(preset_records(records, preset), preset)
    done = {(r["model"], r["method"], r["seed"]) for r in preset_records(records, preset)}
    for model, method, seed in planned:
      if model in preset.transfer_models and (model, method, seed) not in done:
        reused = reusable_record(paper, preset, model, method, seed)
        if reused is not None:
          append_record(jsonl, reused)
          log(f"{NAME}: {model} {method} seed {seed}: reused from {PAPER_RESULTS_NAME}.jsonl")
          return plan(runs.read_study_records(jsonl, log=None))
    return planned

  def report(records: list[dict]) -> None:
    for path in tuned_lr_report.write_report(preset_records(records, preset), preset, results_dir):
      log(f"{NAME}: wrote {path}")

  runs.run_missing(
    preset,
    plan,
    jsonl,
    data_dir=data_dir,
    workdir_root=workdir_root,
    max_runs=max_runs,
    trainer=trainer,
    log=log,
    after_each=report,
  )
  report(runs.read_study_records(jsonl))


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument(
    "--preset", default="tuned_cpu", choices=("tuned_cpu", "tuned_gpu", "tuned_test")
  )
  parser.add_argument("--data_dir", default=None, help="tfds data dir holding cifar10")
  parser.add_argument("--results", default=str(runs.RESULTS_DIR), help=f"folder of {NAME}.jsonl")
  parser.add_argument(
    "--workdir_root",
    default=str(runs.RUNS_DIR / NAME),
    help="run workdirs go to WORKDIR_ROOT/PRESET/MODEL/METHOD/seedSEED",
  )
  parser.add_argument("--max_runs", type=int, default=None, help="stop after this many new runs")
  parser.add_argument("--report_only", action="store_true", help="only rebuild the report")
  args = parser.parse_args(argv)
  preset = runs.load_preset(args.preset)
  if args.report_only:
    records = preset_records(runs.read_study_records(Path(args.results) / f"{NAME}.jsonl"), preset)
    for path in tuned_lr_report.write_report(records, preset, args.results):
      print(f"wrote {path}")
    return
  logging.set_verbosity(logging.WARNING)  # orbax and tfds are chatty at INFO
  with runs.one_line_errors(NAME):
    run(
      preset,
      data_dir=args.data_dir,
      results_dir=args.results,
      workdir_root=args.workdir_root,
      max_runs=args.max_runs,
    )


if __name__ == "__main__":
  main()
