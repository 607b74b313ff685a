"""Memory: optimizer-state size per transform, and peak host memory of training.

Part 1 shows that the gradient transforms add no optimizer state: the state of
``chain(transform, adam)`` has exactly as many bytes as Adam's, for every transform.

Part 2 (``--train``) runs ``train.py`` for a few steps under ``/usr/bin/time -v`` for each
model and reports the peak resident set size (the whole CIFAR split is held in host
memory as uint8, so this includes the dataset). Run from the project root:

  python -m benchmarks.memory
  python -m benchmarks.memory --train --data_dir ~/tensorflow_datasets --steps 20

``--json PATH`` also writes the figures.
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
from trainer.files import markdown_table, write_json


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
  parser.add_argument("--json", default=None, help="also write the figures to this file")
  args = parser.parse_args(argv)
  names = args.models.split(",")
  figures = {"optimizer_state_bytes": {name: optimizer_state_bytes(name) for name in names}}
  variants = [v for v in figures["optimizer_state_bytes"][names[0]] if v != "params"]
  rows = []
  for name, sizes in figures["optimizer_state_bytes"].items():
    rows.append((name, f"{sizes['params']:,}", *(f"{sizes[v]:,}" for v in variants)))
    if len({sizes[v] for v in variants}) != 1:
      raise SystemExit(f"memory: a transform added optimizer state on {name}: {sizes}")
  print("optimizer state bytes (every transform + adam = adam alone)\n")
  header = ("model", "params", *variants)
  print("\n".join(markdown_table(header, rows, (False, *[True] * (len(variants) + 1)))))
  if args.train:
    figures["peak_rss_mib"] = {
      name: peak_rss_mib(name, args.data_dir, args.steps) for name in names
    }
    print(f"\npeak host memory of train.py ({args.steps} steps, batch 128)\n")
    rss = [(name, f"{mib:.0f}") for name, mib in figures["peak_rss_mib"].items()]
    print("\n".join(markdown_table(("model", "peak RSS (MiB)"), rss, (False, True))))
  if args.json:
    write_json(args.json, figures)
  return figures


if __name__ == "__main__":
  main()
