"""Compare ``train.py`` runs: accuracy and loss curves from each workdir's ``metrics.jsonl``.

Usage::

    python -m examples.plot_runs WORKDIR [WORKDIR ...] --out runs.png \\
        [--x step|epoch] [--labels a,b,...] [--log-loss]

Each workdir must hold ``metrics.jsonl``, read by `trainer.metrics.read_metrics`: its
evaluation lines, with ``step``, ``epoch``, ``train_loss``, ``train_accuracy``,
``eval_loss`` and ``eval_accuracy`` (accuracies as fractions in [0, 1]).  Other kinds
of lines (the diagnostics of ``--config.diagnostics_every_steps``) are left out, and
so is a line cut by a kill.  If a step was logged twice, the later line wins.

The figure has two panels, accuracy (in %) and loss, against ``--x``; each run
gets one colour, train curves are dashed and eval curves solid.  The legend
labels default to the workdir basenames and show each run's best eval accuracy.

The parsing and plotting are importable for other scripts::

    from examples.plot_runs import load_metrics, plot_runs
    plot_runs(["runs/sgd", "runs/znorm"], "compare.png", x="step")
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from trainer.metrics import EVAL, METRICS_FILE, column, read_metrics  # noqa: E402

X_KEYS = ("step", "epoch")
# (panel title, y label, train key, eval key, scale)
PANELS = (
  ("Accuracy", "accuracy (%)", "train_accuracy", "eval_accuracy", 100.0),
  ("Loss", "loss", "train_loss", "eval_loss", 1.0),
)


def load_metrics(workdir: str | os.PathLike, kind: str = EVAL) -> list[dict]:
  """The lines of ``workdir/metrics.jsonl`` of one kind (`trainer.metrics.read_metrics`).

  Raises:
    FileNotFoundError: ``workdir`` has no ``metrics.jsonl``; the message names the path.
  """
  path = Path(workdir) / METRICS_FILE
  if not path.is_file():
    raise FileNotFoundError(f"no metrics file: {path} does not exist")
  return read_metrics(workdir, kind)


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
  fig, axes = plt.subplots(1, len(PANELS), figsize=(13, 4.8))
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  handles = []
  for i, (records, label) in enumerate(zip(runs, labels, strict=True)):
    color = colors[i % len(colors)]
    for ax, (_, _, train_key, eval_key, scale) in zip(axes, PANELS, strict=True):
      for key, style in ((train_key, "--"), (eval_key, "-")):
        xs, ys = column(records, x, key)
        ax.plot(xs, [scale * y for y in ys], style, color=color, lw=1.6)
    _, eval_acc = column(records, x, "eval_accuracy")
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
  out = Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out, dpi=120)
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
