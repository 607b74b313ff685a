"""Is ZNorm better than a tuned Adam? Each method at its own best learning rate, chosen on a
validation slice of the training split at the preset's grid depths, then at its transfer depths
at the rates chosen at the last grid depth. One machinery, one preset per study:

- ``tuned_cpu`` (the default): 4 epochs of 4,096 images, grid at ResNet-20 and -56 (seeds 0-2),
  final seeds 0-4, ResNet-110 transferred; protocol `tuned_lr_protocol.md`, results
  ``tuned_lr.{jsonl,md,png}``.
- ``tuned_long_cpu``: 10 epochs of ``train[:45000]``, the whole test split, grid at ResNet-20
  (seeds 0 and 1), final seeds 0-2, ResNet-56 transferred; protocol `tuned_long_protocol.md`,
  results ``tuned_long.{jsonl,md,png}`` and ``tuned_long_curves.png``.
- ``tuned_gpu``, ``tuned_long_gpu``: the same protocols at an accelerator's budget;
  ``tuned_test``, ``tuned_long_test``: smoke tests.

Usage (from the project root)::

  python -m experiments.tuned_lr --data_dir ~/tensorflow_datasets   # runs what is missing
  python -m experiments.tuned_lr --preset tuned_long_cpu --data_dir ~/tensorflow_datasets
  python -m experiments.tuned_lr --preset tuned_long_cpu --report_only

Runs are `experiments.runs` runs of the preset recorded in ``{results_name}.jsonl``; the study
resumes where it stopped. What runs, in order (`planned_runs`):

1. per grid model, the grid: every rate of ``learning_rates`` for both methods, seed by seed;
2. while a method's best rate (`choose`) is the largest or smallest it has, the next rate
   beyond it (x2 or /2), at most ``max_extensions`` per side;
3. the chosen rate of each method with the seeds of ``final_seeds`` that the grid lacks;
4. ``transfer_models`` at the rates chosen at the last grid model, ``final_seeds``, pair by
   pair. With ``reuse_paper_runs``, a run recorded in the paper study's jsonl whose protocol
   fields all match (same model, method, rate, seed, epochs, splits, batch and schedule: the
   validation slice does not change a run's training) is reused there, marked
   ``reused_from``, once this study's runs at the depth study's rate reproduce that study's
   test accuracies exactly (`reproduction`).

`experiments.tuned_lr_report` writes the report and the figures from the records.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

from absl import logging

from experiments import runs, tuned_lr_report
from experiments.study_report import RESULTS_NAME as PAPER_RESULTS_NAME
from experiments.study_report import planned_run, preset_records
from experiments.tuned_lr_plan import method_name, planned_runs
from trainer.metrics import append_record

NAME = "tuned_lr"  # the command, in its log lines and errors
TUNED_PRESETS = tuple(p for p in runs.PRESETS if p.startswith("tuned_"))
# The config fields that, with the model, seed, epochs and splits, fix what a run trained (a
# reused record must match them all): those every record keeps.
PROTOCOL_CONFIG = runs.RECORDED_CONFIG


def _paper_record(paper_records, preset, model: str, method: str, seed: int, *, strict: bool):
  """The newest paper-study record that trained this run: the same model, seed, epochs, splits
  and `PROTOCOL_CONFIG` fields; with ``strict=False`` a field that the record predates (an older
  record keeps fewer) is not compared. None if there is none."""
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
    kept = r.get("config", {})
    fields = PROTOCOL_CONFIG if strict else [f for f in PROTOCOL_CONFIG if f in kept]
    if all(r.get(k) == v for k, v in wanted.items()) and all(
      kept.get(f) == config[f] for f in fields
    ):
      return r
  return None


def reusable_record(paper_records: Sequence[dict], preset, model: str, method: str, seed: int):
  """The newest paper-study record that trained exactly this run (the same model, seed, epochs,
  splits and every `PROTOCOL_CONFIG` field), relabelled for this study with ``reused_from``;
  None if there is none."""
  r = _paper_record(paper_records, preset, model, method, seed, strict=True)
  if r is None:
    return None
  return {
    **r,
    "method": method,
    "budget": preset.name,
    "reused_from": {"file": f"{PAPER_RESULTS_NAME}.jsonl", "method": r["method"]},
  }


def reproduction(records: Sequence[dict], paper_records: Sequence[dict], preset) -> list[dict]:
  """The precondition of reuse (protocol, "ResNet-110"): this study's runs of the grid models at
  the depth study's rate (``preset.learning_rate``), grid seeds, each beside the depth study's
  record of the same run. One row per run: ``run`` (model, method, seed), ``ours`` and
  ``theirs`` (the test accuracies after each epoch, or None where not recorded) and ``same``
  (both recorded and identical)."""
  by_run = {planned_run(r): r for r in records}
  rows = []
  for model in preset.models:
    for base in preset.methods:
      method = method_name(base, preset.learning_rate)
      for seed in preset.seeds:
        ours = by_run.get((model, method, seed))
        theirs = _paper_record(paper_records, preset, model, method, seed, strict=False)
        ours_acc, theirs_acc = (r and r["epoch_accuracies"] for r in (ours, theirs))
        rows.append(
          {
            "run": (model, method, seed),
            "ours": ours_acc,
            "theirs": theirs_acc,
            "same": ours_acc is not None and ours_acc == theirs_acc,
          }
        )
  return rows


def read_paper_records(results_dir: str | os.PathLike) -> list[dict]:
  """The paper (and depth) study's records in ``results_dir``, the runs this study may reuse."""
  return runs.read_study_records(Path(results_dir) / f"{PAPER_RESULTS_NAME}.jsonl", log=None)


def write_report(records, paper_records, preset, results_dir) -> list:
  """The report and figures of the preset's ``records``, with the reproduction check where the
  preset reuses paper-study runs."""
  checked = reproduction(records, paper_records, preset) if preset.reuse_paper_runs else ()
  return tuned_lr_report.write_report(records, preset, results_dir, checked)


def run(preset, *, data_dir, results_dir, workdir_root, max_runs=None, trainer=None, log=print):
  """Runs the study's missing runs (reusing matching paper-study runs of the transfer models
  where the preset allows it), rebuilding the report after each."""
  results_dir = Path(results_dir)
  jsonl = results_dir / f"{preset.results_name}.jsonl"
  paper = read_paper_records(results_dir) if preset.reuse_paper_runs else []

  def reuse(records: list[dict]) -> list[dict]:
    """Appends (and returns) the paper-study records that planned runs of the transfer models
    may reuse: none unless the preset allows it and this study has reproduced the paper
    study's runs."""
    records = preset_records(records, preset)
    if not preset.reuse_paper_runs or not all(
      row["same"] for row in reproduction(records, paper, preset)
    ):
      return []
    done = {planned_run(r) for r in records}
    reused = []
    for model, method, seed in planned_runs(records, preset):
      record = None
      if model in preset.transfer_models and (model, method, seed) not in done:
        record = reusable_record(paper, preset, model, method, seed)
      if record is not None:
        append_record(jsonl, record)
        reused.append(record)
        log(f"{NAME}: {model} {method} seed {seed}: reused from {PAPER_RESULTS_NAME}.jsonl")
    return reused

  def report(records: list[dict]) -> None:
    for path in write_report(preset_records(records, preset), paper, preset, results_dir):
      log(f"{NAME}: wrote {path}")

  reuse(runs.read_study_records(jsonl, log=None))  # the transfer runs may be due already
  runs.run_missing(
    preset,
    lambda records: planned_runs(preset_records(records, preset), preset),
    jsonl,
    data_dir=data_dir,
    workdir_root=workdir_root,
    max_runs=max_runs,
    trainer=trainer,
    log=log,
    after_each=lambda records: report([*records, *reuse(records)]),
  )
  report(runs.read_study_records(jsonl))


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--preset", default="tuned_cpu", choices=TUNED_PRESETS)
  parser.add_argument("--data_dir", default=None, help="tfds data dir holding cifar10")
  parser.add_argument(
    "--results", default=str(runs.RESULTS_DIR), help="folder of the preset's RESULTS_NAME.jsonl"
  )
  parser.add_argument(
    "--workdir_root",
    default=None,
    help="run workdirs go to WORKDIR_ROOT/PRESET/MODEL/METHOD/seedSEED "
    "(default: runs/RESULTS_NAME)",
  )
  parser.add_argument("--max_runs", type=int, default=None, help="stop after this many new runs")
  parser.add_argument("--report_only", action="store_true", help="only rebuild the report")
  args = parser.parse_args(argv)
  preset = runs.load_preset(args.preset)
  if args.report_only:
    jsonl = Path(args.results) / f"{preset.results_name}.jsonl"
    paper = read_paper_records(args.results) if preset.reuse_paper_runs else []
    records = preset_records(runs.read_study_records(jsonl), preset)
    for path in write_report(records, paper, preset, args.results):
      print(f"wrote {path}")
    return
  logging.set_verbosity(logging.WARNING)  # orbax and tfds are chatty at INFO
  with runs.one_line_errors(NAME):
    run(
      preset,
      data_dir=args.data_dir,
      results_dir=args.results,
      workdir_root=args.workdir_root or runs.RUNS_DIR / preset.results_name,
      max_runs=args.max_runs,
    )


if __name__ == "__main__":
  main()
