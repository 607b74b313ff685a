"""The tuned-learning-rate study's report and figure: pure functions of its records.

``{results_name}.md``: the protocol in brief, the validation grid with the chosen rates, the final
comparison of tuned ZNorm with tuned Adam on the test slice (paired by seed, 95% t interval,
paired t-test, Holm over the depths of an endpoint), an automatic reading and the runs still
missing. ``{results_name}.png``: validation accuracy against learning rate at each grid depth (mean
over seeds, each seed a dot) and the tuned gain at each depth; ``{results_name}_curves.png``:
the learning curves at the chosen rates, one panel per depth. The reproduction check that
gates reuse is computed by `experiments.tuned_lr.reproduction` and passed in.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Sequence
from pathlib import Path

from experiments import tuned_lr_plan as plan
from experiments.study_report import (
  COLORS,
  ENDPOINT_COLUMNS,
  endpoint_cells,
  fmt,
  holm,
  interval,
  mean_std,
  p_cell,
  paired_difference,
  planned_run,
  plt,
  save_figure,
  verdict,
)
from trainer.files import markdown_table, write_atomic

ENDPOINTS = {
  "final_accuracy": "final test accuracy",
  "mean_epoch_accuracy": "mean of the per-epoch test accuracies",
}


def command(preset) -> str:
  """The command that runs ``preset``'s study (``tuned_cpu`` is the default preset)."""
  flag = "" if preset.name == "tuned_cpu" else f" --preset {preset.name}"
  return f"python -m experiments.tuned_lr{flag}"


def _runs(records, model: str, method: str) -> list[dict]:
  return [r for r in records if r["model"] == model and r["method"] == method]


def grid_accuracies(records, preset, model: str, base: str, rate: float) -> list[float]:
  """The final validation accuracies of the grid seeds of ``base`` at ``rate`` on ``model``."""
  return [
    r["final_validation_accuracy"]
    for r in _runs(records, model, plan.method_name(base, rate))
    if r["seed"] in preset.seeds
  ]


def tuned_methods(records: Sequence[dict], preset, model: str) -> dict[str, str] | None:
  """``{base: method name at its chosen rate}`` for ``model`` (a transfer model takes the last
  grid model's rates); None until both are chosen."""
  source = model if model in preset.models else preset.models[-1]
  chosen = plan.chosen_rates(records, preset, source)
  if any(rate is None for rate in chosen.values()):
    return None
  return {base: plan.method_name(base, rate) for base, rate in chosen.items()}


def compare(records: Sequence[dict], preset) -> dict[str, list[dict]]:
  """Per endpoint, tuned ZNorm - tuned Adam at every model where both are chosen, paired by seed
  over the final seeds, with ``p_holm``: Holm over all the planned models of that endpoint,
  those without all their final seeds yet counting as p = 1 (an interim p may still rise).
  Holm's adjusted p-values never fall when another p-value rises, so an interim ``p_holm`` can
  only overstate the final one."""
  out = {}
  planned = (*preset.models, *preset.transfer_models)
  for field in ENDPOINTS:
    rows = []
    for model in planned:
      tuned = tuned_methods(records, preset, model)
      if tuned is None:
        continue
      final = [r for r in records if r["seed"] in preset.final_seeds]
      d = paired_difference(final, model, tuned["znorm"], tuned["adam"], field)
      if d is not None:
        rows.append({"model": model, "znorm": tuned["znorm"], "adam": tuned["adam"], **d})
    complete = [r["n"] == len(preset.final_seeds) for r in rows]
    p_final = [r["p"] if done else 1.0 for r, done in zip(rows, complete, strict=True)]
    padded = holm(p_final + [1.0] * (len(planned) - len(rows)))
    for row, p, done in zip(rows, padded, complete, strict=False):
      row["p_holm"] = p
      row["seeds_complete"] = done
      row["family_complete"] = sum(complete) == len(planned)
    out[field] = rows
  return out


def _grid_lines(records, preset) -> list[str]:
  lines = []
  for model in preset.models:
    rows = []
    for base in preset.methods:
      rates, chosen = plan.grid(records, preset, model, base)
      for rate in sorted(rates):
        runs = [
          r
          for r in _runs(records, model, plan.method_name(base, rate))
          if r["seed"] in preset.seeds
        ]
        values = [r["final_validation_accuracy"] for r in runs]
        mark = " (chosen)" if rate == chosen else ""
        rows.append((base, f"{rate:g}{mark}", len(values), fmt(*mean_std(values))))
    lines += ["", f"{model}:", ""]
    lines += markdown_table(
      ("method", "learning rate", "n", "final validation acc (%)"), rows, (False, False, True, True)
    )
  return lines


def _edge_note(records, preset, model: str, base: str) -> str:
  rates, chosen = plan.grid(records, preset, model, base)
  if chosen is None:
    return "not chosen yet"
  edge = chosen in (min(rates), max(rates))
  return f"{chosen:g}" + (" (at an edge of the grid after every extension)" if edge else "")


def render_markdown(records: Sequence[dict], preset, reproduction: Sequence[dict] = ()) -> str:
  """``{results_name}.md`` from the preset's records and the rows of the reproduction check
  (`experiments.tuned_lr.reproduction`)."""
  table = compare(records, preset)
  lines = [
    f"# Tuned learning rates: ZNorm + Adam against Adam (preset `{preset.name}`)",
    "",
    f"Generated by `{command(preset)} --report_only` from `{preset.results_name}.jsonl`; do "
    f"not edit by hand. Protocol, fixed before the first run: `experiments/{preset.protocol}`.",
    "",
    f"Each run: {preset.epochs} epochs of `{preset.train_split}`, batch {preset.batch_size}, "
    f"{preset.schedule} schedule; validation accuracy on `{preset.validation_split}` (never "
    f"trained on) and test accuracy on `{preset.eval_split}` after each epoch. Grid: "
    + ", ".join(f"{lr:g}" for lr in preset.learning_rates)
    + f" with seeds {', '.join(map(str, preset.seeds))}, extended by x2 or /2 while the best "
    f"rate is at an edge (at most {preset.max_extensions} per side). Choice: the best mean final "
    "validation accuracy (ties: the smaller rate). Test accuracy is reported for the chosen "
    f"rates only, seeds {', '.join(map(str, preset.final_seeds))}"
    + (
      f"; {', '.join(preset.transfer_models)} runs at the rates chosen at {preset.models[-1]}."
      if preset.transfer_models
      else "."
    ),
    "",
    "## The grid (validation accuracy)",
    *_grid_lines(records, preset),
    "",
    "## Chosen learning rates",
    "",
  ]
  for model in preset.models:
    notes = [f"{base} {_edge_note(records, preset, model, base)}" for base in preset.methods]
    lines.append(f"- {model}: " + "; ".join(notes) + ".")
  lines += ["", "## Tuned ZNorm against tuned Adam (test accuracy)", ""]
  rows = []
  for a, b in zip(table["final_accuracy"], table["mean_epoch_accuracy"], strict=True):
    adam = mean_std([r["final_accuracy"] for r in _runs(records, a["model"], a["adam"])])
    znorm = mean_std([r["final_accuracy"] for r in _runs(records, a["model"], a["znorm"])])
    rows.append(
      (
        a["model"],
        f"`{a['adam']}` / `{a['znorm']}`",
        a["n"],
        fmt(*adam),
        fmt(*znorm),
        *endpoint_cells(a, b),
      )
    )
  header = (
    "model",
    "adam / znorm",
    "n",
    "Adam final (%)",
    "ZNorm final (%)",
    *ENDPOINT_COLUMNS,
  )
  lines += markdown_table(header, rows, (False, False, *[True] * 9)) if rows else ["No runs yet."]
  lines += [
    "",
    "Δ: ZNorm - Adam, each at its chosen rate, paired by seed, mean [95% t interval]; p: "
    "paired t-test; p Holm: Holm's correction over the planned depths of that endpoint, the "
    "depths not compared yet counted as p = 1 (which can only overstate p Holm).",
    "",
    "## Reading (automatic, Holm-corrected)",
    "",
    *_reading(table, preset),
    "",
    "## Missing runs",
    "",
    _missing(records, preset),
  ]
  if preset.transfer_models and reproduction:
    lines += ["", "## Reproduction of the depth study", "", _reproduction(reproduction, preset)]
  return "\n".join(lines) + "\n"


def _reading(table, preset) -> list[str]:
  """The verdict per depth and endpoint, given once all the final seeds of that depth are in
  (an interim look is described, not judged). A "supported" or "contradicted" under the interim
  (overstated) p Holm stands; a "cannot decide" waits for the whole family."""
  out = []
  planned = len(preset.final_seeds)
  for field, label in ENDPOINTS.items():
    for d in table[field]:
      judged = verdict(d)
      if not d["seeds_complete"]:
        judged = f"cannot decide yet ({d['n']} of {planned} seeds)"
      elif judged == "cannot decide" and not d["family_complete"]:  # p Holm may still fall
        judged = "cannot decide yet (not every depth compared)"
      out.append(
        f"- tuned ZNorm beats tuned Adam at {d['model']} on the {label}: {judged} "
        f"(Δ {interval(d)} pp, n = {d['n']}, p Holm {p_cell(d['p_holm'])})."
      )
  return out or ["Not enough runs yet."]


def _reproduction(rows: Sequence[dict], preset) -> str:
  """Whether the depth study's runs may be reused (protocol, "ResNet-110")."""
  recorded = [r for r in rows if r["ours"] is not None]
  differ = [r for r in recorded if not r["same"]]
  text = (
    f"The depth study's {', '.join(preset.transfer_models)} runs are reused only if this "
    f"study's runs at its rate ({preset.learning_rate:g}, seeds "
    f"{', '.join(map(str, preset.seeds))}, at {', '.join(preset.models)}) reproduce its test "
    f"accuracies exactly, after every epoch: {len(recorded)} of {len(rows)} recorded, "
    f"{len(recorded) - len(differ)} identical"
  )
  if differ:
    runs_differ = ", ".join(
      " ".join(map(str, r["run"][:2])) + f" seed {r['run'][2]}" for r in differ
    )
    return text + f"; differ: {runs_differ}. Reuse: refused, every run is trained again."
  if len(recorded) < len(rows):
    return text + ". Reuse: not yet (waits for the rest)."
  return text + ". Reuse: allowed."


def _missing(records, preset) -> str:
  done = {planned_run(r) for r in records}
  missing = [p for p in plan.planned_runs(records, preset) if p not in done]
  pending = [
    f"the final seeds at {model}"
    for model in (*preset.models, *preset.transfer_models)
    if tuned_methods(records, preset, model) is None
  ]
  text = (
    f"{len(missing)} planned run(s) not recorded yet: "
    + ", ".join(f"{m} {method} seed {s}" for m, method, s in missing)
    + "."
    if missing
    else "Every run planned so far is recorded."
  )
  if pending:
    text += " Planned once the rates are chosen: " + "; ".join(pending) + "."
  return text + f" `{command(preset)}` runs what is missing."


def plot(records: Sequence[dict], preset, out: str | os.PathLike) -> Path:
  """Validation accuracy against learning rate per grid depth (mean line, seeds as dots, the
  chosen rate ringed), and tuned ZNorm - tuned Adam per depth with 95% intervals."""
  fig, axes = plt.subplots(1, len(preset.models) + 1, figsize=(5.2 * (len(preset.models) + 1), 4.4))
  for ax, model in zip(axes, preset.models, strict=False):
    all_rates = set()
    for base in preset.methods:
      rates, chosen = plan.grid(records, preset, model, base)
      all_rates |= set(rates)
      color = COLORS.get(base, "C0")
      xs, means = [], []
      for rate in sorted(rates):
        values = [100 * v for v in grid_accuracies(records, preset, model, base, rate)]
        if values:
          ax.plot([rate] * len(values), values, ".", color=color, alpha=0.5)
          xs.append(rate)
          means.append(statistics.fmean(values))
      if xs:
        ax.plot(xs, means, "-o", ms=4, color=color, label=base)
      if chosen is not None and chosen in xs:
        ax.plot([chosen], [means[xs.index(chosen)]], "o", ms=12, mfc="none", color=color)
    ax.set_xscale("log", base=2)
    ax.minorticks_off()
    ax.set_xticks(sorted(all_rates), [f"{r:g}" for r in sorted(all_rates)])
    ax.set_xlim(min(all_rates) / 1.4, max(all_rates) * 1.4)
    ax.set(title=model, xlabel="peak learning rate", ylabel="final validation accuracy (%)")
    ax.grid(alpha=0.3)
    if ax.lines:
      ax.legend(fontsize=8, loc="lower center")
    else:
      ax.text(0.5, 0.5, "no runs yet", transform=ax.transAxes, ha="center", color="0.5")
  ax = axes[-1]
  table = compare(records, preset)
  depths = {m: i for i, m in enumerate((*preset.models, *preset.transfer_models))}
  for k, (field, label) in enumerate(ENDPOINTS.items()):
    rows = table[field]
    ax.errorbar(
      [depths[d["model"]] + (0.1 if k else -0.1) for d in rows],
      [100 * d["mean"] for d in rows],
      yerr=[0 if math.isnan(d["ci"]) else 100 * d["ci"] for d in rows],
      fmt="os"[k],
      capsize=3,
      label=label,
    )
  ax.axhline(0, color="0.5", lw=0.8)
  seeds = {d["model"]: d["n"] for d in table["final_accuracy"]}
  ax.set_xticks(
    list(depths.values()), [f"{m}\n(n = {seeds[m]})" if m in seeds else m for m in depths]
  )
  ax.set_xlim(-0.5, len(depths) - 0.5)
  ax.set(title="tuned ZNorm - tuned Adam (95% interval)", ylabel="Δ test accuracy (pp)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.suptitle(
    f"CIFAR-10, {preset.epochs} epochs of {preset.train_split}: each method at its own learning "
    f"rate, chosen on {preset.validation_split}",
    fontsize=10,
  )
  fig.tight_layout()
  return save_figure(fig, out)


def plot_curves(records: Sequence[dict], preset, out: str | os.PathLike) -> Path:
  """Test accuracy after each epoch of both methods at their chosen rates, one panel per depth
  (grid and transfer models): the mean over the recorded final seeds, the seeds' range
  shaded."""
  models = (*preset.models, *preset.transfer_models)
  fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 4.2), squeeze=False)
  for ax, model in zip(axes[0], models, strict=True):
    for base, method in (tuned_methods(records, preset, model) or {}).items():
      curves = [
        (r["eval_epochs"], [100 * a for a in r["epoch_accuracies"]])
        for r in _runs(records, model, method)
        if r["seed"] in preset.final_seeds
      ]
      if not curves:
        continue
      epochs = curves[0][0]
      by_epoch = list(zip(*(acc for _, acc in curves), strict=True))
      color = COLORS.get(base, "C0")
      mean = [statistics.fmean(v) for v in by_epoch]
      ax.plot(epochs, mean, "-o", ms=3, color=color, label=f"{method} (n = {len(curves)})")
      ax.fill_between(
        epochs, [min(v) for v in by_epoch], [max(v) for v in by_epoch], color=color, alpha=0.2, lw=0
      )
    ax.set(title=model, xlabel="epoch", ylabel=f"test accuracy on {preset.eval_split} (%)")
    ax.grid(alpha=0.3)
    if ax.lines:
      ax.legend(fontsize=8, loc="lower right")
    else:
      ax.text(
        0.5,
        0.5,
        "no runs at the chosen rates yet",
        transform=ax.transAxes,
        ha="center",
        color="0.5",
      )
  fig.suptitle(
    f"CIFAR-10, {preset.epochs} epochs of {preset.train_split}: each method at its chosen rate "
    "(mean over seeds, range shaded)",
    fontsize=10,
  )
  fig.tight_layout()
  return save_figure(fig, out)


def write_report(
  records: Sequence[dict],
  preset,
  results_dir: str | os.PathLike,
  reproduction: Sequence[dict] = (),
) -> list[Path]:
  """Writes ``{results_name}.md``, ``.png`` (the grid, the gain) and ``_curves.png`` (the
  learning curves) into ``results_dir``, each atomically."""
  results_dir = Path(results_dir)
  name = results_dir / preset.results_name
  md = write_atomic(f"{name}.md", render_markdown(records, preset, reproduction))
  png = write_atomic(f"{name}.png", lambda tmp: plot(records, preset, tmp))
  curves = write_atomic(f"{name}_curves.png", lambda tmp: plot_curves(records, preset, tmp))
  return [md, png, curves]
