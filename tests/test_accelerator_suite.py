"""The accelerator suite on CPU, so that it is known to work before any device sees it:
``--smoke`` end to end under `tfds.testing.mock_data` on 4 fake devices (every section, the
library checks passed, positive figures, skipped parts with reasons, the tables), and its
time-boxing (a tiny budget skips parts, says why and ends in time; the watchdog; the boxes and
the study's sizing with a fake clock).

The smoke run is a subprocess, as the command line runs it: with JAX's persistent compilation
cache, which must be on before a process's first compile and would stay on for the rest of
pytest's process.
"""

import json
import math
import os
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from benchmarks import accelerator_suite as suite
from benchmarks.accelerator_report import render_markdown

MOCK_EXAMPLES = 256  # the smoke's train[:256]
SECTIONS = ["platform", "throughput", "overhead", "study"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE_SCRIPT = f"""
import sys
import tensorflow_datasets as tfds
from benchmarks import accelerator_suite

with tfds.testing.mock_data(num_examples={MOCK_EXAMPLES}):
    accelerator_suite.main(sys.argv[1:], compilation_cache=True)
"""


@pytest.fixture
def exits(monkeypatch):
  """The watchdog's exit calls, recorded instead of ending pytest."""
  calls = []
  monkeypatch.setattr(suite, "hard_exit", calls.append)
  return calls


def run_suite(out, minutes):
  start = time.monotonic()
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    data = suite.main(["--smoke", "--out", str(out), "--minutes", str(minutes)])
  return data, time.monotonic() - start


def smoke_subprocess(out, minutes):
  env = dict(os.environ)
  env.update(
    XLA_FLAGS="--xla_force_host_platform_device_count=4",
    JAX_PLATFORMS="cpu",
    CUDA_VISIBLE_DEVICES="",
    TF_CPP_MIN_LOG_LEVEL="3",
    PYTHONPATH=ROOT,
  )
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  argv = ["--smoke", "--out", str(out), "--minutes", str(minutes)]
  start = time.monotonic()
  proc = subprocess.run(
    [sys.executable, "-c", SMOKE_SCRIPT, *argv],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads((out / "summary.json").read_text()), time.monotonic() - start


@pytest.mark.slow  # ~70 s on 2 busy cores: compiles narrow ResNet-20 steps and two tiny runs
def test_smoke_run_measures_every_section(tmp_path):
  data, seconds = smoke_subprocess(tmp_path, 3)
  assert seconds < 180
  assert data["status"] == "complete" and data["errors"] == []
  assert data["header"]["compilation_cache"] is True
  sections = data["sections"]
  assert list(sections) == SECTIONS
  assert all(
    s["status"] == "done" and s["seconds"] <= s["budget_s"] + 30 for s in sections.values()
  )

  platform = sections["platform"]
  assert platform["device"]["local_devices"] == 4 and platform["versions"]["jax"]
  checks = platform["checks"]
  assert platform["passed"] and len(checks) == 12 and all(c["passed"] for c in checks)
  assert {(c["check"], c["dtype"]) for c in checks} >= {
    (name, dtype) for name in suite.LIBRARY_CHECKS for dtype in ("float32", "bfloat16")
  }
  assert all(0 <= c["worst_ratio"] <= 1 for c in checks)

  throughput = sections["throughput"]
  bare_rows = throughput["bare"]  # the smoke's first combinations; the rest are skipped
  assert [(r["model"], r["batch"], r["dtype"], r["k"]) for r in bare_rows] == [
    ("resnet20", 16, "float32", 1)
  ]
  for row in bare_rows:
    for key in ("images_per_s", "step_ms", "gflop_per_step", "tflops", "compile_s"):
      assert row[key] > 0, key
  bare = bare_rows[0]
  (loop,) = throughput["loop"]
  assert loop["images_per_s"] > 0 and loop["steps"] == 16  # an epoch of 256 at batch 16
  assert loop["loop_over_bare"] == pytest.approx(loop["images_per_s"] / bare["images_per_s"])
  (transform,) = throughput["transform"]
  assert transform["none_ms"] > 0 and transform["znorm_ms"] > 0 and transform["ratio"] > 0
  assert throughput["matmul_tflops"] > 0

  rows = sections["overhead"]["rows"]
  assert [(r["tree"], r["dtype"]) for r in rows] == [("small ViT-shaped", "float32")]
  for r in rows:
    assert set(r["ms"]) == set(suite.OVERHEAD_VARIANTS) and all(v > 0 for v in r["ms"].values())
    assert r["x_adam"]["adam"] == 1.0 and r["params"] > 0

  study = sections["study"]
  assert study["plan"]["epochs"] == 2
  assert [(r["method"], r["seed"], r["epochs"]) for r in study["runs"]] == [
    ("adam", 0, 2),
    ("znorm", 1, 2),
  ]
  assert all(
    0 <= r["final_accuracy"] <= 1 and len(r["epoch_accuracies"]) == 2 for r in study["runs"]
  )
  assert len((tmp_path / "paper_study.jsonl").read_text().splitlines()) == 2

  skipped = data["skipped"]
  assert skipped and all(s["section"] in SECTIONS and s["part"] and s["reason"] for s in skipped)
  reasons = {s["part"]: s["reason"] for s in skipped}
  assert reasons["bare resnet20 b16 bfloat16 K=1"].startswith("smoke:")

  md = (tmp_path / "summary.md").read_text()
  assert md == render_markdown(json.loads((tmp_path / "summary.json").read_text()))
  for heading in ("## 1. Platform", "## 2. Throughput", "## 3. Optimizer", "## 4. Study"):
    assert heading in md
  assert "Library checks: **all passed**" in md and "Status: **complete**" in md
  assert "| model | batch | dtype | K | K steps as | images/s |" in md
  assert "| adam | 0 | 2 |" in md and "| znorm | 1 | 2 |" in md
  assert "| throughput | bare resnet20 b16 bfloat16 K=1 | smoke:" in md
  assert "## Where the time went" in md
  timeline = {(t["section"], t["part"]): t for t in data["timeline"]}
  assert timeline[("study", "resnet20 adam seed 0")]["outcome"] == "done"


def test_tiny_budget_skips_parts_says_why_and_ends_in_time(tmp_path, exits):
  minutes = 0.3
  data, seconds = run_suite(tmp_path, minutes)
  assert seconds < 60 * minutes and exits == []  # the boxes held: no watchdog needed
  assert data["status"] == "complete" and data["errors"] == []
  assert list(data["sections"]) == SECTIONS
  skipped = data["skipped"]
  for section in ("throughput", "overhead", "study"):
    assert any(s["section"] == section for s in skipped), section
  first = suite.throughput_plan(suite.SMOKE, True)[0].name()
  (reason,) = [s["reason"] for s in skipped if s["part"] == first]
  assert reason.startswith("needs ~") and "left of the section's" in reason
  assert "bare" not in data["sections"]["throughput"]
  study = [s for s in skipped if s["section"] == "study"]
  assert study == [
    {"section": "study", "part": "(all)", "reason": "no throughput of ResNet-20 to size it from"}
  ]
  md = (tmp_path / "summary.md").read_text()
  assert "## Skipped" in md and f"| throughput | {first} | needs ~" in md


def test_watchdog_records_the_part_in_flight_and_ends_the_run(tmp_path):
  header = {"command": "test", "started": "now", "minutes": 0.01, "smoke": True}
  summary = suite.Summary(tmp_path, header, elapsed=lambda: 1.0)
  summary.start_section("platform", suite.Box(time.monotonic, 10.0))
  summary.begin("platform", "znorm float32")
  exits = []
  dog = suite.Watchdog(summary, 0.05, exit_fn=exits.append)
  deadline = time.monotonic() + 10
  while not exits and time.monotonic() < deadline:
    time.sleep(0.01)
  assert exits == [0] and dog.fired
  data = json.loads((tmp_path / "summary.json").read_text())
  assert data["status"] == "cut off at the deadline by the watchdog"
  assert data["sections"]["platform"]["status"] == "cut off"
  reasons = {(s["section"], s["part"]): s["reason"] for s in data["skipped"]}
  assert "cut off by the watchdog" in reasons[("platform", "znorm float32")]
  for section in ("throughput", "overhead", "study"):
    assert reasons[(section, "(all)")].startswith("not reached")
  summary.add("platform", "checks", {"check": "late"})  # after the cut-off: not written
  assert json.loads((tmp_path / "summary.json").read_text()) == data
  assert "cut off at the deadline" in (tmp_path / "summary.md").read_text()


def test_a_finished_run_is_not_cut_off(tmp_path):
  header = {"command": "test", "started": "now", "minutes": 1, "smoke": True}
  summary = suite.Summary(tmp_path, header, elapsed=lambda: 1.0)
  summary.finish("complete")
  exits = []
  dog = suite.Watchdog(summary, 0.0, exit_fn=exits.append)
  time.sleep(0.2)
  assert exits == [] and not dog.fired
  assert json.loads((tmp_path / "summary.json").read_text())["status"] == "complete"


def test_boxes_are_shares_of_the_time_left():
  now = [0.0]
  budget = suite.Budget(1.0, clock=lambda: now[0])  # 60 s less a 2.4 s reserve
  box = budget.box(0.5)
  assert box.seconds == pytest.approx(28.8)
  assert box.fits(28.0) and not box.fits(29.0)
  now[0] = 20.0
  assert box.left() == pytest.approx(8.8) and not box.fits(9.0)
  assert box.why_not(30.0) == "needs ~30 s, 9 s left of the section's 29 s"
  assert budget.box(1.0).seconds == pytest.approx(37.6)
  now[0] = 100.0
  assert budget.left() == 0.0 and budget.box(1.0).seconds == 0.0


def test_study_takes_the_most_runs_that_get_enough_epochs():
  ctx = type("Ctx", (), {"sizes": suite.Sizes()})()
  runs, epochs = suite.plan_study(ctx, left=1000.0, run_overhead_s=50.0, epoch_s=10.0)
  assert len(runs) == 8 and epochs == 7
  assert runs[:4] == [("adam", 0), ("znorm", 0), ("centralize", 0), ("clip", 0)]
  runs, epochs = suite.plan_study(ctx, left=300.0, run_overhead_s=50.0, epoch_s=10.0)
  assert runs == [("adam", 0), ("znorm", 0)] and epochs == 10
  runs, epochs = suite.plan_study(ctx, left=170.0, run_overhead_s=50.0, epoch_s=10.0)
  assert runs == [("adam", 0), ("znorm", 0)] and epochs == 3
  runs, epochs = suite.plan_study(ctx, left=130.0, run_overhead_s=50.0, epoch_s=10.0)
  assert len(runs) == 2 and epochs == 1  # fewer than 3 epochs: still the comparison
  assert suite.plan_study(ctx, left=100.0, run_overhead_s=50.0, epoch_s=10.0) is None
  runs, epochs = suite.plan_study(ctx, left=1e6, run_overhead_s=50.0, epoch_s=10.0)
  assert epochs == suite.Sizes().study_epochs[1]


def test_throughput_plan_covers_every_combination_once_study_setting_first():
  plan = suite.throughput_plan(suite.Sizes(), default_unroll=False)  # an accelerator
  assert plan[0] == suite.Combo("bare", "resnet20", 128, "float32", 8, False)
  assert plan[1].kind == "loop" and plan[2].kind == "transform"
  assert plan[3] == suite.Combo("bare", "resnet20", 128, "float32", 8, True)  # unrolled
  assert len(plan) == len(set(plan)) == 16 + 8 + 1 + 16  # bare, unrolled, none/znorm, loops
  first_resnet56 = min(i for i, c in enumerate(plan) if c.model == "resnet56")
  first_b1024 = min(i for i, c in enumerate(plan) if c.batch == 1024)
  assert first_resnet56 < 10 and first_b1024 < 10


def test_model_params_are_the_trainers_float32_initialization():
  ctx = type("Ctx", (), {"sizes": suite.SMOKE})()
  params = suite.model_params(ctx)  # resnet20 at the smoke's widths (4, 8, 16)
  leaves = jax.tree.leaves(params)
  assert {x.dtype for x in leaves} == {np.dtype("float32")}
  assert params["stem_conv"]["kernel"].shape == (3, 3, 3, 4) and len(leaves) == 59
  assert all(np.isfinite(x).all() for x in leaves)


def test_vit_b16_tree_has_86m_parameters_in_152_leaves():
  shapes = suite.vit_shapes(**suite.VIT_B16)
  assert len(shapes) == 152
  assert sum(math.prod(s) for s in shapes.values()) == 86_567_656


def test_depth_study_takes_the_most_depths_that_get_enough_epochs():
  ctx = type("Ctx", (), {"sizes": suite.Sizes()})()  # resnet20, resnet110, resnet56; (3, 200)
  overhead = {"resnet20": 10.0, "resnet56": 30.0, "resnet110": 60.0}
  epoch = {"resnet20": 1.0, "resnet56": 3.0, "resnet110": 6.0}
  # All three: 2 x 100 s of overhead, 2 x 10 s per epoch of the six runs.
  models, epochs = suite.plan_depth_study(ctx, 300.0, overhead, epoch)
  assert models == ["resnet20", "resnet110", "resnet56"] and epochs == 5
  # 240 s: all three get 2 epochs; the first and last depths (2 x 70 s, 2 x 7 s) get 7.
  assert suite.plan_depth_study(ctx, 240.0, overhead, epoch) == (["resnet20", "resnet110"], 7)
  # 150 s: not 3 epochs for any pair of depths; ResNet-20 alone gets 65.
  assert suite.plan_depth_study(ctx, 150.0, overhead, epoch) == (["resnet20"], 65)
  assert suite.plan_depth_study(ctx, 1e6, overhead, epoch)[1] == 200
  assert suite.plan_depth_study(ctx, 21.0, overhead, epoch) is None


def test_depth_study_pairs_adam_and_znorm_at_each_depth_in_order(tmp_path, monkeypatch):
  """`run_depth_study` on a fake clock and a fake trainer: its plan, its order, and a run that
  no longer fits once an earlier one took longer than estimated."""
  now = [0.0]
  header = {"command": "test", "started": "now", "minutes": 1, "smoke": True}
  summary = suite.Summary(tmp_path, header, lambda: now[0], ("study",))
  est = suite.Estimates(compile_guess_s=1.0)
  est.note_compile("resnet20", 1, True, 2.0)
  est.note_init("resnet20", 1.0)
  sizes = suite.SMOKE  # depths resnet20 then resnet32 (15 of 9 blocks); 2 epochs; K = 1
  combo = suite.Combo("loop", "resnet20", sizes.study_batch, "float32", 1, True)
  est.loop[combo] = {**vars(combo), "images_per_s": 64.0}  # 256 + 32 images: 5.5 s per epoch
  ctx = suite.Context(sizes, True, None, summary, est, str(tmp_path), default_unroll=True)
  trained = []

  def run_one(preset, model, method, seed, **kwargs):
    trained.append((model, method, seed, preset.epochs, preset.overrides.steps_per_dispatch))
    now[0] += 100.0 if model == "resnet20" and method == "znorm" else 1.0
    record = {"model": model, "method": method, "seed": seed, "wall_time_s": now[0]}
    return {**record, "final_accuracy": 0.5, "epoch_accuracies": [0.4, 0.5]}

  monkeypatch.setattr(suite.paper_study, "run_one", run_one)
  summary.start_section("study", suite.Box(lambda: now[0], 200.0))
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    suite.run_depth_study(ctx, suite.Box(lambda: now[0], 200.0))
  plan = summary.section("study")["plan"]
  assert plan["epochs"] == 2 and plan["k"] == 1
  assert plan["runs"] == [(m, a, 0) for m in ("resnet20", "resnet32") for a in ("adam", "znorm")]
  assert "resnet32 " in plan["description"] and "from loop resnet20 b16 K=1" in plan["description"]
  # ResNet-20's znorm run took 100 s: ResNet-32's estimates grow with it and no longer fit.
  assert trained == [("resnet20", "adam", 0, 2, 1), ("resnet20", "znorm", 0, 2, 1)]
  skipped = {s["part"]: s["reason"] for s in summary.data["skipped"]}
  assert set(skipped) == {"resnet32 adam seed 0", "resnet32 znorm seed 0"}
  assert all(r.startswith("needs ~") for r in skipped.values())
  lines = (tmp_path / "paper_study.jsonl").read_text().splitlines()
  assert [json.loads(line)["method"] for line in lines] == ["adam", "znorm"]
