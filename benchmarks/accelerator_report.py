"""summary.md of `benchmarks.accelerator_suite`: tables a person reads, a pure function of
summary.json's content (`render_markdown`), so the report can be rebuilt from the JSON alone::

  python -c "import json, sys; from benchmarks.accelerator_report import render_markdown; \
print(render_markdown(json.load(open(sys.argv[1]))))" DIR/summary.json
"""

from __future__ import annotations

import math

import numpy as np


def _fmt(value, digits: int = 3) -> str:
  if value is None:
    return "-"
  if isinstance(value, bool):
    return "yes" if value else "no"
  if isinstance(value, float):
    size = abs(value)
    if not math.isfinite(value) or size == 0 or 0.01 <= size < 1000:
      return f"{value:.{digits}g}"
    return f"{value:,.0f}" if size >= 1000 else f"{value:.2e}"
  if isinstance(value, int) and abs(value) >= 10_000:
    return f"{value:,}"
  return str(value)


def table(rows: list[dict], columns: list[tuple[str, str]]) -> list[str]:
  """A markdown table of ``rows`` with ``columns`` = [(heading, key)]."""
  if not rows:
    return ["(none)", ""]
  lines = ["| " + " | ".join(h for h, _ in columns) + " |"]
  lines.append("|" + "|".join("---" for _ in columns) + "|")
  for row in rows:
    lines.append("| " + " | ".join(_fmt(row.get(k)) for _, k in columns) + " |")
  return lines + [""]


def _section_line(s: dict) -> str:
  used = s.get("seconds")
  return f"*{s.get('status')}; box {_fmt(s.get('budget_s'))} s" + (
    f", used {_fmt(used)} s*" if used is not None else "*"
  )


def render_markdown(data: dict) -> str:
  """summary.md from summary.json's content."""
  h, sections = data["header"], data["sections"]
  plat = sections.get("platform", {}).get("device", {})
  lines = [
    f"# Accelerator suite: {plat.get('local_devices', '?')} x {plat.get('device_kind', '?')}",
    "",
    f"Status: **{data['status']}**; budget {h['minutes']} min, elapsed {h.get('elapsed_s')} s; "
    f"started {h['started']}; {'smoke (tiny sizes)' if h['smoke'] else 'full sizes'}; "
    f"command `{h['command']}`.",
    "",
  ]
  for name, title, render in (
    ("platform", "1. Platform", _md_platform),
    ("throughput", "2. Throughput", _md_throughput),
    ("overhead", "3. Optimizer update overhead", _md_overhead),
    ("study", "4. Study on CIFAR-10", _md_study),
  ):
    lines += [f"## {title}", ""]
    if name in sections:
      lines += [_section_line(sections[name]), ""] + render(sections[name])
    else:
      lines += ["(not run)", ""]
  lines += ["## Skipped", ""]
  lines += table(data["skipped"], [("section", "section"), ("part", "part"), ("why", "reason")])
  lines += ["## Errors", ""]
  lines += table(data["errors"], [("section", "section"), ("part", "part"), ("error", "error")])
  lines += ["## Where the time went", ""]
  lines += table(
    data["timeline"],
    [("section", "section"), ("part", "part"), ("seconds", "seconds"), ("outcome", "outcome")],
  )
  return "\n".join(lines)


def _md_platform(s: dict) -> list[str]:
  d = s.get("device", {})
  rows = [{"what": k, "value": v} for k, v in {**d, **s.get("versions", {})}.items()]
  lines = table(rows, [("", "what"), ("", "value")])
  lines += [f"Library checks: **{'all passed' if s.get('passed') else 'FAILED'}**", ""]
  return lines + table(
    s.get("checks", []),
    [
      ("check", "check"),
      ("dtype", "dtype"),
      ("max abs error", "max_abs_error"),
      ("error / allowed", "worst_ratio"),
      ("allowed (rtol, atol)", "tolerance"),
      ("passed", "passed"),
    ],
  )


def _md_throughput(s: dict) -> list[str]:
  lines = [
    f"Train split loaded in {_fmt(s.get('load_s'))} s; a {s.get('matmul_size')}^2 float32 "
    f"matmul runs at {_fmt(s.get('matmul_tflops'))} TFLOP/s.",
    "",
  ]
  lines += ["Bare step (the trainer's pmapped step on device-resident data, tight loop):", ""]
  lines += table(
    s.get("bare", []),
    [
      ("model", "model"),
      ("batch", "batch"),
      ("dtype", "dtype"),
      ("K", "k"),
      ("K steps as", "k_form"),
      ("images/s", "images_per_s"),
      ("ms/step", "step_ms"),
      ("GFLOP/step", "gflop_per_step"),
      ("TFLOP/s", "tflops"),
      ("compile s", "compile_s"),
    ],
  )
  lines += [
    "train_and_evaluate's loop (`train_throughput.train_py_rate`: the second of two epochs, "
    "timed between its evaluations, with its checkpoint):",
    "",
  ]
  lines += table(
    s.get("loop", []),
    [
      ("model", "model"),
      ("batch", "batch"),
      ("dtype", "dtype"),
      ("K", "k"),
      ("loop images/s", "images_per_s"),
      ("bare images/s", "bare_images_per_s"),
      ("loop / bare", "loop_over_bare"),
      ("steps timed (1 epoch)", "steps"),
    ],
  )
  lines += ["Full train step, grad_transform none vs znorm (interleaved rounds, medians):", ""]
  return lines + table(
    s.get("transform", []),
    [
      ("model", "model"),
      ("batch", "batch"),
      ("dtype", "dtype"),
      ("K", "k"),
      ("none ms/step", "none_ms"),
      ("znorm ms/step", "znorm_ms"),
      ("znorm / none", "ratio"),
    ],
  )


def _md_overhead(s: dict) -> list[str]:
  rows = []
  for r in s.get("rows", []):
    row = {k: r[k] for k in ("tree", "params", "leaves", "dtype")}
    row["adam_ms"] = r["ms"].get("adam")
    row.update({f"x_{k}": v for k, v in r["x_adam"].items()})
    row["znorm_x_floor"] = r.get("znorm_x_floor")
    rows.append(row)
  columns = [("tree", "tree"), ("params", "params"), ("leaves", "leaves"), ("dtype", "dtype")]
  variants = [v for v in (s.get("rows") or [{"ms": {}}])[0]["ms"] if v != "adam"]
  columns += [("adam ms", "adam_ms")] + [(f"{v} (x adam)", f"x_{v}") for v in variants]
  return table(rows, columns + [("znorm+adam / floor", "znorm_x_floor")])


def _md_study(s: dict) -> list[str]:
  lines = []
  if "plan" in s:
    lines += [f"Plan: {s['plan'].get('description')}", ""]
  runs = s.get("runs", [])
  lines += table(
    runs,
    [
      ("model", "model"),
      ("method", "method"),
      ("seed", "seed"),
      ("epochs", "epochs"),
      ("final test acc", "final_accuracy"),
      ("best test acc", "best_accuracy"),
      ("images/s", "images_per_second"),
      ("wall s", "wall_time_s"),
    ],
  )
  groups: dict = {}
  for r in runs:
    groups.setdefault((r["model"], r["method"]), []).append(r)
  means = [
    {
      "model": model,
      "method": method,
      "runs": len(rs),
      "mean": float(np.mean([r["final_accuracy"] for r in rs])),
      "auc": float(np.mean([np.mean(r["epoch_accuracies"]) for r in rs])),
    }
    for (model, method), rs in groups.items()
  ]
  if means:
    lines += ["Mean per model and method (auc: the mean of the per-epoch test accuracies):", ""]
    columns = [("model", "model"), ("method", "method"), ("runs", "runs")]
    lines += table(means, columns + [("mean final acc", "mean"), ("mean auc", "auc")])
  return lines
