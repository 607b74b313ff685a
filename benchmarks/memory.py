"""Memory: optimizer-state size per transform, and peak host memory of training.

Part 1 shows that the gradient transforms add no optimizer state: the state of
``chain(transform, adam)`` has exactly as many bytes as Adam's, for every transform.

Part 2 (``--train``) runs ``train.py`` for a few steps under ``/usr/bin/time -v`` for each
model and reports the peak resident set size (the whole CIFAR split is held in host
memory as uint8, so this includes the dataset). Run from the project root:

  python -m benchmarks.memory
  python -m benchmarks.memory --train --data_dir ../shared/data/tfds --steps 20
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import optax

import models
import znorm_optax as zo


def tree_bytes(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def optimizer_state_bytes(model_name: str) -> dict[str, int]:
  model = models.create_model(model_name, num_classes=10)
  variables = jax.eval_shape(
    lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  )
  params = variables["params"]
  sizes = {"params": tree_bytes(params)}
  for name in zo.GRADIENT_TRANSFORMS:
    tx = optax.chain(zo.gradient_transform(name), optax.adam(1e-3))
    sizes[f"{name}+adam"] = tree_bytes(jax.eval_shape(tx.init, params))
  return sizes


def peak_rss_mib(model_name: str, data_dir: str | None, steps: int) -> float:
  """Peak resident memory of a short ``train.py`` run, from GNU time's report."""
  with tempfile.TemporaryDirectory() as workdir:
    command = [
      "/usr/bin/time",
      "-v",
      sys.executable,
      "train.py",
      f"--workdir={workdir}",
      f"--config.model={model_name}",
      f"--config.num_train_steps={steps}",
      f"--config.eval_every_steps={steps}",
      f"--config.checkpoint_every_steps={steps}",
    ]
    if data_dir:
      command.append(f"--config.data_dir={data_dir}")
    result = subprocess.run(
      command,
      capture_output=True,
      text=True,
      check=False,
      env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
  if result.returncode != 0:
    raise SystemExit(f"train.py failed for {model_name}:\n{result.stderr[-2000:]}")
  kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1))
  return kib / 1024


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="resnet20,resnet56")
  parser.add_argument("--train", action="store_true", help="also measure peak RSS of train.py")
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--steps", type=int, default=20)
  args = parser.parse_args(argv)
  for name in args.models.split(","):
    sizes = optimizer_state_bytes(name)
    print(f"\n{name}: optimizer state bytes (params: {sizes.pop('params'):,})")
    for variant, size in sizes.items():
      print(f"  {variant:18s} {size:>12,d}  ({size / sizes['none+adam']:.3f}x adam)")
    assert len(set(sizes.values())) == 1, "a transform added optimizer state"
  if args.train:
    print(f"\npeak host memory of train.py ({args.steps} steps, batch 128)")
    for name in args.models.split(","):
      print(f"  {name:10s} {peak_rss_mib(name, args.data_dir, args.steps):8.0f} MiB")


if __name__ == "__main__":
  main()
