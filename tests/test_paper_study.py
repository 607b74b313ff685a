"""Tests of experiments/paper_study.py and experiments/study_report.py: the report (a pure
function of the jsonl records), the run loop with a stub trainer (order, skipping,
interruption, appends) and one tiny real run under `tfds.testing.mock_data`."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

from experiments import depth_study as ds
from experiments import paper_study as ps
from experiments import runs
from experiments import study_report as report
from trainer.metrics import append_record, read_records
from trainer.optimizers import grad_transform_kwargs

CPU = runs.load_preset("cpu")
CLIP = "clip_by_global_norm"


def record(model="resnet20", method="adam", seed=0, final=0.5, best=None, wall=60.0, **kw):
  """A synthetic record of the cpu preset, accuracy rising linearly to ``final``."""
  epochs = [float(e) for e in range(1, CPU.epochs + 1)]
  accs = [final * e / CPU.epochs for e in epochs]
  if best is not None:
    accs[-2] = best
  r = {
    "method": method,
    "seed": seed,
    "model": model,
    "budget": "cpu",
    "epochs": CPU.epochs,
    "train_split": CPU.train_split,
    "eval_split": CPU.eval_split,
    "steps": 128,
    "final_accuracy": final,
    "best_accuracy": max(accs),
    "eval_epochs": epochs,
    "epoch_accuracies": accs,
    "wall_time_s": wall,
    "resumed": False,
    "device": "1 x cpu",
    "config": {
      "grad_transform": {"adam": "none"}.get(method, method),
      "grad_transform_params": "all" if method == CLIP else "kernels",
      "clip_norm": 1.0,
      "znorm_eps": 1e-8,
      "optimizer": "adam",
      "warmup_fraction": 0.05,
    },
  }
  r.update(kw)
  return r


def table_row(md, model, method):
  rows = [line for line in md.splitlines() if line.startswith(f"| {model} | {method} |")]
  assert len(rows) == 1, rows
  return [c.strip() for c in rows[0].strip("|").split("|")]


# ------------------------------------------------------------------------------ the report


def test_table_mean_std_and_n():
  recs = [
    record(seed=s, final=f, wall=w) for s, f, w in [(0, 0.50, 60), (1, 0.52, 120), (2, 0.54, 180)]
  ]
  md = report.render_markdown(recs, CPU)
  model, method, n, final, best, delta, wall = table_row(md, "resnet20", "adam")
  assert (model, method, n) == ("resnet20", "adam", "3")
  assert final == "52.00 ± 2.00"  # sample std (ddof=1) of 50, 52, 54
  assert best == final  # the last epoch is the best
  assert delta == "-"
  assert wall == "2.0 ± 1.0"  # minutes
  assert "train[:4096]" in md and "resnet56" in md  # the preset is described above the table


def test_single_seed_has_no_std_and_resumed_runs_are_not_timed():
  md = report.render_markdown([record(final=0.4, best=0.45, resumed=True)], CPU)
  _, _, n, final, best, _, wall = table_row(md, "resnet20", "adam")
  assert (n, final, best) == ("1", "40.00", "45.00")
  assert wall.startswith("-") and "1 resumed" in wall


def test_paired_difference_beyond_and_within_noise():
  recs = []
  for seed, base in enumerate([0.40, 0.50, 0.60]):  # large seed spread ...
    recs.append(record(seed=seed, final=base))
    recs.append(record(method="znorm", seed=seed, final=base + 0.02 + 0.001 * seed))  # ... tiny
    recs.append(record(method=CLIP, seed=seed, final=base + (0.03, -0.03, 0.01)[seed]))
  d = report.paired_difference(recs, "resnet20", "znorm", "adam")
  assert d["n"] == 3 and math.isclose(d["mean"], 0.021) and d["beyond_noise"]
  assert not report.paired_difference(recs, "resnet20", CLIP, "adam")["beyond_noise"]
  md = report.render_markdown(recs, CPU)
  assert table_row(md, "resnet20", "znorm")[5].startswith("**+2.10 ± 0.10")
  assert not table_row(md, "resnet20", CLIP)[5].startswith("**")
  assert "znorm +2.10 pp vs adam (beyond seed noise, n=3)" in md
  assert "clip_by_global_norm +0.33 pp vs adam (within seed noise, n=3)" in md


def test_one_seed_gives_no_p_value_and_the_table_says_so():
  recs = [record(final=0.5), record(method="znorm", final=0.52)]
  d = report.paired_difference(recs, "resnet20", "znorm", "adam")
  assert d["n"] == 1 and math.isnan(d["p"])
  pair = dict(d, p_holm=1.0)
  cells = report.endpoint_cells(pair, pair)
  assert cells == ("+2.00", "n/a", "1.000", "+2.00", "n/a", "1.000")


def test_identical_differences_count_as_beyond_noise():
  recs = [record(seed=s, final=0.5) for s in range(3)]
  recs += [record(method="znorm", seed=s, final=0.51) for s in range(3)]
  d = report.paired_difference(recs, "resnet20", "znorm", "adam")
  assert d["beyond_noise"] and d["t"] > 100


def test_missing_runs_note():
  recs = [record(seed=s, method=m) for s in (0, 1, 2) for m in ps.METHODS]
  recs.append(record(model="resnet56", seed=0))
  md = report.render_markdown(recs, CPU)
  note = md.split("## Missing runs")[1]
  assert "11 of 24 planned runs" in note
  assert "resnet56 adam seeds 1,2" in note and "resnet56 znorm seeds 0,1,2" in note
  assert "resnet20" not in note
  assert table_row(md, "resnet56", CLIP)[2] == "0"
  complete = recs + [
    record(model="resnet56", seed=s, method=m)
    for s in (0, 1, 2)
    for m in ps.METHODS
    if (s, m) != (0, "adam")
  ]
  assert "None: every planned run is recorded" in report.render_markdown(complete, CPU)


def test_other_presets_are_not_mixed_in():
  recs = [record(), record(epochs=8, final=0.9), record(budget="gpu", final=0.9)]
  md = report.render_markdown(recs, CPU)
  assert table_row(md, "resnet20", "adam")[2:4] == ["1", "50.00"]
  assert "2 record(s) of other budgets or presets" in md


def test_epoch_bands():
  runs = [record(seed=0, final=0.4), record(seed=1, final=0.8)]
  xs, mean, lo, hi = report.epoch_bands(runs)
  assert xs == [1.0, 2.0, 3.0, 4.0]
  assert mean[-1] == pytest.approx(0.6) and lo[-1] == 0.4 and hi[-1] == 0.8


def test_write_report_writes_markdown_and_png(tmp_path):
  import matplotlib.image as mpimg

  recs = [
    record(model=m, method=k, seed=s, final=0.4 + 0.01 * s)
    for m in CPU.models
    for k in ps.METHODS
    for s in (0, 1)
  ]
  md, png = report.write_report(recs, CPU, tmp_path / "out")
  assert md.read_text().startswith("# Method comparison on CIFAR-10: budget `cpu`")
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  image = mpimg.imread(png)
  assert image.shape[1] > image.shape[0] > 300  # two panels side by side
  assert sorted(os.listdir(tmp_path / "out")) == ["paper_study.md", "paper_study.png"]


# ------------------------------------------------------------------------------ configs, jsonl


def test_configs_derive_from_the_paper_configs():
  c = {m: runs.make_config(m, "resnet56", 2, CPU, "/data") for m in ps.METHODS}
  assert [c[m].grad_transform for m in ps.METHODS] == [
    "none",
    "centralize",
    "clip_by_global_norm",
    "znorm",
  ]
  assert c[CLIP].grad_transform_params == "all"
  assert grad_transform_kwargs(c[CLIP]) == {}  # the library's max_norm=1.0
  assert c["centralize"].grad_transform_params == "kernels"
  for config in c.values():
    assert (config.model, config.seed, config.data_dir) == ("resnet56", 2, "/data")
    assert (config.num_epochs, config.train_split, config.eval_split) == (
      4,
      "train[:4096]",
      "test[:2000]",
    )
    assert config.optimizer == "adam" and config.learning_rate == 1e-3
    assert config.schedule == "cosine" and config.batch_size == 128
    assert config.eval_every_steps == -1  # once per epoch
  gpu = runs.load_preset("gpu")
  assert (gpu.models, gpu.epochs, gpu.train_split, gpu.eval_split) == (
    ("resnet56",),
    200,
    "train",
    "test",
  )


def test_jsonl_append_survives_a_cut_line(tmp_path):
  path = tmp_path / "r.jsonl"
  append_record(path, record(seed=0))
  with open(path, "a") as f:
    f.write('{"method": "adam", "se')  # a write cut by a kill
  append_record(path, record(seed=1))
  assert [r["seed"] for r in read_records(path)] == [0, 1]
  assert read_records(tmp_path / "absent.jsonl") == []


# ------------------------------------------------------------------------------ the run loop


class StubTrainer:
  """Writes the metrics.jsonl (and config.json) a run would; stops early on request."""

  def __init__(self, stop_after=None):
    self.calls = []
    self.stop_after = stop_after  # (model, method, seed, epoch) to stop at

  def __call__(self, config, workdir):
    key = (
      config.model,
      {"none": "adam"}.get(config.grad_transform, config.grad_transform),
      config.seed,
    )
    self.calls.append(key)
    os.makedirs(workdir, exist_ok=True)
    Path(workdir, "config.json").write_text(config.to_json())
    last = config.num_epochs
    if self.stop_after and self.stop_after[:3] == key:
      last = self.stop_after[3]
    with open(Path(workdir, "metrics.jsonl"), "w") as f:
      for e in range(1, last + 1):
        acc = 0.1 * e + 0.01 * config.seed
        f.write(
          json.dumps(
            {
              "step": e * 3,
              "epoch": float(e),
              "train_loss": 2.0 / e,
              "eval_accuracy": acc,
              "images_per_second": 100.0,
            }
          )
          + "\n"
        )
        # train.py's gradient diagnostics share metrics.jsonl (and steps) with the evaluations.
        f.write(json.dumps({"kind": "diagnostics", "step": e * 3, "epoch": float(e)}) + "\n")


def test_run_loop_order_skip_and_report(tmp_path):
  stub = StubTrainer()
  kwargs = dict(
    workdir_root=tmp_path / "runs",
    results_dir=tmp_path / "res",
    trainer=stub,
    log=lambda s: None,
    models=("resnet20", "resnet56"),
    seeds=(0, 1),
  )
  new = ps.run_study(CPU, max_runs=5, **kwargs)
  assert stub.calls == [("resnet20", m, 0) for m in ps.METHODS] + [("resnet20", "adam", 1)]
  assert len(new) == 5
  recs = read_records(tmp_path / "res" / "paper_study.jsonl")
  assert recs == new
  r = recs[0]
  assert (r["method"], r["seed"], r["model"], r["budget"], r["epochs"]) == (
    "adam",
    0,
    "resnet20",
    "cpu",
    4,
  )
  assert (r["train_split"], r["eval_split"], r["steps"]) == ("train[:4096]", "test[:2000]", 12)
  assert r["epoch_accuracies"] == pytest.approx([0.1, 0.2, 0.3, 0.4])
  assert r["final_accuracy"] == pytest.approx(0.4) and r["best_accuracy"] == r["final_accuracy"]
  assert r["eval_epochs"] == [1.0, 2.0, 3.0, 4.0] and r["wall_time_s"] >= 0
  assert r["config"]["grad_transform"] == "none"
  assert Path(r["workdir"]) == tmp_path / "runs" / "cpu" / "resnet20" / "adam" / "seed0"
  md = (tmp_path / "res" / "paper_study.md").read_text()
  assert "19 of 24 planned runs are not recorded yet" in md  # preset seeds 0,1,2 expected
  assert (tmp_path / "res" / "paper_study.png").is_file()

  # A second sitting skips the 5 recorded runs: the rest of seed 1, then the next model.
  stub.calls.clear()
  new = ps.run_study(CPU, **{**kwargs, "max_runs": 4})
  assert stub.calls == [("resnet20", m, 1) for m in ps.METHODS[1:]] + [("resnet56", "adam", 0)]
  assert len(read_records(tmp_path / "res" / "paper_study.jsonl")) == 9
  stub.calls.clear()
  assert ps.run_study(CPU, **{**kwargs, "models": ("resnet20",)}) == [] and stub.calls == []


def test_interrupted_run_is_not_recorded_and_stops_the_loop(tmp_path):
  stub = StubTrainer(stop_after=("resnet20", CLIP, 0, 2))
  kwargs = dict(
    workdir_root=tmp_path / "runs",
    results_dir=tmp_path / "res",
    log=lambda s: None,
    models=("resnet20",),
    seeds=(0,),
  )
  new = ps.run_study(CPU, trainer=stub, **kwargs)
  assert [r["method"] for r in new] == ["adam", "centralize"]
  assert stub.calls[-1] == ("resnet20", CLIP, 0)
  # The next sitting resumes with the interrupted run.
  new = ps.run_study(CPU, trainer=StubTrainer(), **kwargs)
  assert [r["method"] for r in new] == [CLIP, "znorm"]


def test_workdir_of_another_preset_is_refused(tmp_path):
  kwargs = dict(
    workdir_root=tmp_path / "runs",
    results_dir=tmp_path / "res",
    log=lambda s: None,
    models=("resnet20",),
    seeds=(0,),
    methods=("adam",),
  )
  ps.run_study(CPU, trainer=StubTrainer(), **kwargs)
  (tmp_path / "res" / "paper_study.jsonl").unlink()
  other = runs.load_preset("cpu")
  other.epochs = 9
  with pytest.raises(SystemExit, match="num_epochs 4 -> 9; delete that workdir"):
    ps.run_study(other, trainer=StubTrainer(), **kwargs)


def test_cli_report_only(tmp_path, capsys):
  res = tmp_path / "res"
  for r in [record(seed=s, method=m) for s in (0, 1) for m in ps.METHODS]:
    append_record(res / "paper_study.jsonl", r)
  assert ps.main(["--budget", "cpu", "--results", str(res), "--report_only"]) == []
  assert "paper_study.png" in capsys.readouterr().out
  assert "| resnet20 | znorm | 2 |" in (res / "paper_study.md").read_text()
  with pytest.raises(SystemExit):
    ps.main(["--budget", "cpu", "--methods", "adam,sgd", "--report_only"])


# ------------------------------------------------------------------------------ a real tiny run


@pytest.mark.slow  # ~10 s on 2 idle cores (compiles a narrow ResNet-20)
def test_tiny_end_to_end_run_under_mock_data(tmp_path):
  import tensorflow_datasets as tfds

  with tfds.testing.mock_data(num_examples=32):
    new = ps.main(
      [
        "--budget",
        "test",
        "--methods",
        "znorm",
        "--workdir_root",
        str(tmp_path / "runs"),
        "--results",
        str(tmp_path / "res"),
      ]
    )
  assert len(new) == 1
  r = new[0]
  assert (r["method"], r["model"], r["budget"], r["steps"]) == ("znorm", "resnet20", "test", 4)
  assert r["eval_epochs"] == [1.0, 2.0] and len(r["epoch_accuracies"]) == 2
  assert 0.0 <= r["final_accuracy"] <= r["best_accuracy"] <= 1.0
  assert read_records(tmp_path / "res" / "paper_study.jsonl") == new
  assert (tmp_path / "res" / "paper_study.png").is_file()


# ------------------------------------------------------------------------------ the depth study


def test_paired_difference_matches_scipy_ttest_rel_and_its_interval():
  finals = {"adam": [0.40, 0.42, 0.39, 0.41, 0.43], "znorm": [0.42, 0.43, 0.42, 0.41, 0.46]}
  recs = [record(method=m, seed=s, final=f) for m, fs in finals.items() for s, f in enumerate(fs)]
  d = report.paired_difference(recs, "resnet20", "znorm", "adam")
  ref = scipy_stats.ttest_rel(finals["znorm"], finals["adam"])
  ci = ref.confidence_interval(0.95)
  assert (
    d["n"] == 5 and d["t"] == pytest.approx(ref.statistic) and d["p"] == pytest.approx(ref.pvalue)
  )
  assert (d["mean"] - d["ci"], d["mean"] + d["ci"]) == pytest.approx((ci.low, ci.high))


def test_the_acceleration_endpoint_is_the_mean_of_the_epoch_accuracies():
  r = record(final=0.4, epoch_accuracies=[0.1, 0.2, 0.3, 0.4])
  assert report.endpoint(r, "mean_epoch_accuracy") == pytest.approx(0.25)
  assert report.endpoint(r, "final_accuracy") == 0.4


def test_holm_by_hand():
  # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1, made non-decreasing; nan is no test
  got = report.holm([0.01, 0.04, 0.03, math.nan, 0.005])
  assert got[:3] + got[4:] == pytest.approx([0.03, 0.06, 0.06, 0.02]) and math.isnan(got[3])


def test_depth_trend_is_the_least_squares_slope_on_log2_depth():
  gains = {"resnet20": [0.00, 0.01], "resnet56": [0.02, 0.02], "resnet110": [0.03, 0.05]}
  recs = []
  for model, gs in gains.items():
    for seed, g in enumerate(gs):
      recs += [record(model, "adam", seed, 0.4), record(model, "znorm", seed, 0.4 + g)]
  trend = ds.depth_trend(recs, "final_accuracy")
  x = [math.log2(ds.DEPTHS[m]) for m, gs in gains.items() for _ in gs]
  y = [g for gs in gains.values() for g in gs]
  assert trend["n"] == 6 and trend["slope"] == pytest.approx(np.polyfit(x, y, 1)[0])
  assert trend["ci"] > 0 and 0 < trend["p"] < 1


def test_the_resnet110_control_is_the_better_larger_learning_rate_once_both_are_recorded():
  recs = [record("resnet56", "adam_lr2e-3", s, 0.45) for s in range(3)]
  assert ds.best_control(recs) is None
  assert ("resnet110", ("adam_lr4e-3",), (0, 1, 2)) not in ds.planned_groups(recs)
  recs += [record("resnet56", "adam_lr4e-3", s, 0.46) for s in range(3)]
  assert ds.best_control(recs) == "adam_lr4e-3"
  assert ds.planned_groups(recs)[-1] == ("resnet110", ("adam_lr4e-3",), (0, 1, 2))
  assert ("resnet56", "znorm", "adam_lr4e-3") in ds.comparisons(recs)
  # Each control against Adam at 1e-3 is described (paired by seed), not tested: gains of 2, 3
  # and 4 pp give a mean of 3 and a 95% t interval of 3 +- t(0.975, 2) / sqrt(3) = 3 +- 2.48.
  recs += [record("resnet56", "adam", s, 0.43 - 0.01 * s) for s in range(3)]
  md = ds.render_markdown(recs, CPU)
  assert "| resnet56 | adam_lr2e-3 - adam | 3 | +3.00 [+0.52, +5.48] |" in md


def test_learning_rate_variants_train_the_base_method_at_their_rate():
  c = runs.make_config("adam_lr4e-3", "resnet56", 1, CPU)
  assert (c.grad_transform, c.learning_rate) == ("none", 4e-3)
  assert runs.make_config("znorm", "resnet56", 1, CPU).learning_rate == CPU.learning_rate
  for bad in ("adam_lr0", "adam_lrx", "sgd_lr1e-3"):
    with pytest.raises(ValueError, match="valid: adam, centralize, clip_by_global_norm, znorm"):
      runs.make_config(bad, "resnet56", 1, CPU)


def test_depth_report_states_the_endpoints_and_the_verdicts(tmp_path):
  recs = [
    record(
      model,
      method,
      seed,
      0.40 + (0.02 if method == "znorm" else 0) + 0.001 * seed * (method == "znorm"),
    )
    for model in ds.DEPTHS
    for method in ("adam", "znorm")
    for seed in ds.SEEDS
  ]
  paths = ds.write_report(recs, CPU, tmp_path)
  md = paths[0].read_text()
  assert "primary, the final test accuracy" in md and paths[1].stat().st_size > 0
  assert "ZNorm beats adam at resnet110 on the final test accuracy: supported" in md
  assert "the final test accuracy grows with depth: cannot decide." in md  # the same gain
  assert "adam_lr4e-3 - adam" not in md  # no control run, no row
  assert "resnet56 adam_lr2e-3 seeds 0,1,2" in md  # the controls are still missing


def test_the_depth_trend_is_not_judged_before_every_planned_run_is_recorded():
  recs = [
    record(model, method, seed, 0.40 + (0.002 * seed if method == "znorm" else 0))
    for model in ("resnet20", "resnet56")
    for method in ("adam", "znorm")
    for seed in ds.SEEDS
  ]
  md = ds.render_markdown(recs, CPU)
  assert "grows with depth: cannot decide yet (10 of 15 paired seeds recorded)" in md
  # Two seeds at the third depth make the slope steep and "significant": still not judged.
  recs += [
    record("resnet110", m, s, 0.40 + 0.2 * (m == "znorm"))
    for m in ("adam", "znorm")
    for s in (0, 1)
  ]
  assert ds.depth_trend(recs, "final_accuracy")["p"] < 0.05
  md = ds.render_markdown(recs, CPU)
  assert "grows with depth: cannot decide yet (12 of 15 paired seeds recorded)" in md


def test_records_with_the_old_method_name_are_read_as_the_new_one(tmp_path):
  path = tmp_path / "paper_study.jsonl"
  old = record(method="clip", seed=0)
  old["config"]["grad_transform"] = "clip"
  append_record(path, old)
  append_record(path, record(method="clip_lr2e-3", seed=1))
  append_record(path, record(method="znorm", seed=0))
  said = []
  records = runs.read_study_records(path, log=said.append)
  assert [r["method"] for r in records] == [CLIP, "clip_by_global_norm_lr2e-3", "znorm"]
  assert records[0]["renamed_from"] == "clip" and "renamed_from" not in records[2]
  assert records[0]["config"]["grad_transform"] == "clip_by_global_norm"
  assert said == [
    "paper_study.jsonl: method 'clip' is now called 'clip_by_global_norm'; its records are "
    "read as such",
    "paper_study.jsonl: method 'clip_lr2e-3' is now called 'clip_by_global_norm_lr2e-3'; its "
    "records are read as such",
  ]
  assert read_records(path)[0]["method"] == "clip"  # the file itself is not rewritten
  assert report.parse_method("clip_by_global_norm_lr2e-3") == (CLIP, 2e-3)
