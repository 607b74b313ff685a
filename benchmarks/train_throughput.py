"""Throughput of train.py end to end against the bare pmapped step, on the same data.

* bare: ``train.train_step`` pmapped exactly as train.py does it, fed batches that are
  already on the devices, in a tight loop: the compute-only ceiling.
* train.py: ``train.train_and_evaluate`` for two epochs of K steps with its default
  logging and checkpointing cadence (a checkpoint per epoch, TensorBoard scalars every
  ``log_every_steps``), timed between the ``wall_time`` of its two evaluation lines in
  metrics.jsonl: K steady-state steps with their host-side batch gathering, transfers,
  on-device augmentation, logging, one checkpoint and one evaluation, made a single batch
  (``test[:128]``) so that evaluation, a separate cost, stays out of the figure.

The report gives images/s of both and their ratio (target: train.py >= 95% of the bare step),
and the FLOP rate of the train step (XLA's cost analysis) next to a large float32 matmul's.
Run from the project root:

  python benchmarks/train_throughput.py --data_dir ../shared/data/tfds
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time

import flax.jax_utils
import jax
import jax.numpy as jnp
import numpy as np

import input_pipeline as ip
import metrics_io
import train
from configs import default


def make_config(args) -> default.ml_collections.ConfigDict:
  config = default.get_config()
  config.model = args.model
  config.data_dir = args.data_dir
  config.train_split = args.train_split
  config.eval_split = args.eval_split
  config.batch_size = args.batch
  return config


def bare_step_rate(config, images, labels, steps: int):
  """Images/s, FLOPs per step and seconds per step of the pmapped step on device batches."""
  devices = train.local_devices(config)
  spec = ip.DATASETS[config.dataset]
  model = train.create_model(config, spec.num_classes)
  tx, _ = train.create_optimizer(config, steps)
  state = train.initial_state(config, model, tx, images.shape[1:])
  step_fn = jax.pmap(
    functools.partial(
      train.train_step,
      apply_fn=model.apply,
      tx=tx,
      seed=config.seed,
      mean=spec.mean,
      std=spec.std,
      augment=config.augment,
    ),
    axis_name=train.AXIS_NAME,
    devices=devices,
    donate_argnums=(0,),
  )
  n = len(devices)
  state = flax.jax_utils.replicate(state, devices)
  # Placed exactly as train.py places its batches: split over the devices' mesh axis.
  mesh = jax.sharding.Mesh(np.asarray(devices), (train.AXIS_NAME,))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(train.AXIS_NAME))
  batches = []
  for i in range(4):
    idx = ip.train_batch_indices(config.seed, i, images.shape[0], config.batch_size)
    batches.append(
      tuple(jax.device_put(ip.shard_batch(a[idx], n), sharding) for a in (images, labels))
    )
  flops = step_fn.lower(state, *batches[0]).compile().cost_analysis()
  flops = (flops[0] if isinstance(flops, list) else flops).get("flops", float("nan"))
  state, metrics = step_fn(state, *batches[0])  # compile
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for i in range(steps):
    state, metrics = step_fn(state, *batches[i % len(batches)])
  jax.block_until_ready(metrics)
  seconds = time.perf_counter() - start
  return steps * config.batch_size / seconds, flops * n, seconds / steps


def train_py_rate(config, steps: int) -> float:
  """Steady-state images/s of train_and_evaluate between two evaluations (see module doc)."""
  run_config = default.ml_collections.ConfigDict(config.to_dict())
  run_config.num_train_steps = 2 * steps
  run_config.eval_every_steps = steps
  run_config.checkpoint_every_steps = steps
  run_config.eval_split = "test[:128]"  # One batch: the evaluation itself costs ~nothing.
  with tempfile.TemporaryDirectory() as workdir:
    train.train_and_evaluate(run_config, workdir)
    first, second = [
      row
      for row in metrics_io.read_metrics(f"{workdir}/{metrics_io.METRICS_FILE}")
      if "kind" not in row
    ]
  return steps * config.batch_size / (second["wall_time"] - first["wall_time"])


def matmul_flop_rate(size: int = 2048, repeats: int = 10) -> float:
  a = jnp.ones((size, size), jnp.float32)
  matmul = jax.jit(lambda a: a @ a)
  jax.block_until_ready(matmul(a))
  start = time.perf_counter()
  for _ in range(repeats):
    out = matmul(a)
  jax.block_until_ready(out)
  return 2 * size**3 * repeats / (time.perf_counter() - start)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--model", default="resnet20")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--train_split", default="train[:6400]")
  parser.add_argument("--eval_split", default="test[:1000]")
  args = parser.parse_args(argv)
  config = make_config(args)
  images, labels = ip.load_split(config.dataset, config.train_split, config.data_dir)
  steps = images.shape[0] // config.batch_size
  print(
    f"jax {jax.__version__}, {jax.local_device_count()} x {jax.devices()[0].device_kind}; "
    f"{args.model}, batch {args.batch}, {steps} steps = 1 epoch of {args.train_split}"
  )
  # The bare step is timed before and after train.py, so that a change in the machine's
  # load during the run shows as a spread instead of biasing the ratio.
  bare_before, flops_per_step, step_seconds = bare_step_rate(config, images, labels, steps)
  e2e_ips = train_py_rate(config, steps)
  bare_after, _, _ = bare_step_rate(config, images, labels, steps)
  bare_ips = (bare_before + bare_after) / 2
  matmul = matmul_flop_rate()
  print(
    f"bare pmapped step : {bare_ips:8.1f} images/s  (before {bare_before:.1f}, "
    f"after {bare_after:.1f})"
  )
  print(f"train.py          : {e2e_ips:8.1f} images/s  ({e2e_ips / bare_ips:.1%} of bare)")
  print(
    f"train step        : {flops_per_step / 1e9:8.2f} GFLOP/step, "
    f"{flops_per_step / step_seconds / 1e9:.1f} GFLOP/s"
  )
  print(
    f"2048^2 f32 matmul : {matmul / 1e9:8.1f} GFLOP/s  (step at "
    f"{flops_per_step / step_seconds / matmul:.0%} of it)"
  )


if __name__ == "__main__":
  main()
