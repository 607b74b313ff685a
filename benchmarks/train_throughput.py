"""Throughput of train.py end to end against the bare pmapped step, on the same data.

* bare: the trainer's own pmapped step (`trainer.steps.make_steps`), fed the device-resident
  split and index arrays already on the devices, in a tight loop: the compute-only ceiling
  (K steps per call, as the trainer dispatches them).
* train.py: `train_and_evaluate` for two epochs with its default logging and checkpointing
  cadence (a checkpoint per epoch, TensorBoard scalars every ``log_every_steps``), timed
  between the ``wall_time`` of its two evaluation lines in metrics.jsonl: one epoch of
  steady-state steps with the host's index computation, dispatch, logging, one checkpoint and
  one evaluation, made a single batch (``test[:128]``) so that evaluation, a separate cost,
  stays out of the figure.

For each ``--steps_per_dispatch`` K the table gives images/s of both and their ratio (target:
train.py >= 95% of the bare step), and the FLOP rate of the train step (XLA's cost analysis)
next to a large float32 matmul's; ``--json PATH`` writes the same figures. Run from the project
root:

  python -m benchmarks.train_throughput --data_dir ~/tensorflow_datasets --steps_per_dispatch 1,8
"""

from __future__ import annotations

import argparse
import tempfile
import time

import jax
import jax.numpy as jnp
import ml_collections

import configs
from trainer import datasets, plan
from trainer import input_pipeline as ip
from trainer.files import markdown_table, write_json
from trainer.loop import train_and_evaluate
from trainer.metrics import read_metrics
from trainer.optimizers import create_optimizer
from trainer.state import DTYPES, create_model, create_train_state
from trainer.steps import config_steps


def make_config(args, steps_per_dispatch: int) -> ml_collections.ConfigDict:
  return configs.make_config(
    model=args.model,
    data_dir=args.data_dir,
    train_split=args.train_split,
    eval_split=f"test[:{args.batch}]",  # one batch: the evaluation itself costs ~nothing
    batch_size=args.batch,
    dtype=args.dtype,
    steps_per_dispatch=steps_per_dispatch,
  )


def bare_step_rate(config, images, labels, steps: int) -> tuple[float, float, float]:
  """Images/s, FLOPs per step and seconds per step of the trainer's pmapped step."""
  devices = plan.local_devices(config)
  spec = datasets.DATASETS[config.dataset]
  model = create_model(config, spec.num_classes)
  tx = create_optimizer(config, steps).tx
  state = ip.replicate(create_train_state(config, model, tx, images.shape[1:]), devices)
  fns = config_steps(config, model, tx, devices)
  k = config.steps_per_dispatch
  data = ip.replicate((images, labels), devices)
  batch_indices = [
    ip.shard(
      ip.dispatch_indices(config.seed, i * k, k, len(images), config.batch_size, len(devices)),
      devices,
    )
    for i in range(4)
  ]
  cost = fns.train.lower(state, *data, batch_indices[0]).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  flops = cost.get("flops", float("nan")) * len(devices) / k
  state, metrics = fns.train(state, *data, batch_indices[0])  # compile
  jax.block_until_ready(metrics)
  calls = max(1, steps // k)
  start = time.perf_counter()
  for i in range(calls):
    state, metrics = fns.train(state, *data, batch_indices[i % len(batch_indices)])
  jax.block_until_ready(metrics)
  seconds = time.perf_counter() - start
  return calls * k * config.batch_size / seconds, flops, seconds / (calls * k)


def train_py_rate(config, steps: int) -> float:
  """Steady-state images/s of train_and_evaluate between two evaluations (see module doc)."""
  run_config = ml_collections.ConfigDict(config.to_dict())
  run_config.num_train_steps = 2 * steps
  run_config.eval_every_steps = steps
  run_config.checkpoint_every_steps = steps
  with tempfile.TemporaryDirectory() as workdir:
    train_and_evaluate(run_config, workdir)
    first, second = read_metrics(workdir)
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


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--model", default="resnet20")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
  parser.add_argument("--train_split", default="train[:6400]")
  parser.add_argument("--steps_per_dispatch", default="1,8", help="comma-separated K values")
  parser.add_argument("--json", default=None, help="also write the figures to this file")
  args = parser.parse_args(argv)
  images, labels = datasets.load_split("cifar10", args.train_split, args.data_dir)
  steps = images.shape[0] // args.batch
  setting = (
    f"jax {jax.__version__}, {jax.local_device_count()} x {jax.devices()[0].device_kind}; "
    f"{args.model}, batch {args.batch}, {args.dtype}, {steps} steps = 1 epoch of "
    f"{args.train_split}"
  )
  print(setting)
  results = []
  for k in (int(v) for v in args.steps_per_dispatch.split(",")):
    config = make_config(args, k)
    # The bare step is timed before and after train.py, so that a change in the machine's
    # load during the run shows as a spread instead of biasing the ratio.
    bare_before, flops, step_seconds = bare_step_rate(config, images, labels, steps)
    e2e = train_py_rate(config, steps)
    bare_after, _, _ = bare_step_rate(config, images, labels, steps)
    results.append(
      {
        "steps_per_dispatch": k,
        "bare": (bare_before + bare_after) / 2,
        "bare_before": bare_before,
        "bare_after": bare_after,
        "train_py": e2e,
        "flops_per_step": flops,
        "step_seconds": step_seconds,
      }
    )
  matmul = matmul_flop_rate()
  rows = [
    (
      r["steps_per_dispatch"],
      f"{r['bare']:.1f} ({r['bare_before']:.1f} / {r['bare_after']:.1f})",
      f"{r['train_py']:.1f}",
      f"{r['train_py'] / r['bare']:.1%}",
      f"{r['flops_per_step'] / 1e9:.2f}",
      f"{r['flops_per_step'] / r['step_seconds'] / 1e9:.1f}",
    )
    for r in results
  ]
  header = (
    "K",
    "bare step img/s (before / after)",
    "train.py img/s",
    "of bare",
    "GFLOP/step",
    "GFLOP/s",
  )
  print("\n".join(markdown_table(header, rows, (True,) * 6)))
  print(f"2048^2 float32 matmul: {matmul / 1e9:.1f} GFLOP/s")
  if args.json:
    write_json(args.json, {"setting": setting, "results": results, "matmul_flops": matmul})
  return results


if __name__ == "__main__":
  main()
