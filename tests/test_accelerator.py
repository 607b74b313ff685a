"""Tests of benchmarks/accelerator.py: the smoke check on CPU (every step runs and its figures
reach the summary), the time limits (SIGTERM at the limit, a step below its minimum skipped
with the reason) and the summary's figures."""

import sys

import pytest

from benchmarks import accelerator
from tests.helpers import HAS_REAL_DATA, NO_REAL_DATA, REAL_DATA_DIR


@pytest.mark.slow
@pytest.mark.skipif(not HAS_REAL_DATA, reason=NO_REAL_DATA)
def test_the_smoke_check_runs_every_step_and_collects_its_figures(tmp_path):
  summary = accelerator.main(
    ["--smoke", "--minutes", "6", "--out", str(tmp_path), "--data_dir", REAL_DATA_DIR]
  )
  steps = {s["name"]: s for s in summary["steps"]}
  assert list(steps) == [
    "library_tests",
    "train_throughput",
    "transform_overhead",
    "input_pipeline",
    "imagenet_step",
    "study",
  ]
  for step in steps.values():
    assert (step["status"], step["returncode"]) == ("finished", 0), step["output_tail"]
  junit = steps["library_tests"]["results"]["junit"]
  assert junit["tests"] > 10 and junit["failures"] == junit["errors"] == 0
  throughput = steps["train_throughput"]["results"]["json"]["results"]
  assert [r["steps_per_dispatch"] for r in throughput] == [1] and throughput[0]["bare"] > 0
  overhead = steps["transform_overhead"]["results"]["json"]["parts"][0]["variants"]
  assert overhead["adam"]["x_adam"] == 1.0 and overhead["znorm+adam"]["median_ms"] > 0
  pipeline = steps["input_pipeline"]["results"]["json"]["results"]
  assert pipeline[0]["workers"] == 0 and pipeline[0]["per_cpu_second"] > 0
  imagenet = steps["imagenet_step"]["results"]["records"]
  assert [r["step"] for r in imagenet] == [2, 4] and imagenet[-1]["eval_loss"] > 0
  records = steps["study"]["results"]["records"]
  assert {(r["method"], r["seed"]) for r in records} == {
    (f"{method}_lr{rate}", 0) for method in ("adam", "znorm") for rate in ("0.001", "0.004")
  }
  md = (tmp_path / "summary.md").read_text()
  assert "| library_tests | finished |" in md and "run(s) recorded" in md
  assert (tmp_path / "study" / "tuned_lr_test.md").is_file()


def test_a_step_is_stopped_at_its_limit(tmp_path):
  step = accelerator.Step(
    "sleeper", [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"], {}
  )
  record = accelerator.run_step(step, 2.0, tmp_path / "sleeper.log", env={})
  assert record["status"] == "stopped at its time limit"
  assert record["returncode"] == -15  # SIGTERM was enough
  assert 2.0 <= record["seconds"] < 10 and "up" in record["output_tail"]


def test_a_step_whose_share_is_below_its_minimum_is_skipped_with_the_reason(tmp_path):
  summary = accelerator.check(tmp_path, minutes=0.5, data_dir=None, smoke=True, log=lambda s: 0)
  # Shares of the time left (1:1:1:0.5:1:3 of 30 s); a skipped step leaves its time to the next.
  shares = [s["limit_s"] for s in summary["steps"]]
  assert shares == pytest.approx([30 / 7.5, 30 / 6.5, 30 / 5.5, 30 / 9, 30 / 4, 30], abs=0.6)
  for step in summary["steps"]:
    assert step["status"] == "skipped" and "needs" in step["reason"]
  assert "skipped" in (tmp_path / "summary.md").read_text()


def test_figures_of_each_kind_of_output():
  throughput = {"json": {"results": [{"steps_per_dispatch": 8, "bare": 1000.4, "train_py": 960}]}}
  assert accelerator._figures({"results": throughput}) == "K=8: bare 1000 img/s, train.py 960"
  junit = {"junit": {"tests": 12, "failures": 1, "errors": 0, "skipped": 2, "seconds": 3.0}}
  assert accelerator._figures({"results": junit}) == "9 passed, 1 failed, 2 skipped"
  part = {"title": "update", "variants": {"znorm+adam": {"median_ms": 2.0, "x_adam": 1.25}}}
  assert (
    accelerator._figures({"results": {"json": {"parts": [part]}}}) == "update: znorm+adam 1.25x"
  )
  assert accelerator._figures({"reason": "why"}) == "why"


def test_figures_of_the_imagenet_steps():
  pipeline = {
    "cores_to_feed": {},
    "results": [{"workers": 2, "images_per_second": 700.4, "per_cpu_second": 351}],
  }
  assert accelerator._figures({"results": {"json": pipeline}}) == (
    "2 workers: 700 img/s, 351 per CPU-second"
  )
  lines = [
    {"step": 20, "eval_loss": 6.9},
    {"step": 40, "eval_loss": 6.5, "images_per_second": 812.0},
  ]
  assert (
    accelerator._figures({"results": {"records": lines}}) == "step 40: eval loss 6.500, 812 img/s"
  )
