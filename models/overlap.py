"""Exact split of dL/dx at every residual block input into its skip-path and branch parts.

A residual block computes y = shortcut(x) + branch(x), so dL/dx = J_shortcut^T dL/dy +
J_branch^T dL/dy.  Each block feeds x to its two paths through two flax perturbation points
(`split_input`): the gradient w.r.t. the 'skip' perturbation is exactly the shortcut term and
the one w.r.t. 'branch' is exactly the branch term; their sum is dL/dx.

The perturbation points cost nothing unless a 'perturbations' collection is passed to `apply`.
`model.init` never creates one (`split_input` is the identity while initializing), so the
variables from `init` hold only 'params' and 'batch_stats'.  Never call `apply` with
`mutable=True`: that would create the collection (zeros shaped like that batch).

`param_and_block_input_grads` differentiates any objective of the variables: the trainer passes
its own training loss (`trainer.steps.train_loss`), so its diagnostics measure the gradients of
the very loss it trains on. `model_loss` is the objective of the standalone helpers.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.traverse_util import flatten_dict

COLLECTION = "perturbations"
SKIP = "skip"
BRANCH = "branch"


def split_input(module: nn.Module, x):
  """Returns (skip_in, branch_in): `x` routed through the block's two perturbation points.

  Args:
    module: the residual block, called from inside its compact `__call__`.
    x: the block input.
  """
  if module.is_initializing():
    return x, x
  return module.perturb(SKIP, x), module.perturb(BRANCH, x)


def softmax_cross_entropy(logits, labels):
  """Mean softmax cross-entropy with integer labels, on float32 logits."""
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels).mean()


def model_loss(model: nn.Module, images, labels, *, train: bool, loss_fn=softmax_cross_entropy):
  """The objective ``variables -> loss_fn(model.apply(variables, images), labels)`` (BatchNorm
  on batch statistics with ``train=True``, the updated statistics discarded), for
  `param_and_block_input_grads`."""

  def objective(variables):
    out = model.apply(variables, images, train=train, mutable=["batch_stats"] if train else False)
    return loss_fn(out[0] if train else out, labels)

  return objective


def _zero_perturbations(model: nn.Module, variables, images):
  """Zero perturbations shaped for `images` and the block paths in forward order.

  Runs the model abstractly (`jax.eval_shape`, no FLOPs) in eval mode, which has the same
  perturbation shapes as train mode but no cross-device BatchNorm reduction.
  """
  keys = []

  def create(variables):
    _, state = model.apply(variables, images, train=False, mutable=[COLLECTION])
    keys.extend(flatten_dict(state[COLLECTION]))  # flax keeps creation (= forward) order
    return state[COLLECTION]

  shapes = jax.eval_shape(create, _without_perturbations(variables))
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  return zeros, [key[:-1] for key in keys if key[-1] == SKIP]


def _without_perturbations(variables):
  """The variables minus any 'perturbations' collection."""
  return {col: tree for col, tree in variables.items() if col != COLLECTION}


def block_names(model: nn.Module, variables, images) -> tuple[str, ...]:
  """Paths ('/'-joined module names) of the residual blocks in forward order.

  Under `jax.jit` the dicts returned by `block_input_grads` and `block_gradient_split` come
  back with sorted keys; iterate over these names for the forward order.

  Args:
    model: a flax module whose blocks use `split_input`.
    variables: the model variables ('params', 'batch_stats').
    images: an input batch (only its shape and dtype matter).
  """
  return tuple("/".join(path) for path in _zero_perturbations(model, variables, images)[1])


def param_and_block_input_grads(model: nn.Module, variables, images, objective):
  """The gradient w.r.t. the parameters and the exact skip/branch parts of dL/dx at every
  residual block input, from one backward pass.

  If the model has an `axis_name` and the objective runs BatchNorm in train mode, call this
  inside pmap/shard_map over that axis.

  Args:
    model: a flax module whose blocks use `split_input`.
    variables: the model variables ('params', 'batch_stats'); a 'perturbations' collection
      is ignored.
    images: the input batch of the objective (its shape sets the perturbations').
    objective: `objective(variables) -> scalar`, the loss of `model.apply(variables, images,
      ...)`; `variables` then also hold the zero perturbations, whose gradients are the split
      (`model_loss` builds the usual one).

  Returns:
    `(param_grads, blocks)`: dL/dparams shaped like `variables['params']`, and
    {block path: {"skip": dL/dx via the shortcut, "branch": dL/dx via the branch}}, each
    shaped like the block input, in forward order (sorted order under `jax.jit`).
  """
  zeros, paths = _zero_perturbations(model, variables, images)
  base = _without_perturbations(variables)

  def loss(params, perturbations):
    return objective({**base, "params": params, COLLECTION: perturbations})

  param_grads, grads = jax.grad(loss, argnums=(0, 1))(base["params"], zeros)
  grads = flatten_dict(grads)
  blocks = {"/".join(p): {SKIP: grads[(*p, SKIP)], BRANCH: grads[(*p, BRANCH)]} for p in paths}
  return param_grads, blocks


def block_input_grads(
  model: nn.Module, variables, images, labels, *, train: bool = True, loss_fn=softmax_cross_entropy
):
  """Exact skip-path and branch contributions to dL/dx at every residual block input.

  The second output of `param_and_block_input_grads` for `model_loss` (under `jax.jit` the
  unused parameter gradient is not computed): BatchNorm in ``train`` mode, ``loss_fn(logits,
  labels)`` (mean softmax cross-entropy by default).

  Returns:
    {block path: {"skip": dL/dx via the shortcut, "branch": dL/dx via the branch}}, each
    shaped like the block input, in forward order (sorted order under `jax.jit`).
  """
  objective = model_loss(model, images, labels, train=train, loss_fn=loss_fn)
  return param_and_block_input_grads(model, variables, images, objective)[1]


def block_gradient_split(
  model: nn.Module, variables, images, labels, *, train: bool = True, loss_fn=softmax_cross_entropy
):
  """Norms and cosine of the skip and branch contributions to dL/dx at every block input.

  Exact (autodiff, no finite differences) and jittable; all values are float32 scalars
  computed over the whole batch tensor.  Arguments as in `block_input_grads`.

  Returns:
    {block path: {"skip_norm", "branch_norm", "total_norm" (norm of skip + branch = |dL/dx|),
    "cosine" (between skip and branch, 0 when either is zero)}}, in forward order (sorted
    order under `jax.jit`; see `block_names`).
  """
  grads = block_input_grads(model, variables, images, labels, train=train, loss_fn=loss_fn)
  return {path: _split_stats(g[SKIP], g[BRANCH]) for path, g in grads.items()}


def _split_stats(skip, branch):
  """Norms of two gradient contributions, of their sum, and their cosine similarity."""
  skip = skip.astype(jnp.float32).ravel()
  branch = branch.astype(jnp.float32).ravel()
  skip_norm, branch_norm = jnp.linalg.norm(skip), jnp.linalg.norm(branch)
  denom = skip_norm * branch_norm
  cosine = jnp.where(denom > 0, jnp.vdot(skip, branch) / jnp.where(denom > 0, denom, 1.0), 0.0)
  return {
    "skip_norm": skip_norm,
    "branch_norm": branch_norm,
    "total_norm": jnp.linalg.norm(skip + branch),
    "cosine": jnp.clip(cosine, -1.0, 1.0),
  }
