"""The method comparison of the paper (its Figure 3 and table): Adam, Adam + gradient
centralization, Adam + clipping and Adam + ZNorm on CIFAR-10, same model, schedule and budget,
over several seeds.

Usage (from the project root)::

  python benchmarks/paper_study.py --budget cpu --data_dir ../shared/data/tfds
  python benchmarks/paper_study.py --budget gpu            # the paper-scale preset
  python benchmarks/paper_study.py --budget cpu --report_only

Each run trains with ``train.train_and_evaluate`` in its own workdir
``{workdir_root}/{budget}/{model}/{method}/seed{seed}``, from the config of
``configs/paper_{method}.py`` (``adam`` = ``paper_adam``, no transform) with the preset's model,
epochs, splits, batch, learning rate and schedule, and one evaluation per epoch. An interrupted
run resumes from its last checkpoint (one per epoch) when the study is started again.

A completed run appends one line to ``{results}/paper_study.jsonl``; runs already recorded there
(same budget, model, method, seed, epochs and train split) are skipped, so the study can be
completed over several sittings (``--max_runs N`` stops after N new runs). Runs go seed group by
seed group (all methods of seed 0 of the first model, then seed 1, ...), so a partial study has
complete seed groups. After every run, and with ``--report_only``, the report is rebuilt from the
jsonl records alone:

* ``paper_study.md``: the preset, then one row per model and method with mean +- std over seeds
  of the final and best test accuracy and the wall time, the differences to ``adam`` paired by
  seed, and a note of the runs still missing;
* ``paper_study.png``: test accuracy against epoch, one panel per model, the mean over seeds of
  each method with the seed range (min to max) shaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "examples"):  # `train`, `configs` and `plot_runs` (not packages)
  if str(_path) not in sys.path:
    sys.path.insert(0, str(_path))

from plot_runs import curve, load_metrics, save_figure  # noqa: E402

METHODS = ("adam", "centralize", "clip", "znorm")
METHOD_CONFIGS = {m: f"configs.paper_{m}" for m in METHODS}
RESULTS_NAME = "paper_study"
# One line per run in the jsonl; the fields that identify a run (a recorded one is skipped).
KEY_FIELDS = ("budget", "model", "method", "seed", "epochs", "train_split")
# Config fields that must agree with an existing workdir's config.json before resuming in it.
RESUME_FIELDS = (
  "model",
  "model_widths",
  "num_epochs",
  "train_split",
  "eval_split",
  "batch_size",
  "learning_rate",
  "schedule",
  "grad_transform",
  "grad_transform_params",
  "seed",
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
  "grad_transform_params",
  "clip_norm",
  "znorm_eps",
  "model_widths",
)
COLORS = {"adam": "0.25", "centralize": "tab:blue", "clip": "tab:orange", "znorm": "tab:red"}


@dataclasses.dataclass(frozen=True)
class Preset:
  """What every run of a budget shares; the method only chooses the gradient transform."""

  name: str
  models: tuple[str, ...]
  epochs: int
  train_split: str
  eval_split: str
  batch_size: int = 128
  learning_rate: float = 1e-3
  schedule: str = "cosine"
  seeds: tuple[int, ...] = (0, 1, 2)
  overrides: tuple[tuple[str, object], ...] = ()  # further config fields
  note: str = ""


PRESETS = {
  # The paper's setting as far as it is known (its exact hyperparameters are not published):
  # Adam lr 1e-3 (betas 0.9/0.999), batch 128, 200 epochs, cosine decay, full CIFAR-10.
  "gpu": Preset(
    name="gpu",
    models=("resnet56",),
    epochs=200,
    train_split="train",
    eval_split="test",
    note="our choice in the paper's spirit (its exact hyperparameters are not available)",
  ),
  # Both depths (the paper's point is that the skip/branch gradient overlap grows with depth)
  # in at most ~10 min per run on 2 CPU cores: 4 epochs of 4096 training images (32 steps per
  # epoch, 128 steps), evaluated on 2000 test images after each epoch.
  "cpu": Preset(
    name="cpu",
    models=("resnet20", "resnet56"),
    epochs=4,
    train_split="train[:4096]",
    eval_split="test[:2000]",
    note="a few epochs on a train subset: early training only, not the paper's final accuracies",
  ),
  # A smoke test of the whole pipeline in seconds (narrow ResNet-20, tiny splits).
  "test": Preset(
    name="test",
    models=("resnet20",),
    epochs=2,
    train_split="train[:32]",
    eval_split="test[:32]",
    batch_size=16,
    seeds=(0,),
    overrides=(("model_widths", (4, 8, 16)), ("log_every_steps", 1)),
    note="smoke test only",
  ),
}


# ------------------------------------------------------------------------------------------------
# Configs and runs
# ------------------------------------------------------------------------------------------------


def make_config(method: str, model: str, seed: int, preset: Preset, data_dir: str | None = None):
  """The ``configs/paper_{method}.py`` config with the preset's model, budget and seed."""
  if method not in METHOD_CONFIGS:
    raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
  config = importlib.import_module(METHOD_CONFIGS[method]).get_config()
  config.model = model
  config.seed = seed
  config.data_dir = data_dir
  config.train_split = preset.train_split
  config.eval_split = preset.eval_split
  config.batch_size = preset.batch_size
  config.learning_rate = preset.learning_rate
  config.schedule = preset.schedule
  config.num_epochs = preset.epochs
  config.num_train_steps = -1  # num_epochs * steps per epoch
  config.eval_every_steps = -1  # once per epoch: the per-epoch accuracies of the study
  config.checkpoint_every_steps = -1  # once per epoch: an interrupted run resumes from there
  for field, value in preset.overrides:
    config[field] = value
  return config


def report_seeds(preset: Preset, seeds: Sequence[int] | None) -> tuple[int, ...]:
  """The seeds a report expects: the preset's and any others asked for."""
  return tuple(sorted({*preset.seeds, *(seeds or ())}))


def run_key(record: dict) -> tuple:
  return tuple(record.get(f) for f in KEY_FIELDS)


def planned_runs(
  models: Sequence[str], methods: Sequence[str], seeds: Sequence[int]
) -> list[tuple[str, int, str]]:
  """``(model, seed, method)`` in run order: model by model, seed group by seed group."""
  return [(model, seed, method) for model in models for seed in seeds for method in methods]


def workdir_for(root: str | os.PathLike, budget: str, model: str, method: str, seed: int) -> Path:
  return Path(root) / budget / model / method / f"seed{seed}"


def read_records(path: str | os.PathLike) -> list[dict]:
  """The run records of a ``paper_study.jsonl`` (none if it does not exist).

  Blank lines and lines that are not JSON objects (a write cut by a kill) are skipped.
  """
  path = Path(path)
  if not path.is_file():
    return []
  records = []
  for line in path.read_text().splitlines():
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      print(f"paper_study: skipping a malformed line of {path}", file=sys.stderr)
      continue
    if isinstance(record, dict):
      records.append(record)
  return records


def append_record(path: str | os.PathLike, record: dict) -> None:
  """Appends one JSON line with a single write (O_APPEND), flushed and fsynced."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  data = (json.dumps(record, sort_keys=False) + "\n").encode()
  with open(path, "ab") as f:
    if f.tell() > 0:  # a previous write cut by a kill must not swallow this line
      with open(path, "rb") as g:
        g.seek(-1, os.SEEK_END)
        if g.read(1) != b"\n":
          data = b"\n" + data
    f.write(data)
    f.flush()
    os.fsync(f.fileno())


def _check_workdir(workdir: Path, config) -> None:
  """Refuses to resume in a workdir whose run had another config (e.g. another preset)."""
  path = workdir / "config.json"
  if not path.is_file():
    return
  old = json.loads(path.read_text())
  new = json.loads(config.to_json())
  diff = [f for f in RESUME_FIELDS if f in old and old.get(f) != new.get(f)]
  if diff:
    raise SystemExit(
      f"paper_study: error: {workdir} holds a run with other "
      + ", ".join(f"{f}={old[f]!r} (now {new[f]!r})" for f in diff)
      + "; delete that workdir or choose another --workdir_root"
    )


def _has_checkpoint(workdir: Path) -> bool:
  ckpt = workdir / "checkpoints"
  return ckpt.is_dir() and any(d.isdigit() for d in os.listdir(ckpt))


def _device_description() -> str:
  import jax

  devices = jax.local_devices()
  kind = devices[0].device_kind
  if devices[0].platform == "cpu":
    kind = f"cpu ({os.cpu_count()} cores)"
  return f"{len(devices)} x {kind}"


def run_one(
  preset: Preset,
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
  if trainer is None:
    import train

    trainer = train.train_and_evaluate
  workdir = workdir_for(workdir_root, preset.name, model, method, seed)
  config = make_config(method, model, seed, preset, data_dir)
  _check_workdir(workdir, config)
  resumed = _has_checkpoint(workdir)
  start = time.time()
  trainer(config, str(workdir))
  wall = time.time() - start

  # Evaluation lines only (train.py may also log other kinds of lines, e.g. diagnostics).
  rows = [r for r in load_metrics(workdir) if "eval_accuracy" in r]
  epochs, accuracies = curve(rows, "epoch", "eval_accuracy")
  _, train_losses = curve(rows, "epoch", "train_loss")
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
    "config": {f: config[f] for f in RECORDED_CONFIG if f in config},
    "workdir": str(workdir),
    "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
  }
  return json.loads(json.dumps(record))  # as read back from the jsonl (lists, not tuples)


def run_study(
  preset: Preset,
  *,
  models: Sequence[str] | None = None,
  methods: Sequence[str] = METHODS,
  seeds: Sequence[int] | None = None,
  data_dir: str | None = None,
  workdir_root: str | os.PathLike = ROOT / "runs" / RESULTS_NAME,
  results_dir: str | os.PathLike = ROOT / "benchmarks" / "results",
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


# ------------------------------------------------------------------------------------------------
# The report: pure functions of the records
# ------------------------------------------------------------------------------------------------


def preset_records(records: Iterable[dict], preset: Preset) -> list[dict]:
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
  from scipy import stats

  return float(stats.t.ppf(0.5 + level / 2, dof))


def paired_difference(
  records: Sequence[dict], model: str, method: str, baseline: str, field: str = "final_accuracy"
) -> dict | None:
  """``method - baseline`` of ``field`` over the seeds both have: n, mean, std, t, beyond noise.

  Runs of the same seed share the initialization, the data order and the augmentation, so the
  pairing removes most of the seed-to-seed variation; "beyond noise" is a two-sided paired t-test
  at the 5% level (no correction for the several comparisons).
  """
  a = {r["seed"]: r[field] for r in records if r["model"] == model and r["method"] == method}
  b = {r["seed"]: r[field] for r in records if r["model"] == model and r["method"] == baseline}
  seeds = sorted(set(a) & set(b))
  if not seeds:
    return None
  d = [a[s] - b[s] for s in seeds]
  mean, std = mean_std(d)
  n = len(d)
  t = math.nan
  if n > 1:
    if std > 0:
      t = mean / (std / math.sqrt(n))
    else:  # identical differences: no noise at all
      t = 0.0 if mean == 0 else math.copysign(math.inf, mean)
  beyond = n > 1 and abs(t) > t_critical(n - 1)
  return {"n": n, "mean": mean, "std": std, "t": t, "beyond_noise": beyond}


def _ordered(values: Iterable[str], order: Sequence[str]) -> list[str]:
  values = set(values)
  return [v for v in order if v in values] + sorted(values - set(order))


def _method_description(method: str, cfg: dict) -> str:
  transform = cfg.get("grad_transform", "?")
  params = {"kernels": "kernels (ndim >= 2)", "all": "all parameters"}.get(
    cfg.get("grad_transform_params"), cfg.get("grad_transform_params")
  )
  if transform == "none":
    what = "no gradient transform"
  elif transform == "centralize":
    what = f"gradient centralization on {params}"
  elif transform == "clip":
    what = f"clipping by global norm {cfg.get('clip_norm')} over {params}"
  elif transform == "clip_layer":
    what = f"per-parameter norm clipping at {cfg.get('clip_norm')} on {params}"
  elif transform == "znorm":
    what = f"ZNorm (g - mean) / (std + {cfg.get('znorm_eps'):g}) on {params}"
  else:
    what = f"grad_transform={transform} on {params}"
  return f"`{method}`: {what}, then {cfg.get('optimizer', 'adam')}"


def render_markdown(
  records: Sequence[dict],
  preset: Preset,
  methods: Sequence[str] = METHODS,
  seeds: Sequence[int] | None = None,
) -> str:
  """The markdown report of ``preset``'s records: preset, table, paired differences, missing."""
  all_records = list(records)
  records = preset_records(all_records, preset)
  seeds = tuple(preset.seeds if seeds is None else seeds)
  models = _ordered([*preset.models, *(r["model"] for r in records)], preset.models)
  methods = _ordered([*methods, *(r["method"] for r in records)], METHODS)
  warmup = next((r["config"].get("warmup_fraction") for r in records if "config" in r), None)
  steps = next((r["steps"] for r in records), None)
  devices = sorted({r.get("device", "?") for r in records})

  lines = [
    f"# Method comparison on CIFAR-10: budget `{preset.name}`",
    "",
    "Generated by `benchmarks/paper_study.py` from `paper_study.jsonl`; do not edit by hand.",
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
  lines += [
    "",
    "Accuracies in %, mean ± std (sample std, ddof=1) over the seeds in column n; *best* is the "
    "best epoch of each run. Δ final vs adam: the difference to `adam` paired by seed (same "
    "initialization, data order and augmentation), mean ± std, with the paired t statistic; "
    "**bold** where it exceeds seed noise (two-sided paired t-test, 5%). Wall time: the whole "
    "run (data loading, compilation, training, evaluations, checkpoints) on "
    + (", ".join(devices) if devices else "-")
    + ".",
    "",
    "| model | method | n | final test acc (%) | best test acc (%) | Δ final vs adam (pp) "
    "| wall time (min) |",
    "|---|---|---:|---:|---:|---:|---:|",
  ]
  for model in models:
    for method in methods:
      runs = [r for r in records if r["model"] == model and r["method"] == method]
      if not runs:
        lines.append(f"| {model} | {method} | 0 | - | - | - | - |")
        continue
      final = mean_std([r["final_accuracy"] for r in runs])
      best = mean_std([r["best_accuracy"] for r in runs])
      timed = [r["wall_time_s"] / 60 for r in runs if not r.get("resumed")]
      wall = fmt(*mean_std(timed), scale=1.0, digits=1) if timed else "-"
      if len(timed) < len(runs):
        wall += f" ({len(runs) - len(timed)} resumed run(s) not counted)"
      delta = "-"
      if method != "adam":
        d = paired_difference(records, model, method, "adam")
        if d is not None:
          delta = fmt(d["mean"], d["std"], sign=True)
          if d["n"] > 1:
            delta += f" (t={d['t']:.1f})"
          if d["beyond_noise"]:
            delta = f"**{delta}**"
      lines.append(
        f"| {model} | {method} | {len(runs)} | {fmt(*final)} | {fmt(*best)} | {delta} | {wall} |"
      )

  lines += ["", "## Paired differences between all methods (final test accuracy)", ""]
  lines.append(
    "Δ = row method - column method in percentage points, mean ± std over the common seeds "
    "(paired t); **bold**: beyond seed noise at the 5% level. Each test is uncorrected: "
    "with 6 comparisons per model, the chance of at least one spurious bold entry in a table "
    "is up to about 26%."
  )
  for model in models:
    present = [m for m in methods if any(r["model"] == model and r["method"] == m for r in records)]
    if len(present) < 2:
      continue
    lines += [
      "",
      f"{model}:",
      "",
      "| | " + " | ".join(present[:-1]) + " |",
      "|---|" + "---:|" * (len(present) - 1),
    ]
    for i, a in enumerate(present[1:], start=1):
      cells = []
      for j, b in enumerate(present[:-1]):
        if j >= i:
          cells.append("")
          continue
        d = paired_difference(records, model, a, b)
        if d is None:
          cells.append("-")
          continue
        cell = fmt(d["mean"], d["std"], sign=True)
        if d["n"] > 1:
          cell += f" ({d['t']:.1f})"
        cells.append(f"**{cell}**" if d["beyond_noise"] else cell)
      lines.append(f"| {a} | " + " | ".join(cells) + " |")

  lines += ["", "## Reading (automatic)", ""]
  reading = []
  for model in models:
    parts = []
    for method in methods:
      if method == "adam":
        continue
      d = paired_difference(records, model, method, "adam")
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
      reading.append(
        f"- {model}: "
        + "; ".join(parts)
        + "."
        + (
          f" Seed-to-seed std of the final accuracy within a method: {100 * min(spread):.2f} "
          f"to {100 * max(spread):.2f} pp."
          if spread
          else ""
        )
      )
  lines += reading or ["Not enough seeds yet for paired comparisons."]

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
  lines += ["", "## Missing runs", ""]
  if missing:
    lines.append(
      f"{n} of {len(models) * len(methods) * len(seeds)} planned runs are not "
      "recorded yet: " + "; ".join(missing) + ". Run the same command again to add "
      "them (recorded runs are skipped)."
    )
  else:
    lines.append("None: every planned run is recorded.")
  others = len(all_records) - len(records)
  if others:
    lines.append("")
    lines.append(f"({others} record(s) of other budgets or presets in the jsonl are not shown.)")
  return "\n".join(lines) + "\n"


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
  preset: Preset,
  out: str | os.PathLike,
  methods: Sequence[str] = METHODS,
) -> Path:
  """Test accuracy (%) against epoch, one panel per model: the mean over seeds of each method,
  the seed range (min to max) shaded."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

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
  preset: Preset,
  results_dir: str | os.PathLike,
  methods: Sequence[str] = METHODS,
  seeds: Sequence[int] | None = None,
) -> list[Path]:
  """Writes ``paper_study.md`` and ``paper_study.png`` (each atomically) into ``results_dir``."""
  results_dir = Path(results_dir)
  results_dir.mkdir(parents=True, exist_ok=True)
  md = results_dir / f"{RESULTS_NAME}.md"
  tmp = md.with_suffix(".md.tmp")
  tmp.write_text(render_markdown(records, preset, methods, seeds))
  os.replace(tmp, md)
  png = results_dir / f"{RESULTS_NAME}.png"
  tmp_png = results_dir / f"{RESULTS_NAME}.tmp.png"
  plot_study(records, preset, tmp_png, methods)
  os.replace(tmp_png, png)
  return [md, png]


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------


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
    choices=sorted(PRESETS),
    required=True,
    help="preset: gpu (the paper's scale), cpu (both depths, minutes per run) "
    "or test (a smoke test)",
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
    default=str(ROOT / "benchmarks" / "results"),
    help="folder of paper_study.{jsonl,md,png}",
  )
  parser.add_argument(
    "--methods",
    type=_csv(),
    default=METHODS,
    help=f"comma-separated subset of {','.join(METHODS)} (default: all)",
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
  bad = [m for m in args.methods if m not in METHODS]
  if bad:
    parser.error(f"unknown method(s) {', '.join(bad)}; valid: {', '.join(METHODS)}")
  preset = PRESETS[args.budget]
  if args.report_only:
    records = read_records(Path(args.results) / f"{RESULTS_NAME}.jsonl")
    for path in write_report(records, preset, args.results, seeds=report_seeds(preset, args.seeds)):
      print(f"wrote {path}")
    return []

  from absl import logging

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
