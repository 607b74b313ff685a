"""The paper study's statistics, report and figure: pure functions of the run records.

`write_report` rebuilds ``paper_study.md`` (the preset, one row per model and method with mean
± std over seeds of the final and best test accuracy and the wall time, the differences to
``adam`` paired by seed, the runs still missing) and ``paper_study.png`` (test accuracy against
epoch, one panel per model) from the records that `experiments.paper_study` appends to
``paper_study.jsonl``.
"""

from __future__ import annotations

import math
import os
import re
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from scipy import stats  # noqa: E402

from trainer.files import markdown_table, write_atomic  # noqa: E402
from trainer.workdir import RENAMED_TRANSFORMS  # noqa: E402

METHODS = ("adam", "centralize", "clip_by_global_norm", "znorm")
# A method with its own learning rate, e.g. ``adam_lr2e-3``: the control for "ZNorm acts like a
# larger learning rate".
_LR_VARIANT = re.compile(r"^(?P<base>[a-z][a-z_]*)_lr(?P<lr>[0-9][0-9.]*(e-?[0-9]+)?)$")
RESULTS_NAME = "paper_study"
# The fields that identify a run in the jsonl (a recorded one is skipped).
KEY_FIELDS = ("budget", "model", "method", "seed", "epochs", "train_split")
COLORS = {
  "adam": "0.25",
  "centralize": "tab:blue",
  "clip_by_global_norm": "tab:orange",
  "znorm": "tab:red",
}
# Study methods of records written before the methods took the library's function names.
RENAMED_METHODS = {"clip": "clip_by_global_norm"}


def migrate(records: Sequence[dict]) -> tuple[list[dict], list[str]]:
  """``records`` with old method and transform names read as the new ones, and one line per
  renamed name saying so (``renamed_from`` keeps the recorded method)."""
  out, renamed = [], {}
  for r in records:
    base, lr = parse_method(r["method"], known_only=False)
    if base in RENAMED_METHODS:
      new = RENAMED_METHODS[base] + r["method"][len(base) :]
      renamed[r["method"]] = new
      r = {**r, "method": new, "renamed_from": r["method"]}
    transform = r.get("config", {}).get("grad_transform")
    if transform in RENAMED_TRANSFORMS:
      r = {**r, "config": {**r["config"], "grad_transform": RENAMED_TRANSFORMS[transform]}}
    out.append(r)
  notes = [
    f"method {old!r} is now called {new!r}; its records are read as such"
    for old, new in renamed.items()
  ]
  return out, notes


def parse_method(method: str, known_only: bool = True) -> tuple[str, float | None]:
  """``(base method, learning rate or None)`` of a study method name such as ``adam_lr2e-3``;
  ``known_only``: refuse a base that is not one of `METHODS`."""
  match = _LR_VARIANT.match(method)
  base, lr = (match["base"], float(match["lr"])) if match else (method, None)
  if (known_only and base not in METHODS) or lr == 0:
    raise ValueError(
      f"unknown method {method!r}; valid: {', '.join(METHODS)}, each optionally with its own "
      "learning rate as in adam_lr2e-3"
    )
  return base, lr


def save_figure(fig, out: str | os.PathLike, dpi: int = 120) -> Path:
  """Writes ``fig`` to ``out`` (creating its folder), closes it and returns the path."""
  out = Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out, dpi=dpi)
  plt.close(fig)
  return out


def run_key(record: dict) -> tuple:
  """The fields that identify a run (`KEY_FIELDS`)."""
  return tuple(record.get(f) for f in KEY_FIELDS)


def planned_run(record: dict) -> tuple[str, str, int]:
  """``(model, method, seed)``: how a study's plan names a run of its preset."""
  return record["model"], record["method"], record["seed"]


def preset_records(records: Iterable[dict], preset) -> list[dict]:
  """The records of ``preset`` (budget, epochs and splits); for each run key the last one."""
  by_key = {}
  for r in records:
    if (r.get("budget"), r.get("epochs"), r.get("train_split"), r.get("eval_split")) == (
      preset.name,
      preset.epochs,
      preset.train_split,
      preset.eval_split,
    ):
      by_key[run_key(r)] = r
  return list(by_key.values())


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (ddof=1; nan for fewer than 2 values)."""
  values = list(values)
  if not values:
    return math.nan, math.nan
  return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def fmt(mean: float, std: float, scale: float = 100.0, digits: int = 2, sign: bool = False) -> str:
  if math.isnan(mean):
    return "-"
  s = f"{scale * mean:+.{digits}f}" if sign else f"{scale * mean:.{digits}f}"
  return s if math.isnan(std) else f"{s} ± {scale * std:.{digits}f}"


def t_critical(dof: int, level: float = 0.95) -> float:
  """Two-sided critical value of Student's t."""
  return float(stats.t.ppf(0.5 + level / 2, dof))


def endpoint(record: dict, field: str) -> float:
  """A run's value of ``field``: a recorded number, or ``mean_epoch_accuracy`` (the mean of the
  per-epoch test accuracies: the area under the learning curve, the "acceleration" endpoint)."""
  if field == "mean_epoch_accuracy":
    return statistics.fmean(record["epoch_accuracies"])
  return record[field]


def paired_difference(
  records: Sequence[dict], model: str, method: str, baseline: str, field: str = "final_accuracy"
) -> dict | None:
  """``method - baseline`` of ``field`` (see `endpoint`) over the seeds both have.

  Runs of the same seed share the initialization, the data order and the augmentation, so the
  pairing removes most of the seed-to-seed variation.

  Returns:
    None without common seeds, else ``n``, ``mean``, ``std`` (ddof=1), ``ci`` (half-width of
    the 95% t interval of the mean), ``t`` and two-sided ``p`` of the paired t-test, and
    ``beyond_noise`` (p < 0.05, uncorrected).
  """
  a = {
    r["seed"]: endpoint(r, field) for r in records if r["model"] == model and r["method"] == method
  }
  b = {
    r["seed"]: endpoint(r, field)
    for r in records
    if r["model"] == model and r["method"] == baseline
  }
  seeds = sorted(set(a) & set(b))
  if not seeds:
    return None
  d = [a[s] - b[s] for s in seeds]
  mean, std = mean_std(d)
  n = len(d)
  t = ci = p = math.nan
  if n > 1:
    ci = t_critical(n - 1) * std / math.sqrt(n)
    if std > 0:
      t = mean / (std / math.sqrt(n))
    else:  # identical differences: no noise at all
      t = 0.0 if mean == 0 else math.copysign(math.inf, mean)
    p = float(2 * stats.t.sf(abs(t), n - 1))
  return {"n": n, "mean": mean, "std": std, "ci": ci, "t": t, "p": p, "beyond_noise": p < 0.05}


def interval(d: dict) -> str:
  """A `paired_difference` in percentage points as ``mean [low, high]`` (its 95% interval)."""
  if math.isnan(d["ci"]):
    return fmt(d["mean"], math.nan, sign=True)
  lo, hi = d["mean"] - d["ci"], d["mean"] + d["ci"]
  return f"{100 * d['mean']:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]"


def p_cell(p: float) -> str:
  """A p-value for a table: three decimals, or ``n/a`` where one seed gives no test."""
  return "n/a" if math.isnan(p) else f"{p:.3f}"


def endpoint_cells(final: dict, per_epoch: dict) -> tuple[str, ...]:
  """The table cells of one comparison on both endpoints: Δ [95% interval], p, p Holm each."""
  return tuple(
    cell for d in (final, per_epoch) for cell in (interval(d), p_cell(d["p"]), p_cell(d["p_holm"]))
  )


ENDPOINT_COLUMNS = ("Δ final (pp)", "p", "p Holm", "Δ mean per-epoch (pp)", "p", "p Holm")


def verdict(d: dict, p_key: str = "p_holm") -> str:
  """``supported`` / ``contradicted`` (p < 0.05, by the sign of the mean) / ``cannot decide``."""
  p = d.get(p_key, d["p"])
  if math.isnan(p):
    return "cannot decide (one seed)"
  if p < 0.05:
    return "supported" if d["mean"] > 0 else "contradicted"
  return "cannot decide"


def holm(p_values: Sequence[float]) -> list[float]:
  """Holm's step-down adjustment of ``p_values`` (family-wise error control); nan stays nan and
  does not count as a test."""
  order = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
  adjusted, running = [math.nan] * len(p_values), 0.0
  for rank, (p, i) in enumerate(order):
    running = max(running, min(1.0, (len(order) - rank) * p))
    adjusted[i] = running
  return adjusted


def _ordered(values: Iterable[str], order: Sequence[str]) -> list[str]:
  values = set(values)
  return [v for v in order if v in values] + sorted(values - set(order))


def _method_description(method: str, cfg: dict) -> str:
  transform = cfg.get("grad_transform", "?")
  kwargs = cfg.get("grad_transform_kwargs") or {}
  max_norm = kwargs.get("max_norm") or cfg.get("clip_norm") or 1.0
  eps = kwargs.get("eps") or cfg.get("znorm_eps") or 1e-8
  params = {"kernels": "kernels (ndim >= 2)", "all": "all parameters"}.get(
    cfg.get("grad_transform_params"), cfg.get("grad_transform_params")
  )
  what = {
    "none": "no gradient transform",
    "centralize": f"gradient centralization on {params}",
    "clip_by_global_norm": f"clipping by global norm {max_norm:g} over {params}",
    "clip_by_layer_norm": f"per-parameter norm clipping at {max_norm:g} on {params}",
    "znorm": f"ZNorm (g - mean) / (std + {eps:g}) on {params}",
  }.get(transform, f"grad_transform={transform} on {params}")
  return f"`{method}`: {what}, then {cfg.get('optimizer', 'adam')}"


def render_markdown(
  records: Sequence[dict],
  preset,
  methods: Sequence[str] = METHODS,
  seeds: Sequence[int] | None = None,
) -> str:
  """The markdown report of ``preset``'s records: preset, table, paired differences, missing."""
  all_records = list(records)
  records = preset_records(all_records, preset)
  seeds = tuple(preset.seeds if seeds is None else seeds)
  models = _ordered([*preset.models, *(r["model"] for r in records)], preset.models)
  methods = _ordered([*methods, *(r["method"] for r in records)], METHODS)
  lines = [
    *_preamble(records, preset, models, methods, seeds),
    *_summary_table(records, models, methods),
    *_pairwise_tables(records, models, methods),
    *_reading(records, models, methods),
    *_missing(records, models, methods, seeds),
  ]
  others = len(all_records) - len(records)
  if others:
    lines += ["", f"({others} record(s) of other budgets or presets in the jsonl are not shown.)"]
  return "\n".join(lines) + "\n"


def _preamble(records, preset, models, methods, seeds) -> list[str]:
  warmup = next((r["config"].get("warmup_fraction") for r in records if "config" in r), None)
  steps = next((r["steps"] for r in records), None)
  lines = [
    f"# Method comparison on CIFAR-10: budget `{preset.name}`",
    "",
    "Generated by `experiments/paper_study.py` from `paper_study.jsonl`; do not edit by hand.",
    "",
    "Preset: "
    + ", ".join(models)
    + f"; {preset.epochs} epochs of `{preset.train_split}`"
    + (f" ({steps} steps)" if steps else "")
    + f" at batch {preset.batch_size}; test accuracy on `{preset.eval_split}` after each epoch; "
    f"Adam lr {preset.learning_rate:g} (betas 0.9/0.999), {preset.schedule} decay"
    + (f" after a {100 * warmup:g}% linear warmup" if warmup else "")
    + "; pad-4 random crop + horizontal flip; "
    f"seeds {', '.join(map(str, seeds))}" + (f". Note: {preset.note}." if preset.note else "."),
    "",
    "Methods (from `configs/paper_*.py`):",
    "",
  ]
  for method in methods:
    cfg = next((r["config"] for r in records if r["method"] == method and "config" in r), None)
    lines.append(f"- {_method_description(method, cfg)}" if cfg else f"- `{method}`: no runs yet")
  return lines


def _delta_cell(d: dict | None) -> str:
  """A paired difference as ``+m ± s (t=..)``, bold beyond seed noise; ``-`` for none."""
  if d is None:
    return "-"
  cell = fmt(d["mean"], d["std"], sign=True)
  if d["n"] > 1:
    cell += f" (t={d['t']:.1f})"
  return f"**{cell}**" if d["beyond_noise"] else cell


def _summary_table(records, models, methods) -> list[str]:
  devices = sorted({r.get("device", "?") for r in records})
  lines = [
    "",
    "Accuracies in %, mean ± std (sample std, ddof=1) over the seeds in column n; *best* is the "
    "best epoch of each run. Δ final vs adam: the difference to `adam` paired by seed (same "
    "initialization, data order and augmentation), mean ± std, with the paired t statistic; "
    "**bold** where it exceeds seed noise (two-sided paired t-test, 5%). Wall time: the whole "
    "run (data loading, compilation, training, evaluations, checkpoints) on "
    + (", ".join(devices) if devices else "-")
    + ".",
    "",
  ]
  rows = []
  for model in models:
    for method in methods:
      runs = [r for r in records if r["model"] == model and r["method"] == method]
      if not runs and method in METHODS:
        rows.append((model, method, 0, "-", "-", "-", "-"))
      if not runs:  # a learning-rate variant is run at some depths only
        continue
      final = mean_std([r["final_accuracy"] for r in runs])
      best = mean_std([r["best_accuracy"] for r in runs])
      timed = [r["wall_time_s"] / 60 for r in runs if not r.get("resumed")]
      wall = fmt(*mean_std(timed), scale=1.0, digits=1) if timed else "-"
      if len(timed) < len(runs):
        wall += f" ({len(runs) - len(timed)} resumed run(s) not counted)"
      delta = (
        "-" if method == "adam" else _delta_cell(paired_difference(records, model, method, "adam"))
      )
      rows.append((model, method, len(runs), fmt(*final), fmt(*best), delta, wall))
  header = ("model", "method", "n", "final test acc (%)", "best test acc (%)")
  header += ("Δ final vs adam (pp)", "wall time (min)")
  return lines + markdown_table(header, rows, (False, False, *[True] * 5))


def _pairwise_tables(records, models, methods) -> list[str]:
  lines = [
    "",
    "## Paired differences between all methods (final test accuracy)",
    "",
    "Δ = row method - column method in percentage points, mean ± std over the common seeds "
    "(paired t); **bold**: beyond seed noise at the 5% level. Each test is uncorrected: "
    "with 6 comparisons per model, the chance of at least one spurious bold entry in a table "
    "is up to about 26%.",
  ]
  for model in models:
    present = [m for m in methods if any(r["model"] == model and r["method"] == m for r in records)]
    if len(present) < 2:
      continue
    rows = [
      (
        a,
        *(
          _delta_cell(paired_difference(records, model, a, b)).replace("t=", "") if j < i else ""
          for j, b in enumerate(present[:-1])
        ),
      )
      for i, a in enumerate(present[1:], start=1)
    ]
    lines += ["", f"{model}:", ""]
    lines += markdown_table(("", *present[:-1]), rows, (False, *[True] * (len(present) - 1)))
  return lines


def _reading(records, models, methods) -> list[str]:
  reading = []
  for model in models:
    parts = []
    for method in methods:
      d = None if method == "adam" else paired_difference(records, model, method, "adam")
      if d is None or d["n"] < 2:
        continue
      verdict = "beyond seed noise" if d["beyond_noise"] else "within seed noise"
      parts.append(
        f"{method} {fmt(d['mean'], math.nan, sign=True)} pp vs adam ({verdict}, n={d['n']})"
      )
    spread = [
      mean_std([r["final_accuracy"] for r in records if r["model"] == model and r["method"] == m])[
        1
      ]
      for m in methods
    ]
    spread = [s for s in spread if not math.isnan(s)]
    if parts:
      within = (
        f" Seed-to-seed std of the final accuracy within a method: {100 * min(spread):.2f} "
        f"to {100 * max(spread):.2f} pp."
        if spread
        else ""
      )
      reading.append(f"- {model}: " + "; ".join(parts) + "." + within)
  return [
    "",
    "## Reading (automatic)",
    "",
    *(reading or ["Not enough seeds yet for paired comparisons."]),
  ]


def _missing(records, models, methods, seeds) -> list[str]:
  missing, n = [], 0
  for model in models:
    for method in methods:
      have = {r["seed"] for r in records if r["model"] == model and r["method"] == method}
      lack = [s for s in seeds if s not in have]
      if lack:
        n += len(lack)
        missing.append(
          f"{model} {method} seed{'s' if len(lack) > 1 else ''} " + ",".join(map(str, lack))
        )
  if not missing:
    return ["", "## Missing runs", "", "None: every planned run is recorded."]
  return [
    "",
    "## Missing runs",
    "",
    f"{n} of {len(models) * len(methods) * len(seeds)} planned runs are not recorded yet: "
    + "; ".join(missing)
    + ". Run the same command again to add them (recorded runs are skipped).",
  ]


def epoch_bands(runs: Sequence[dict]) -> tuple[list[float], list[float], list[float], list[float]]:
  """``(epochs, mean, min, max)`` of the per-epoch test accuracies over ``runs``."""
  by_epoch: dict[float, list[float]] = {}
  for r in runs:
    for e, a in zip(r["eval_epochs"], r["epoch_accuracies"], strict=True):
      by_epoch.setdefault(round(e, 6), []).append(a)
  xs = sorted(by_epoch)
  return (
    xs,
    [statistics.fmean(by_epoch[x]) for x in xs],
    [min(by_epoch[x]) for x in xs],
    [max(by_epoch[x]) for x in xs],
  )


def plot_study(
  records: Sequence[dict],
  preset,
  out: str | os.PathLike,
  methods: Sequence[str] = METHODS,
) -> Path:
  """Test accuracy (%) against epoch, one panel per model: the mean over seeds of each method,
  the seed range (min to max) shaded."""
  records = preset_records(records, preset)
  models = _ordered([*preset.models, *(r["model"] for r in records)], preset.models)
  methods = _ordered([*methods, *(r["method"] for r in records)], METHODS)
  fig, axes = plt.subplots(1, len(models), figsize=(6.2 * len(models), 4.6), squeeze=False)
  for ax, model in zip(axes[0], models, strict=True):
    seeds = set()
    for i, method in enumerate(methods):
      runs = [r for r in records if r["model"] == model and r["method"] == method]
      if not runs:
        continue
      seeds |= {r["seed"] for r in runs}
      xs, mean, lo, hi = epoch_bands(runs)
      color = COLORS.get(method, f"C{i}")
      final = mean_std([r["final_accuracy"] for r in runs])
      ax.plot(
        xs,
        [100 * v for v in mean],
        "-o",
        ms=3,
        lw=1.8,
        color=color,
        label=f"{method} (n={len(runs)}, final {fmt(*final)}%)",
      )
      if len(runs) > 1:
        ax.fill_between(
          xs, [100 * v for v in lo], [100 * v for v in hi], color=color, alpha=0.18, lw=0
        )
    ax.set_title(
      f"{model}" + (f" (seeds {', '.join(map(str, sorted(seeds)))})" if seeds else " (no runs yet)")
    )
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"test accuracy (%) on {preset.eval_split}")
    ax.grid(alpha=0.3)
    if seeds:
      ax.legend(fontsize=8, loc="lower right")
  fig.suptitle(
    f"CIFAR-10, budget {preset.name}: {preset.epochs} epochs of {preset.train_split}, batch "
    f"{preset.batch_size}, Adam lr {preset.learning_rate:g} {preset.schedule}; "
    "mean over seeds, min-max shaded",
    fontsize=10,
  )
  fig.tight_layout()
  return save_figure(fig, out)


def write_report(
  records: Sequence[dict],
  preset,
  results_dir: str | os.PathLike,
  methods: Sequence[str] = METHODS,
  seeds: Sequence[int] | None = None,
) -> list[Path]:
  """Writes ``paper_study.md`` and ``paper_study.png`` (each atomically) into ``results_dir``."""
  results_dir = Path(results_dir)
  md = write_atomic(
    results_dir / f"{RESULTS_NAME}.md", render_markdown(records, preset, methods, seeds)
  )
  png = write_atomic(
    results_dir / f"{RESULTS_NAME}.png", lambda tmp: plot_study(records, preset, tmp, methods)
  )
  return [md, png]
