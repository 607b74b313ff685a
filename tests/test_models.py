"""Tests for models/: parameter counts, modes, dtypes, jit/pmap, and the gradient-overlap hooks."""

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from models import (
  MODEL_NAMES,
  BasicBlock,
  BottleneckBlock,
  ResNet,
  block_gradient_split,
  block_input_grads,
  block_names,
  create_model,
  softmax_cross_entropy,
  split_input,
)

BATCH = 4


def _abstract_variables(model, size=32):
  """Variable shapes of `model.init` on a 32x32 batch, without allocating anything."""
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


def _init(model, images, seed=0):
  """`model.init` in eval mode, jitted with an rbg key: compiles far faster than threefry."""
  return jax.jit(partial(model.init, train=False))(jax.random.key(seed, impl="rbg"), images)


def _num_params(model):
  return sum(leaf.size for leaf in jax.tree.leaves(_abstract_variables(model)["params"]))


@pytest.fixture(scope="module")
def images():
  return jax.random.normal(jax.random.key(1), (BATCH, 32, 32, 3))


@pytest.fixture(scope="module")
def labels():
  return jnp.arange(BATCH) % 10


@pytest.fixture(scope="module")
def resnet20(images):
  model = create_model("resnet20", 10)
  return model, _init(model, images)


# Option A, 10 classes.  Stem 3*3*3*16 + BN 32; stage 1: 2n convs 16->16 (2304 + BN 32);
# stage 2: conv 16->32 (4608 + 64) then 2n-1 convs 32->32 (9216 + 64); stage 3 likewise with
# 32->64 (18432 + 128) and 64->64 (36864 + 128); head 64*10 + 10.  Sum: 97216 n - 21926.
CIFAR_COUNTS = [
  # name, n, exact parameter count, the paper's figure (millions)
  ("resnet20", 3, 269_722, 0.27),
  ("resnet32", 5, 464_154, 0.46),
  ("resnet44", 7, 658_586, 0.66),
  ("resnet56", 9, 853_018, 0.85),
  ("resnet110", 18, 1_727_962, 1.7),
  pytest.param("resnet1202", 200, 19_421_274, 19.4, marks=pytest.mark.slow),  # a long trace
]


@pytest.mark.parametrize("name,n,count,paper", CIFAR_COUNTS)
def test_cifar_parameter_counts(name, n, count, paper):
  assert count == 97_216 * n - 21_926
  assert _num_params(create_model(name, 10)) == count
  digits = 1 if paper >= 1 else 2
  assert round(count / 1e6, digits) == paper


@pytest.mark.parametrize("name", ["resnet20", "resnet32"])
def test_option_b_adds_two_projections(name):
  # 1x1 projections 16->32 (512 + BN 64) and 32->64 (2048 + BN 128).
  a = _num_params(create_model(name, 10))
  assert _num_params(create_model(name, 10, shortcut="B")) == a + 2_752


# torchvision counts (1000 classes) minus the 1000-way head plus a 10-way one; the CIFAR stem
# (3x3x3x64 conv) has 9408 - 1728 = 7680 fewer parameters than the 7x7 ImageNet stem.
IMAGENET_COUNTS = [
  ("resnet18", "cifar", 11_173_962),
  ("resnet18", "imagenet", 11_181_642),  # torchvision 11,689,512
  ("resnet34", "cifar", 21_282_122),
  ("resnet34", "imagenet", 21_289_802),  # torchvision 21,797,672
  ("resnet50", "cifar", 23_520_842),
  ("resnet50", "imagenet", 23_528_522),  # torchvision 25,557,032
  ("resnet101", "imagenet", 42_520_650),  # torchvision 44,549,160
  ("resnet152", "imagenet", 58_164_298),  # torchvision 60,192,808
]


@pytest.mark.parametrize("name,stem,count", IMAGENET_COUNTS)
def test_imagenet_parameter_counts(name, stem, count):
  assert _num_params(create_model(name, 10, stem=stem)) == count


@pytest.mark.parametrize(
  "name,kwargs",
  [
    ("resnet20", {}),
    ("resnet56", {}),
    ("resnet18", {"stem": "cifar"}),
    ("resnet18", {}),
    ("resnet50", {"stem": "cifar"}),
    ("resnet50", {"dtype": jnp.bfloat16}),
  ],
)
def test_output_shape_and_dtype(name, kwargs):
  model = create_model(name, 7, **kwargs)
  x = jax.ShapeDtypeStruct((3, 32, 32, 3), jnp.float32)
  logits = jax.eval_shape(
    lambda x: model.apply(model.init(jax.random.key(0), x, train=False), x, train=False), x
  )
  assert logits.shape == (3, 7)
  assert logits.dtype == jnp.float32


@pytest.fixture(scope="module")
def train_forward(resnet20, images):
  """Eager train-mode forward of resnet20: (logits, {"batch_stats": ...})."""
  model, variables = resnet20
  return model.apply(variables, images, train=True, mutable=["batch_stats"])


def test_init_has_only_params_and_batch_stats(resnet20):
  assert set(resnet20[1]) == {"params", "batch_stats"}


def test_batch_stats_change_only_in_train_mode(resnet20, images, train_forward):
  model, variables = resnet20
  logits, state = train_forward
  assert logits.shape == (BATCH, 10)
  changed = jax.tree.map(
    lambda a, b: not np.allclose(a, b), variables["batch_stats"], state["batch_stats"]
  )
  assert all(jax.tree.leaves(changed))

  logits, state = model.apply(variables, images, train=False, mutable=["batch_stats"])
  jax.tree.map(np.testing.assert_array_equal, variables["batch_stats"], state["batch_stats"])
  # Eval mode uses running statistics: each image's logits do not depend on the batch.
  np.testing.assert_allclose(
    model.apply(variables, images[:1], train=False)[0], logits[0], rtol=1e-5, atol=1e-5
  )


def test_bfloat16_forward_is_finite(resnet20, images):
  model = create_model("resnet20", 10, dtype=jnp.bfloat16)  # float32 params, as resnet20's
  forward = jax.jit(partial(model.apply, train=True, mutable=["batch_stats"]))
  logits, _ = forward(resnet20[1], images)
  assert logits.dtype == jnp.float32
  assert np.isfinite(logits).all()


def test_param_dtype():
  variables = _abstract_variables(create_model("resnet20", 10, param_dtype=jnp.bfloat16))
  assert {leaf.dtype for leaf in jax.tree.leaves(variables["params"])} == {jnp.dtype("bfloat16")}
  assert {leaf.dtype for leaf in jax.tree.leaves(variables["batch_stats"])} == {
    jnp.dtype("float32")
  }


def test_jit_train_step(resnet20, images, labels, train_forward):
  model, variables = resnet20

  def loss(params):
    logits, state = model.apply(
      {**variables, "params": params}, images, train=True, mutable=["batch_stats"]
    )
    return softmax_cross_entropy(logits, labels), state

  (value, state), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
  ref_logits, ref_state = train_forward  # eager
  np.testing.assert_allclose(value, softmax_cross_entropy(ref_logits, labels), rtol=1e-5)
  jax.tree.map(partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-6), state, ref_state)
  assert jax.tree.structure(grads) == jax.tree.structure(variables["params"])
  assert all(np.isfinite(g).all() and np.abs(g).max() > 0 for g in jax.tree.leaves(grads))


def test_pmap_synchronized_batch_norm(resnet20):
  n = jax.local_device_count()
  images = jax.random.normal(jax.random.key(2), (n * 2, 32, 32, 3))
  model, variables = resnet20
  synced = create_model("resnet20", 10, axis_name="batch")

  def stats(model, variables, x):
    return model.apply(variables, x, train=True, mutable=["batch_stats"])[1]["batch_stats"]

  replicated = jax.tree.map(lambda a: jnp.broadcast_to(a, (n, *a.shape)), variables)
  per_device = jax.pmap(partial(stats, synced), axis_name="batch")(
    replicated, images.reshape(n, 2, 32, 32, 3)
  )
  global_batch = jax.jit(partial(stats, model))(variables, images)
  for i in range(n):
    jax.tree.map(
      partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-5),
      jax.tree.map(lambda a, i=i: a[i], per_device),
      global_batch,
    )


def test_zero_init_residual_block_starts_as_identity():
  conv = partial(nn.Conv, use_bias=False)
  norm = partial(nn.BatchNorm, use_running_average=True)
  block = BasicBlock(16, conv=conv, norm=norm, zero_init_residual=True)
  x = jax.random.uniform(jax.random.key(3), (2, 8, 8, 16))  # nonnegative, like a ReLU output
  variables = jax.jit(block.init)(jax.random.key(0, impl="rbg"), x)
  np.testing.assert_allclose(jax.jit(block.apply)(variables, x), x, atol=1e-6)


def test_bottleneck_zero_init_and_projection():
  model = ResNet(
    stage_sizes=(1, 1),
    block_cls=BottleneckBlock,
    num_classes=10,
    widths=(2, 4),
    stem="cifar",
    zero_init_residual=True,
  )
  params = _init(model, jnp.zeros((1, 8, 8, 3)))["params"]
  assert set(params["stage1_block0"]) == {
    "conv1",
    "bn1",
    "conv2",
    "bn2",
    "conv3",
    "bn3",
    "proj_conv",
    "proj_bn",
  }
  np.testing.assert_array_equal(params["stage1_block0"]["bn3"]["scale"], 0.0)
  np.testing.assert_array_equal(params["stage1_block0"]["bn2"]["scale"], 1.0)


def test_unknown_model_name():
  with pytest.raises(ValueError, match="unknown model 'resnet7'; valid names: resnet20, "):
    create_model("resnet7", 10)
  assert MODEL_NAMES == tuple(
    f"resnet{d}" for d in (20, 32, 44, 56, 110, 1202, 18, 34, 50, 101, 152)
  )
  assert models.ResNet20.func is ResNet


@pytest.mark.parametrize(
  "kwargs,match",
  [
    ({"shortcut": "C"}, "shortcut='C' is invalid; valid values: 'A', 'B'"),
    ({"stem": "tiny"}, "stem='tiny' is invalid; valid values: 'cifar', 'imagenet'"),
    ({"widths": (16, 32)}, "same length"),
  ],
)
def test_invalid_hyperparameters(kwargs, match):
  with pytest.raises(ValueError, match=match):
    create_model("resnet20", 10, **kwargs)


# --- gradient-overlap hooks ---------------------------------------------------------------


class _ToyBlock(nn.Module):
  """y = x + relu(x W1) W2."""

  @nn.compact
  def __call__(self, x):
    skip, branch = split_input(self, x)
    h = nn.relu(nn.Dense(5, use_bias=False, name="w1")(branch))
    return skip + nn.Dense(3, use_bias=False, name="w2")(h)


class _Toy(nn.Module):
  """One toy residual block and a dense head."""

  @nn.compact
  def __call__(self, x, train: bool):
    del train
    return nn.Dense(4, name="head")(_ToyBlock(name="block")(x))


def test_overlap_matches_analytic_toy_block():
  x = np.asarray(jax.random.normal(jax.random.key(4), (6, 3)), np.float64)
  labels = np.array([0, 1, 2, 3, 0, 1])
  model = _Toy()
  variables = _init(model, jnp.asarray(x, jnp.float32), seed=5)
  assert set(variables) == {"params"}
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
  w1, w2 = p["block"]["w1"]["kernel"], p["block"]["w2"]["kernel"]
  wh, bh = p["head"]["kernel"], p["head"]["bias"]

  pre = x @ w1
  logits = (x + np.maximum(pre, 0) @ w2) @ wh + bh
  probs = np.exp(logits - logits.max(1, keepdims=True))
  probs /= probs.sum(1, keepdims=True)
  g_y = (probs - np.eye(4)[labels]) / len(x) @ wh.T  # dL/dy of the block output
  skip = g_y  # J_identity^T g_y
  branch = ((g_y @ w2.T) * (pre > 0)) @ w1.T  # J_branch^T g_y

  grads, split = jax.jit(
    lambda *args: (block_input_grads(model, *args), block_gradient_split(model, *args))
  )(variables, jnp.asarray(x, jnp.float32), labels)
  assert list(grads) == ["block"]
  np.testing.assert_allclose(grads["block"]["skip"], skip, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(grads["block"]["branch"], branch, rtol=1e-5, atol=1e-7)

  split = split["block"]
  expected = {
    "skip_norm": np.linalg.norm(skip),
    "branch_norm": np.linalg.norm(branch),
    "total_norm": np.linalg.norm(skip + branch),
    "cosine": np.vdot(skip, branch) / (np.linalg.norm(skip) * np.linalg.norm(branch)),
  }
  for key, value in expected.items():
    assert split[key].dtype == jnp.float32
    np.testing.assert_allclose(split[key], value, rtol=1e-5, err_msg=key)


def test_overlap_sum_rule_on_resnet20(images, labels):
  """skip + branch = dL/dx at every block input, an identity of the chain rule: checked in
  float64, where rounding cannot hide a wrong split. (In float32 the two computations differ
  by rounding that BatchNorm over 4 images amplifies: 1e-6 relative with jax 0.10's weights,
  7e-3 with those jax 0.12's rbg key draws; float64: 2e-15 with either.)"""
  with jax.enable_x64(True):
    model = create_model("resnet20", 10, dtype=jnp.float64, param_dtype=jnp.float64)
    images = images.astype(jnp.float64)
    variables = _init(model, images)
    grads = jax.jit(partial(block_input_grads, model))(variables, images, labels)
    names = block_names(model, variables, images)
    assert names == tuple(f"stage{s}_block{b}" for s in (1, 2, 3) for b in range(3))
    assert sorted(grads) == sorted(names)

    # Independent dL/dx: add a zero `delta` to every block's input with a method interceptor.
    def add_delta(deltas, next_fun, args, kwargs, context):
      if context.method_name == "__call__" and context.module.name in deltas:
        args = (args[0] + deltas[context.module.name], *args[1:])
      return next_fun(*args, **kwargs)

    def loss(deltas):
      with nn.intercept_methods(partial(add_delta, deltas)):
        logits, _ = model.apply(variables, images, train=True, mutable=["batch_stats"])
      return softmax_cross_entropy(logits, labels)

    dx = jax.jit(jax.grad(loss))({n: jnp.zeros_like(g["skip"]) for n, g in grads.items()})
    for name in names:
      total = grads[name]["skip"] + grads[name]["branch"]
      assert total.dtype == jnp.float64 and float(jnp.abs(grads[name]["branch"]).max()) > 0, name
      np.testing.assert_allclose(total, dx[name], rtol=1e-9, atol=1e-15, err_msg=name)
  # Option A's skip path subsamples with stride 2: it sends no gradient to odd pixels.
  np.testing.assert_array_equal(grads["stage2_block0"]["skip"][:, 1::2], 0.0)
  assert float(jnp.abs(grads["stage2_block0"]["skip"][:, ::2, ::2]).max()) > 0


def test_zero_init_residual_gives_zero_branch_and_cosine(images, labels):
  model = ResNet(
    stage_sizes=(2, 1),
    block_cls=BasicBlock,
    num_classes=10,
    widths=(4, 8),
    stem="cifar",
    shortcut="A",
    zero_init_residual=True,
  )
  variables = _init(model, images)
  for name in block_names(model, variables, images):
    np.testing.assert_array_equal(variables["params"][name]["bn2"]["scale"], 0.0)
  split = jax.jit(partial(block_gradient_split, model, train=False))(variables, images, labels)
  assert sorted(split) == ["stage1_block0", "stage1_block1", "stage2_block0"]
  for stats in split.values():
    assert stats["branch_norm"] == 0 and stats["cosine"] == 0
    assert stats["skip_norm"] > 0
    np.testing.assert_allclose(stats["total_norm"], stats["skip_norm"], rtol=1e-6)


def test_block_names_forward_order_beyond_ten_blocks(images):
  model = ResNet(stage_sizes=(12,), block_cls=BasicBlock, num_classes=3, widths=(2,), stem="cifar")
  variables = _abstract_variables(model)
  assert block_names(model, variables, images) == tuple(f"stage1_block{j}" for j in range(12))


def test_overlap_under_pmap_with_synchronized_batch_norm(images, labels):
  n = jax.local_device_count()
  model = ResNet(
    stage_sizes=(1, 1),
    block_cls=BasicBlock,
    num_classes=10,
    widths=(4, 8),
    stem="cifar",
    shortcut="A",
    axis_name="batch",
  )
  variables = _init(model, images)
  replicated = jax.tree.map(lambda a: jnp.broadcast_to(a, (n, *a.shape)), variables)
  split = jax.pmap(
    lambda v, x, y: jax.lax.pmean(block_gradient_split(model, v, x, y), "batch"), axis_name="batch"
  )(replicated, images.reshape(n, -1, 32, 32, 3), labels.reshape(n, -1))
  assert sorted(split) == ["stage1_block0", "stage2_block0"]
  for leaf in jax.tree.leaves(split):
    assert leaf.shape == (n,) and np.isfinite(leaf).all() and leaf[0] == leaf[-1]
