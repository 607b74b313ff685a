"""The accelerator check: the project's own commands, one after another, each a subprocess under
its own time limit, their results collected in one summary.

  python -m benchmarks.accelerator --minutes 8 --out DIR [--data_dir D] [--smoke]

Steps, in order (`steps`):

1. ``library_tests``: pytest on the library's test files (values against the float64 NumPy
   reference, under jit, pmap and sharding, float32 and bfloat16) on the accelerator
   (``ZNORM_TEST_PLATFORM``: tests/conftest.py then leaves the platform alone);
2. ``train_throughput``: `benchmarks.train_throughput` (the bare step against train.py);
3. ``transform_overhead``: `benchmarks.transform_overhead` (the optimizer update with each
   transform against Adam alone, and the whole train step);
4. ``input_pipeline``: `benchmarks.input_pipeline` (the streamed pipeline alone at ImageNet
   sizes, on the host's cores), keeping its generated JPEG copy;
5. ``imagenet_step``: ``train.py --config=configs/imagenet.py`` on that copy, 40 steps
   (ResNet-50 at 224, the streamed path end to end; its metrics lines are collected);
6. ``study``: `experiments.tuned_lr` with its accelerator preset ``tuned_gpu`` (resumable: a
   run cut off by the time limit is saved and goes on the next time with the same ``--out``).

Each step gets a share of the time left (`SHARES`); it is stopped with SIGTERM at its limit
(then SIGKILL after a grace period), and a step whose share is below its minimum is skipped.
``OUT/summary.json`` and ``OUT/summary.md`` (rewritten after every step) hold each step's
command, limit, time, exit status, what it wrote (JSON figures, test counts, study records)
and, for a step that did not run, why. ``--smoke`` runs every step with tiny sizes (a minute or
two on a CPU; tests/test_accelerator.py runs it in CI).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import configs
from trainer.files import markdown_table, write_atomic, write_json
from trainer.metrics import read_records

LIBRARY_TESTS = (
  "tests/test_transforms.py",
  "tests/test_properties.py",
  "tests/test_distributed.py",
)
SHARES = {
  "library_tests": 1.0,
  "train_throughput": 1.0,
  "transform_overhead": 1.0,
  "input_pipeline": 0.5,
  "imagenet_step": 1.0,
  "study": 3.0,
}
MINIMUM_SECONDS = {
  "library_tests": 30,
  "train_throughput": 30,
  "transform_overhead": 20,
  "input_pipeline": 20,
  "imagenet_step": 45,
  "study": 45,
}
# imagenet_step: ResNet-50 at batch 256 (the devices' share of flax's 1024 on one host is not
# assumed), an evaluation after 20 steps; the smoke run: a ResNet-18 of small widths at 64.
IMAGENET = {"batch_size": 256, "num_train_steps": 40, "eval_every_steps": 20}
IMAGENET_SMOKE = {
  "model": "resnet18",
  "model_widths": "(4,8,8,16)",
  "image_size": 64,
  "batch_size": 16,
  "num_train_steps": 4,
  "eval_every_steps": 2,
  "dtype": "float32",
  "steps_per_dispatch": 1,
  "loader_workers": 0,
}
GRACE_SECONDS = 20  # between SIGTERM and SIGKILL: the study saves a checkpoint in that time


@dataclasses.dataclass(frozen=True)
class Step:
  name: str
  command: list[str]
  outputs: dict[str, str]  # what it writes: {"json" | "junit" | "records": path}


def steps(out: Path, data_dir: str | None, smoke: bool) -> list[Step]:
  """The commands of the check (tiny sizes with ``smoke``)."""
  python = sys.executable
  data = ["--data_dir", data_dir] if data_dir else []
  tests = list(LIBRARY_TESTS[:1] if smoke else LIBRARY_TESTS)
  select = ["-k", "ZNormTest and matches_numpy"] if smoke else []
  throughput = ["--train_split", "train[:64]", "--batch", "16", "--steps_per_dispatch", "1"]
  overhead = ["--part", "update", "--models", "resnet20", "--rounds", "2", "--iters", "2"]
  study = "tuned_test" if smoke else "tuned_gpu"
  return [
    Step(
      "library_tests",
      [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests, *select]
      + [f"--junitxml={out / 'library_tests.xml'}"],
      {"junit": str(out / "library_tests.xml")},
    ),
    Step(
      "train_throughput",
      [python, "-m", "benchmarks.train_throughput", *data, "--json", str(out / "throughput.json")]
      + (throughput if smoke else []),
      {"json": str(out / "throughput.json")},
    ),
    Step(
      "transform_overhead",
      [python, "-m", "benchmarks.transform_overhead", "--json", str(out / "overhead.json")]
      + (overhead if smoke else []),
      {"json": str(out / "overhead.json")},
    ),
    Step(
      "input_pipeline",
      [python, "-m", "benchmarks.input_pipeline", "--keep", str(out / "imagenet_data")]
      + ["--json", str(out / "input_pipeline.json")]
      + (["--images", "224", "--batch", "16", "--workers", "0"] if smoke else []),
      {"json": str(out / "input_pipeline.json")},
    ),
    Step(
      "imagenet_step",  # train.py with configs/imagenet.py on the generated copy
      [python, "train.py", f"--workdir={out / 'imagenet_run'}", "--config=configs/imagenet.py"]
      + ["--config.dataset=generated_images", f"--config.data_dir={out / 'imagenet_data'}"]
      + ["--config.eval_split=train[:128]"]
      + [f"--config.{k}={v}" for k, v in (IMAGENET_SMOKE if smoke else IMAGENET).items()],
      {"records": str(out / "imagenet_run" / "metrics.jsonl")},
    ),
    Step(
      "study",
      [python, "-m", "experiments.tuned_lr", "--preset", study, *data]
      + ["--results", str(out / "study"), "--workdir_root", str(out / "study_runs")],
      {
        "records": str(
          out / "study" / f"{configs.make_config(f'study_{study}').results_name}.jsonl"
        )
      },
    ),
  ]


def run_step(step: Step, limit: float, log: Path, env: dict) -> dict:
  """Runs ``step`` for at most ``limit`` seconds (SIGTERM, then SIGKILL after the grace)."""
  start = time.monotonic()
  with open(log, "w") as output:
    proc = subprocess.Popen(
      step.command,
      cwd=configs.ROOT,
      env=env,
      stdout=output,
      stderr=subprocess.STDOUT,
      start_new_session=True,  # its own process group: stopped with its children
    )
    status = "finished"
    try:
      proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
      status = "stopped at its time limit"
      os.killpg(proc.pid, signal.SIGTERM)
      try:
        proc.wait(timeout=GRACE_SECONDS)
      except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
  tail = log.read_text(errors="replace")[-1500:]
  return {
    "status": status,
    "returncode": proc.returncode,
    "seconds": round(time.monotonic() - start, 1),
    "output_tail": tail,
    "results": collect(step),
  }


def collect(step: Step) -> dict:
  """What the step wrote: its JSON figures, its test counts or its study records."""
  found: dict = {}
  for kind, path in step.outputs.items():
    if not Path(path).is_file():
      found[kind] = None
    elif kind == "json":
      found[kind] = json.loads(Path(path).read_text())
    elif kind == "junit":
      suite = ET.parse(path).getroot()
      suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
      counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
      found[kind] = {**counts, "seconds": float(suite.get("time", 0))}
    else:
      found[kind] = read_records(path)
  return found


def check(out: Path, minutes: float, data_dir: str | None, smoke: bool, log=print) -> dict:
  """Runs the steps within ``minutes``, writing the summary after each; returns it."""
  out.mkdir(parents=True, exist_ok=True)
  deadline = time.monotonic() + 60 * minutes
  env = {**os.environ, "PYTHONPATH": str(configs.ROOT)}
  env.setdefault("JAX_COMPILATION_CACHE_DIR", str(out / "jax_cache"))
  if not smoke:
    env.setdefault("ZNORM_TEST_PLATFORM", "accelerator")
  summary = {"command": " ".join(sys.argv), "minutes": minutes, "smoke": smoke, "steps": []}
  plan = steps(out, data_dir, smoke)
  for i, step in enumerate(plan):
    left = deadline - time.monotonic()
    share = left * SHARES[step.name] / sum(SHARES[s.name] for s in plan[i:])
    record = {"name": step.name, "command": " ".join(step.command), "limit_s": round(share)}
    if share < MINIMUM_SECONDS[step.name]:
      record.update(
        status="skipped",
        reason=f"{share:.0f} s of time left for it, needs {MINIMUM_SECONDS[step.name]} s",
      )
    else:
      log(f"accelerator: {step.name} (at most {share:.0f} s) ...")
      record.update(run_step(step, share, out / f"{step.name}.log", env))
      log(
        f"accelerator: {step.name}: {record['status']}, exit {record['returncode']}, "
        f"{record['seconds']:.0f} s"
      )
    summary["steps"].append(record)
    write_json(out / "summary.json", summary)
    write_atomic(out / "summary.md", render_markdown(summary))
  return summary


def _figures(record: dict) -> str:
  results = record.get("results") or {}
  if results.get("junit"):
    j = results["junit"]
    passed = j["tests"] - j["failures"] - j["errors"] - j["skipped"]
    return f"{passed} passed, {j['failures'] + j['errors']} failed, {j['skipped']} skipped"
  rows = results.get("records")
  if rows and "method" not in rows[0]:  # imagenet_step: train.py's metrics lines
    last = rows[-1]
    rate = last.get("images_per_second")
    return f"step {last['step']}: eval loss {last['eval_loss']:.3f}" + (
      f", {rate:.0f} img/s" if rate else ""
    )
  if rows is not None:
    return f"{len(rows)} run(s) recorded: " + ", ".join(
      f"{r['model']} {r['method']} seed {r['seed']} {100 * r['final_accuracy']:.1f}%" for r in rows
    )
  data = results.get("json")
  if data and "cores_to_feed" in data:  # input_pipeline
    return "; ".join(
      f"{r['workers']} workers: {r['images_per_second']:.0f} img/s, "
      f"{r['per_cpu_second']:.0f} per CPU-second"
      for r in data["results"]
    )
  if data and "results" in data:  # train_throughput
    return "; ".join(
      f"K={r['steps_per_dispatch']}: bare {r['bare']:.0f} img/s, train.py {r['train_py']:.0f}"
      for r in data["results"]
    )
  if data and "parts" in data:  # transform_overhead: ZNorm's time against the baseline's
    ratios = []
    for part in data["parts"]:
      for name in ("znorm+adam", "step/znorm"):
        if name in part["variants"]:
          ratio = next(v for k, v in part["variants"][name].items() if k.startswith("x_"))
          ratios.append(f"{part['title']}: {name} {ratio:.2f}x")
    return "; ".join(ratios)
  return record.get("reason", "no figures written")


def render_markdown(summary: dict) -> str:
  rows = [
    (
      r["name"],
      r["status"],
      f"{r.get('seconds', 0):.0f} / {r['limit_s']}",
      r.get("returncode", "-"),
      _figures(r),
    )
    for r in summary["steps"]
  ]
  header = ("step", "status", "seconds / limit", "exit", "figures")
  lines = [
    f"# Accelerator check ({'smoke, ' if summary['smoke'] else ''}{summary['minutes']:g} min)",
    "",
    f"`{summary['command']}`; each step's log is `STEP.log` beside this file.",
    "",
    *markdown_table(header, rows, (False, False, True, True, False)),
  ]
  return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--minutes", type=float, default=8.0, help="the whole check's time")
  parser.add_argument("--out", type=Path, required=True, help="summary, logs and outputs")
  parser.add_argument("--data_dir", default=None, help="tfds data dir holding cifar10")
  parser.add_argument("--smoke", action="store_true", help="tiny sizes: a minute or two on CPU")
  args = parser.parse_args(argv)
  if args.minutes <= 0:
    parser.error("--minutes must be > 0")
  return check(args.out, args.minutes, args.data_dir, args.smoke)


if __name__ == "__main__":
  main()
