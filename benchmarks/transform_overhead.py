"""Cost of the gradient transforms, measured side by side in one process.

Part 1 (``--part update``): the jitted optimizer update (``tx.update`` plus
``optax.apply_updates``) on the real parameter pytrees of CIFAR ResNets, for

  adam                 optax.adam alone (the baseline)
  floor                one extra reduction pass over each gradient leaf, then Adam: the
                       least any per-tensor statistic can cost
  znorm+adam           zo.znorm() then Adam
  naive_znorm+adam     ``(g - g.mean()) / (g.std() + eps)`` per leaf, then Adam: what the
                       two-pass structure alone costs, without the library's float32
                       accumulation, scaling and exact zero-spread handling
  centralize+adam      zo.centralize() then Adam
  optax_centralize+adam  optax.centralize() then Adam
  clip+adam            zo.clip_by_global_norm(1.0) then Adam

Part 2 (``--part step``): the trainer's own train step (`trainer.steps.make_steps`: gather,
augmentation, forward, backward, update) of resnet20 with no transform vs ZNorm.

Variants are interleaved and repeated in rounds; each round times every variant once
(``--iters`` calls), and the tables give medians over rounds with the ratio to Adam alone and
to the floor (``--json PATH`` writes the same figures). Run from the project root:

  python -m benchmarks.transform_overhead                 # both parts
  python -m benchmarks.transform_overhead --part update --models resnet56 --rounds 30
"""

from __future__ import annotations

import argparse
import functools
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import configs
import models
import znorm_optax as zo
from trainer import input_pipeline as ip
from trainer.files import markdown_table, write_json
from trainer.optimizers import create_optimizer
from trainer.state import create_model, create_train_state
from trainer.steps import config_steps


def per_leaf(fn) -> optax.GradientTransformation:
  """A stateless transform applying ``fn`` to every leaf."""

  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(fn, updates), state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)


# One reduction per leaf whose result is used (so XLA keeps it) but changes nothing.
floor_transform = functools.partial(per_leaf, lambda g: g * (1 + 0 * g.sum()))
naive_znorm = functools.partial(per_leaf, lambda g: (g - g.mean()) / (g.std() + 1e-8))


UPDATE_VARIANTS = {
  "adam": lambda: optax.adam(1e-3),
  "floor": lambda: optax.chain(floor_transform(), optax.adam(1e-3)),
  "znorm+adam": lambda: optax.chain(zo.znorm(), optax.adam(1e-3)),
  "naive_znorm+adam": lambda: optax.chain(naive_znorm(), optax.adam(1e-3)),
  "centralize+adam": lambda: optax.chain(zo.centralize(), optax.adam(1e-3)),
  "optax_centralize+adam": lambda: optax.chain(optax.centralize(), optax.adam(1e-3)),
  "clip+adam": lambda: optax.chain(zo.clip_by_global_norm(1.0), optax.adam(1e-3)),
}


def model_variables(name: str, batch: int = 2):
  model = models.create_model(name, num_classes=10)
  images = jnp.zeros((batch, 32, 32, 3), jnp.float32)
  variables = model.init(jax.random.key(0), images, train=False)
  return model, {"params": variables["params"], "batch_stats": variables["batch_stats"]}


def random_like(tree, seed):
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return treedef.unflatten(
    [1e-3 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)]
  )


def time_rounds(candidates: dict, rounds: int, iters: int) -> dict[str, float]:
  """Median seconds per call of each ``run()`` in ``candidates``, interleaved by round."""
  for run in candidates.values():  # Compile and warm up.
    jax.block_until_ready(run())
  samples = {name: [] for name in candidates}
  for _ in range(rounds):
    for name, run in candidates.items():
      start = time.perf_counter()
      for _ in range(iters):
        out = run()
      jax.block_until_ready(out)
      samples[name].append((time.perf_counter() - start) / iters)
  return {name: statistics.median(s) for name, s in samples.items()}


def update_candidates(params, names=tuple(UPDATE_VARIANTS)):
  """A ``run()`` per variant of ``names`` (keys of UPDATE_VARIANTS): one jitted update of
  ``params`` (buffers donated) with fixed random gradients."""
  grads = random_like(params, 1)
  candidates = {}
  for name in names:
    tx = UPDATE_VARIANTS[name]()

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def update(params, state, grads, tx=tx):
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    holder = {"params": jax.tree.map(jnp.copy, params), "state": tx.init(params)}

    def run(update=update, holder=holder):
      holder["params"], holder["state"] = update(holder["params"], holder["state"], grads)
      return holder["params"]

    candidates[name] = run
  return candidates


def step_candidates(batch: int):
  """The trainer's own pmapped train step (`trainer.steps.make_steps`, one device, one step per
  call, the default config's masking to kernels) with no transform and with ZNorm."""
  devices = jax.local_devices()[:1]
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (4 * batch, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, 4 * batch).astype(np.int32)
  data = ip.replicate((images, labels), devices)
  indices = [
    ip.shard(ip.dispatch_indices(0, i, 1, len(images), batch, len(devices)), devices)
    for i in range(4)
  ]
  candidates = {}
  for name in ("none", "znorm"):
    config = configs.make_config(batch_size=batch, grad_transform=name)
    model = create_model(config, 10)
    tx = create_optimizer(config, 1000).tx
    fns = config_steps(config, model, tx, devices)
    holder = {
      "state": ip.replicate(create_train_state(config, model, tx, (32, 32, 3)), devices),
      "i": 0,
    }

    def run(fns=fns, holder=holder):
      holder["state"], metrics = fns.train(holder["state"], *data, indices[holder["i"] % 4])
      holder["i"] += 1
      return metrics

    candidates[f"step/{name}"] = run
  return candidates


def report(title: str, medians: dict[str, float], baseline: str, floor: str | None) -> dict:
  """Prints the table of one part and returns its figures (milliseconds and ratios)."""
  figures = {
    name: {
      "median_ms": 1e3 * seconds,
      f"x_{baseline}": seconds / medians[baseline],
      **({f"x_{floor}": seconds / medians[floor]} if floor else {}),
    }
    for name, seconds in medians.items()
  }
  header = ("variant", "median ms", f"x {baseline}", *((f"x {floor}",) if floor else ()))
  rows = [(name, *(f"{v:.3f}" for v in values.values())) for name, values in figures.items()]
  print(f"\n{title}\n")
  print("\n".join(markdown_table(header, rows, (False, True, True, True))))
  return {"title": title, "variants": figures}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--part", choices=["update", "step", "all"], default="all")
  parser.add_argument("--models", default="resnet20,resnet56,resnet110")
  parser.add_argument("--rounds", type=int, default=15)
  parser.add_argument("--iters", type=int, default=20)
  parser.add_argument("--step-rounds", type=int, default=15)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--json", default=None, help="also write the figures to this file")
  args = parser.parse_args(argv)
  setting = (
    f"jax {jax.__version__} on {jax.devices()[0].device_kind} x{jax.device_count()}, "
    f"{platform.processor() or platform.machine()}"
  )
  print(setting)
  parts = []
  if args.part in ("update", "all"):
    for name in args.models.split(","):
      _, variables = model_variables(name)
      params = variables["params"]
      count = sum(x.size for x in jax.tree.leaves(params))
      medians = time_rounds(update_candidates(params), args.rounds, args.iters)
      parts.append(
        report(
          f"optimizer update, {name} ({count / 1e6:.2f}M params, "
          f"{len(jax.tree.leaves(params))} leaves)",
          medians,
          "adam",
          "floor",
        )
      )
  if args.part in ("step", "all"):
    medians = time_rounds(step_candidates(args.batch), args.step_rounds, iters=3)
    title = f"full train step, resnet20, batch {args.batch}"
    parts.append(report(title, medians, "step/none", None))
  if args.json:
    write_json(args.json, {"setting": setting, "parts": parts})
  return parts


if __name__ == "__main__":
  main()
