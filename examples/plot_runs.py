"""Compare ``train.py`` runs: accuracy and loss curves from each workdir's ``metrics.jsonl``.

Usage::

    python examples/plot_runs.py WORKDIR [WORKDIR ...] --out runs.png \\
        [--x step|epoch] [--labels a,b,...] [--log-loss]

Each workdir must hold ``metrics.jsonl``: one JSON object per line, one line per
evaluation, with at least ``step``, ``epoch``, ``train_loss``, ``train_accuracy``,
``eval_loss`` and ``eval_accuracy`` (accuracies as fractions in [0, 1]).  Extra
keys are ignored.  Lines with a ``kind`` other than "evaluation" (the
``{"kind": "diagnostics", ...}`` lines of ``--config.diagnostics_every_steps``)
are not evaluations and are left out.  A truncated last line (a run killed
mid-write) is skipped; a malformed line anywhere else is an error.  If a resumed
run logged a step twice, the later record wins.

The figure has two panels, accuracy (in %) and loss, against ``--x``; each run
gets one colour, train curves are dashed and eval curves solid.  The legend
labels default to the workdir basenames and show each run's best eval accuracy.

The parsing and plotting are importable for other scripts::

    from plot_runs import load_metrics, plot_runs
    plot_runs(["runs/sgd", "runs/znorm"], "compare.png", x="step")
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

METRICS_FILE = "metrics.jsonl"
EVALUATION = "evaluation"  # the kind of the lines without a "kind" key
X_KEYS = ("step", "epoch")
# (panel title, y label, train key, eval key, scale)
PANELS = (
  ("Accuracy", "accuracy (%)", "train_accuracy", "eval_accuracy", 100.0),
  ("Loss", "loss", "train_loss", "eval_loss", 1.0),
)


def load_metrics(workdir: str | os.PathLike, kind: str = EVALUATION) -> list[dict]:
  """The records of ``workdir/metrics.jsonl`` of one kind, in file order.

  Blank lines and an unparsable *last* line (a truncated write) are skipped.

  Args:
    workdir: a ``train.py`` workdir.
    kind: "evaluation" (the default: the lines without a ``kind`` key, as train.py
      writes one per evaluation) or another ``kind`` value, e.g. "diagnostics".

  Raises:
    FileNotFoundError: ``workdir`` has no ``metrics.jsonl``; the message names the path.
    ValueError: a line other than the last is not a JSON object.
  """
  path = Path(workdir) / METRICS_FILE
  if not path.is_file():
    raise FileNotFoundError(f"no metrics file: {path} does not exist")
  lines = path.read_text().splitlines()
  last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
  records = []
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      if i == last:  # A run killed mid-write leaves a partial last line.
        break
      raise ValueError(f"{path}:{i + 1}: not valid JSON ({e.msg})") from e
    if not isinstance(record, dict):
      raise ValueError(f"{path}:{i + 1}: expected a JSON object, got {record!r}")
    if record.get("kind", EVALUATION) == kind:
      records.append(record)
  return records


def _is_number(v) -> bool:
  return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def curve(records: Sequence[dict], x: str, y: str) -> tuple[list[float], list[float]]:
  """``(xs, ys)`` for the records holding finite ``x`` and ``y`` values, sorted by step.

  A step logged more than once (a resumed run) keeps its last record.
  """
  by_step = {}
  for i, r in enumerate(records):
    by_step[r.get("step", ("line", i))] = r
  points = sorted(
    (r[x], r[y]) for r in by_step.values() if _is_number(r.get(x)) and _is_number(r.get(y))
  )
  return [p[0] for p in points], [p[1] for p in points]


def plot_runs(
  workdirs: Sequence[str | os.PathLike],
  out: str | os.PathLike,
  x: str = "epoch",
  labels: Sequence[str] | None = None,
  log_loss: bool = False,
) -> Path:
  """Plot accuracy and loss of each run against ``x`` ("step" or "epoch") into ``out``.

  Args:
    workdirs: ``train.py`` workdirs, each holding ``metrics.jsonl``.
    out: the PNG to write (parent folders are created).
    x: the x-axis key, "step" or "epoch".
    labels: one legend label per workdir; defaults to the workdir basenames.
    log_loss: draw the loss panel on a log scale.

  Returns:
    ``out`` as a ``Path``.

  Raises:
    FileNotFoundError: a workdir has no ``metrics.jsonl``.
    ValueError: bad ``x`` or ``labels``, or a malformed metrics file.
  """
  if x not in X_KEYS:
    raise ValueError(f"x must be one of {X_KEYS}, got {x!r}")
  if not workdirs:
    raise ValueError("no workdirs given")
  if labels is None:
    labels = [Path(w).resolve().name for w in workdirs]
  if len(labels) != len(workdirs):
    raise ValueError(f"{len(labels)} labels for {len(workdirs)} workdirs")
  runs = [load_metrics(w) for w in workdirs]

  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.lines import Line2D

  fig, axes = plt.subplots(1, len(PANELS), figsize=(13, 4.8))
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  handles = []
  for i, (records, label) in enumerate(zip(runs, labels, strict=True)):
    color = colors[i % len(colors)]
    for ax, (_, _, train_key, eval_key, scale) in zip(axes, PANELS, strict=True):
      for key, style in ((train_key, "--"), (eval_key, "-")):
        xs, ys = curve(records, x, key)
        ax.plot(xs, [scale * y for y in ys], style, color=color, lw=1.6)
    _, eval_acc = curve(records, x, "eval_accuracy")
    best = f" (best eval {100 * max(eval_acc):.2f}%)" if eval_acc else " (no evals)"
    handles.append(Line2D([], [], color=color, lw=2, label=label + best))
  handles += [
    Line2D([], [], color="0.3", ls="-", label="eval"),
    Line2D([], [], color="0.3", ls="--", label="train"),
  ]
  for ax, (title, ylabel, *_) in zip(axes, PANELS, strict=True):
    ax.set_title(title)
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
  if log_loss:
    axes[-1].set_yscale("log")
  axes[0].legend(handles=handles, fontsize=8, loc="lower right")
  fig.tight_layout()
  return save_figure(fig, out)


def save_figure(fig, out: str | os.PathLike, dpi: int = 120) -> Path:
  """Writes ``fig`` to ``out`` (creating its folder), closes it and returns the path."""
  import matplotlib.pyplot as plt

  out = Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out, dpi=dpi)
  plt.close(fig)
  return out


def main(argv: Sequence[str] | None = None) -> Path:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("workdirs", nargs="+", help="train.py workdirs holding metrics.jsonl")
  parser.add_argument("--out", required=True, help="PNG to write")
  parser.add_argument("--x", choices=X_KEYS, default="epoch", help="x axis (default: epoch)")
  parser.add_argument("--labels", help="comma-separated legend labels, one per workdir")
  parser.add_argument("--log-loss", action="store_true", help="log-scale loss axis")
  args = parser.parse_args(argv)
  labels = args.labels.split(",") if args.labels is not None else None
  try:
    out = plot_runs(args.workdirs, args.out, x=args.x, labels=labels, log_loss=args.log_loss)
  except (FileNotFoundError, ValueError) as e:
    raise SystemExit(f"plot_runs: error: {e}") from None
  print(f"wrote {out}")
  return out


if __name__ == "__main__":
  main()
