"""The pure steps, pmapped over AXIS_NAME (they use only the axis name and explicit
collectives, so they map with `jax.shard_map` as well).

* `train_step`: one optimizer step on this device's part of the global batch.
* `train_steps`: K train steps in one compiled call (`lax.scan`), each gathering its batch
  from the device-resident split by index: one dispatch per K steps.
* `evaluate`: loss and accuracy sums over the whole device-resident eval split (`lax.scan`
  over its batches; padding masked out).
* `make_steps`: the pmapped functions the loop and the benchmarks call.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax import lax

from trainer import input_pipeline as ip
from trainer.datasets import DatasetSpec
from trainer.state import TrainState

AXIS_NAME = ip.AXIS_NAME


def train_step(
  state: TrainState,
  images: jax.Array,
  labels: jax.Array,
  *,
  apply_fn: Callable,
  tx: optax.GradientTransformation,
  seed: int,
  mean,
  std,
  dtype=jnp.float32,
  augment: bool = True,
  axis_name: str = AXIS_NAME,
) -> tuple[TrainState, dict]:
  """One optimizer step on this device's part of the global batch.

  Args:
    state: the (replicated) train state.
    images: ``uint8[per_device, H, W, C]``, rows ``d * per_device ...`` of the global batch.
    labels: ``int32[per_device]``.
    apply_fn, tx: the model's apply and the optimizer.
    seed: the run's seed; the augmentation key is ``fold_in(key(seed), step)``.
    mean, std, dtype: normalization and compute dtype.
    augment: pad-4 random crop + flip.
    axis_name: the mapped axis holding the devices.

  Returns:
    The new state (identical on every device) and the global batch's mean ``loss`` and
    ``accuracy``.
  """
  x = ip.train_inputs(
    state.step,
    images,
    seed=seed,
    mean=mean,
    std=std,
    dtype=dtype,
    augment_images=augment,
    axis_name=axis_name,
  )

  def loss_fn(params):
    logits, new_vars = apply_fn(
      {"params": params, "batch_stats": state.batch_stats}, x, train=True, mutable=["batch_stats"]
    )
    logits = logits.astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, (logits, new_vars["batch_stats"])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grads = lax.pmean(grads, axis_name)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  accuracy = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
  metrics = lax.pmean({"loss": loss, "accuracy": accuracy}, axis_name)
  new_state = state.replace(
    step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
  )
  return new_state, metrics


def train_steps(
  state: TrainState, images: jax.Array, labels: jax.Array, indices: jax.Array, **step_kwargs
) -> tuple[TrainState, dict]:
  """``len(indices)`` train steps in one call, step ``k`` on the rows ``indices[k]`` of the
  device-resident split ``images``/``labels``; the metrics are stacked, ``[K]`` each."""

  def body(state, idx):
    return train_step(state, images[idx], labels[idx], **step_kwargs)

  return lax.scan(body, state, indices)


def evaluate(
  state: TrainState,
  images: jax.Array,
  labels: jax.Array,
  mask: jax.Array,
  *,
  apply_fn: Callable,
  mean,
  std,
  dtype=jnp.float32,
  axis_name: str = AXIS_NAME,
) -> dict:
  """Sums of loss, correct predictions and real examples (``mask``) over every batch of the
  eval split (``[batches, per_device, ...]`` on each device), summed over the devices."""

  def body(sums, batch):
    x, y, m = batch
    logits = apply_fn(
      {"params": state.params, "batch_stats": state.batch_stats},
      ip.normalize(x, mean, std, dtype),
      train=False,
    ).astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    correct = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
    return jax.tree.map(jnp.add, sums, (jnp.sum(loss * m), jnp.sum(correct * m), m.sum())), None

  zeros = (jnp.zeros((), jnp.float32),) * 3
  (loss, correct, count), _ = lax.scan(body, zeros, (images, labels, mask))
  return lax.psum({"loss": loss, "correct": correct, "count": count}, axis_name)


@dataclasses.dataclass(frozen=True)
class Steps:
  """The pmapped steps of a run.

  ``train(state, images, labels, indices) -> (state, metrics)`` with the resident split
  ``[devices, N, ...]`` and ``indices`` ``int32[devices, K, per_device]`` (any K; each K
  compiles once; the state is donated); ``evaluate(state, images, labels, mask) -> sums``.
  """

  train: Callable
  evaluate: Callable


def make_steps(
  model,
  tx: optax.GradientTransformation,
  spec: DatasetSpec,
  *,
  seed: int,
  dtype,
  augment: bool,
  devices,
) -> Steps:
  """The trainer's pmapped train and eval functions over ``devices`` (used by the loop and the
  benchmarks alike)."""
  common = dict(apply_fn=model.apply, mean=spec.mean, std=spec.std, dtype=dtype)
  train = jax.pmap(
    functools.partial(train_steps, tx=tx, seed=seed, augment=augment, **common),
    axis_name=AXIS_NAME,
    devices=devices,
    donate_argnums=(0,),
  )
  evaluate_fn = jax.pmap(
    functools.partial(evaluate, **common), axis_name=AXIS_NAME, devices=devices
  )
  return Steps(train=train, evaluate=evaluate_fn)
