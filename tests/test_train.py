"""Tests of the trainer and train.py: config validation, the optimizer, outputs, 1-vs-4-device
and K-vs-1-steps-per-dispatch equivalence, kill/SIGTERM-and-resume determinism, one-line CLI
errors and a real-CIFAR-10 integration run.

Runs use `tfds.testing.mock_data` and ResNet-20 at widths (4, 8, 16); the runs that get killed
are subprocesses started together, sharing a JAX compilation cache so that the resumed runs do
not compile again.
"""

import functools
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds
from flax.traverse_util import flatten_dict

import configs
import models
import znorm_optax as zo
from configs import default
from tests.helpers import (
  DETERMINISTIC_FIELDS,
  HAS_REAL_DATA,
  MOCK_CLI,
  MOCK_EXAMPLES,
  NO_REAL_DATA,
  REAL_DATA_DIR,
  ROOT,
  RUN_SCRIPT,
  TINY,
  TINY_FLAGS,
  finalized_steps,
  flat_state,
  initial_state,
  relative_difference,
  subprocess_env,
  tiny_config,
)
from trainer import checkpoints, datasets, diagnostics, loop, optimizers, plan, steps
from trainer import input_pipeline as ip
from trainer import state as state_lib
from trainer.errors import ConfigError
from trainer.loop import train_and_evaluate
from trainer.metrics import read_metrics

# ---------------------------------------------------------------------------------------------
# Config, schedule, optimizer, validation (no data, no training)
# ---------------------------------------------------------------------------------------------


def test_default_config_follows_the_paper_setting():
  config = default.get_config()
  assert config.model == "resnet20" and config.dataset == "cifar10"
  assert config.optimizer == "adam" and config.learning_rate == 1e-3
  assert config.batch_size == 128 and config.bn_momentum == 0.9
  assert config.grad_transform == "znorm"
  assert 0 < config.warmup_fraction <= 0.05
  assert config.data_dir is None  # a placeholder, overridable from the command line


@pytest.mark.parametrize(
  "name, transform",
  [
    ("paper_adam", "none"),
    ("paper_centralize", "centralize"),
    ("paper_clip_by_global_norm", "clip_by_global_norm"),
    ("paper_znorm", "znorm"),
  ],
)
def test_paper_configs_differ_from_default_in_the_transform(name, transform):
  config, base = configs.make_config(name), default.get_config()
  assert config.grad_transform == transform
  differing = {k for k in base.keys() if config[k] != base[k]}
  assert differing <= {"grad_transform", "grad_transform_params"}
  plan.validate_config(config, 4)


def test_the_quick_config_is_the_default_cut_short():
  quick, full = configs.make_config("quick").to_dict(), default.get_config().to_dict()
  changed = {k: (full[k], quick[k]) for k in full if full[k] != quick[k]}
  assert changed == {
    "train_split": ("train", "train[:5120]"),
    "eval_split": ("test", "test[:2000]"),
    "num_epochs": (100, 3),
  }


@pytest.mark.parametrize("schedule", ["constant", "cosine", "step"])
def test_learning_rate_schedule_warms_up_then_decays(schedule):
  config = default.get_config()
  config.schedule = schedule
  fn = optimizers.create_learning_rate_schedule(config, 1000)  # 50 warmup steps
  assert float(fn(0)) == 0.0
  assert float(fn(25)) == pytest.approx(5e-4)
  assert float(fn(50)) == pytest.approx(1e-3)
  end = float(fn(999))
  expected = {"constant": 1e-3, "cosine": 0.0, "step": 1e-5}[schedule]
  assert end == pytest.approx(expected, abs=1e-7)
  if schedule == "step":
    assert float(fn(499)) == pytest.approx(1e-3) and float(fn(501)) == pytest.approx(1e-4)


@pytest.mark.parametrize("transform", zo.GRADIENT_TRANSFORMS)
@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_optimizer_updates_with_every_transform(optimizer, transform):
  config = default.get_config()
  config.update(
    dict(optimizer=optimizer, grad_transform=transform, weight_decay=1e-4, warmup_fraction=0.0)
  )
  tx = optimizers.create_optimizer(config, 10).tx
  params = {"dense": {"kernel": np.ones((3, 2), np.float32), "bias": np.ones(2, np.float32)}}
  grads = {
    "dense": {
      "kernel": np.arange(6, dtype=np.float32).reshape(3, 2),
      "bias": np.array([0.5, -0.5], np.float32),
    }
  }
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  for leaf in jax.tree.leaves(updates):
    assert np.isfinite(leaf).all() and np.abs(leaf).max() > 0


def test_weight_decay_only_touches_kernels():
  config = default.get_config()
  config.update(
    dict(
      optimizer="sgd",
      momentum=0.0,
      grad_transform="none",
      weight_decay=0.1,
      schedule="constant",
      warmup_fraction=0.0,
      learning_rate=1.0,
    )
  )
  tx = optimizers.create_optimizer(config, 10).tx
  params = {"kernel": np.ones((2, 2), np.float32), "bias": np.ones(2, np.float32)}
  zeros = jax.tree.map(np.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  np.testing.assert_allclose(updates["kernel"], -0.1)
  np.testing.assert_allclose(updates["bias"], 0.0)


@pytest.mark.parametrize(
  "field, value, match",
  [
    ("model", "resnet21", "valid values: resnet20, resnet32"),
    ("optimizer", "lamb", "valid values: adam, adamw, sgd"),
    ("grad_transform", "zscore", "valid names: none, znorm, centralize"),
    ("schedule", "linear", "valid values: constant, cosine, step"),
    ("dataset", "mnist", "valid values: cifar10, cifar100"),
    ("dtype", "float8", "valid values: float32, bfloat16"),
    ("batch_size", 18, "not divisible by the 4 devices"),
    ("eval_batch_size", 10, "not divisible by the 4 devices"),
    ("grad_transform_kwargs.eps", -1.0, "grad_transform_kwargs.eps=-1.0: .*eps"),
    ("grad_transform_kwargs.max_norm", 2.0, "znorm .*max_norm"),
    ("num_devices", 9, "num_devices=9"),
    ("steps_per_dispatch", 0, "steps_per_dispatch=0 must be >= 1"),
    ("diagnostics_every_steps", -1, "diagnostics_every_steps=-1 must be >= 0"),
  ],
)
def test_bad_config_fails_before_loading_data(tmp_path, field, value, match):
  config = tiny_config(data_dir=str(tmp_path / "no_data_here"))
  *parents, name = field.split(".")
  functools.reduce(getattr, parents, config)[name] = value
  start = time.monotonic()
  with pytest.raises(ValueError, match=match) as info:
    train_and_evaluate(config, str(tmp_path / "work"))
  assert "\n" not in str(info.value)
  assert time.monotonic() - start < 5  # no data loading, no compilation


def test_every_keyword_of_every_library_transform_is_a_config_field():
  fields = set(default.get_config().grad_transform_kwargs)
  for name in zo.GRADIENT_TRANSFORMS:
    factory = optax.identity if name == "none" else getattr(zo, name)
    keywords = {p.name for p in inspect.signature(factory).parameters.values()}
    assert keywords <= fields, (name, keywords - fields)


def test_grad_transform_kwargs_reach_the_transform():
  """znorm per output channel (axis=(0, 1, 2)) through the config, against NumPy."""
  config = default.get_config()
  config.update(
    dict(
      optimizer="sgd",
      momentum=0.0,
      schedule="constant",
      warmup_fraction=0.0,
      learning_rate=1.0,
      grad_transform_params="all",
    )
  )
  config.grad_transform_kwargs.axis = (0, 1, 2)
  config.grad_transform_kwargs.eps = 1e-3
  g = np.random.default_rng(0).normal(0.5, 2.0, (3, 3, 2, 4)).astype(np.float32)
  tx = optimizers.create_optimizer(config, 10).tx
  updates, _ = tx.update({"kernel": g}, tx.init({"kernel": g}))
  g64 = g.astype(np.float64)
  mean, std = g64.mean((0, 1, 2)), g64.std((0, 1, 2))
  np.testing.assert_allclose(updates["kernel"], -(g64 - mean) / (std + 1e-3), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
  "field, split", [("train_split", "train[:100]"), ("validation_split", "train[x:]")]
)
def test_a_bad_split_is_a_clear_error_naming_its_field(tmp_path, field, split):
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    with pytest.raises(ConfigError, match=re.escape(f"--config.{field}={split}: ")):
      train_and_evaluate(tiny_config(**{field: split}), str(tmp_path))


@pytest.mark.slow
def test_a_validation_split_is_evaluated_beside_the_eval_split_without_changing_the_run(
  tmp_path,
):
  """The validation split is evaluated after every evaluation step; made the test split, its
  numbers equal the eval split's, and the run's own numbers equal a run without it."""
  short = dict(num_train_steps=4, eval_every_steps=2, num_devices=2, steps_per_dispatch=1)
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    train_and_evaluate(tiny_config(**short), str(tmp_path / "plain"))
    train_and_evaluate(tiny_config(validation_split="test", **short), str(tmp_path / "validated"))
  plain, validated = read_metrics(tmp_path / "plain"), read_metrics(tmp_path / "validated")
  assert [r["step"] for r in validated] == [2, 4]
  for a, b in zip(plain, validated, strict=True):
    assert {k: a[k] for k in DETERMINISTIC_FIELDS} == {k: b[k] for k in DETERMINISTIC_FIELDS}
    assert "validation_accuracy" not in a
    assert (b["validation_loss"], b["validation_accuracy"]) == (b["eval_loss"], b["eval_accuracy"])


@pytest.mark.parametrize(
  "train_split, validation_split, shared",
  [
    ("train[:48]", "train[40:]", 8),
    ("train", "train[-16:]", 16),
    ("train[:10]+train[60:]", "train[5:62]", 7),
  ],
)
def test_a_validation_split_that_overlaps_the_train_split_is_refused(
  tmp_path, train_split, validation_split, shared
):
  config = tiny_config(train_split=train_split, validation_split=validation_split)
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    train, validation = (datasets.open_split("cifar10", s) for s in (train_split, validation_split))
    assert train.shared_with(validation) == validation.shared_with(train) == shared
    with pytest.raises(ValueError, match=f"shares {shared} examples with --config.train_split"):
      train_and_evaluate(config, str(tmp_path))
    disjoint = (datasets.open_split("cifar10", s) for s in ("train[:48]", "train[-16:]"))
    assert next(disjoint).shared_with(next(disjoint)) == 0


# ---------------------------------------------------------------------------------------------
# Runs: a 4-device reference run (subprocess), killed/SIGTERM'd runs resumed, a 1-device run
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Subprocess runs of the TINY config on 4 devices:

  * ``ref``: uninterrupted (it fills the compilation cache for the others);
  * ``kill``: SIGKILLed as soon as its first checkpoint is complete, then given a fake
    half-written later checkpoint and a cut metrics line (a kill during a checkpoint or a
    metrics write), then re-run to the end;
  * ``term``: sent SIGTERM after its first checkpoint (saves and exits 0), then re-run;
  * ``int``: sent SIGINT (Ctrl-C) after its first checkpoint (saves and raises
    `trainer.errors.Interrupted`), then re-run.
  """
  base = tmp_path_factory.mktemp("runs")
  env = subprocess_env(base / "jax_cache")
  script = base / "run.py"
  script.write_text(RUN_SCRIPT)
  overrides = json.dumps(TINY)

  def start(name, out):
    workdir = base / name
    command = [sys.executable, str(script), str(workdir), overrides, str(base / out)]
    if name == "int":  # through the command line, as a person presses Ctrl-C
      command = [sys.executable, "-c", MOCK_CLI, f"--workdir={workdir}", *TINY_FLAGS]
    return subprocess.Popen(
      command,
      cwd=ROOT,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )

  first = {}
  ref = start("ref", "ref.npz")
  out, err = ref.communicate(timeout=240)
  first["ref"] = {"rc": ref.returncode, "stdout": out, "stderr": err}
  assert ref.returncode == 0, err[-3000:]

  procs = {name: start(name, f"{name}_first.npz") for name in ("kill", "term", "int")}
  signals = {"kill": signal.SIGKILL, "term": signal.SIGTERM, "int": signal.SIGINT}
  sent = {}
  deadline = time.monotonic() + 240
  while any(p.poll() is None for p in procs.values()) and time.monotonic() < deadline:
    for name, sig in signals.items():
      if name not in sent and procs[name].poll() is None and finalized_steps(base / name):
        procs[name].send_signal(sig)
        sent[name] = finalized_steps(base / name)
    time.sleep(0.02)
  for name, p in procs.items():
    if p.poll() is None:
      p.kill()
    out, err = p.communicate()
    first[name] = {"rc": p.returncode, "stdout": out, "stderr": err}

  # The kill may have landed anywhere; add the debris of a kill during a checkpoint write and
  # during a metrics write on top.
  kill_dir = base / "kill"
  killed_at = finalized_steps(kill_dir)
  debris = kill_dir / "checkpoints" / f"{max(killed_at) + 2}.orbax-checkpoint-tmp-1234567"
  (debris / "default").mkdir(parents=True)
  (debris / "default" / "_METADATA").write_text('{"tree_metadata": {"pa')
  with open(kill_dir / "metrics.jsonl", "a") as f:
    f.write('{"step": 1000, "epoch": 2')

  again = {name: start(name, f"{name}.npz") for name in ("kill", "term", "int")}
  second = {}
  for name, p in again.items():
    out, err = p.communicate(timeout=240)
    second[name] = {"rc": p.returncode, "stdout": out, "stderr": err}
  return {"base": base, "first": first, "second": second, "sent": sent, "killed_at": killed_at}


def load_npz(path):
  with np.load(path) as z:
    return {k: z[k] for k in z.files}


@pytest.mark.slow
def test_smoke_run_writes_all_outputs(runs):
  workdir = runs["base"] / "ref"
  stdout = runs["first"]["ref"]["stdout"]
  assert "Done at step 12" in stdout
  # Off a terminal too, the first timed dispatch says how long the run takes.
  assert re.search(
    r"^\d+ img/s on cpu: about \d+ s for the 3 epochs; first evaluation in about \d+ s$",
    stdout,
    re.MULTILINE,
  ), stdout
  rows = read_metrics(workdir)
  assert [r["step"] for r in rows] == [4, 8, 12]
  for r in rows:
    for key in DETERMINISTIC_FIELDS + ("images_per_second", "wall_time"):
      assert key in r
    assert 0.0 <= r["train_accuracy"] <= 1.0 and 0.0 <= r["eval_accuracy"] <= 1.0
    assert np.isfinite(r["train_loss"]) and np.isfinite(r["eval_loss"])
    assert r["images_per_second"] > 0
  assert rows[-1]["epoch"] == 3.0
  config = json.loads((workdir / "config.json").read_text())
  assert config["model"] == "resnet20" and config["num_train_steps"] == 12
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
  assert finalized_steps(workdir) == [8, 10, 12]  # keep_checkpoints=3
  assert int(load_npz(runs["base"] / "ref.npz")["['step']"]) == 12


@pytest.mark.parametrize(
  "step, start, rate, want",
  [
    (
      16,
      0,
      205.0,
      "205 img/s on cpu: about 6.8 h for the 100 epochs; first evaluation in about 4 min",
    ),
    (
      8,
      0,
      1000.0,
      "1000 img/s on cpu: about 83 min for the 100 epochs; first evaluation in about 49 s",
    ),
    (
      20_008,
      20_000,
      2e4,
      "20000 img/s on cpu: about 2 min for the 48.7 epochs left; next evaluation in about 2 s",
    ),
    (
      38_616,
      38_610,
      1000.0,
      "1000 img/s on cpu: about 50 s for the 1 epoch left; next evaluation in about 49 s",
    ),
  ],
)
def test_the_forecast_counts_the_steps_left_at_the_measured_rate(step, start, rate, want):
  """ResNet-20 defaults: 390 steps per epoch of 128 images, 100 epochs, one evaluation per
  epoch. 205 img/s: 39,000 steps x 128 / 205 = 24,351 s = 6.8 h; (390 - 16) x 128 / 205 =
  234 s to the first evaluation."""
  config = default.get_config()
  run_plan = plan.RunPlan.create(config, 50_000)
  assert (run_plan.total_steps, run_plan.steps_per_epoch) == (39_000, 390)
  assert loop.forecast_line(run_plan, step, start, rate, "cpu") == want


def test_eval_counts_every_example_once():
  """64 eval examples in batches of 24 over 2 devices: the padded 8 must not count, and the
  sums equal a plain forward pass over the split."""
  config = tiny_config(num_train_steps=1, num_devices=2)
  model = state_lib.create_model(config, 10)
  state = initial_state(config, 1)
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    images, labels = datasets.load_split("cifar10", "test")
  devices = jax.local_devices()[:2]
  spec = datasets.DatasetSpec(10, (0.5,) * 3, (0.25,) * 3)
  fns = steps.make_steps(
    model, optax.identity(), spec, seed=0, dtype=np.float32, augment=False, devices=devices
  )
  split = ip.eval_batches(images, labels, 24, devices)
  sums = fns.evaluate(ip.replicate(state, devices), ip.resident_batches(split))
  assert sums["count"] == 64
  logits = model.apply(
    {"params": state.params, "batch_stats": state.batch_stats},
    ip.normalize(images, spec.mean, spec.std),
    train=False,
  )
  assert float(sums["correct"]) == float((np.argmax(logits, -1) == labels).sum())
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum()
  assert float(sums["loss"]) == pytest.approx(float(loss), rel=1e-5)


@pytest.mark.slow
def test_checkpoint_restores_the_final_state(runs):
  workdir = runs["base"] / "ref"
  config = tiny_config()
  like = initial_state(config, 12)
  state, sums = checkpoints.restore_checkpoint(str(workdir), like)
  assert int(state.step) == 12
  assert jax.tree.structure(state.opt_state) == jax.tree.structure(like.opt_state)
  ref = load_npz(runs["base"] / "ref.npz")
  restored = flat_state(state)
  assert restored.keys() == ref.keys()
  for k in ref:
    np.testing.assert_array_equal(restored[k], ref[k], err_msg=k)
  np.testing.assert_array_equal(sums, 0.0)  # the last step was an evaluation


def _assert_same_run(runs, name):
  ref = load_npz(runs["base"] / "ref.npz")
  got = load_npz(runs["base"] / f"{name}.npz")
  assert got.keys() == ref.keys()
  for k in ref:
    np.testing.assert_array_equal(got[k], ref[k], err_msg=k)  # bit-identical
  ref_rows, rows = read_metrics(runs["base"] / "ref"), read_metrics(runs["base"] / name)
  assert len(rows) == len(ref_rows) == 3
  for a, b in zip(ref_rows, rows, strict=True):
    assert {k: a[k] for k in DETERMINISTIC_FIELDS} == {k: b[k] for k in DETERMINISTIC_FIELDS}


@pytest.mark.slow
def test_sigkill_and_resume_gives_identical_results(runs):
  first, second = runs["first"]["kill"], runs["second"]["kill"]
  assert first["rc"] == -signal.SIGKILL, "the run ended before it could be killed"
  resumed_from = max(runs["killed_at"])
  assert 2 <= resumed_from < 12
  assert f"Resumed from step {resumed_from}" in second["stdout"], second["stderr"][-3000:]
  assert second["rc"] == 0
  assert not [d for d in os.listdir(runs["base"] / "kill" / "checkpoints") if "tmp" in d]
  _assert_same_run(runs, "kill")


@pytest.mark.slow
def test_sigterm_saves_exits_cleanly_and_resumes_identically(runs):
  first, second = runs["first"]["term"], runs["second"]["term"]
  assert first["rc"] == 0, first["stderr"][-3000:]
  assert "SIGTERM: stopped at step" in first["stdout"]
  stopped = int(load_npz(runs["base"] / "term_first.npz")["['step']"])
  assert stopped < 12, "the run ended before SIGTERM arrived"
  assert f"(checkpoint at step {stopped})" in first["stdout"]
  assert f"Resumed from step {stopped}" in second["stdout"]
  assert second["rc"] == 0
  _assert_same_run(runs, "term")


# One step per dispatch and a checkpoint at the end only: the reference of the 1-device and the
# diagnostics runs (with several steps per dispatch, programs of different sizes round
# differently, and Adam after ZNorm amplifies that on this tiny model, see
# test_eight_steps_per_dispatch_match_single_steps).
SINGLE_STEPS = dict(steps_per_dispatch=1, checkpoint_every_steps=12)


@pytest.fixture(scope="module")
def single_step_run(tmp_path_factory):
  """The TINY run on 4 devices with `SINGLE_STEPS`, in this process."""
  workdir = tmp_path_factory.mktemp("single_steps")
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    state = train_and_evaluate(tiny_config(**SINGLE_STEPS), str(workdir))
  return workdir, flat_state(state)


@pytest.mark.slow
def test_ctrl_c_saves_stops_and_resumes_identically(runs):
  """train.py: the first Ctrl-C saves at the next step boundary and exits 130 with one line
  saying how to resume; the re-run ends as the uninterrupted run."""
  first, second = runs["first"]["int"], runs["second"]["int"]
  assert first["rc"] == 130, first["stderr"][-3000:]
  lines = [line for line in first["stderr"].splitlines() if line.startswith("Ctrl-C")]
  assert lines[0].startswith("Ctrl-C: saving a checkpoint at the next step boundary")
  match = re.fullmatch(
    r"Ctrl-C: stopped at step (\d+) with a checkpoint in .*; re-run the same "
    r"command to resume",
    lines[-1],
  )
  assert match and "Traceback" not in first["stderr"], first["stderr"][-3000:]
  stopped = int(match.group(1))
  assert stopped < 12, "the run ended before SIGINT arrived"
  assert f"Resumed from step {stopped}" in second["stdout"] and second["rc"] == 0
  state = checkpoints.restore_checkpoint(
    str(runs["base"] / "int"), initial_state(tiny_config(), 12)
  )
  ref = load_npz(runs["base"] / "ref.npz")
  for key, value in flat_state(state[0]).items():
    np.testing.assert_array_equal(value, ref[key], err_msg=key)
  ref_rows, rows = read_metrics(runs["base"] / "ref"), read_metrics(runs["base"] / "int")
  assert [{k: r[k] for k in DETERMINISTIC_FIELDS} for r in rows] == [
    {k: r[k] for k in DETERMINISTIC_FIELDS} for r in ref_rows
  ]


@pytest.mark.slow
def test_four_devices_match_one_device(single_step_run, tmp_path):
  """Same global batch over 1 device and 4, with synchronized BatchNorm and
  device-count-invariant augmentation."""
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    one = flat_state(train_and_evaluate(tiny_config(num_devices=1, **SINGLE_STEPS), str(tmp_path)))
  rows = {1: read_metrics(tmp_path), 4: read_metrics(single_step_run[0])}
  four = single_step_run[1]
  assert one.keys() == four.keys()
  worst = max(float(np.max(np.abs(one[k] - four[k]))) for k in one)
  assert worst < 1e-5, worst
  for a, b in zip(rows[1], rows[4], strict=True):
    for k in ("train_loss", "eval_loss"):
      assert a[k] == pytest.approx(b[k], rel=1e-4)

  # Re-running a finished run resumes at its end and changes nothing.
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    again = train_and_evaluate(tiny_config(num_devices=1, **SINGLE_STEPS), str(tmp_path))
  assert read_metrics(tmp_path) == rows[1]
  for k, v in flat_state(again).items():
    np.testing.assert_array_equal(v, one[k])


@pytest.mark.slow
def test_eight_steps_per_dispatch_match_single_steps(tmp_path):
  """K = 8 steps per compiled call against K = 1 after 16 steps (two whole dispatches) and
  after 20 (16 + 4 single steps to reach the end). XLA rounds a few values of the 8-step
  program differently by an ulp (measured: 5e-8 relative over the whole state, 17 of 218 arrays
  bit-identical), so the checkpoints agree to 1e-6 relative and the metrics lines to 1e-6. The
  run has no gradient transform: with ZNorm or centralization on this 4-channel model, Adam's
  sign-like early steps on the centred (near-zero) gradient elements amplify the ulps to
  ~5e-4 in 16 steps."""
  states = {}
  for k in (1, 8):
    config = tiny_config(
      steps_per_dispatch=k,
      num_train_steps=20,
      eval_every_steps=16,
      checkpoint_every_steps=16,
      num_devices=2,
      grad_transform="none",
    )
    with tfds.testing.mock_data(num_examples=256):  # 16 steps per epoch
      train_and_evaluate(config, str(tmp_path / f"k{k}"))
    like = initial_state(config, 20)
    states[k] = {
      step: flat_state(checkpoints.restore_checkpoint(str(tmp_path / f"k{k}"), like, step)[0])
      for step in (16, 20)
    }
    rows = read_metrics(tmp_path / f"k{k}")
    assert [r["step"] for r in rows] == [16, 20]
    states[k]["rows"] = [{f: r[f] for f in DETERMINISTIC_FIELDS} for r in rows]
  for step in (16, 20):
    assert int(states[8][step]["['step']"]) == step
    assert relative_difference(states[8][step], states[1][step]) < 1e-6
  for a, b in zip(states[8]["rows"], states[1]["rows"], strict=True):
    assert a["step"] == b["step"] and a["epoch"] == b["epoch"]
    for field in DETERMINISTIC_FIELDS[2:]:
      assert a[field] == pytest.approx(b[field], rel=1e-6), field


@pytest.mark.slow
def test_k_step_scan_equals_k_single_dispatches():
  """The trainer's step function for K = 8 in one call as a `lax.scan` (accelerators; the
  CPU's unrolled program is compared through the loop by
  `test_eight_steps_per_dispatch_match_single_steps`) against 8 calls of K = 1 on the same
  resident data (noise images, no gradient transform). Rounding differs (XLA:CPU compiles a
  loop body's convolutions with other kernels) and grows on noise: measured 2e-4 of the
  losses, 2e-3 of the state after 8 steps (unrolled: 4e-6 and 2e-4). A batch taken in the
  wrong order or twice moves the loss by ~5%."""
  config = tiny_config(num_devices=2, grad_transform="none")
  devices = jax.local_devices()[:2]
  model = state_lib.create_model(config, 10)
  tx = optimizers.create_optimizer(config, 8).tx
  spec = datasets.DATASETS["cifar10"]
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, 64).astype(np.int32)
  data = ip.replicate((images, labels), devices)
  fns = {
    u: steps.make_steps(
      model, tx, spec, seed=0, dtype=np.float32, augment=True, devices=devices, unroll=u
    )
    for u in (False, True)
  }
  start = initial_state(config, 8)
  one = ip.replicate(start, devices)
  losses = []
  for step in range(8):
    idx = ip.shard(ip.dispatch_indices(0, step, 1, 64, 16, 2), devices)
    one, metrics = fns[True].train(one, *data, idx)
    losses.append(np.asarray(metrics["loss"])[0, 0])
  idx = ip.shard(ip.dispatch_indices(0, 0, 8, 64, 16, 2), devices)
  eight, metrics = fns[False].train(ip.replicate(start, devices), *data, idx)
  assert np.asarray(metrics["loss"]).shape == (2, 8)
  np.testing.assert_allclose(np.asarray(metrics["loss"])[0], losses, rtol=1e-3)
  eight, one = flat_state(ip.unreplicate(eight)), flat_state(ip.unreplicate(one))
  assert relative_difference(eight, one) < 1e-2


def test_dispatches_stop_at_every_boundary():
  config = tiny_config(
    steps_per_dispatch=8,
    num_train_steps=40,
    eval_every_steps=10,
    checkpoint_every_steps=20,
    diagnostics_every_steps=16,
  )
  run = plan.RunPlan.create(config, 64)
  step, sizes = 0, []
  while step < run.total_steps:
    sizes.append(run.dispatch_size(step))
    step += sizes[-1]
  ends = np.cumsum(sizes)
  for boundary in (10, 15, 20, 30, 31, 40):  # evaluations, diagnostics (before 16, 32), end
    assert boundary in ends, (boundary, sizes)
  assert sizes.count(8) == 3 and set(sizes) == {1, 8}, sizes  # 0-8, 20-28, 31-39


# ---------------------------------------------------------------------------------------------
# Command line: one line on stderr, nonzero exit, no traceback
# ---------------------------------------------------------------------------------------------

# Run with the checkout as the working directory (`python -c` puts it on sys.path).
CLI_WRAPPER = """
import runpy, sys
from trainer import datasets
datasets.network_available = lambda *a, **k: False  # as on a machine without network
sys.argv = ["train.py"] + sys.argv[1:]
runpy.run_path("train.py", run_name="__main__")
"""


@pytest.mark.slow
@pytest.mark.parametrize(
  "args, match",
  [
    (["--config.model=resnet21"], "unknown model 'resnet21'; valid values: resnet20"),
    (["--config.optimizer=lamb"], "valid values: adam, adamw, sgd"),
    (["--config.grad_transform=zscore"], "valid names: none, znorm, centralize"),
    (["--config.grad_transform=centralize", "--config.grad_transform_kwargs.eps=0.1"], "eps"),
    (["--config.batch_size=130"], "batch_size=130 is not divisible by the 4 devices"),
    (["--config.dataset=cifar100", "--config.data_dir={empty}"], "--config.data_dir"),
    (["--config.nosuchfield=1"], "no field"),
  ],
)
def test_cli_errors_are_one_line(tmp_path, args, match):
  empty = tmp_path / "empty_data_dir"
  empty.mkdir()
  args = [a.format(empty=empty) for a in args]
  start = time.monotonic()
  proc = subprocess.run(
    [sys.executable, "-c", CLI_WRAPPER, f"--workdir={tmp_path / 'work'}", *args],
    env=subprocess_env(tmp_path / "cache"),
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert time.monotonic() - start < 60
  assert proc.returncode != 0
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert len(lines) == 1, proc.stderr
  assert lines[0].startswith("error: ") and match in lines[0], lines[0]
  assert "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.slow
def test_an_unexpected_error_keeps_its_traceback(tmp_path):
  """Only the project's own errors become one line: a ValueError from a bug (here raised where
  the model is initialized, as flax or JAX would) keeps its traceback."""
  script = (
    "from trainer import loop\n"
    "def broken(*args, **kwargs):\n"
    "  raise ValueError('an internal bug')\n"
    "loop.create_train_state = broken\n" + MOCK_CLI
  )
  proc = subprocess.run(
    [sys.executable, "-c", script, f"--workdir={tmp_path / 'work'}", *TINY_FLAGS],
    env=subprocess_env(tmp_path / "cache"),
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 1, proc.stderr
  assert "Traceback (most recent call last)" in proc.stderr
  assert proc.stderr.rstrip().endswith("ValueError: an internal bug")
  assert "error: an internal bug" not in proc.stderr


# ---------------------------------------------------------------------------------------------
# Real CIFAR-10
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not HAS_REAL_DATA, reason=NO_REAL_DATA)
def test_integration_resnet20_znorm_learns_real_cifar10(tmp_path):
  config = default.get_config()  # resnet20, Adam lr 1e-3 + ZNorm, batch 128
  config.update(
    dict(
      data_dir=REAL_DATA_DIR,
      train_split="train[:4096]",
      eval_split="test[:1000]",
      num_train_steps=100,
      eval_every_steps=50,
      checkpoint_every_steps=100,
      steps_per_dispatch=1,  # an 8-step program takes ~45 s more to compile on CPU
    )
  )
  assert config.model == "resnet20" and config.grad_transform == "znorm"
  train_and_evaluate(config, str(tmp_path))
  rows = read_metrics(tmp_path)
  assert rows[-1]["step"] == 100
  assert rows[-1]["eval_accuracy"] > 0.25, rows


# ---------------------------------------------------------------------------------------------
# Gradient diagnostics (issue 7) and the CIFAR stem of the ImageNet-style models
# ---------------------------------------------------------------------------------------------

DIAG_EVERY = 4
LAYER_STATS = ("grad_norm", "grad_mean", "grad_std", "update_norm", "update_mean", "update_std")
SPLIT_STATS = ("skip_norm", "branch_norm", "total_norm", "cosine")
TINY_BLOCKS = [f"stage{i}_block{j}" for i in (1, 2, 3) for j in range(3)]


@pytest.fixture(scope="module")
def diag_run(tmp_path_factory):
  """The run of `single_step_run` with diagnostics every 4 steps, in this process."""
  workdir = tmp_path_factory.mktemp("diag")
  config = tiny_config(diagnostics_every_steps=DIAG_EVERY, **SINGLE_STEPS)
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    state = train_and_evaluate(config, str(workdir))
  return workdir, state


def diagnostic_rows(workdir):
  return read_metrics(workdir, kind="diagnostics")


def test_optimizer_and_its_state_do_not_depend_on_diagnostics():
  params = {"dense": {"kernel": np.ones((3, 2), np.float32), "bias": np.ones(2, np.float32)}}
  off = optimizers.create_optimizer(tiny_config(), 10).tx.init(params)
  on = optimizers.create_optimizer(tiny_config(diagnostics_every_steps=5), 10).tx.init(params)
  assert jax.tree.structure(on) == jax.tree.structure(off)
  assert len(off) == 2  # (gradient transform, base optimizer)


@pytest.mark.slow
def test_diagnostics_lines_every_n_steps_in_forward_order(diag_run):
  workdir, _ = diag_run
  rows = diagnostic_rows(workdir)
  assert [r["step"] for r in rows] == [1, 4, 8, 12]
  model = state_lib.create_model(tiny_config(), 10)
  layers = list(diagnostics.param_paths(model, (32, 32, 3)))
  assert layers[:3] == ["stem_conv/kernel", "stem_bn/scale", "stem_bn/bias"]
  assert layers[-2:] == ["head/kernel", "head/bias"]
  for r in rows:
    assert set(r) == {"kind", "step", "epoch", "layers", "blocks", "seconds"}
    assert r["epoch"] == r["step"] / 4 and r["seconds"] > 0
    assert list(r["layers"]) == layers
    assert list(r["blocks"]) == TINY_BLOCKS
    for path, s in r["layers"].items():
      assert list(s) == list(LAYER_STATS) and all(np.isfinite(v) for v in s.values())
      assert s["grad_norm"] > 0
      if path.endswith("kernel"):  # ZNorm'd: mean 0, std 1
        assert abs(s["update_mean"]) < 1e-5
        assert s["update_std"] == pytest.approx(1, rel=1e-4)
      else:  # grad_transform_params=kernels: other leaves pass through
        assert [s[f"update_{k}"] for k in ("norm", "mean", "std")] == [
          s[f"grad_{k}"] for k in ("norm", "mean", "std")
        ]
    for s in r["blocks"].values():
      assert list(s) == list(SPLIT_STATS)
      assert s["skip_norm"] > 0 and s["branch_norm"] > 0 and -1 <= s["cosine"] <= 1
      # |s + b|^2 = |s|^2 + |b|^2 + 2 cos |s| |b|
      expected = (
        s["skip_norm"] ** 2
        + s["branch_norm"] ** 2
        + 2 * s["cosine"] * s["skip_norm"] * s["branch_norm"]
      )
      assert s["total_norm"] ** 2 == pytest.approx(expected, rel=1e-4)

  events = [f for f in os.listdir(workdir) if "tfevents" in f]
  data = (workdir / events[0]).read_bytes()  # the tags are plain bytes in the records
  for tag in (
    "grad_norm/stem_conv/kernel",
    "update_std/head/kernel",
    "overlap/stage3_block2/cosine",
    "overlap/stage1_block0/skip_norm",
  ):
    assert tag.encode() in data, tag


@pytest.mark.slow
def test_diagnostics_do_not_change_training_or_checkpoints(single_step_run, diag_run):
  workdir, state = diag_run
  ref_dir, ref = single_step_run
  got = flat_state(state)
  for k in ref:
    if k.startswith(("['params']", "['batch_stats']")):
      np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
  # Evaluation lines as without diagnostics; diagnostics off writes evaluation lines only.
  ref_rows = read_metrics(ref_dir, kind=None)
  assert all("kind" not in r for r in ref_rows)
  evals = [r for r in read_metrics(workdir) if "kind" not in r]
  assert [{k: r[k] for k in DETERMINISTIC_FIELDS} for r in evals] == [
    {k: r[k] for k in DETERMINISTIC_FIELDS} for r in ref_rows
  ]
  # The checkpoint leaves the statistics out: it restores into a run without diagnostics.
  config = tiny_config()
  like = initial_state(config, 12)
  restored = flat_state(checkpoints.restore_checkpoint(str(workdir), like)[0])
  assert restored.keys() == ref.keys()
  for k in ref:
    np.testing.assert_array_equal(restored[k], ref[k], err_msg=k)


@pytest.mark.slow
def test_diagnostics_are_the_exact_gradients_of_the_step(diag_run):
  """Step 1's line (4 devices) against one device over the whole global batch: the gradient
  of the mean loss w.r.t. the parameters and the `models.block_gradient_split` at the block
  inputs, recomputed independently of `train_step`, with NumPy statistics."""
  workdir, _ = diag_run
  row = diagnostic_rows(workdir)[0]
  assert row["step"] == 1
  config = tiny_config(num_devices=1)
  model = state_lib.create_model(config, 10)
  state = initial_state(config, 12)
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    images, labels = datasets.load_split("cifar10", "train")
  idx = ip.train_batch_indices(config.seed, 0, len(images), config.batch_size)
  offsets, flips = ip.augmentation_params(
    jax.random.fold_in(jax.random.key(config.seed), 0), config.batch_size
  )
  spec = datasets.DATASETS["cifar10"]
  x = ip.normalize(ip.augment(images[idx], offsets, flips), spec.mean, spec.std)
  variables = {"params": state.params, "batch_stats": state.batch_stats}

  def recompute(variables, x, y):
    def loss(params):
      logits, _ = model.apply(
        {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
      )
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return (
      jax.grad(loss)(variables["params"]),
      models.block_gradient_split(model, variables, x, y),
    )

  one = jax.local_devices()[:1]
  args = jax.tree.map(lambda a: np.asarray(a)[None], (variables, x, labels[idx]))
  out = jax.pmap(recompute, axis_name=ip.AXIS_NAME, devices=one)(*args)
  grads, split = jax.tree.map(lambda a: np.asarray(a[0], np.float64), out)

  grads = {"/".join(k): v for k, v in flatten_dict(grads).items()}
  assert set(grads) == set(row["layers"])
  for path, g in grads.items():
    logged = row["layers"][path]
    u = (g - g.mean()) / (g.std() + 1e-8) if g.ndim >= 2 else g  # znorm's default eps
    for prefix, v in (("grad", g), ("update", u)):
      scale = v.std() or abs(v).max()
      assert logged[f"{prefix}_norm"] == pytest.approx(np.linalg.norm(v), rel=1e-4), path
      assert logged[f"{prefix}_std"] == pytest.approx(v.std(), rel=1e-4), path
      assert abs(logged[f"{prefix}_mean"] - v.mean()) <= 1e-4 * scale + 1e-9, path
  for name in TINY_BLOCKS:
    for stat in SPLIT_STATS[:3]:
      assert row["blocks"][name][stat] == pytest.approx(split[name][stat], rel=1e-4)
    assert row["blocks"][name]["cosine"] == pytest.approx(split[name]["cosine"], abs=1e-4)


@pytest.mark.slow
def test_the_diagnostics_measure_the_gradient_the_train_step_applies():
  """A spy at the end of the train step's chain keeps its input, the pmean'ed gradient the
  step applies, as its state; the diagnostic step on the same state and batch reports the
  statistics of that very gradient (both differentiate `steps.train_loss`)."""
  spy = optax.GradientTransformation(
    lambda params: jax.tree.map(jnp.zeros_like, params),
    lambda updates, state, params=None: (jax.tree.map(jnp.zeros_like, updates), updates),
  )
  tx = optax.chain(optax.identity(), spy)
  config = tiny_config(num_devices=2)
  devices = jax.local_devices()[:2]
  model = state_lib.create_model(config, 10)
  state = state_lib.create_train_state(config, model, tx, (32, 32, 3))
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    images, labels = datasets.load_split("cifar10", "train")
  spec = datasets.DATASETS["cifar10"]
  data = ip.replicate((images, labels), devices)
  idx = ip.shard(ip.dispatch_indices(config.seed, 0, 1, len(images), 16, 2), devices)
  fns = steps.make_steps(
    model, tx, spec, seed=config.seed, dtype=jnp.float32, augment=True, devices=devices
  )
  measure = jax.pmap(
    functools.partial(
      diagnostics.diagnostic_step,
      model=model,
      grad_transform=optax.identity(),
      seed=config.seed,
      mean=spec.mean,
      std=spec.std,
    ),
    axis_name=ip.AXIS_NAME,
    devices=devices,
  )
  measured = ip.unreplicate(measure(ip.replicate(state, devices), *data, idx))
  applied = ip.unreplicate(fns.train(ip.replicate(state, devices), *data, idx)[0]).opt_state[1]
  stats = zo.gradient_stats()
  want = stats.update(applied, stats.init(applied))[1]
  assert float(jnp.abs(jax.tree.leaves(applied)[0]).max()) > 0
  for field in ("norm", "mean", "std"):
    chex.assert_trees_all_close(
      getattr(measured["grad"], field), getattr(want, field), rtol=1e-6, atol=1e-7
    )


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnet20"])
def test_models_get_the_cifar_stem_for_32x32_images(name):
  model = state_lib.create_model(tiny_config(model=name, model_widths=()), 10)
  assert model.stem == "cifar"
  shapes = jax.eval_shape(
    lambda x: model.init(jax.random.key(0), x, train=False), np.zeros((1, 32, 32, 3), np.float32)
  )
  assert shapes["params"]["stem_conv"]["kernel"].shape[:2] == (3, 3)  # not 7x7/2 + max-pool
