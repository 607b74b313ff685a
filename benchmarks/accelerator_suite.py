"""One prepared accelerator run: the library checked and the trainer measured on this machine's
devices, the whole run time-boxed to ``--minutes``.

Run from the project root (see benchmarks/README.md for a fresh accelerator machine)::

  python -m benchmarks.accelerator_suite --data_dir DIR_WITH_CIFAR10 --minutes 8
  python -m benchmarks.accelerator_suite --smoke --out /tmp/smoke --data_dir ../shared/data/tfds
  python -m benchmarks.accelerator_suite --data_dir DIR_WITH_CIFAR10 --minutes 8 --study depth

It writes ``OUT/summary.json`` (machine-readable) and ``OUT/summary.md`` (tables), both
rewritten after every measurement, so a killed run keeps what it measured; the study's runs
are also appended to ``OUT/paper_study.jsonl`` (the records of `benchmarks.paper_study`). OUT
defaults to ``benchmarks/results/accelerator/<device>-<date>/``. Sections, in order:

1. platform: devices, versions; the library (znorm, centralize, clip_by_global_norm,
   clip_by_layer_norm, gradient_stats) under jit in float32 and bfloat16 against the float64
   NumPy reference of the tests, and a pmap over all local devices against one device.
2. throughput: images/s of the trainer's own pmapped step (`trainer.steps.make_steps`) on the
   device-resident split (AOT-compiled, timed in a tight loop) and of `train_and_evaluate`'s
   loop (`benchmarks.train_throughput.train_py_rate`), for ResNet-20/56, batch 128/1024,
   float32/bfloat16, 1/8 steps per dispatch (on accelerators also the 8 steps unrolled instead
   of a `lax.scan`), with the FLOP rate from XLA's cost analysis; and the step with
   grad_transform none vs znorm. The most informative combinations come first.
3. overhead: the optimizer update alone (`benchmarks.transform_overhead`): adam, the one-pass
   floor, znorm+adam and the naive two-pass form, on ResNet-56's parameters and on a random
   ViT-B/16-sized tree (86.6M parameters, 152 leaves), float32 and bfloat16.
4. study: ResNet-20 on the full CIFAR-10 train split, adam/centralize/clip/znorm
   (configs/paper_*.py via `benchmarks.paper_study.run_one`), seeds 0 and 1, as many epochs as
   the remaining time allows (estimated from the measured throughput and compile times),
   evaluated on the full test set.

``--study depth`` (issue 13's depth study at the paper's budget) runs 1, then 2 measuring only
ResNet-20's bare step, loop and none vs znorm (what sizes the study), then the study: adam and
znorm, seed 0, at ResNet-20, -110 and -56 (in that order), full train split, one epoch count for
all six runs, as many as fit (ResNet-20's measured epoch time scaled by depth); when time is
short the middle depth goes first.

Time: each section gets a box cut from the time left (`SECTIONS`); before each measurement the
suite estimates its cost from what it has measured so far (compile, initialization, timing)
and skips it, saying why, when it does not fit. A compile cannot be interrupted, so a watchdog
thread backs the estimates up: at the deadline it records the part in flight as cut off,
writes both files and ends the process (exit status 0). ``--smoke`` runs every section with
tiny sizes (narrow ResNet-20, batches 16/32, 1/2 steps per dispatch, a small tree, a 2-epoch
study of 2 runs on 256 images) in about a minute on CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import importlib.metadata
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax import lax

import znorm_optax as zo
from benchmarks import train_throughput, transform_overhead
from benchmarks.accelerator_report import render_markdown
from configs import default
from experiments import paper_study
from tests.numpy_reference import numpy_centralize, numpy_clip_layer, numpy_stats, numpy_znorm
from trainer import datasets
from trainer import input_pipeline as ip
from trainer import plan as plan_lib
from trainer.metrics import append_record
from trainer.optimizers import create_optimizer
from trainer.state import DTYPES, create_model, create_train_state
from trainer.steps import config_steps

ROOT = Path(__file__).resolve().parent.parent
IMAGE_SHAPE = (32, 32, 3)
PACKAGES = (
  "jax",
  "jaxlib",
  "flax",
  "optax",
  "chex",
  "numpy",
  "orbax-checkpoint",
  "tensorflow-datasets",
  "ml_collections",
)
# ViT-B/16 at 224x224: 86,567,656 parameters in 152 leaves (qkv fused).
VIT_B16 = dict(width=768, depth=12, mlp=3072, patch=16, tokens=197, classes=1000)
VIT_TINY = dict(width=32, depth=1, mlp=64, patch=4, tokens=17, classes=10)
OVERHEAD_VARIANTS = ("adam", "floor", "znorm+adam", "naive_znorm+adam")
STUDY_ORDER = ("adam", "znorm", "centralize", "clip")  # within a seed: the key pair first
DEPTH_METHODS = ("adam", "znorm")  # the depth study's pair, at every depth
# Compile, init and step time relative to resnet20: residual blocks (9, 15, 27, 54), the
# stem and head aside.
MODEL_COST = {"resnet32": 15 / 9, "resnet56": 3.0, "resnet110": 6.0}


@dataclasses.dataclass(frozen=True)
class Sizes:
  """What the suite measures (the full run, or `SMOKE`)."""

  models: tuple = ("resnet20", "resnet56")
  batches: tuple = (128, 1024)
  dtypes: tuple = ("float32", "bfloat16")
  dispatch: tuple = (1, 8)  # steps per dispatch
  model_widths: tuple = ()  # () = the models' own
  train_split: str = "train"
  eval_split: str = "test"
  loop_eval_split: str = "test[:128]"  # the loop measurement's (one batch: eval stays out)
  window_s: float = 2.0  # timed seconds per throughput measurement
  matmul_size: int = 4096
  overhead_model: str = "resnet56"
  vit: dict = dataclasses.field(default_factory=lambda: dict(VIT_B16))
  overhead_groups: tuple = (0, 1, 2, 3)  # of (ViT, model) x (float32, bfloat16), see run_overhead
  study_batch: int = 128
  study_k: int | None = None  # steps per dispatch; None: the loop's faster K
  study_epochs: tuple = (3, 200)  # (fewest worth running with all runs, most)
  study_runs: tuple | None = None  # None: seeds 0, 1 x STUDY_ORDER, as time allows
  # `--study depth`: the depths in the order they run (the middle one last: it is the first
  # to go when time runs short, the shallowest and the deepest are the comparison).
  depth_models: tuple = ("resnet20", "resnet110", "resnet56")
  max_throughput: int | None = None  # measure only the first N planned combinations
  compile_guess_s: float = 30.0  # ResNet-20, one step, before any compile was measured


SMOKE = Sizes(
  batches=(16, 32),
  dispatch=(1, 1),  # K > 1 unrolls on CPU: twice the compile time, no new code path here
  model_widths=(4, 8, 16),
  train_split="train[:256]",
  eval_split="test[:64]",
  loop_eval_split="test[:32]",
  window_s=0.25,
  matmul_size=256,
  overhead_model="resnet20",
  vit=dict(VIT_TINY),
  overhead_groups=(0,),  # the small tree in float32: a ResNet's 59 leaves compile for ~20 s
  study_batch=16,
  study_k=1,
  study_epochs=(2, 2),
  study_runs=(("adam", 0), ("znorm", 1)),
  depth_models=("resnet20", "resnet32"),
  max_throughput=3,
  compile_guess_s=6.0,
)


def hard_exit(code: int) -> None:
  """Ends the process at once (the watchdog's last step; tests replace it)."""
  os._exit(code)


# ----------------------------------------------------------------------------------------------
# Time: the global deadline, the sections' boxes, cost estimates, the watchdog
# ----------------------------------------------------------------------------------------------


class Budget:
  """The run's deadline (``minutes`` from now, less a reserve for the last write)."""

  def __init__(self, minutes: float, clock: Callable[[], float] = time.monotonic):
    self.clock = clock
    self.start = clock()
    self.hard_end = self.start + 60.0 * minutes
    self.end = self.hard_end - min(15.0, max(1.0, 2.4 * minutes))

  def elapsed(self) -> float:
    return self.clock() - self.start

  def left(self) -> float:
    return max(0.0, self.end - self.clock())

  def box(self, share: float) -> Box:
    """A section's box: ``share`` of the time left."""
    return Box(self.clock, share * self.left())


class Box:
  """A section's time: ``fits(seconds)`` says whether a part estimated at ``seconds`` can run."""

  def __init__(self, clock: Callable[[], float], seconds: float):
    self.clock, self.seconds = clock, seconds
    self.deadline = clock() + seconds

  def left(self) -> float:
    return max(0.0, self.deadline - self.clock())

  def fits(self, seconds: float) -> bool:
    return seconds <= self.left()

  def why_not(self, seconds: float) -> str:
    return f"needs ~{seconds:.0f} s, {self.left():.0f} s left of the section's {self.seconds:.0f} s"


def program_cost(model: str, k: int, unroll: bool) -> float:
  """Compile time of a train program relative to ResNet-20's single step."""
  steps = k if (unroll and k > 1) else (1.3 if k > 1 else 1.0)
  return MODEL_COST.get(model, 1.0) * steps


class Estimates:
  """Costs measured so far, scaled to what comes next (the largest unit seen, to be safe)."""

  def __init__(self, compile_guess_s: float):
    self.compile_unit = None
    self.init_unit = None
    self.guess = compile_guess_s
    self.flops: dict = {}  # (model, batch, dtype) -> FLOPs per step
    self.bare: dict = {}  # Combo -> its bare row
    self.loop: dict = {}  # Combo -> its loop row

  def note_compile(self, model: str, k: int, unroll: bool, seconds: float) -> None:
    unit = seconds / program_cost(model, k, unroll)
    self.compile_unit = max(unit, self.compile_unit or 0.0)

  def compile_s(self, model: str, k: int, unroll: bool) -> float:
    return (self.compile_unit or self.guess) * program_cost(model, k, unroll)

  def note_init(self, model: str, seconds: float) -> None:
    unit = seconds / MODEL_COST.get(model, 1.0)
    self.init_unit = max(unit, self.init_unit or 0.0)

  def init_s(self, model: str) -> float:
    return (self.init_unit or 0.3 * self.guess) * MODEL_COST.get(model, 1.0)


class Watchdog:
  """At the deadline: the part in flight is recorded as cut off, the files are written and the
  process ends (`hard_exit`), so the run ends in time whatever an estimate said."""

  def __init__(
    self, summary: Summary, seconds: float, exit_fn: Callable[[int], None] | None = None
  ):
    self.summary, self.fired = summary, False
    self._exit = exit_fn
    self._timer = threading.Timer(max(0.0, seconds), self._fire)
    self._timer.daemon = True
    self._timer.start()

  def _fire(self) -> None:
    if self.summary.cut_off():
      self.fired = True
      (self._exit or hard_exit)(0)

  def cancel(self) -> None:
    self._timer.cancel()


# ----------------------------------------------------------------------------------------------
# The summary: summary.json and summary.md, rewritten after every measurement
# ----------------------------------------------------------------------------------------------


class Summary:
  """The results so far; `flush` rewrites both files atomically (thread-safe)."""

  def __init__(
    self,
    out_dir: Path,
    header: dict,
    elapsed: Callable[[], float],
    section_names: tuple | None = None,
  ):
    self.out_dir = Path(out_dir)
    self.elapsed = elapsed
    self.section_names = section_names or tuple(name for name, _, _ in SECTIONS["methods"])
    self.out_dir.mkdir(parents=True, exist_ok=True)
    self.data = {"header": header, "status": "running", "sections": {}, "skipped": []}
    self.data["errors"] = []
    self.data["timeline"] = []  # every part: section, part, seconds, outcome
    self.current: tuple[str, str] | None = None
    self.closed = False
    self._lock = threading.RLock()

  def section(self, name: str) -> dict:
    return self.data["sections"][name]

  def start_section(self, name: str, box: Box) -> None:
    with self._lock:
      self.data["sections"][name] = {
        "status": "running",
        "budget_s": round(box.seconds, 1),
        "started_s": round(self.elapsed(), 1),
      }
      self.flush()

  def end_section(self, name: str) -> None:
    with self._lock:
      s = self.section(name)
      s["status"] = "done"
      s["seconds"] = round(self.elapsed() - s["started_s"], 1)
      self.current = None
      self.flush()

  def begin(self, section: str, part: str) -> None:
    self.current = (section, part)

  def add(self, section: str, key: str, row) -> None:
    with self._lock:
      self.section(section).setdefault(key, []).append(row)
      self.current = None
      self.flush()

  def put(self, section: str, key: str, value) -> None:
    with self._lock:
      self.section(section)[key] = value
      self.flush()

  def skip(self, section: str, part: str, reason: str) -> None:
    with self._lock:
      self.data["skipped"].append({"section": section, "part": part, "reason": reason})
      self.current = None
      self.flush()

  def error(self, section: str, part: str, exc: BaseException) -> None:
    with self._lock:
      message = " ".join(f"{type(exc).__name__}: {exc}".split())[:2000]
      self.data["errors"].append({"section": section, "part": part, "error": message})
      self.current = None
      self.flush()

  def log(self, section: str, part: str, seconds: float, outcome: str) -> None:
    with self._lock:
      row = {"section": section, "part": part, "seconds": round(seconds, 2), "outcome": outcome}
      self.data["timeline"].append(row)

  def finish(self, status: str) -> None:
    with self._lock:
      self.data["status"] = status
      self.flush()
      self.closed = True

  def cut_off(self) -> bool:
    """The watchdog's record: the part in flight and the sections not reached (False if the
    run had already finished)."""
    with self._lock:
      if self.closed:
        return False
      if self.current is not None:
        section, part = self.current
        reason = "cut off by the watchdog at the deadline (its estimate was too low)"
        self.data["skipped"].append({"section": section, "part": part, "reason": reason})
      for s in self.data["sections"].values():
        if s["status"] == "running":
          s["status"] = "cut off"
      for name in self.section_names:
        if name not in self.data["sections"]:
          reason = "not reached: the run's deadline came first"
          self.data["skipped"].append({"section": name, "part": "(all)", "reason": reason})
      self.finish("cut off at the deadline by the watchdog")
      return True

  def flush(self) -> None:
    with self._lock:
      if self.closed:
        return
      self.data["header"]["elapsed_s"] = round(self.elapsed(), 1)
      text = json.dumps(self.data, indent=1, default=_json_default)
      _write_atomic(self.out_dir / "summary.json", text + "\n")
      _write_atomic(self.out_dir / "summary.md", render_markdown(json.loads(text)))


def _json_default(value):
  if isinstance(value, (np.floating, np.integer)):
    return value.item()
  if isinstance(value, tuple):
    return list(value)
  return str(value)


def _write_atomic(path: Path, text: str) -> None:
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(text)
  os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# 1. Platform: devices, versions, the library on this device
# ----------------------------------------------------------------------------------------------


def _version(package: str) -> str | None:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def device_info() -> dict:
  devices = jax.local_devices()
  info = {
    "platform": devices[0].platform,
    "device_kind": devices[0].device_kind,
    "local_devices": len(devices),
    "global_devices": jax.device_count(),
    "processes": jax.process_count(),
    "host_cpus": os.cpu_count(),
    "memory_gib": None,
  }
  with contextlib.suppress(Exception):  # not every backend reports memory
    info["memory_gib"] = round(devices[0].memory_stats()["bytes_limit"] / 2**30, 1)
  return info


def check_tree(dtype) -> dict:
  """Leaves with a nonzero mean and assorted scales (conv kernel, dense, biases)."""
  rng = np.random.default_rng(0)
  tree = {
    "conv": {"kernel": rng.normal(0.5, 2.0, (3, 3, 8, 16)), "bias": rng.normal(0.0, 0.1, 16)},
    "dense": {"kernel": rng.normal(-1.0, 0.1, (64, 10)), "bias": rng.normal(3.0, 1.0, 10)},
  }
  return jax.tree.map(lambda x: jnp.asarray(x.astype(np.float32), dtype), tree)


def tolerance(dtype) -> tuple[float, float]:
  """(rtol, atol) of the library's tests."""
  return (2e-2, 2e-2) if dtype == jnp.bfloat16 else (1e-5, 1e-5)


def compare(out, ref, rtol: float, atol: float) -> dict:
  """Max abs error and the worst error / (atol + rtol |ref|) over all leaves."""
  out_l = [np.asarray(x, np.float64) for x in jax.tree.leaves(out)]
  ref_l = [np.asarray(x, np.float64) for x in jax.tree.leaves(ref)]
  worst, max_abs = 0.0, 0.0
  for o, r in zip(out_l, ref_l, strict=True):
    err = np.abs(o - r)
    max_abs = max(max_abs, float(err.max()))
    worst = max(worst, float((err / (atol + rtol * np.abs(r))).max()))
  return {"max_abs_error": max_abs, "worst_ratio": worst, "passed": worst <= 1.0}


LIBRARY_CHECKS = (
  "znorm",
  "centralize",
  "clip_by_global_norm",
  "clip_by_layer_norm",
  "gradient_stats",
)


def library_cases(grads64: dict) -> dict:
  """Each of LIBRARY_CHECKS -> (transform, reference of its output from the float64
  gradients)."""
  norms = [np.linalg.norm(g) for g in jax.tree.leaves(grads64)]
  global_norm = float(np.sqrt(sum(n**2 for n in norms)))
  max_norm = 0.5 * global_norm
  layer_max = float(np.median(norms))  # clips some leaves, leaves the others

  def per_leaf(fn):
    return lambda: jax.tree.map(fn, grads64)

  return {
    "znorm": (zo.znorm(), per_leaf(numpy_znorm)),
    "centralize": (zo.centralize(), per_leaf(numpy_centralize)),
    "clip_by_global_norm": (
      zo.clip_by_global_norm(max_norm),
      per_leaf(lambda g: g * min(1.0, max_norm / global_norm)),
    ),
    "clip_by_layer_norm": (
      zo.clip_by_layer_norm(layer_max),
      per_leaf(lambda g: numpy_clip_layer(g, layer_max)),
    ),
    "gradient_stats": (zo.gradient_stats(), per_leaf(lambda g: np.array(numpy_stats(g)))),
  }


def library_check(name: str, dtype_name: str) -> dict:
  """One transform under jit on this device against the float64 reference."""
  dtype = DTYPES[dtype_name]
  grads = check_tree(dtype)
  grads64 = jax.tree.map(lambda g: np.asarray(g, np.float64), grads)
  tx, reference = library_cases(grads64)[name]
  out, state = jax.jit(tx.update)(grads, tx.init(grads))
  rtol, atol = tolerance(dtype)
  if name == "gradient_stats":  # the statistics, float32 whatever the leaves' dtype
    out = jax.tree.map(lambda *s: np.array(s), state.norm, state.mean, state.std)
    rtol, atol = 1e-5, 1e-6
  result = compare(out, reference(), rtol, atol)
  return {"check": name, "dtype": dtype_name, **result, "tolerance": f"{rtol:g}, {atol:g}"}


def pmap_check(dtype_name: str) -> dict:
  """znorm + sgd on the pmean of per-device gradients, pmapped over every local device,
  against the same update on one device of the mean gradient."""
  dtype = DTYPES[dtype_name]
  devices = jax.local_devices()
  params = check_tree(dtype)
  rng = np.random.default_rng(1)
  grads = jax.tree.map(
    lambda p: np.stack([np.asarray(p) * rng.uniform(0.5, 1.5) for _ in devices]), params
  )
  tx = optax.chain(zo.znorm(), optax.sgd(0.1))

  def update(grads, params, axis_name=None):
    if axis_name is not None:
      grads = lax.pmean(grads, axis_name)
    updates, _ = tx.update(grads, tx.init(params), params)
    return optax.apply_updates(params, updates)

  mapped = jax.pmap(functools.partial(update, axis_name="d"), axis_name="d", devices=devices)
  out = mapped(jax.tree.map(lambda g: ip.shard(g, devices), grads), ip.replicate(params, devices))
  mean = jax.tree.map(lambda g: jnp.asarray(np.asarray(g, np.float64).mean(0), dtype), grads)
  single = jax.jit(update)(mean, params)
  rtol, atol = tolerance(dtype)
  per_device = [
    compare(jax.tree.map(lambda x, i=i: x[i], out), single, rtol, atol) for i in range(len(devices))
  ]
  worst = max(per_device, key=lambda r: r["worst_ratio"])
  return {
    "check": f"pmap over {len(devices)} devices == 1 device",
    "dtype": dtype_name,
    **worst,
    "tolerance": f"{rtol:g}, {atol:g}",
  }


def run_platform(ctx: Context, box: Box) -> None:
  ctx.summary.put("platform", "device", device_info())
  versions = {p: _version(p) for p in PACKAGES}
  versions["python"] = platform.python_version()
  ctx.summary.put("platform", "versions", versions)
  checks = [(name, dtype) for dtype in ("float32", "bfloat16") for name in LIBRARY_CHECKS]
  checks += [("pmap", dtype) for dtype in ("float32", "bfloat16")]
  durations, results = [], []
  for name, dtype in checks:
    part = f"{name} {dtype}"
    need = max(durations) if durations else 0.25 * ctx.est.guess
    if not box.fits(need):
      ctx.summary.skip("platform", part, box.why_not(need))
      continue
    start = time.perf_counter()
    with ctx.measuring("platform", part):
      row = pmap_check(dtype) if name == "pmap" else library_check(name, dtype)
      results.append(row)
      ctx.summary.add("platform", "checks", row)
    durations.append(time.perf_counter() - start)
  ctx.summary.put("platform", "passed", bool(results) and all(r["passed"] for r in results))


# ----------------------------------------------------------------------------------------------
# 2. Throughput: the bare step and the loop, most informative combinations first
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Combo:
  """One throughput measurement: ``kind`` bare | loop | transform (none vs znorm)."""

  kind: str
  model: str
  batch: int
  dtype: str
  k: int
  unroll: bool

  def name(self) -> str:
    form = "" if self.k == 1 else (" unrolled" if self.unroll else " scan")
    return f"{self.kind} {self.model} b{self.batch} {self.dtype} K={self.k}{form}"


def throughput_plan(sizes: Sizes, default_unroll: bool) -> list[Combo]:
  """Every combination, the most informative first: ResNet-20 at batch 128 in float32 with K
  steps per dispatch (the study's setting) bare, in the loop, none vs znorm, the other K-step
  form, one step per dispatch, bfloat16; then depth, batch, the rest."""
  (m0, m1), (b0, b1), (f32, bf16), (k1, k8) = (
    sizes.models,
    sizes.batches,
    sizes.dtypes,
    sizes.dispatch,
  )
  u, alt = default_unroll, not default_unroll

  def c(kind, model, batch, dtype, k, unroll=u):
    return Combo(kind, model, batch, dtype, k, u if k == 1 else unroll)

  first = [
    c("bare", m0, b0, f32, k8),
    c("loop", m0, b0, f32, k8),
    c("transform", m0, b0, f32, k8),
    c("bare", m0, b0, f32, k8, alt),
    c("bare", m0, b0, f32, k1),
    c("bare", m0, b0, bf16, k8),
    c("loop", m0, b0, f32, k1),
    c("bare", m1, b0, f32, k8),
    c("bare", m0, b1, f32, k8),
    c("bare", m1, b1, bf16, k8),
    c("loop", m1, b0, f32, k8),
    c("loop", m0, b0, bf16, k8),
    c("loop", m0, b1, f32, k8),
  ]
  grid = [(m, b, d) for m in (m0, m1) for b in (b0, b1) for d in (f32, bf16)]
  rest = [c("bare", *g, k8) for g in grid] + [c("bare", *g, k1) for g in grid]
  rest += [c("bare", *g, k8, alt) for g in grid]
  rest += [c("loop", *g, k) for k in (k8, k1) for g in grid]
  return list(dict.fromkeys(first + rest))  # in order, once each


def throughput_config(ctx: Context, combo: Combo, grad_transform: str = "znorm"):
  """`train_throughput.make_config` for ``combo`` (the default config otherwise)."""
  args = types.SimpleNamespace(
    model=combo.model,
    data_dir=ctx.data_dir,
    train_split=ctx.sizes.train_split,
    batch=combo.batch,
    dtype=combo.dtype,
  )
  config = train_throughput.make_config(args, combo.k)
  config.eval_split = ctx.sizes.loop_eval_split
  config.model_widths = ctx.sizes.model_widths
  config.grad_transform = grad_transform
  return config


def flops_per_step(ctx: Context, combo: Combo, one_step, devices) -> float | None:
  """XLA's FLOPs of one step on all devices, from the cost analysis of a one-step program
  (``one_step()``: a compiled or lowered one; a lax.scan's body counts once whatever K, so a
  K-step program cannot simply be divided by K)."""
  key = (combo.model, combo.batch, combo.dtype)
  if key not in ctx.est.flops:
    ctx.est.flops[key] = None
    with contextlib.suppress(Exception):  # a backend without cost analysis
      cost = one_step().cost_analysis()
      cost = cost[0] if isinstance(cost, list) else cost
      ctx.est.flops[key] = float(cost["flops"]) * len(devices)
  return ctx.est.flops[key]


def build_step(ctx: Context, combo: Combo, grad_transform: str = "znorm"):
  """The trainer's pmapped K-step function for ``combo``, AOT-compiled, on the resident split:
  ``(run, info)``; each ``run()`` is one dispatch of K steps (the state is donated)."""
  config = throughput_config(ctx, combo, grad_transform)
  devices = plan_lib.local_devices(config)
  spec = datasets.DATASETS[config.dataset]
  model = create_model(config, spec.num_classes)
  # The loop measurement's schedule length, so that its train program is this one (a hit in
  # the compilation cache, see `main`).
  tx = create_optimizer(config, 2 * loop_steps(ctx, combo)).tx
  start = time.perf_counter()
  state = ip.replicate(create_train_state(config, model, tx, IMAGE_SHAPE), devices)
  init_s = time.perf_counter() - start
  fns = config_steps(config, model, tx, devices, unroll=combo.unroll)
  data, n, k = ctx.train_data, ctx.train_data[1].shape[1], combo.k
  indices = [
    ip.shard(ip.dispatch_indices(0, i * k, k, n, combo.batch, len(devices)), devices)
    for i in range(4)
  ]
  start = time.perf_counter()
  compiled = fns.train.lower(state, *data, indices[0]).compile()
  compile_s = time.perf_counter() - start
  if k == 1:
    flops = flops_per_step(ctx, combo, lambda: compiled, devices)
  else:
    idx = ip.shard(ip.dispatch_indices(0, 0, 1, n, combo.batch, len(devices)), devices)
    flops = flops_per_step(ctx, combo, lambda: fns.train.lower(state, *data, idx), devices)
  ctx.est.note_init(combo.model, init_s)
  ctx.est.note_compile(combo.model, k, combo.unroll, compile_s)
  holder = {"state": state, "i": 0}

  def run():
    i = holder["i"]
    holder["state"], metrics = compiled(holder["state"], *data, indices[i % len(indices)])
    holder["i"] = i + 1
    return metrics

  return run, {"init_s": init_s, "compile_s": compile_s, "flops": flops}


def time_calls(run: Callable, window_s: float) -> tuple[float, int]:
  """Seconds per call of ``run`` over about ``window_s`` (after two untimed calls)."""
  jax.block_until_ready(run())
  start = time.perf_counter()
  jax.block_until_ready(run())
  one = time.perf_counter() - start
  calls = max(2, min(100_000, int(window_s / max(one, 1e-6))))
  start = time.perf_counter()
  for _ in range(calls):
    out = run()
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / calls, calls


def bare_cost(ctx: Context, combo: Combo) -> float:
  return (
    ctx.est.init_s(combo.model)
    + 1.3 * ctx.est.compile_s(combo.model, combo.k, combo.unroll)
    + 2.0 * ctx.sizes.window_s
  )


def measure_bare(ctx: Context, combo: Combo) -> dict:
  run, info = build_step(ctx, combo)
  seconds, calls = time_calls(run, ctx.sizes.window_s)
  step_s = seconds / combo.k
  flops = info["flops"]
  row = {
    **dataclasses.asdict(combo),
    "k_form": "-" if combo.k == 1 else ("unrolled" if combo.unroll else "scan"),
    "images_per_s": combo.batch / step_s,
    "step_ms": 1e3 * step_s,
    "gflop_per_step": None if flops is None else flops / 1e9,
    "tflops": None if flops is None else flops / step_s / 1e12,
    "compile_s": info["compile_s"],
    "init_s": info["init_s"],
    "calls_timed": calls,
    "devices": jax.local_device_count(),
  }
  if combo == ctx.plan[0]:
    ctx.kept_run = run  # the znorm side of the none-vs-znorm measurement
  return row


def loop_steps(ctx: Context, combo: Combo) -> int:
  """The timed steps: an epoch of the train split, cut to a multiple of K (so that only the
  K-step program compiles), as train.py runs it (an evaluation and a checkpoint per epoch)."""
  epoch = ctx.train_data[1].shape[1] // combo.batch
  return max(combo.k, epoch // combo.k * combo.k)


def loop_cost(ctx: Context, combo: Combo, bare_rate: float) -> float:
  steps = loop_steps(ctx, combo)
  train = ctx.est.compile_s(combo.model, combo.k, combo.unroll)  # a cache hit if it is on
  evaluate = 0.5 * ctx.est.compile_s(combo.model, 1, combo.unroll)
  compiles = (0.2 if ctx.cached else 1.0) * train + evaluate
  return ctx.est.init_s(combo.model) + compiles + 3 * steps * combo.batch / bare_rate + 5.0


def measure_loop(ctx: Context, combo: Combo, bare: dict) -> dict:
  steps = loop_steps(ctx, combo)
  rate = train_throughput.train_py_rate(throughput_config(ctx, combo), steps)
  return {
    **dataclasses.asdict(combo),
    "images_per_s": rate,
    "bare_images_per_s": bare["images_per_s"],
    "loop_over_bare": rate / bare["images_per_s"],
    "steps": steps,
  }


def measure_transform(ctx: Context, combo: Combo, bare: dict) -> dict:
  """The step of ``combo`` with grad_transform none against the kept znorm step, interleaved
  (`transform_overhead.time_rounds`)."""
  run_none, _ = build_step(ctx, combo, grad_transform="none")
  runs = {"none": run_none, "znorm": ctx.kept_run}
  call_s = combo.k * bare["step_ms"] / 1e3
  iters = max(1, int(0.1 * ctx.sizes.window_s / call_s))
  rounds = int(min(15, max(3, ctx.sizes.window_s / (iters * call_s))))
  medians = transform_overhead.time_rounds(runs, rounds, iters)
  ctx.kept_run = None
  none_ms, znorm_ms = (1e3 * medians[n] / combo.k for n in ("none", "znorm"))
  return {
    **dataclasses.asdict(combo),
    "none_ms": none_ms,
    "znorm_ms": znorm_ms,
    "ratio": znorm_ms / none_ms,
    "rounds": rounds,
    "iters": iters,
  }


def throughput_part(ctx: Context, box: Box, combo: Combo) -> None:
  """Measures ``combo`` if it fits in the box and what it needs was measured."""
  section, part = "throughput", combo.name()
  bare_combo = dataclasses.replace(combo, kind="bare")
  bare = ctx.est.bare.get(bare_combo)
  if combo.kind != "bare" and bare is None:
    return ctx.summary.skip(section, part, "its bare step was not measured")
  if combo.kind == "transform" and ctx.kept_run is None:
    return ctx.summary.skip(section, part, "the znorm step to compare with is gone")
  if combo.kind == "bare" and combo.k > 1 and combo.unroll != ctx.default_unroll:
    if ctx.default_unroll:  # CPU
      reason = "cpu: a lax.scan of steps runs ~28x slower here (docs/harness.md)"
      return ctx.summary.skip(section, part, reason)
  if combo.kind == "bare":
    cost = bare_cost(ctx, combo)
  elif combo.kind == "loop":
    cost = loop_cost(ctx, combo, bare["images_per_s"])
  else:
    cost = bare_cost(ctx, combo) + 2 * ctx.sizes.window_s
  if not box.fits(cost):
    return ctx.summary.skip(section, part, box.why_not(cost))
  with ctx.measuring(section, part):
    if combo.kind == "bare":
      row = measure_bare(ctx, combo)
      ctx.est.bare[combo] = row
      return ctx.summary.add(section, "bare", row)
    if combo.kind == "loop":
      row = measure_loop(ctx, combo, bare)
      ctx.est.loop[combo] = row
      return ctx.summary.add(section, "loop", row)
    ctx.summary.add(section, "transform", measure_transform(ctx, combo, bare))


def run_throughput(ctx: Context, box: Box) -> None:
  sizes = ctx.sizes
  with ctx.measuring("throughput", f"load {sizes.train_split}"):
    start = time.perf_counter()
    images, labels = datasets.load_split("cifar10", sizes.train_split, ctx.data_dir)
    ctx.train_data = ip.replicate((images, labels), jax.local_devices())
    ctx.summary.put("throughput", "load_s", time.perf_counter() - start)
  if ctx.train_data is None:
    for combo in ctx.plan:
      ctx.summary.skip("throughput", combo.name(), "the train split did not load")
    return
  with ctx.measuring("throughput", "matmul"):
    flops = train_throughput.matmul_flop_rate(sizes.matmul_size)
    ctx.summary.put("throughput", "matmul_tflops", flops / 1e12)
    ctx.summary.put("throughput", "matmul_size", sizes.matmul_size)
  for i, combo in enumerate(ctx.plan):
    if sizes.max_throughput is not None and i >= sizes.max_throughput:
      ctx.summary.skip("throughput", combo.name(), "smoke: only the first combinations")
      continue
    throughput_part(ctx, box, combo)
  ctx.kept_run = None
  ctx.train_data = None


# ----------------------------------------------------------------------------------------------
# 3. Overhead: the optimizer update alone
# ----------------------------------------------------------------------------------------------


def vit_shapes(width: int, depth: int, mlp: int, patch: int, tokens: int, classes: int) -> dict:
  """The parameter shapes of a ViT (fused qkv): ViT-B/16 has 86.6M in 152 leaves."""
  shapes = {
    "embedding/kernel": (patch, patch, 3, width),
    "embedding/bias": (width,),
    "cls": (1, 1, width),
    "pos_embedding": (1, tokens, width),
  }
  for i in range(depth):
    block = {
      "ln1/scale": (width,),
      "ln1/bias": (width,),
      "attention/qkv/kernel": (width, 3 * width),
      "attention/qkv/bias": (3 * width,),
      "attention/out/kernel": (width, width),
      "attention/out/bias": (width,),
      "ln2/scale": (width,),
      "ln2/bias": (width,),
      "mlp/fc1/kernel": (width, mlp),
      "mlp/fc1/bias": (mlp,),
      "mlp/fc2/kernel": (mlp, width),
      "mlp/fc2/bias": (width,),
    }
    shapes.update({f"block{i}/{k}": v for k, v in block.items()})
  shapes.update(
    {
      "encoder_norm/scale": (width,),
      "encoder_norm/bias": (width,),
      "head/kernel": (width, classes),
      "head/bias": (classes,),
    }
  )
  return shapes


def random_tree(shapes: dict, seed: int = 0) -> dict:
  """Normal(0, 0.02) float32 leaves of ``shapes``, drawn on the host (no per-shape compiles)
  and placed on the default device."""
  rng = np.random.default_rng(seed)
  return {
    name: jnp.asarray(0.02 * rng.standard_normal(shape, dtype=np.float32))
    for name, shape in shapes.items()
  }


def model_params(ctx: Context) -> dict:
  """The float32 parameters of ``sizes.overhead_model`` (the trainer's initialization)."""
  config = default.get_config()
  config.model = ctx.sizes.overhead_model
  config.model_widths = ctx.sizes.model_widths
  model = create_model(config, 10)
  return create_train_state(config, model, optax.identity(), IMAGE_SHAPE).params


def measure_update(ctx: Context, tree_name: str, params: dict, dtype: str, slot_s: float):
  """Medians of the four updates of ``params`` in ``dtype``, interleaved rounds sized to
  ``slot_s``."""
  start = time.perf_counter()
  params = jax.tree.map(lambda x: jnp.asarray(x, DTYPES[dtype]), params)
  candidates = transform_overhead.update_candidates(params, OVERHEAD_VARIANTS)
  compile_s, call_s = 0.0, 0.0
  for run in candidates.values():
    first = time.perf_counter()
    jax.block_until_ready(run())
    second = time.perf_counter()
    jax.block_until_ready(run())
    compile_s = max(compile_s, second - first)
    call_s += time.perf_counter() - second
  setup_s = time.perf_counter() - start
  timing_s = min(0.8 * max(slot_s - setup_s, 0.0), 10 * ctx.sizes.window_s)
  iters = max(1, min(20, int(timing_s / (5 * call_s))))  # 20 x 15: transform_overhead's own
  rounds = int(min(15, max(3, timing_s / (iters * call_s))))
  timing_start = time.perf_counter()
  medians = transform_overhead.time_rounds(candidates, rounds, iters)
  leaves = jax.tree.leaves(params)
  return {
    "tree": tree_name,
    "params": sum(x.size for x in leaves),
    "leaves": len(leaves),
    "dtype": dtype,
    "ms": {k: 1e3 * v for k, v in medians.items()},
    "x_adam": {k: v / medians["adam"] for k, v in medians.items()},
    "znorm_x_floor": medians["znorm+adam"] / medians["floor"],
    "rounds": rounds,
    "iters": iters,
    "compile_s": compile_s,
    "setup_s": setup_s,
    "timing_s": time.perf_counter() - timing_start,
  }


def run_overhead(ctx: Context, box: Box) -> None:
  vit = "ViT-B/16-sized" if ctx.sizes.vit == VIT_B16 else "small ViT-shaped"
  groups = [
    (vit, "float32"),
    (ctx.sizes.overhead_model, "float32"),
    (vit, "bfloat16"),
    (ctx.sizes.overhead_model, "bfloat16"),
  ]
  trees: dict = {}
  # Four compiles and the trees before any group was measured; then the last group's setup.
  need = len(OVERHEAD_VARIANTS) * 0.4 * ctx.est.guess + 1.0
  for i, (tree_name, dtype) in enumerate(groups):
    part = f"update {tree_name} {dtype}"
    if i not in ctx.sizes.overhead_groups:
      ctx.summary.skip("overhead", part, "smoke: the small tree in float32 only")
      continue
    slot = box.left() / sum(1 for j in ctx.sizes.overhead_groups if j >= i)
    if not box.fits(need):
      ctx.summary.skip("overhead", part, box.why_not(need))
      continue
    start = time.perf_counter()
    with ctx.measuring("overhead", part):
      if tree_name not in trees:
        trees[tree_name] = (
          random_tree(vit_shapes(**ctx.sizes.vit)) if tree_name == vit else model_params(ctx)
        )
      row = measure_update(ctx, tree_name, trees[tree_name], dtype, max(slot, need))
      ctx.summary.add("overhead", "rows", row)
      need = 1.2 * (time.perf_counter() - start - row["timing_s"]) + 2.0


# ----------------------------------------------------------------------------------------------
# 4. Study: the paper's comparison, as much as the time left allows
# ----------------------------------------------------------------------------------------------


def study_dispatch(ctx: Context, steps_per_epoch: int) -> tuple[int, dict | None]:
  """K for the study: the loop's faster K at the study setting, moved to a divisor of the
  epoch (so no one-step program compiles), and the throughput row it is sized from."""
  sizes = ctx.sizes
  m0, b0, f32 = sizes.models[0], sizes.batches[0], sizes.dtypes[0]
  loops = [r for c, r in ctx.est.loop.items() if (c.model, c.batch, c.dtype) == (m0, b0, f32)]
  bares = [r for c, r in ctx.est.bare.items() if (c.model, c.batch, c.dtype) == (m0, b0, f32)]
  bares = [r for r in bares if r["unroll"] == ctx.default_unroll or r["k"] == 1]
  rows = loops or bares
  if not rows:
    return 1, None
  best = max(rows, key=lambda r: r["images_per_s"])
  k = best["k"]
  if k > 1:
    k = min(
      (d for d in range(1, steps_per_epoch + 1) if steps_per_epoch % d == 0),
      key=lambda d: (abs(d - k), -d),
    )
  return k, best


def plan_study(ctx: Context, left: float, run_overhead_s: float, epoch_s: float):
  """``(runs, epochs)``: the most runs (8, 4 or 2) with at least the preferred epoch count,
  else the most runs with at least one epoch; None if not even 2 runs of 1 epoch fit."""
  sizes = ctx.sizes
  order = [(m, s) for s in (0, 1) for m in STUDY_ORDER]
  few, most = sizes.study_epochs
  if sizes.study_runs is not None:
    runs = list(sizes.study_runs)
    fits = left >= len(runs) * (run_overhead_s + few * epoch_s)
    return (runs, few) if fits else None
  options = [(n, int((left / n - run_overhead_s) // epoch_s)) for n in (8, 4, 2)]
  for minimum in (few, 1):
    for n, epochs in options:
      if epochs >= minimum:
        return order[:n], min(epochs, most)
  return None


def plan_depth_study(ctx: Context, left: float, overhead_s: dict, epoch_s: dict):
  """``(models, epochs)`` for `--study depth`: the longest head of ``sizes.depth_models`` (in
  run order, so the last one goes first) whose adam and znorm runs (one seed, one epoch count
  for all) get the preferred epoch count, else the longest that gets one epoch; None if not even
  the first depth's pair gets one. ``overhead_s`` and ``epoch_s`` hold each model's estimated
  cost per run and per epoch."""
  depths = ctx.sizes.depth_models
  options = [depths[:n] for n in range(len(depths), 0, -1)]
  few, most = ctx.sizes.study_epochs
  pairs = len(DEPTH_METHODS)
  fitted = []
  for models in options:
    spare = left - pairs * sum(overhead_s[m] for m in models)
    fitted.append((models, int(spare // (pairs * sum(epoch_s[m] for m in models)))))
  for minimum in (few, 1):
    for models, epochs in fitted:
      if epochs >= minimum:
        return list(models), min(epochs, most)
  return None


@dataclasses.dataclass(frozen=True)
class StudySetting:
  """What every study run shares, sized from the throughput section."""

  n_train: int
  n_eval: int
  steps_per_epoch: int
  k: int
  epoch_s: float  # ResNet-20's estimated seconds per epoch
  basis: str  # the throughput row it is estimated from


def study_setting(ctx: Context) -> StudySetting | None:
  sizes = ctx.sizes
  n_train = len(datasets.load_split("cifar10", sizes.train_split, ctx.data_dir)[1])
  n_eval = len(datasets.load_split("cifar10", sizes.eval_split, ctx.data_dir)[1])
  steps_per_epoch = n_train // sizes.study_batch
  k, basis = study_dispatch(ctx, steps_per_epoch)
  if basis is None:
    return None
  rate = basis["images_per_s"] * sizes.study_batch / basis["batch"]
  return StudySetting(
    n_train,
    n_eval,
    steps_per_epoch,
    sizes.study_k or k,
    epoch_s=(n_train + n_eval / 2) / rate + 1.0,  # train, evaluate, write a metrics line
    basis=f"{basis['kind']} {basis['model']} b{basis['batch']} K={basis['k']}",
  )


def study_preset(ctx: Context, setting: StudySetting, epochs: int) -> ml_collections.ConfigDict:
  """The `paper_study` preset of the suite's study runs."""
  sizes = ctx.sizes
  return ml_collections.ConfigDict(
    {
      "name": "accelerator" if not ctx.smoke else "accelerator-smoke",
      "epochs": epochs,
      "train_split": sizes.train_split,
      "eval_split": sizes.eval_split,
      "batch_size": sizes.study_batch,
      "learning_rate": 1e-3,
      "schedule": "cosine",
      "overrides": {
        "steps_per_dispatch": setting.k,
        "checkpoint_every_steps": epochs * setting.steps_per_epoch,  # once, at the end
        "model_widths": sizes.model_widths,
      },
    }
  )


def run_overhead_s(ctx: Context, model: str, k: int) -> float:
  """A study run's cost beyond its epochs: initialization and compiles (train + evaluation)."""
  return ctx.est.init_s(model) + 1.5 * ctx.est.compile_s(model, k, ctx.default_unroll) + 5


def describe_plan(ctx: Context, setting: StudySetting, runs: int, epochs: int, cost: str) -> str:
  sizes = ctx.sizes
  return (
    f"{runs} runs x {epochs} epochs of {sizes.train_split} ({setting.n_train} images), batch "
    f"{sizes.study_batch}, K={setting.k} steps per dispatch, evaluated on {sizes.eval_split} "
    f"({setting.n_eval}); estimated {cost} from {setting.basis}"
  )


def train_runs(ctx: Context, box: Box, preset, runs: list, estimates: dict) -> None:
  """Trains ``runs`` ((model, method, seed) each) in order, each if its estimate (seconds,
  by model) fits the box; estimates grow with what a run took over its own."""
  slow = 1.0
  for model, method, seed in runs:
    part = f"{model} {method} seed {seed}"
    estimate = slow * estimates[model]
    if not box.fits(estimate):
      ctx.summary.skip("study", part, box.why_not(estimate))
      continue
    with ctx.measuring("study", part):
      record = paper_study.run_one(
        preset, model, method, seed, data_dir=ctx.data_dir, workdir_root=ctx.workroot
      )
      if record is None:
        raise RuntimeError("the run stopped before its last epoch")
      record.pop("workdir", None)
      append_record(ctx.summary.out_dir / "paper_study.jsonl", record)
      ctx.summary.add("study", "runs", record)
      slow = max(slow, 1.1 * record["wall_time_s"] / estimates[model])


def run_study(ctx: Context, box: Box) -> None:
  """ResNet-20, the four methods, seeds 0 and 1 as time allows (`plan_study`)."""
  setting = study_setting(ctx)
  if setting is None:
    return ctx.summary.skip("study", "(all)", "no throughput of ResNet-20 to size it from")
  model = ctx.sizes.models[0]
  overhead = run_overhead_s(ctx, model, setting.k)
  chosen = plan_study(ctx, box.left(), overhead, setting.epoch_s)
  if chosen is None:
    need = 2 * (overhead + setting.epoch_s)
    return ctx.summary.skip("study", "(all)", box.why_not(need) + " for 2 runs of 1 epoch")
  runs, epochs = chosen
  cost = f"{overhead:.0f} s per run + {setting.epoch_s:.1f} s per epoch"
  description = describe_plan(ctx, setting, len(runs), epochs, cost)
  plan = {"runs": runs, "epochs": epochs, "k": setting.k, "description": description}
  ctx.summary.put("study", "plan", plan)
  runs = [(model, method, seed) for method, seed in runs]
  train_runs(
    ctx, box, study_preset(ctx, setting, epochs), runs, {model: overhead + epochs * setting.epoch_s}
  )


def run_depth_study(ctx: Context, box: Box) -> None:
  """`--study depth`: adam and znorm (seed 0) at every depth of ``sizes.depth_models``, one
  epoch count for all, sized from ResNet-20's throughput scaled by depth (`MODEL_COST`)."""
  setting = study_setting(ctx)
  if setting is None:
    return ctx.summary.skip("study", "(all)", "no throughput of ResNet-20 to size it from")
  models = ctx.sizes.depth_models
  overhead = {m: run_overhead_s(ctx, m, setting.k) for m in models}
  epoch_s = {m: MODEL_COST.get(m, 1.0) * setting.epoch_s for m in models}
  chosen = plan_depth_study(ctx, box.left(), overhead, epoch_s)
  if chosen is None:
    need = len(DEPTH_METHODS) * (overhead[models[0]] + epoch_s[models[0]])
    return ctx.summary.skip("study", "(all)", box.why_not(need) + " for one pair of 1 epoch")
  models, epochs = chosen
  runs = [(m, method, 0) for m in models for method in DEPTH_METHODS]
  cost = ", ".join(
    f"{m} {overhead[m]:.0f} s per run + {epoch_s[m]:.1f} s per epoch" for m in models
  )
  description = describe_plan(ctx, setting, len(runs), epochs, cost)
  plan = {"runs": runs, "epochs": epochs, "k": setting.k, "description": description}
  ctx.summary.put("study", "plan", plan)
  estimates = {m: overhead[m] + epochs * epoch_s[m] for m in models}
  train_runs(ctx, box, study_preset(ctx, setting, epochs), runs, estimates)


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------

SECTIONS = {  # --study: (name, share of the time left when the section starts, function)
  "methods": (
    ("platform", 0.1, run_platform),
    ("throughput", 0.45, run_throughput),
    ("overhead", 0.3, run_overhead),
    ("study", 1.0, run_study),
  ),
  # The study is the point: the throughput section measures only what sizes it
  # (`DEPTH_THROUGHPUT`) and the update-overhead section is left out.
  "depth": (
    ("platform", 0.1, run_platform),
    ("throughput", 0.3, run_throughput),
    ("study", 1.0, run_depth_study),
  ),
}
DEPTH_THROUGHPUT = 3  # the first combinations: ResNet-20's bare step, loop, none vs znorm


@dataclasses.dataclass
class Context:
  """What the sections share."""

  sizes: Sizes
  smoke: bool
  data_dir: str | None
  summary: Summary
  est: Estimates
  workroot: str
  default_unroll: bool
  cached: bool = False  # JAX's persistent compilation cache is on
  plan: list = dataclasses.field(default_factory=list)
  train_data: tuple | None = None
  kept_run: Callable | None = None

  @contextlib.contextmanager
  def measuring(self, section: str, part: str):
    """Marks ``part`` as in flight (for the watchdog); an exception is recorded, not raised,
    so one failure does not end the run."""
    self.summary.begin(section, part)
    print(f"accelerator_suite: {section}: {part} ...", flush=True)
    start, outcome = time.perf_counter(), "done"
    try:
      yield
    except Exception as e:  # noqa: BLE001
      outcome = "error"
      self.summary.error(section, part, e)
      print(f"accelerator_suite: {section}: {part} FAILED: {e}", file=sys.stderr, flush=True)
    finally:
      self.summary.log(section, part, time.perf_counter() - start, outcome)


@contextlib.contextmanager
def cached_splits():
  """Within: `trainer.datasets.load_split` reads each split once and hands out copies, so the
  suite's many `train_and_evaluate` runs do not each re-read CIFAR-10 (seconds per read)."""
  original = datasets.load_split
  cache: dict = {}

  def load_split(*args, **kwargs):
    key = (args, tuple(sorted(kwargs.items())))
    if key not in cache:
      cache[key] = original(*args, **kwargs)
    return tuple(a.copy() for a in cache[key])

  datasets.load_split = load_split
  try:
    yield
  finally:
    datasets.load_split = original


def default_out() -> Path:
  kind = re.sub(r"[^a-z0-9]+", "-", jax.local_devices()[0].device_kind.lower()).strip("-")
  day = datetime.date.today().isoformat()
  return ROOT / "benchmarks" / "results" / "accelerator" / f"{kind}-{day}"


def parse_args(argv):
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument(
    "--out", default=None, help="output folder (default benchmarks/results/accelerator/DEVICE-DATE)"
  )
  parser.add_argument("--data_dir", default=None, help="tfds data dir holding cifar10")
  parser.add_argument("--minutes", type=float, default=8.0, help="the whole run's time (8)")
  parser.add_argument("--smoke", action="store_true", help="tiny sizes, ~1 minute on CPU")
  parser.add_argument(
    "--study",
    choices=tuple(SECTIONS),
    default="methods",
    help="methods: all four sections, the study is ResNet-20 with the four methods; depth: "
    "platform, ResNet-20's throughput, then adam vs znorm at ResNet-20/110/56 on the full "
    "train split (issue 13's depth study at as many epochs as fit)",
  )
  args = parser.parse_args(argv)
  if not args.minutes > 0:
    parser.error(f"--minutes={args.minutes} must be > 0")
  return args


def main(argv=None, *, compilation_cache: bool = False) -> dict:
  """Runs the suite; returns summary.json's content.

  ``compilation_cache`` (the command line's choice) turns on JAX's persistent compilation
  cache in a temporary folder: the loop measurement's train program is then its bare step's (a
  hit instead of a compile; so are initializations and the study's first run), and on GPUs
  XLA's autotuning results are shared by every compile. It must be on before the process's
  first compile and stays on for the process's lifetime, so tests that call `main` inside
  pytest's process leave it off.
  """
  args = parse_args(argv)
  budget = Budget(args.minutes)
  sizes = SMOKE if args.smoke else Sizes()
  out = Path(args.out) if args.out else default_out()
  header = {
    "command": " ".join(["python -m benchmarks.accelerator_suite", *(argv or sys.argv[1:])]),
    "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "minutes": args.minutes,
    "smoke": args.smoke,
    "study": args.study,
    "compilation_cache": compilation_cache,
  }
  sections = SECTIONS[args.study]
  summary = Summary(out, header, budget.elapsed, tuple(name for name, _, _ in sections))
  watchdog = Watchdog(summary, budget.hard_end - budget.clock() - 0.5)
  logging.set_verbosity(logging.WARNING)  # orbax and tfds are chatty at INFO
  workroot = tempfile.mkdtemp(prefix="accelerator_suite_")
  if compilation_cache:
    jax.config.update("jax_compilation_cache_dir", os.path.join(workroot, "jax_cache"))
  default_unroll = jax.local_devices()[0].platform == "cpu"
  plan = throughput_plan(sizes, default_unroll)
  if args.study == "depth":
    plan = plan[:DEPTH_THROUGHPUT]
  ctx = Context(
    sizes,
    args.smoke,
    args.data_dir,
    summary,
    Estimates(sizes.compile_guess_s),
    workroot,
    default_unroll,
    cached=compilation_cache,
    plan=plan,
  )
  try:
    with cached_splits():
      for name, share, run in sections:
        box = budget.box(share)
        summary.start_section(name, box)
        print(f"accelerator_suite: {name} ({box.seconds:.0f} s)", flush=True)
        with ctx.measuring(name, "(section)"):
          run(ctx, box)
        summary.end_section(name)
    summary.finish("complete")
  finally:
    watchdog.cancel()
    shutil.rmtree(workroot, ignore_errors=True)
  print(f"accelerator_suite: wrote {out / 'summary.json'} and summary.md", flush=True)
  return summary.data


if __name__ == "__main__":
  main(compilation_cache=True)
