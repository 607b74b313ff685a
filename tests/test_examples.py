"""Tests of the plotting scripts: experiments/gradient_field.py, examples/plot_runs.py and
experiments/overlap_report.py (which read metrics.jsonl through trainer.metrics)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from examples import plot_runs
from experiments import gradient_field, overlap_report


@pytest.fixture(scope="module")
def gf():
  return gradient_field


@pytest.fixture(scope="module")
def pr():
  return plot_runs


def _assert_png(path, min_side=200):
  import matplotlib.image as mpimg

  assert path.is_file(), path
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  image = mpimg.imread(path)
  assert image.ndim == 3 and image.shape[2] in (3, 4)
  assert min(image.shape[:2]) >= min_side
  assert image[..., :3].std() > 0.01  # Not a blank canvas.


# --------------------------------------------------------------------------- gradient_field


@pytest.mark.slow  # draws two 3D figures
def test_gradient_field_main_writes_both_figures(gf, tmp_path, capsys):
  outdir = tmp_path / "new" / "dir"
  written = gf.main(["--outdir", str(outdir), "--grid", "4", "--seed", "3"])
  assert written == [outdir / gf.MAGNITUDES_PNG, outdir / gf.DIRECTIONS_PNG]
  for path in written:
    _assert_png(path)
  out = capsys.readouterr().out
  assert str(outdir / gf.MAGNITUDES_PNG) in out and str(outdir / gf.DIRECTIONS_PNG) in out
  assert out.count("|g| mean") == 4


def test_gradient_field_rejects_degenerate_grid(gf, tmp_path):
  with pytest.raises(SystemExit):
    gf.main(["--outdir", str(tmp_path), "--grid", "1"])


def test_grid_covers_the_cube(gf):
  points = np.asarray(gf.make_grid(5))
  assert points.shape == (125, 3)
  assert len(np.unique(points, axis=0)) == 125
  np.testing.assert_allclose(points.min(0), -gf.EXTENT)
  np.testing.assert_allclose(points.max(0), gf.EXTENT)


def test_gradient_field_matches_finite_differences(gf):
  points = gf.make_grid(3)
  grads = np.asarray(gf.gradient_field(points))
  h = 1e-2
  f = jax.vmap(gf.loss_surface)
  for axis in range(3):
    step = h * jnp.eye(3)[axis]
    fd = (f(points + step) - f(points - step)) / (2 * h)
    np.testing.assert_allclose(grads[:, axis], np.asarray(fd), atol=2e-3)


def test_overlap_is_skip_plus_transformed_path(gf):
  points = gf.make_grid(4)
  g = gf.gradient_field(points)
  branch = gf.make_branch(jax.random.PRNGKey(1), gain=1.5)
  t = gf.transformed_path(branch, points, g)
  np.testing.assert_allclose(gf.overlap(branch, points, g), g + t, rtol=1e-6, atol=1e-7)
  # The transformed path is the branch's VJP: W^T [(1 - tanh^2(W p + b)) * g].
  pre = points @ branch.w.T + branch.b
  expected = ((1 - jnp.tanh(pre) ** 2) * g) @ branch.w
  np.testing.assert_allclose(t, expected, rtol=1e-5, atol=1e-6)
  assert float(jnp.abs(t).max()) > 0.1  # The overlap really changes the field.


def test_znorm_panel_is_standardized_over_the_whole_field(gf):
  _, panels = gf.simulate(4, seed=2)
  b = np.asarray(panels.overlapped, np.float64)
  c = np.asarray(panels.znormed, np.float64)
  assert c.shape == b.shape == (64, 3)
  assert abs(c.mean()) < 1e-6
  np.testing.assert_allclose(c.std(), 1.0, atol=1e-5)
  # One tensor: statistics over all 3 n^3 entries, not per point or per component.
  np.testing.assert_allclose(c, (b - b.mean()) / b.std(), rtol=1e-4, atol=1e-5)


def test_difference_panel_is_c_minus_b(gf):
  _, panels = gf.simulate(4, seed=0)
  np.testing.assert_array_equal(panels.difference, panels.znormed - panels.overlapped)


def test_simulation_is_seeded(gf):
  _, p0 = gf.simulate(3, seed=0)
  _, p0_again = gf.simulate(3, seed=0)
  _, p1 = gf.simulate(3, seed=1)
  for a, b in zip(p0, p0_again, strict=True):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(p0.original, p1.original)  # The loss surface is fixed.
  assert not np.allclose(p0.overlapped, p1.overlapped)  # The branch is random.


# --------------------------------------------------------------------------- plot_runs


def _record(step, steps_per_epoch=10, **overrides):
  frac = step / 100
  record = {
    "step": step,
    "epoch": step / steps_per_epoch,
    "train_loss": 2.3 * (1 - 0.8 * frac),
    "train_accuracy": 0.1 + 0.8 * frac,
    "eval_loss": 2.3 * (1 - 0.7 * frac),
    "eval_accuracy": 0.1 + 0.7 * frac,
    "learning_rate": 0.1,
    "images_per_second": 1000.0,
    "wall_time": float(step),
    "extra_key": "ignored",
  }
  record.update(overrides)
  return record


def _write_workdir(path, records, tail=""):
  path.mkdir(parents=True)
  text = "".join(json.dumps(r) + "\n" for r in records) + tail
  (path / "metrics.jsonl").write_text(text)
  return path


@pytest.fixture
def workdirs(tmp_path):
  sgd = _write_workdir(tmp_path / "sgd", [_record(s) for s in (10, 20, 30, 40)])
  # Killed mid-write: the last line is cut off.
  znorm = _write_workdir(
    tmp_path / "znorm",
    [_record(s, eval_accuracy=0.2 + s / 100) for s in (10, 20, 30)],
    tail='{"step": 40, "epoch": 4.0, "train_lo',
  )
  return sgd, znorm


def test_load_metrics_skips_truncated_last_line(pr, workdirs):
  sgd, znorm = workdirs
  assert [r["step"] for r in pr.load_metrics(sgd)] == [10, 20, 30, 40]
  records = pr.load_metrics(znorm)
  assert [r["step"] for r in records] == [10, 20, 30]
  assert records[0]["extra_key"] == "ignored"


def test_load_metrics_skips_a_cut_line_between_complete_ones(pr, tmp_path):
  """A kill cuts a line; the next append starts on a new line: both complete lines count."""
  workdir = _write_workdir(tmp_path / "cut", [_record(10)], tail='{"step": 20, "epo\n')
  with (workdir / "metrics.jsonl").open("a") as f:
    f.write(json.dumps(_record(20)) + "\n")
  assert [r["step"] for r in pr.load_metrics(workdir)] == [10, 20]


def test_column_keeps_last_record_of_a_repeated_step(pr):
  records = [_record(10), _record(20, eval_loss=9.0), _record(20, eval_loss=1.0), _record(30)]
  xs, ys = pr.column(records, "step", "eval_loss")
  assert xs == [10, 20, 30]
  assert ys[1] == 1.0


@pytest.mark.parametrize("x", ["step", "epoch"])
def test_plot_runs_main_writes_png(pr, workdirs, tmp_path, x, capsys):
  out = tmp_path / "plots" / f"runs_{x}.png"
  argv = [*map(str, workdirs), "--out", str(out), "--x", x, "--labels", "SGD,ZNorm"]
  assert pr.main(argv) == out
  _assert_png(out)
  assert str(out) in capsys.readouterr().out


def test_plot_runs_function_default_labels(pr, workdirs, tmp_path):
  out = pr.plot_runs(workdirs, tmp_path / "default.png", log_loss=True)
  _assert_png(out)


def test_missing_metrics_file_exits_naming_the_path(pr, workdirs, tmp_path):
  missing = tmp_path / "never_ran"
  missing.mkdir()
  with pytest.raises(SystemExit) as exc:
    pr.main([str(workdirs[0]), str(missing), "--out", str(tmp_path / "x.png")])
  message = str(exc.value.code)
  assert str(missing / "metrics.jsonl") in message
  assert "\n" not in message
  assert not (tmp_path / "x.png").exists()


def test_label_count_mismatch_exits(pr, workdirs, tmp_path):
  with pytest.raises(SystemExit, match="labels"):
    pr.main([*map(str, workdirs), "--out", str(tmp_path / "x.png"), "--labels", "only_one"])


# --------------------------------------------------------------------------- overlap_report


@pytest.fixture(scope="module")
def ovr():
  return overlap_report


def _diag_record(step, transform, n_blocks=4):
  """A train.py diagnostics line: raw gradients shrink with depth; at step 1 both runs agree."""
  blocks = [f"stage{1 + i // 2}_block{i % 2}" for i in range(n_blocks)]
  paths = ["stem_conv/kernel", "stem_bn/scale", "stem_bn/bias"]
  paths += [f"{b}/conv{c}/kernel" for b in blocks for c in (1, 2)]
  paths += ["head/kernel", "head/bias"]
  drift = 1.0 if step == 1 else 1.0 + step / (100 if transform == "znorm" else 50)
  layers = {}
  for i, path in enumerate(paths):
    std = 10.0 ** (-1 - 2 * i / len(paths)) * drift
    u_std = 1.0 if transform == "znorm" and path.endswith("kernel") else std
    layers[path] = {
      "grad_norm": 30 * std,
      "grad_mean": 0.0,
      "grad_std": std,
      "update_norm": 30 * u_std,
      "update_mean": 0.0,
      "update_std": u_std,
    }
  split = {
    b: {
      "skip_norm": 0.1 / (i + 1),
      "branch_norm": 0.05 * drift,
      "total_norm": 0.12 / (i + 1),
      "cosine": 0.1 * (-1) ** i * drift,
    }
    for i, b in enumerate(blocks)
  }
  return {
    "kind": "diagnostics",
    "step": step,
    "epoch": step / 10,
    "layers": layers,
    "blocks": split,
    "seconds": 0.1,
  }


@pytest.fixture
def overlap_runs(tmp_path):
  """OUTDIR/runs/{none,znorm} as train.py leaves them: diagnostics lines among evaluations."""
  outdir = tmp_path / "report"
  for name in ("none", "znorm"):
    records = [_diag_record(1, name), _diag_record(10, name), _record(10)]
    records += [_diag_record(20, name), _record(20)]
    _write_workdir(outdir / "runs" / name, records)
  return outdir


def test_load_metrics_keeps_evaluations_apart_from_diagnostics(pr, ovr, overlap_runs):
  workdir = overlap_runs / "runs" / "znorm"
  evals = pr.load_metrics(workdir)
  assert [r["step"] for r in evals] == [10, 20] and all("kind" not in r for r in evals)
  assert pr.column(evals, "step", "eval_accuracy")[0] == [10, 20]
  diags = pr.load_metrics(workdir, kind="diagnostics")
  assert [r["step"] for r in diags] == [1, 10, 20]
  assert [r["step"] for r in ovr.load_diagnostics(workdir)] == [1, 10, 20]


def test_short_names(ovr):
  assert ovr.short_name("stage2_block3/conv1/kernel") == "2.3.conv1"
  assert ovr.short_name("stage3_block0") == "3.0"
  assert ovr.short_name("stem_conv/kernel") == "stem"
  assert ovr.short_name("head/kernel") == "head"


def test_overlap_report_plots(ovr, overlap_runs, tmp_path):
  runs = {n: ovr.load_diagnostics(overlap_runs / "runs" / n) for n in ovr.RUNS}
  _assert_png(ovr.plot_gradient_scale(runs, tmp_path / "a" / ovr.SCALE_PNG))
  _assert_png(ovr.plot_overlap_split(runs, tmp_path / "a" / ovr.SPLIT_PNG))
  # One logged step, and first steps that differ between runs, also plot.
  _assert_png(ovr.plot_gradient_scale({"znorm": runs["znorm"][-1:]}, tmp_path / "one.png"))
  other = {"none": runs["none"][1:], "znorm": runs["znorm"]}
  _assert_png(ovr.plot_overlap_split(other, tmp_path / "differ.png"))
  lines = ovr.summarize(runs)
  assert len(lines) == 2 and "(update 1)" in lines[1] and "step 20" in lines[0]


def test_overlap_report_main_plot_only(ovr, overlap_runs, capsys):
  written = ovr.main(["--outdir", str(overlap_runs), "--plot_only"])
  assert written == [overlap_runs / ovr.SCALE_PNG, overlap_runs / ovr.SPLIT_PNG]
  for path in written:
    _assert_png(path)
  out = capsys.readouterr().out
  assert f"wrote {written[0]}" in out and "cosine mean" in out


def test_overlap_report_without_diagnostics_is_a_clear_error(ovr, tmp_path):
  for name in ("none", "znorm"):
    _write_workdir(tmp_path / "runs" / name, [_record(10)])
  with pytest.raises(SystemExit, match="no diagnostics lines"):
    ovr.main(["--outdir", str(tmp_path), "--plot_only"])


def test_overlap_numbers_by_hand(ovr):
  record = _diag_record(20, "znorm", n_blocks=4)
  n = ovr.overlap_numbers(record)
  # total_norm 0.12 / (i + 1): first / last = 4; branch 0.05 * 1.2 over skip 0.1 / (i + 1)
  assert n["input_grad_growth"] == pytest.approx(4.0)
  assert n["branch_skip_median"] == pytest.approx(0.06 / (0.1 / 3))  # the 3rd of 4 ratios
  assert n["cosine_mean"] == pytest.approx(0.0) and n["cosine_max"] == pytest.approx(0.12)
  stds = [record["layers"][p]["grad_std"] for p in ovr.kernel_paths(record)]
  assert (
    n["grad_std_spread"] == pytest.approx(max(stds) / min(stds)) and n["update_std_spread"] == 1
  )


def test_overlap_report_across_depths_plot_only(ovr, tmp_path, capsys):
  for model, blocks in (("resnet20", 4), ("resnet56", 8)):
    for name in ("none", "znorm"):
      records = [_diag_record(1, name, blocks), _diag_record(20, name, blocks), _record(20)]
      _write_workdir(tmp_path / "runs" / model / name, records)
  written = ovr.main(["--outdir", str(tmp_path), "--models", "resnet20,resnet56", "--plot_only"])
  assert written[-2:] == [tmp_path / ovr.DEPTH_PNG, tmp_path / ovr.DEPTH_MD]
  _assert_png(written[-2])
  _assert_png(tmp_path / "resnet56" / ovr.SCALE_PNG)
  table = written[-1].read_text()
  assert "| resnet56 | Adam + ZNorm | 20 | 8 | 8 |" in table  # growth 0.12 / (0.12 / 8)
  with pytest.raises(ValueError, match="no depth in its name"):
    ovr.model_depth("wide_resnet")
