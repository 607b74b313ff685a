"""Does ZNorm speed up deep ResNets? The paper study's `cpu` preset at depths 20, 56 and 110 with
5 seeds of Adam and ZNorm, and Adam at larger learning rates as the control for "ZNorm acts like
a larger step".

Usage (from the project root)::

  python -m experiments.depth_study --data_dir ~/tensorflow_datasets   # runs what is missing
  python -m experiments.depth_study --report_only

Runs are `experiments.runs` runs of the paper study's protocol (same workdirs and
``paper_study.jsonl``, so the recorded 3-seed runs count and an interrupted study resumes). The
plan, fixed before the runs:

* ``adam`` and ``znorm`` (Adam lr 1e-3, cosine) at ResNet-20, -56 and -110, seeds 0-4;
* ``adam_lr2e-3`` and ``adam_lr4e-3`` at ResNet-56, seeds 0-2, and the better of the two (by mean
  final accuracy) at ResNet-110, seeds 0-2;
* ``centralize`` and ``clip`` stay at their recorded 3 seeds at depths 20 and 56.

Endpoints: the primary is the final test accuracy; the secondary, for "acceleration", is the mean
of the per-epoch test accuracies (the area under the learning curve). Each comparison is the
difference to a baseline paired by seed, with its 95% t interval, paired t-test and Holm's
correction over all the comparisons of an endpoint; the trend of ZNorm's gain with depth is the
least-squares slope of the paired differences on log2(depth). `write_report` writes
``depth_study.md`` and ``depth_study.png`` next to the jsonl.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure
from scipy import stats

from experiments import runs
from experiments.study_report import (
  COLORS,
  ENDPOINT_COLUMNS,
  RESULTS_NAME,
  endpoint,
  endpoint_cells,
  epoch_bands,
  fmt,
  holm,
  interval,
  mean_std,
  p_cell,
  paired_difference,
  preset_records,
  save_figure,
  t_critical,
  verdict,
)
from trainer.files import markdown_table, write_atomic

NAME = "depth_study"
DEPTHS = {"resnet20": 20, "resnet56": 56, "resnet110": 110}
SEEDS, CONTROL_SEEDS = (0, 1, 2, 3, 4), (0, 1, 2)
LR_CONTROLS = ("adam_lr2e-3", "adam_lr4e-3")
PEERS = ("centralize", "clip_by_global_norm")  # recorded at 3 seeds, depths 20 and 56
ENDPOINTS = {
  "final_accuracy": "final test accuracy",
  "mean_epoch_accuracy": "mean of the per-epoch test accuracies",
}


def best_control(records: Sequence[dict], model: str = "resnet56") -> str | None:
  """The larger-learning-rate Adam with the higher mean final accuracy at ``model`` (None until
  both have 3 runs)."""
  means = {}
  for method in LR_CONTROLS:
    finals = [r["final_accuracy"] for r in records if r["model"] == model and r["method"] == method]
    if len(finals) < len(CONTROL_SEEDS):
      return None
    means[method] = statistics.fmean(finals)
  return max(means, key=means.get)


def planned_groups(records: Sequence[dict]) -> list[tuple[str, tuple[str, ...], tuple[int, ...]]]:
  """``(model, methods, seeds)`` in run order: the 5-seed runs by depth, then the controls (the
  ResNet-110 control once the ResNet-56 ones say which)."""
  groups = [(model, ("adam", "znorm"), SEEDS) for model in DEPTHS]
  groups.insert(2, ("resnet56", LR_CONTROLS, CONTROL_SEEDS))
  control = best_control(records)
  if control:
    groups.append(("resnet110", (control,), CONTROL_SEEDS))
  return groups


def comparisons(records: Sequence[dict]) -> list[tuple[str, str, str]]:
  """``(model, method, baseline)`` of every comparison made (the Holm family)."""
  out = [(m, "znorm", "adam") for m in DEPTHS]
  control = best_control(records)
  for model in ("resnet56", "resnet110"):
    if control and any(r["model"] == model and r["method"] == control for r in records):
      out.append((model, "znorm", control))
  out += [(m, peer, "adam") for m in ("resnet20", "resnet56") for peer in PEERS]
  return out


def compare(records: Sequence[dict]) -> dict[str, list[dict]]:
  """For each endpoint, the paired differences of `comparisons`, with Holm-adjusted ``p_holm``."""
  out = {}
  for field in ENDPOINTS:
    rows = []
    for model, method, baseline in comparisons(records):
      d = paired_difference(records, model, method, baseline, field)
      if d is not None:
        rows.append({"model": model, "method": method, "baseline": baseline, **d})
    for row, p in zip(rows, holm([r["p"] for r in rows]), strict=True):
      row["p_holm"] = p
    out[field] = rows
  return out


def depth_trend(records: Sequence[dict], field: str, baseline: str = "adam") -> dict | None:
  """Least-squares slope of ZNorm's per-seed paired gain over ``baseline`` on log2(depth): the
  change of the gain per doubling of depth, with its 95% interval and p-value."""
  xs, ys = [], []
  for model, depth in DEPTHS.items():
    by_seed = {
      m: {
        r["seed"]: endpoint(r, field) for r in records if r["model"] == model and r["method"] == m
      }
      for m in ("znorm", baseline)
    }
    for seed in sorted(set(by_seed["znorm"]) & set(by_seed[baseline])):
      xs.append(math.log2(depth))
      ys.append(by_seed["znorm"][seed] - by_seed[baseline][seed])
  if len(set(xs)) < 2 or len(xs) < 3:
    return None
  fit = stats.linregress(xs, ys)
  ci = t_critical(len(xs) - 2) * fit.stderr
  return {"n": len(xs), "depths": len(set(xs)), "slope": fit.slope, "ci": ci, "p": fit.pvalue}


def render_markdown(records: Sequence[dict], preset) -> str:
  """``depth_study.md``: plan, per-depth accuracies, comparisons, trend, reading, missing runs."""
  lines = [
    f"# Depth study: does ZNorm speed up deep ResNets? (budget `{preset.name}`)",
    "",
    "Generated by `experiments/depth_study.py` from `paper_study.jsonl`; do not edit by hand.",
    "",
    f"Protocol: the paper study's `{preset.name}` preset ({preset.epochs} epochs of "
    f"`{preset.train_split}`, batch {preset.batch_size}, Adam lr {preset.learning_rate:g} "
    f"{preset.schedule}, test accuracy on `{preset.eval_split}` after each epoch); "
    "`adam_lrX` is Adam at learning rate X, no transform. Endpoints stated before the runs: "
    "primary, the final test accuracy; secondary, the mean of the per-epoch test accuracies "
    "(area under the learning curve). Δ: paired by seed, in percentage points, mean [95% t "
    "interval]; p: paired t-test; p Holm: Holm's correction over the comparisons of that "
    "endpoint. Early training only: these are not the paper's final accuracies.",
    "",
    "## Accuracies",
    "",
  ]
  rows = []
  for model in DEPTHS:
    for method in ("adam", *LR_CONTROLS, "znorm", *PEERS):
      runs = [r for r in records if r["model"] == model and r["method"] == method]
      if runs:
        final = mean_std([r["final_accuracy"] for r in runs])
        auc = mean_std([statistics.fmean(r["epoch_accuracies"]) for r in runs])
        rows.append((model, method, len(runs), fmt(*final), fmt(*auc)))
  header = ("model", "method", "n", "final test acc (%)", "mean per-epoch test acc (%)")
  lines += markdown_table(header, rows, (False, False, True, True, True))
  table = compare(records)
  lines += ["", "## Comparisons", ""]
  rows = [
    (a["model"], f"{a['method']} - {a['baseline']}", a["n"], *endpoint_cells(a, b))
    for a, b in zip(table["final_accuracy"], table["mean_epoch_accuracy"], strict=True)
  ]
  header = ("model", "comparison", "n", *ENDPOINT_COLUMNS)
  lines += markdown_table(header, rows, (False, False, *[True] * 7))
  lines += ["", "## ZNorm's gain against depth", ""]
  for field, label in ENDPOINTS.items():
    trend = depth_trend(records, field)
    if trend:
      slope, ci = 100 * trend["slope"], 100 * trend["ci"]
      lines.append(
        f"- {label}: {slope:+.2f} pp per doubling of depth, 95% interval [{slope - ci:+.2f}, "
        f"{slope + ci:+.2f}], p = {trend['p']:.3f} (least squares of the {trend['n']} per-seed "
        f"gains over adam at {trend['depths']} depths on log2 depth; not in the Holm family)."
      )
  lines += [
    "",
    "## A larger learning rate alone (descriptive: outside the Holm family)",
    "",
  ]
  rows = []
  for model in DEPTHS:
    for method in LR_CONTROLS:
      a, b = (paired_difference(records, model, method, "adam", f) for f in ENDPOINTS)
      if a is not None:
        rows.append((model, f"{method} - adam", a["n"], interval(a), interval(b)))
  header = ("model", "comparison", "n", "Δ final (pp)", "Δ mean per-epoch (pp)")
  lines += markdown_table(header, rows, (False, False, True, True, True))
  lines += ["", "## Reading (automatic, Holm-corrected)", "", *_reading(records, table)]
  lines += ["", "## Missing runs", "", _missing(records)]
  return "\n".join(lines) + "\n"


def _reading(records, table) -> list[str]:
  out = []
  for field, label in ENDPOINTS.items():
    for d in table[field]:
      if d["method"] != "znorm":
        continue
      claim = f"ZNorm beats {d['baseline']} at {d['model']} on the {label}"
      out.append(f"- {claim}: {verdict(d)} (Δ {interval(d)} pp, p Holm {p_cell(d['p_holm'])}).")
    trend = depth_trend(records, field)
    if trend:
      judged = verdict({"mean": trend["slope"], "ci": trend["ci"], "p": trend["p"]}, "p")
      planned = len(DEPTHS) * len(SEEDS)
      if trend["n"] < planned:  # judged once, on the planned runs, not on each interim look
        judged = f"cannot decide yet ({trend['n']} of {planned} paired seeds recorded)"
      out.append(f"- ZNorm's gain on the {label} grows with depth: {judged}.")
  return out or ["Not enough runs yet."]


def _missing(records) -> str:
  missing = []
  for model, methods, seeds in planned_groups(records):
    for method in methods:
      have = {r["seed"] for r in records if r["model"] == model and r["method"] == method}
      lack = [s for s in seeds if s not in have]
      if lack:
        missing.append(f"{model} {method} seeds {','.join(map(str, lack))}")
  if best_control(records) is None:
    missing.append("resnet110 with the better larger-learning-rate Adam (once resnet56 says)")
  if not missing:
    return "None: every planned run is recorded."
  return "; ".join(missing) + ". Run `python -m experiments.depth_study` again to add them."


def plot(records: Sequence[dict], out: str | os.PathLike) -> Path:
  """Test accuracy against epoch per method at each depth (mean, min-max shaded), and ZNorm's
  gain against depth with 95% intervals for both endpoints."""
  fig = Figure(figsize=(5.2 * (len(DEPTHS) + 1), 4.4))
  axes = fig.subplots(1, len(DEPTHS) + 1)
  for ax, model in zip(axes, DEPTHS, strict=False):
    for i, method in enumerate(("adam", *LR_CONTROLS, "znorm", *PEERS)):
      runs = [r for r in records if r["model"] == model and r["method"] == method]
      if not runs:
        continue
      xs, mean, lo, hi = epoch_bands(runs)
      color = COLORS.get(method, f"C{i + 4}")
      ax.plot(
        xs, [100 * v for v in mean], "-o", ms=3, color=color, label=f"{method} (n={len(runs)})"
      )
      ax.fill_between(xs, [100 * v for v in lo], [100 * v for v in hi], color=color, alpha=0.15)
    ax.set(title=model, xlabel="epoch", ylabel="test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
  ax = axes[-1]
  table = compare(records)
  for k, (field, marker) in enumerate((("final_accuracy", "o"), ("mean_epoch_accuracy", "s"))):
    for baseline, color in (("adam", "tab:red"), ("best", "tab:purple")):
      rows = [
        d
        for d in table[field]
        if d["method"] == "znorm" and (d["baseline"] == "adam") == (baseline == "adam")
      ]
      if not rows:
        continue
      depths = [DEPTHS[d["model"]] * (1.04 if k else 0.96) for d in rows]
      ax.errorbar(
        depths,
        [100 * d["mean"] for d in rows],
        yerr=[0 if math.isnan(d["ci"]) else 100 * d["ci"] for d in rows],
        fmt=marker + ("-" if baseline == "adam" else "--"),
        color=color,
        capsize=3,
        label=f"vs {'adam lr 1e-3' if baseline == 'adam' else 'best larger lr'}: "
        + ("final" if k == 0 else "mean per-epoch"),
      )
  ax.axhline(0, color="0.5", lw=0.8)
  ax.set_xscale("log", base=2)
  ax.minorticks_off()
  ax.set_xticks(list(DEPTHS.values()), [str(d) for d in DEPTHS.values()])
  ax.set(title="ZNorm's gain (95% interval)", xlabel="depth", ylabel="Δ test accuracy (pp)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  return save_figure(fig, out)


def write_report(records: Sequence[dict], preset, results_dir: str | os.PathLike) -> list[Path]:
  """Writes ``depth_study.md`` and ``depth_study.png`` into ``results_dir`` (each atomically)."""
  results_dir = Path(results_dir)
  records = preset_records(records, preset)
  md = write_atomic(results_dir / f"{NAME}.md", render_markdown(records, preset))
  png = write_atomic(results_dir / f"{NAME}.png", lambda tmp: plot(records, tmp))
  return [md, png]


def planned_runs(records: Sequence[dict]) -> list[tuple[str, str, int]]:
  """`planned_groups` as ``(model, method, seed)`` in run order."""
  return [
    (model, method, seed)
    for model, methods, seeds in planned_groups(records)
    for seed in seeds
    for method in methods
  ]


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data_dir", default=None, help="tfds data dir holding cifar10")
  parser.add_argument("--results", default=str(runs.RESULTS_DIR))
  parser.add_argument(
    "--workdir_root", default=str(runs.RUNS_DIR / RESULTS_NAME), help="as paper_study"
  )
  parser.add_argument("--report_only", action="store_true", help="only rebuild the report")
  args = parser.parse_args(argv)
  preset = runs.load_preset("cpu")
  jsonl = Path(args.results) / f"{RESULTS_NAME}.jsonl"

  def report(records: list[dict]) -> None:
    for path in write_report(records, preset, args.results):
      print(f"wrote {path}")

  if not args.report_only:
    with runs.one_line_errors(NAME):
      runs.run_missing(
        preset,
        lambda records: planned_runs(preset_records(records, preset)),
        jsonl,
        data_dir=args.data_dir,
        workdir_root=args.workdir_root,
        after_each=report,
      )
  report(runs.read_study_records(jsonl))


if __name__ == "__main__":
  main()
