"""Gradient overlap in a real ResNet, with and without ZNorm (issue 7).

Usage::

    python -m experiments.overlap_report --outdir DIR --data_dir D --steps N \\
        [--model resnet20 | --models resnet20,resnet56,resnet110] [--every K] \\
        [--train_split train[:5000]] [--eval_split test[:1000]] [--batch_size 128] [--seed 0]

Trains ``--model`` twice with ``trainer.loop.train_and_evaluate`` on CIFAR-10, Adam
(lr 1e-3, cosine), same seed and data order, once on the raw gradients
(``grad_transform=none``, workdir ``DIR/runs/none``) and once on ZNorm'd kernel
gradients (``grad_transform=znorm``, ``DIR/runs/znorm``), with
``diagnostics_every_steps=K``: at step 1 and every K steps train.py appends a
``{"kind": "diagnostics", ...}`` line to ``metrics.jsonl`` (see ``trainer/diagnostics.py``).
A workdir that already holds a finished run is only re-read (train.py resumes;
use a fresh ``--outdir`` after changing ``--steps`` or ``--every``);
``--plot_only`` re-plots existing runs without training.
From those lines it writes two PNGs to ``DIR``:

* ``gradient_scale.png``: per convolution/dense kernel in forward order (x), the
  L2 norm and the standard deviation of the raw (pmean'ed) gradient and of the
  update that leaves the gradient transform (for the ZNorm run: after ZNorm,
  std 1 by construction), at the first and the last logged step, log scale;
* ``overlap_split.png``: per residual block in forward order (x), the norms of
  the two parts of dL/d(block input), through the skip path and through the
  residual branch, and the cosine similarity of the two parts, for both runs at
  the first and last logged step.

With ``--models``, each model is reported as with ``--model`` (runs in ``RUNS_DIR/MODEL``,
PNGs in ``DIR/MODEL``), then ``overlap_depth.png`` and ``overlap_depth.md`` compare the models
at their last logged step: the growth of |dL/d(block input)| from the last block to the first,
the branch/skip norm ratio, the skip/branch cosine, and the spread across kernels of the raw
gradient's std and of the update's std.

It prints the paths it wrote and a few summary numbers.  The plotting functions
take lists of diagnostics records and are importable::

    from experiments.overlap_report import plot_gradient_scale, plot_overlap_split
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, NullFormatter, NullLocator

import configs
from experiments.study_report import plt, save_figure
from trainer.errors import TrainerError
from trainer.files import markdown_table, write_atomic
from trainer.loop import train_and_evaluate
from trainer.metrics import DIAGNOSTICS, read_metrics

RUNS = ("none", "znorm")  # grad_transform of each run (and its workdir name)
LABELS = {"none": "Adam", "znorm": "Adam + ZNorm"}
COLORS = {"none": "C0", "znorm": "C3"}
SCALE_PNG = "gradient_scale.png"
SPLIT_PNG = "overlap_split.png"


def load_diagnostics(workdir: str | Path) -> list[dict]:
  """The diagnostics records of a train.py workdir, by step (a step logged twice keeps its
  last record)."""
  by_step = {r["step"]: r for r in read_metrics(workdir, kind=DIAGNOSTICS)}
  return [by_step[s] for s in sorted(by_step)]


def kernel_paths(record: Mapping) -> list[str]:
  """The kernel parameters (convolutions and the dense head) of a record, in forward order."""
  return [p for p in record["layers"] if p.endswith("kernel")]


def short_name(path: str) -> str:
  """A tick label: 'stage2_block3/conv1/kernel' -> '2.3.conv1', 'stem_conv/kernel' -> 'stem'."""
  parts = path.split("/")
  if parts[-1] in ("kernel", "bias", "scale"):
    parts = parts[:-1]
  if parts[0].startswith("stage") and "_block" in parts[0]:
    stage, block = parts[0][len("stage") :].split("_block")
    return ".".join([stage, block, *parts[1:]])
  return {"stem_conv": "stem", "head": "head"}.get("/".join(parts), "/".join(parts))


def _curves(runs: Mapping[str, Sequence[dict]]) -> list[tuple[str, dict, dict]]:
  """(run name or "", record, line style) of what to draw: each run's last logged step in its
  colour, and its first step dashed; a first step whose raw gradients all runs share (same
  seed, same initialization: step 1) is drawn once, in grey, with run name ""."""
  firsts = [records[0] for records in runs.values()]
  shared = len(runs) > 1 and len({_raw_gradients(f) for f in firsts}) == 1
  curves = []
  if shared:
    curves.append(("", firsts[0], {"color": "0.55", "ls": "--"}))
  for name, records in runs.items():
    color = COLORS.get(name, "C2")
    if not shared and len(records) > 1:
      curves.append((name, records[0], {"color": color, "ls": "--"}))
    curves.append((name, records[-1], {"color": color, "ls": "-"}))
  return curves


def _raw_gradients(record: Mapping) -> str:
  """What a record says of the raw gradients (all but the update statistics), as a key."""
  layers = {
    p: {k: v for k, v in s.items() if k.startswith("grad_")} for p, s in record["layers"].items()
  }
  return json.dumps([record["step"], layers, record["blocks"]])


def _step_handles(runs: Mapping[str, Sequence[dict]]) -> list:
  curves = _curves(runs)
  first, last = curves[0][1]["step"], curves[-1][1]["step"]
  if curves[0][0] == "":
    return [Line2D([], [], color="0.55", ls="--", label=f"step {first} (all runs: same init)")]
  if first == last:
    return []
  return [
    Line2D([], [], color="0.3", ls="--", label=f"step {first}"),
    Line2D([], [], color="0.3", ls="-", label=f"step {last}"),
  ]


def _set_ticks(ax, names: Sequence[str]) -> None:
  ax.set_xticks(range(len(names)))
  ax.set_xticklabels(names, rotation=90, fontsize=7 if len(names) <= 40 else 5)
  ax.set_xlim(-0.5, len(names) - 0.5)
  ax.grid(alpha=0.3)


def _plain_log_ticks(ax) -> None:
  """Log-scale tick labels as plain numbers (0.3, 2) rather than 3x10^-1."""
  fmt = FuncFormatter(lambda v, _: f"{v:.3g}")
  ax.yaxis.set_major_formatter(fmt)
  ax.yaxis.set_minor_formatter(fmt)
  ax.tick_params(axis="y", which="minor", labelsize=7)


def _finish(fig, title: str | None) -> None:
  if title:
    fig.suptitle(title, fontsize=11)
  fig.tight_layout()


def plot_gradient_scale(
  runs: Mapping[str, Sequence[dict]], out: str | Path, title: str | None = None
) -> Path:
  """Per-kernel L2 norm of the raw gradient, and std of the raw gradient and of the update.

  The update is the gradient transform's output (the base optimizer's input); for
  grad_transform=none it is the raw gradient and is not drawn again.  The L2 norm of a ZNorm'd
  update is sqrt(size) by construction and is not drawn either.

  Args:
    runs: {grad_transform name ("none", "znorm", ...): its diagnostics records by step}.
    out: the PNG to write (parent folders are created).
    title: a title over the panels.
  """
  paths = kernel_paths(next(iter(runs.values()))[0])
  xs = range(len(paths))
  fig, axes = plt.subplots(1, 2, figsize=(14, 5.2), sharex=True)
  for _, record, style in _curves(runs):
    layers = [record["layers"][p] for p in paths]
    axes[0].plot(xs, [s["grad_norm"] for s in layers], marker="o", ms=3, lw=1.4, **style)
    axes[1].plot(xs, [s["grad_std"] for s in layers], marker="o", ms=3, lw=1.4, **style)
  for name, records in runs.items():  # the updates (= the raw gradients for "none")
    if name != "none":
      for record, ls in ((records[0], "--"), (records[-1], "-"))[-len(records) :]:
        ys = [record["layers"][p]["update_std"] for p in paths]
        axes[1].plot(xs, ys, color="C2", ls=ls, marker="s", ms=3, lw=1.4)
  handles = [
    Line2D(
      [], [], color=COLORS.get(n, "C2"), marker="o", ms=4, label=f"{LABELS.get(n, n)}: raw gradient"
    )
    for n in runs
  ]
  handles += [
    Line2D([], [], color="C2", marker="s", ms=4, label=f"{LABELS.get(n, n)}: update after {n}")
    for n in runs
    if n != "none"
  ]
  handles += _step_handles(runs)
  titles = ("L2 norm of the raw gradient", "std of the raw gradient and of the update")
  for ax, what, ylabel in zip(axes, titles, ("L2 norm", "standard deviation"), strict=True):
    ax.set_yscale("log")
    ax.set_title(f"Per-layer {what} (kernels)")
    ax.set_xlabel("layer, input -> output (stage.block.conv)")
    ax.set_ylabel(ylabel)
    _set_ticks(ax, [short_name(p) for p in paths])
  axes[1].legend(handles=handles, fontsize=8, loc="center right")
  _plain_log_ticks(axes[0])
  _finish(fig, title)
  return save_figure(fig, out, dpi=110)


def plot_overlap_split(
  runs: Mapping[str, Sequence[dict]], out: str | Path, title: str | None = None
) -> Path:
  """Per residual block: skip and branch norms of dL/d(block input), their ratio and cosine.

  Args:
    runs: {grad_transform name: its diagnostics records by step}.
    out: the PNG to write (parent folders are created).
    title: a title over the panels.
  """
  blocks = list(next(iter(runs.values()))[0]["blocks"])
  xs = range(len(blocks))
  fig, axes = plt.subplots(1, 3, figsize=(17, 5.2), sharex=True)
  for _, record, style in _curves(runs):
    b = [record["blocks"][k] for k in blocks]
    axes[0].plot(xs, [s["skip_norm"] for s in b], marker="o", ms=4, **style)
    axes[0].plot(xs, [s["branch_norm"] for s in b], marker="x", ms=5, **{**style, "lw": 0.8})
    ratio = [s["branch_norm"] / s["skip_norm"] if s["skip_norm"] else math.nan for s in b]
    axes[1].plot(xs, ratio, marker="o", ms=3, **style)
    axes[2].plot(xs, [s["cosine"] for s in b], marker="o", ms=3, **style)
  handles = [Line2D([], [], color=COLORS.get(n, "C2"), lw=2, label=LABELS.get(n, n)) for n in runs]
  handles += [
    Line2D([], [], color="0.3", marker="o", label="skip path (o, thick)"),
    Line2D([], [], color="0.3", marker="x", lw=0.8, label="residual branch (x, thin)"),
    *_step_handles(runs),
  ]
  axes[0].set_title("|dL/dx| through each path at the block input")
  axes[0].set_ylabel("L2 norm over the batch")
  axes[0].set_yscale("log")
  axes[1].set_title("branch / skip norm ratio")
  axes[1].set_yscale("log")
  axes[1].axhline(1.0, color="0.5", lw=0.8)
  axes[2].set_title("cosine(skip part, branch part)")
  axes[2].axhline(0.0, color="0.5", lw=0.8)
  top = max(abs(s["cosine"]) for _, r, _ in _curves(runs) for s in r["blocks"].values())
  top = min(1.05, max(0.05, 1.3 * top))  # zoomed: the axis says how far
  axes[2].set_ylim(-top, top)
  for ax in axes:
    ax.set_xlabel("residual block, input -> output (stage.block)")
    _set_ticks(ax, [short_name(k) for k in blocks])
  axes[0].legend(handles=handles, fontsize=8, loc="best")
  _plain_log_ticks(axes[1])
  _finish(fig, title)
  return save_figure(fig, out, dpi=110)


def overlap_numbers(record: Mapping) -> dict[str, float]:
  """The numbers of one diagnostics record that the depth comparison reads: the growth of
  |dL/d(block input)| from the last block to the first, the median branch/skip norm ratio, the
  mean and range of the skip/branch cosine, and the spread (max/min across kernels) of the raw
  gradient's std and of the transformed update's std."""
  paths = kernel_paths(record)
  grad = [record["layers"][p]["grad_std"] for p in paths]
  update = [record["layers"][p]["update_std"] for p in paths]
  blocks = list(record["blocks"].values())
  cos = [b["cosine"] for b in blocks]
  ratio = sorted(b["branch_norm"] / b["skip_norm"] for b in blocks if b["skip_norm"])
  return {
    "step": record["step"],
    "blocks": len(blocks),
    "input_grad_growth": blocks[0]["total_norm"] / blocks[-1]["total_norm"],
    "branch_skip_median": ratio[len(ratio) // 2] if ratio else math.nan,
    "cosine_mean": sum(cos) / len(cos),
    "cosine_min": min(cos),
    "cosine_max": max(cos),
    "grad_std_spread": max(grad) / min(grad),
    "update_std_spread": max(update) / min(update),
  }


def summarize(runs: Mapping[str, Sequence[dict]]) -> list[str]:
  """One line per run: spread of the kernel gradient scale across depth, and the split."""
  lines = []
  for name, records in runs.items():
    n = overlap_numbers(records[-1])
    lines.append(
      f"{name:6s} step {n['step']}: kernel grad std max/min across depth "
      f"{n['grad_std_spread']:.3g} (update {n['update_std_spread']:.3g}); "
      f"|dL/dx| first/last block {n['input_grad_growth']:.3g}; "
      f"branch/skip median {n['branch_skip_median']:.3g}; cosine mean {n['cosine_mean']:+.3f} "
      f"[{n['cosine_min']:+.3f}, {n['cosine_max']:+.3f}]"
    )
  return lines


DEPTH_PNG, DEPTH_MD = "overlap_depth.png", "overlap_depth.md"
DEPTH_PANELS = (
  ("input_grad_growth", "|dL/dx| first block / last block", True),
  ("branch_skip_median", "branch / skip norm (median block)", True),
  ("cosine_mean", "skip-branch cosine (mean, range)", False),
  ("grad_std_spread", "kernel std max/min (update: dotted)", True),
)


def depth_table(by_model: Mapping[str, Mapping[str, Sequence[dict]]]) -> str:
  """Markdown: per model and run, `overlap_numbers` of the first and the last logged step."""
  header = ("model", "run", "step", "blocks", "dL/dx growth first/last", "branch/skip median")
  header += ("cosine mean [min, max]", "raw grad std max/min", "update std max/min")
  rows = []
  for model, runs in by_model.items():
    for name, records in runs.items():
      for record in (records[0], records[-1]):
        n = overlap_numbers(record)
        rows.append(
          (
            model,
            LABELS.get(name, name),
            n["step"],
            n["blocks"],
            f"{n['input_grad_growth']:.3g}",
            f"{n['branch_skip_median']:.3g}",
            f"{n['cosine_mean']:+.3f} [{n['cosine_min']:+.3f}, {n['cosine_max']:+.3f}]",
            f"{n['grad_std_spread']:.3g}",
            f"{n['update_std_spread']:.3g}",
          )
        )
  return "\n".join(markdown_table(header, rows, (False, False, *[True] * 7))) + "\n"


def plot_depth(
  by_model: Mapping[str, Mapping[str, Sequence[dict]]], out: str | Path, title: str | None = None
) -> Path:
  """The overlap numbers at the last logged step against depth, one line per run."""
  depths = {model: model_depth(model) for model in by_model}
  fig, axes = plt.subplots(1, len(DEPTH_PANELS), figsize=(4.6 * len(DEPTH_PANELS), 4.0))
  for ax, (key, label, log) in zip(axes, DEPTH_PANELS, strict=True):
    for name in RUNS:
      numbers = [overlap_numbers(runs[name][-1]) for runs in by_model.values() if name in runs]
      xs = [depths[m] for m, runs in by_model.items() if name in runs]
      style = dict(color=COLORS.get(name, "C2"), marker="o", label=LABELS.get(name, name))
      ax.plot(xs, [n[key] for n in numbers], **style)
      if key == "cosine_mean":
        ax.fill_between(
          xs,
          [n["cosine_min"] for n in numbers],
          [n["cosine_max"] for n in numbers],
          color=style["color"],
          alpha=0.15,
        )
      if key == "grad_std_spread":
        ax.plot(xs, [n["update_std_spread"] for n in numbers], ls=":", color=style["color"])
    if log:
      ax.set_yscale("log")
      _plain_log_ticks(ax)
      if key == "grad_std_spread":  # decades apart: label the decades only
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xscale("log", base=2)
    ax.xaxis.set_minor_locator(NullLocator())  # depths as ticks, not powers of 2
    ax.set_xticks(sorted(depths.values()), [str(d) for d in sorted(depths.values())])
    ax.set(title=label, xlabel="depth")
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  _finish(fig, title)
  return save_figure(fig, out, dpi=110)


def model_depth(model: str) -> int:
  """'resnet110' -> 110."""
  digits = "".join(c for c in model if c.isdigit())
  if not digits:
    raise ValueError(f"--models: {model!r} has no depth in its name (e.g. resnet56)")
  return int(digits)


def run_title(workdir: str | Path) -> str | None:
  """'resnet20 on cifar10 train[:5000], batch 128, adam lr 0.001, 100 steps' from config.json."""
  path = Path(workdir) / "config.json"
  if not path.is_file():
    return None
  c = json.loads(path.read_text())
  return (
    f"{c['model']} on {c['dataset']} {c['train_split']}, batch {c['batch_size']}, "
    f"{c['optimizer']} lr {c['learning_rate']:g} ({c['schedule']}), {c['num_train_steps']} "
    f"steps, seed {c['seed']}; gradients of the whole batch at each logged step"
  )


def make_config(args: argparse.Namespace, grad_transform: str, model: str):
  """The default config (ResNet, Adam lr 1e-3, cosine) for one run of the report."""
  return configs.make_config(
    model=model,
    grad_transform=grad_transform,
    optimizer="adam",
    data_dir=args.data_dir,
    train_split=args.train_split,
    eval_split=args.eval_split,
    batch_size=args.batch_size,
    num_train_steps=args.steps,
    eval_every_steps=args.steps,
    checkpoint_every_steps=args.steps,
    keep_checkpoints=1,
    log_every_steps=max(1, args.every),
    diagnostics_every_steps=args.every,
    # One step per dispatch: on CPU an unrolled K-step program of ResNet-110 takes minutes to
    # compile, and K only changes the rounding.
    steps_per_dispatch=1,
    seed=args.seed,
  )


def main(argv: Sequence[str] | None = None) -> list[Path]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--outdir", type=Path, required=True, help="PNGs here, runs in OUTDIR/runs")
  parser.add_argument("--data_dir", default=None, help="tfds data dir holding cifar10")
  parser.add_argument("--steps", type=int, default=100, help="training steps per run")
  parser.add_argument("--every", type=int, default=20, help="diagnostics every K steps")
  parser.add_argument("--model", default="resnet20", help="a models.MODEL_NAMES name")
  parser.add_argument(
    "--models",
    default=None,
    help="comma-separated models (e.g. resnet20,resnet56,resnet110): each as --model into "
    f"OUTDIR/MODEL and RUNS_DIR/MODEL, then {DEPTH_PNG} and {DEPTH_MD} across depth",
  )
  parser.add_argument("--train_split", default="train[:5000]")
  parser.add_argument("--eval_split", default="test[:1000]")
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument(
    "--runs_dir", type=Path, default=None, help="workdirs of the runs (default OUTDIR/runs)"
  )
  parser.add_argument(
    "--plot_only", action="store_true", help="do not train: re-plot the runs already there"
  )
  args = parser.parse_args(argv)
  if args.steps < 1 or args.every < 1:
    parser.error("--steps and --every must be >= 1")

  models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else []
  if not models:
    return report_model(args, args.model, args.outdir, args.runs_dir or args.outdir / "runs")[1]
  by_model, written = {}, []
  for model in models:
    runs_dir = (args.runs_dir or args.outdir / "runs") / model
    by_model[model], paths = report_model(args, model, args.outdir / model, runs_dir)
    written += paths
  title = (
    f"{', '.join(models)} on cifar10 {args.train_split}, batch {args.batch_size}, adam lr 1e-3 "
    f"(cosine), {args.steps} steps, seed {args.seed}; the last logged step"
  )
  written.append(plot_depth(by_model, args.outdir / DEPTH_PNG, title))
  md = args.outdir / DEPTH_MD
  write_atomic(md, f"# Gradient overlap across depth\n\n{title}.\n\n" + depth_table(by_model))
  written.append(md)
  print(depth_table(by_model))
  for path in written[-2:]:
    print(f"wrote {path}")
  return written


def report_model(
  args: argparse.Namespace, model: str, outdir: Path, runs_dir: Path
) -> tuple[dict[str, list[dict]], list[Path]]:
  """Trains (or re-reads) the runs of one model and writes its two figures into ``outdir``."""
  runs, evals = {}, {}
  for name in RUNS:
    workdir = runs_dir / name
    try:
      if not args.plot_only:
        train_and_evaluate(make_config(args, name, model), str(workdir))
      runs[name] = load_diagnostics(workdir)
    except (TrainerError, FileNotFoundError) as e:  # a bad setting, absent data or metrics
      raise SystemExit(f"overlap_report: error: {e}") from None
    evals[name] = read_metrics(workdir)
    if not runs[name]:
      raise SystemExit(f"overlap_report: error: no diagnostics lines in {workdir}")

  title = run_title(runs_dir / RUNS[0])
  written = [
    plot_gradient_scale(runs, outdir / SCALE_PNG, title),
    plot_overlap_split(runs, outdir / SPLIT_PNG, title),
  ]
  for name in RUNS:
    last = evals[name][-1] if evals[name] else {}
    acc, loss = last.get("eval_accuracy", math.nan), last.get("train_loss", math.nan)
    print(
      f"{model} {name:6s} after {last.get('step')} steps: eval acc {acc:.4f}, train loss {loss:.4f}"
    )
  for line in summarize(runs):
    print(f"{model} {line}")
  for path in written:
    print(f"wrote {path}")
  return runs, written


if __name__ == "__main__":
  main()
