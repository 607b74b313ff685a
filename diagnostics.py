"""Gradient diagnostics of `train.py` (``--config.diagnostics_every_steps=N``).

At step 1 and every N steps the trainer writes one ``{"kind": "diagnostics", ...}`` line to
metrics.jsonl (`diagnostics_row`) and the same numbers to TensorBoard (`write_scalars`):

  * per layer, the norm, mean and std of the pmean'ed gradient and of the gradient transform's
    output, which `znorm_optax.gradient_stats` entries around the transform keep in the optimizer
    state (`train.create_optimizer`; read back with `gradient_stats_of`);
  * per residual block, the skip/branch split of the gradient at its input (`diagnostic_step`, a
    separately pmap'ed step on the batch of the train step, before the update).

Diagnostics never change training: the updates are the same and checkpoints leave the statistics
out (`checkpointing.saved_opt_state`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict
from jax import lax

import input_pipeline as ip

if TYPE_CHECKING:
    from train import TrainState


def gradient_stats_of(opt_state) -> tuple[Any, Any] | None:
    """`(gradient, update)`: the `znorm_optax.GradientStatsState`s of the last step's raw
    gradients and of the gradient transform's output, or None when diagnostics are off."""
    import znorm_optax as zo

    if not isinstance(opt_state, tuple) or isinstance(opt_state, zo.GradientStatsState):
        return None
    stats = [s for s in opt_state if isinstance(s, zo.GradientStatsState)]
    return (stats[0], stats[1]) if stats else None


def diagnostic_step(
    state: TrainState,
    images: jax.Array,
    labels: jax.Array,
    *,
    model,
    seed: int,
    mean,
    std,
    dtype=jnp.float32,
    augment: bool = True,
    axis_name: str = ip.AXIS_NAME,
) -> dict:
    """The skip/branch split of dL/dx at every residual block input, over the global batch.

    Takes the arguments `train.train_step` takes for the same step (same augmentation, BatchNorm in
    train mode), so it measures the gradient of the step's update.  Exact: each device gets its
    slice of dL/dx for the global mean loss L from `models.block_input_grads` (under pmap the
    gradient of the per-device loss through the synchronized BatchNorm is that of the sum of
    the per-device losses: hence the division by the device count), and the norms and dot
    products are summed over the devices.

    Returns:
      ``{block path: {"skip_norm", "branch_norm", "total_norm", "cosine"}}`` as float32
      scalars, identical on every device (sorted keys; `models.block_names` gives the forward
      order).
    """
    import models

    x = ip.train_inputs(state.step, images, seed=seed, mean=mean, std=std, dtype=dtype,
                        augment_images=augment, axis_name=axis_name)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    grads = models.block_input_grads(model, variables, x, labels, train=True)
    n = lax.psum(1, axis_name)
    out = {}
    for path, g in grads.items():
        skip = g[models.overlap.SKIP].astype(jnp.float32) / n
        branch = g[models.overlap.BRANCH].astype(jnp.float32) / n
        total = skip + branch
        ss, bb, sb, tt = lax.psum(
            (jnp.vdot(skip, skip), jnp.vdot(branch, branch), jnp.vdot(skip, branch),
             jnp.vdot(total, total)),
            axis_name,
        )
        denom = jnp.sqrt(ss * bb)
        cosine = jnp.where(denom > 0, sb / jnp.where(denom > 0, denom, 1.0), 0.0)
        out[path] = {
            "skip_norm": jnp.sqrt(ss),
            "branch_norm": jnp.sqrt(bb),
            "total_norm": jnp.sqrt(tt),
            "cosine": jnp.clip(cosine, -1.0, 1.0),
        }
    return out


def param_paths(model, image_shape) -> tuple[str, ...]:
    """'/'-joined paths of the model's parameters in forward (creation) order (no FLOPs)."""
    paths = []

    def init(x):
        variables = model.init(jax.random.key(0), x, train=False)
        paths.extend("/".join(p) for p in flatten_dict(variables["params"]))  # creation order
        return variables

    jax.eval_shape(init, jnp.zeros((1, *image_shape), jnp.float32))
    return tuple(paths)


def forward_order(model, variables, image_shape) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The ``layer_order`` and ``block_order`` of `diagnostics_row`: `param_paths` and the
    residual blocks' paths (`models.block_names`), in forward order."""
    import models

    layer_order = param_paths(model, image_shape)
    block_order = models.block_names(
        model, variables, np.zeros((1, *image_shape), np.float32)
    )
    return layer_order, block_order


_LAYER_STATS = ("norm", "mean", "std")
SPLIT_STATS = ("skip_norm", "branch_norm", "total_norm", "cosine")


def diagnostics_row(step: int, epoch: float, layer_order, block_order, stats, split) -> dict:
    """The metrics.jsonl line of a diagnostic step (plain floats, layers and blocks in forward
    order).

    Args:
      step: the number of updates done; the statistics are those of the gradient of the last
        one (computed at the parameters after ``step - 1`` updates, on the batch of that step).
      epoch: ``step / steps_per_epoch``.
      layer_order, block_order: '/'-joined parameter and block paths in forward order.
      stats: `gradient_stats_of` the (unreplicated) optimizer state after the step.
      split: the (unreplicated) output of `diagnostic_step` for that step.

    Returns:
      ``{"kind": "diagnostics", "step", "epoch", "layers": {param path: {"grad_norm",
      "grad_mean", "grad_std", "update_norm", "update_mean", "update_std"}}, "blocks":
      {block path: {"skip_norm", "branch_norm", "total_norm", "cosine"}}}`` where ``grad_*``
      describe the pmean'ed gradient and ``update_*`` the output of the gradient transform
      (the input of the base optimizer).  `train.py` adds ``"seconds"``: the host time the
      diagnostics of that step took (the first includes compiling).
    """
    layers = {path: {} for path in layer_order}
    for prefix, state in zip(("grad", "update"), stats, strict=True):
        for stat in _LAYER_STATS:
            for key, value in flatten_dict(getattr(state, stat)).items():
                layers["/".join(key)][f"{prefix}_{stat}"] = float(value)
    blocks = {name: {k: float(split[name][k]) for k in SPLIT_STATS} for name in block_order}
    return {"kind": "diagnostics", "step": step, "epoch": epoch, "layers": layers,
            "blocks": blocks}


def write_scalars(writer, step: int, row: dict) -> None:
    """Adds a `diagnostics_row` to TensorBoard: ``{stat}/{param path}`` for the layers and
    ``overlap/{block}/{stat}`` for the blocks (the caller flushes)."""
    for path, stats in row["layers"].items():
        for name, value in stats.items():
            writer.add_scalar(f"{name}/{path}", value, step)
    for block, stats in row["blocks"].items():
        for name, value in stats.items():
            writer.add_scalar(f"overlap/{block}/{name}", value, step)
