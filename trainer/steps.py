"""The pure steps, pmapped over AXIS_NAME (they use only the axis name and explicit
collectives, so they map with `jax.shard_map` as well).

* `train_loss`: the training objective, defined once: the train step, the gradient
  diagnostics and their skip/branch split all differentiate it.
* `train_step`: one optimizer step on this device's part of the global batch.
* `train_steps`: K train steps in one compiled call, each gathering its batch from the
  device-resident split by index: one dispatch per K steps.
* `eval_step`: loss and accuracy sums of one batch of the device-resident eval split (padding
  masked out); `Steps.evaluate` sums them over the split.
* `make_steps`: the pmapped functions; `config_steps`: those of a run's config, as the loop and
  the benchmarks call them.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax import lax

import models
from trainer import input_pipeline as ip
from trainer.datasets import DATASETS, DatasetSpec
from trainer.state import DTYPES, TrainState

AXIS_NAME = ip.AXIS_NAME


def train_loss(apply_fn: Callable, variables, x: jax.Array, labels: jax.Array):
  """The training objective: the model in train mode (BatchNorm on the batch's statistics,
  synchronized over the devices), float32 logits, mean softmax cross-entropy.

  Args:
    apply_fn: the model's apply.
    variables: ``{"params", "batch_stats"}`` (and any other collection, such as the
      perturbations of `models.param_and_block_input_grads`).
    x: the normalized (augmented) model input, ``labels`` its integer labels.

  Returns:
    ``(loss, (logits, updated batch_stats))``.
  """
  logits, updated = apply_fn(variables, x, train=True, mutable=["batch_stats"])
  logits = logits.astype(jnp.float32)
  return models.softmax_cross_entropy(logits, labels), (logits, updated["batch_stats"])


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
    return train_loss(apply_fn, {"params": params, "batch_stats": state.batch_stats}, x, labels)

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
  state: TrainState,
  images: jax.Array,
  labels: jax.Array,
  indices: jax.Array,
  *,
  unroll: bool,
  **step_kwargs,
) -> tuple[TrainState, dict]:
  """``len(indices)`` train steps in one call, step ``k`` on the rows ``indices[k]`` of the
  device-resident split ``images``/``labels``; the metrics are stacked, ``[K]`` each.

  ``unroll=True`` traces the K steps one after the other into one program; ``False`` runs them
  as a `lax.scan` (one traced step, a loop on the device). XLA:CPU runs the convolutions of a
  loop body about 28x slower than the same step outside a loop (ResNet-20, batch 128), so the
  CPU unrolls; accelerators loop, which keeps compile time independent of K.
  """

  def body(state, idx):
    return train_step(state, images[idx], labels[idx], **step_kwargs)

  if not unroll:
    return lax.scan(body, state, indices)
  per_step = []
  for k in range(indices.shape[0]):
    # The barrier keeps XLA from fusing across steps, so each step rounds as a single one.
    state, metrics = body(lax.optimization_barrier(state), indices[k])
    per_step.append(metrics)
  return state, jax.tree.map(lambda *m: jnp.stack(m), *per_step)


def eval_step(
  state: TrainState,
  images: jax.Array,
  labels: jax.Array,
  mask: jax.Array,
  batch: jax.Array,
  *,
  apply_fn: Callable,
  mean,
  std,
  dtype=jnp.float32,
  axis_name: str = AXIS_NAME,
) -> dict:
  """Sums of loss, correct predictions and real examples (``mask``) over global batch ``batch``
  of the device-resident eval split (``[batches, per_device, ...]`` on each device)."""
  x, y, m = (a[batch] for a in (images, labels, mask))
  logits = apply_fn(
    {"params": state.params, "batch_stats": state.batch_stats},
    ip.normalize(x, mean, std, dtype),
    train=False,
  ).astype(jnp.float32)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
  correct = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
  sums = {"loss": jnp.sum(loss * m), "correct": jnp.sum(correct * m), "count": m.sum()}
  return lax.psum(sums, axis_name)


@dataclasses.dataclass(frozen=True)
class Steps:
  """The pmapped steps of a run.

  ``train(state, images, labels, indices) -> (state, metrics)`` with the resident split
  ``[devices, N, ...]`` and ``indices`` ``int32[devices, K, per_device]`` (any K; each K
  compiles once; the state is donated); ``evaluate(state, batches) -> sums`` over the
  ``(images, labels, mask, b)`` arguments of `eval_step` (batch ``b`` of an eval split on the
  devices, ``[devices, batches, per_device, ...]``: the whole resident split, or one streamed
  batch with ``b = 0``), one dispatch per batch (a loop on the device would be slow on CPU, see
  `train_steps`), summed on the host in float64.
  """

  train: Callable
  eval_step: Callable

  def evaluate(self, state, batches) -> dict[str, float]:
    per_batch = [self.eval_step(state, *args) for args in batches]
    sums = {"loss": 0.0, "correct": 0.0, "count": 0.0}
    for batch_sums in ip.unreplicate(per_batch):
      for key in sums:
        sums[key] += float(batch_sums[key])
    return sums


def make_steps(
  model,
  tx: optax.GradientTransformation,
  spec: DatasetSpec,
  *,
  seed: int,
  dtype,
  augment: bool,
  devices,
  unroll: bool | None = None,
) -> Steps:
  """The trainer's pmapped train and eval functions over ``devices`` (used by the loop and the
  benchmarks alike); ``unroll`` as in `train_steps` (None: unroll on CPU only)."""
  if unroll is None:
    unroll = devices[0].platform == "cpu"
  common = dict(apply_fn=model.apply, mean=spec.mean, std=spec.std, dtype=dtype)
  train = jax.pmap(
    functools.partial(train_steps, tx=tx, seed=seed, augment=augment, unroll=unroll, **common),
    axis_name=AXIS_NAME,
    devices=ip.pmap_devices(devices),
    donate_argnums=(0,),
  )
  eval_fn = jax.pmap(
    functools.partial(eval_step, **common),
    axis_name=AXIS_NAME,
    in_axes=(0, 0, 0, 0, None),
    devices=ip.pmap_devices(devices),
  )
  return Steps(train=train, eval_step=eval_fn)


def config_steps(
  config, model, tx: optax.GradientTransformation, devices, spec=None, unroll=None
) -> Steps:
  """`make_steps` with the dataset (``spec``: CIFAR's from `DATASETS` if None), seed, dtype
  and augmentation of ``config``; a streamed run's augmentation happens on the host, none on
  the devices."""
  return make_steps(
    model,
    tx,
    spec or DATASETS[config.dataset],
    seed=config.seed,
    dtype=DTYPES[config.dtype],
    augment=config.augment and config.input in (None, "resident"),
    devices=devices,
    unroll=unroll,
  )
