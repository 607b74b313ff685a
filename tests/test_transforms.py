"""Values, invariants and composition of the znorm_optax transforms."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import znorm_optax as zo
from tests.numpy_reference import numpy_centralize, numpy_clip_layer, numpy_znorm

DTYPES = [jnp.float32, jnp.bfloat16]


def apply(tx, updates, params=None):
  """Runs one jitted update of ``tx``."""
  state = tx.init(updates if params is None else params)
  new_updates, _ = jax.jit(tx.update)(updates, state, params)
  return new_updates


def random_tree(seed, dtype=jnp.float32):
  """A Flax-like parameter tree: conv and dense kernels, biases, a BN scale."""
  rng = np.random.default_rng(seed)
  shapes = {
    "conv": {"kernel": (3, 3, 4, 8)},
    "bn": {"scale": (8,), "bias": (8,)},
    "dense": {"kernel": (8, 10), "bias": (10,)},
  }
  return jax.tree.map(
    lambda s: jnp.asarray(rng.normal(0.3, 2.0, s), dtype),
    shapes,
    is_leaf=lambda s: isinstance(s, tuple),
  )


def tolerance(dtype):
  return {"rtol": 2e-2, "atol": 2e-2} if dtype == jnp.bfloat16 else {"rtol": 1e-5, "atol": 1e-5}


# --- znorm -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [None, (0, 1, 2), -1])
def test_znorm_matches_numpy(dtype, axis):
  grads = random_tree(0, dtype)
  if axis == (0, 1, 2):  # Per output channel of the conv kernel, the only 4-D leaf.
    grads = grads["conv"]
  out = apply(zo.znorm(axis=axis), grads)
  for g, z in zip(jax.tree.leaves(grads), jax.tree.leaves(out), strict=True):
    assert z.dtype == dtype
    expected = numpy_znorm(np.asarray(g, np.float64), axis=axis)
    np.testing.assert_allclose(np.asarray(z, np.float64), expected, **tolerance(dtype))


def test_znorm_axis_out_of_range_is_a_clear_error():
  with pytest.raises(ValueError, match="axis 3 is out of range.*optax.masked"):
    apply(zo.znorm(axis=3), {"b": jnp.ones((4, 2))})


def test_znorm_hand_computed_values():
  out = apply(zo.znorm(eps=0.0), jnp.array([1.0, 2.0, 3.0, 4.0]))
  std = np.sqrt(1.25)  # Population std of 1..4.
  np.testing.assert_allclose(out, np.array([-1.5, -0.5, 0.5, 1.5]) / std, rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_znorm_output_has_zero_mean_unit_std_and_is_a_descent_direction(dtype):
  grads = random_tree(1, dtype)
  out = apply(zo.znorm(), grads)
  for g, z in zip(jax.tree.leaves(grads), jax.tree.leaves(out), strict=True):
    z64 = np.asarray(z, np.float64)
    atol = 2e-2 if dtype == jnp.bfloat16 else 1e-5
    np.testing.assert_allclose(z64.mean(), 0.0, atol=atol)
    np.testing.assert_allclose(z64.std(), 1.0, atol=atol)
    # <g, z> = n * std(g) >= 0: ZNorm keeps a descent direction.
    assert np.vdot(np.asarray(g, np.float64), z64) >= 0


@pytest.mark.parametrize("mean, std", [(1e-2, 1e-4), (1.0, 1e-3), (-3e4, 1.0)])
def test_znorm_is_accurate_when_the_mean_dwarfs_the_spread(mean, std):
  # A one-pass E[g^2] - E[g]^2 in float32 loses ~(mean/std)^2 * 6e-8 of the variance:
  # 6% at mean/std = 1e3. The two-pass, pivot-shifted statistics keep it to rounding.
  rng = np.random.default_rng(0)
  g = (mean + std * rng.standard_normal(4096)).astype(np.float32)
  np.testing.assert_allclose(
    apply(zo.znorm(eps=0.0), jnp.asarray(g)), numpy_znorm(g, 0.0), atol=2e-3
  )
  _, state = zo.gradient_stats().update(jnp.asarray(g), None)
  np.testing.assert_allclose(state.std, g.astype(np.float64).std(), rtol=1e-3)
  np.testing.assert_allclose(state.mean, g.astype(np.float64).mean(), rtol=1e-6)


@pytest.mark.parametrize("eps", [0.0, 1e-8])
@pytest.mark.parametrize("value", [0.0, 7.5, -1e30, 3e38])
def test_znorm_zero_variance_gives_zeros(value, eps):
  out = apply(zo.znorm(eps=eps), jnp.full((5, 3), value))
  np.testing.assert_array_equal(out, np.zeros((5, 3)))


def test_znorm_single_elements_pass_through():
  grads = {"scalar": jnp.array(3.0), "one": jnp.array([-2.0]), "row": jnp.ones((1, 4)) * 5}
  out = apply(zo.znorm(), grads)
  chex.assert_trees_all_equal(out["scalar"], grads["scalar"])
  chex.assert_trees_all_equal(out["one"], grads["one"])
  # Reducing over a size-1 axis leaves nothing to standardize.
  chex.assert_trees_all_equal(apply(zo.znorm(axis=0), grads["row"]), grads["row"])


def test_znorm_handles_none_and_masked_nodes():
  grads = {"w": jnp.arange(4.0), "skip": None, "frozen": optax.MaskedNode()}
  out = apply(zo.znorm(), grads)
  assert out["skip"] is None and isinstance(out["frozen"], optax.MaskedNode)
  np.testing.assert_allclose(out["w"], numpy_znorm(np.arange(4.0)), rtol=1e-6)


# --- centralize ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_centralize_matches_numpy_and_zeroes_input_axis_means(dtype):
  grads = random_tree(2, dtype)
  out = apply(zo.centralize(), grads)
  for g, c in zip(jax.tree.leaves(grads), jax.tree.leaves(out), strict=True):
    assert c.dtype == dtype
    expected = numpy_centralize(np.asarray(g, np.float64))
    np.testing.assert_allclose(np.asarray(c, np.float64), expected, **tolerance(dtype))
    if g.ndim >= 2:
      means = np.asarray(c, np.float64).mean(axis=tuple(range(g.ndim - 1)))
      np.testing.assert_allclose(means, 0.0, atol=tolerance(dtype)["atol"])
    else:
      chex.assert_trees_all_equal(c, g)


def test_centralize_differs_from_optax_on_flax_kernels():
  # A Flax Dense kernel is (in, out): GC centres each output unit's weights, i.e. over
  # axis 0. optax.centralize keeps axis 0 (PyTorch's out axis) and centres over axis 1.
  kernel = jnp.array([[1.0, 2.0, 3.0], [5.0, 8.0, 9.0]])  # (in=2, out=3)
  ours = apply(zo.centralize(), kernel)
  theirs = apply(optax.centralize(), kernel)
  np.testing.assert_allclose(ours, [[-2.0, -3.0, -3.0], [2.0, 3.0, 3.0]])
  np.testing.assert_allclose(theirs, [[-1.0, 0.0, 1.0], [-7 / 3, 2 / 3, 5 / 3]], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(ours).sum(axis=0), 0.0, atol=1e-6)
  assert np.abs(np.asarray(theirs).sum(axis=0)).max() > 1.0


# --- clipping ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_by_layer_norm(dtype, max_norm):
  grads = random_tree(3, dtype)
  out = apply(zo.clip_by_layer_norm(max_norm), grads)
  for g, c in zip(jax.tree.leaves(grads), jax.tree.leaves(out), strict=True):
    g64, c64 = np.asarray(g, np.float64), np.asarray(c, np.float64)
    np.testing.assert_allclose(c64, numpy_clip_layer(g64, max_norm), **tolerance(dtype))
    assert np.linalg.norm(c64) <= max_norm * (1 + tolerance(dtype)["rtol"])
    if np.linalg.norm(g64) <= max_norm:
      chex.assert_trees_all_equal(c, g)  # Identity below the bound.


@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_by_global_norm_bounds_the_global_norm(max_norm):
  grads = random_tree(4)
  out = apply(zo.clip_by_global_norm(max_norm), grads)
  norm_in = np.sqrt(
    sum(np.sum(np.square(np.asarray(g, np.float64))) for g in jax.tree.leaves(grads))
  )
  norm_out = np.sqrt(
    sum(np.sum(np.square(np.asarray(g, np.float64))) for g in jax.tree.leaves(out))
  )
  np.testing.assert_allclose(norm_out, min(norm_in, max_norm), rtol=1e-5)
  if norm_in > max_norm:  # One shared factor: every leaf keeps its share of the norm.
    for g, c in zip(jax.tree.leaves(grads), jax.tree.leaves(out), strict=True):
      np.testing.assert_allclose(c, np.asarray(g) * max_norm / norm_in, rtol=1e-5, atol=1e-6)


def test_clip_by_value():
  out = apply(zo.clip(0.5), jnp.array([-2.0, 0.25, 3.0]))
  np.testing.assert_allclose(out, [-0.5, 0.25, 0.5])


# --- hyperparameters and the factory ---------------------------------------------------


@pytest.mark.parametrize(
  "make, message",
  [
    (lambda: zo.znorm(eps=-1e-8), "eps must be a finite number >= 0"),
    (lambda: zo.znorm(eps=float("nan")), "eps must be a finite number"),
    (lambda: zo.clip_by_layer_norm(0.0), "max_norm must be a finite number > 0"),
    (lambda: zo.clip_by_global_norm(-1.0), "max_norm must be a finite number > 0"),
    (lambda: zo.clip_by_global_norm(float("inf")), "max_norm must be a finite number > 0"),
    (lambda: zo.clip(0), "max_delta must be a finite number > 0"),
    (lambda: zo.znorm_adam(1e-3, znorm_eps=-1.0), "eps must be a finite number >= 0"),
    (lambda: zo.gradient_transform("clip", max_norm=np.float32(-2)), "max_norm must be"),
    (lambda: zo.znorm(eps="small"), "eps must be a real scalar"),
    (lambda: zo.gradient_transform("zscore"), "valid names: none, znorm, centralize, clip"),
  ],
)
def test_bad_hyperparameters_raise_at_construction(make, message):
  with pytest.raises(ValueError, match=message):
    make()


@pytest.mark.parametrize(
  "name, kwargs, reference",
  [
    ("none", {}, optax.identity()),
    ("znorm", {"eps": 1e-6}, zo.znorm(1e-6)),
    ("centralize", {}, zo.centralize()),
    ("clip", {}, optax.clip_by_global_norm(1.0)),
    ("clip_layer", {"max_norm": 2.0}, zo.clip_by_layer_norm(2.0)),
  ],
)
def test_gradient_transform_factory(name, kwargs, reference):
  assert set(zo.GRADIENT_TRANSFORMS) == {"none", "znorm", "centralize", "clip", "clip_layer"}
  grads = jax.tree.map(lambda g: 3 * g, random_tree(5))
  chex.assert_trees_all_close(
    apply(zo.gradient_transform(name, **kwargs), grads), apply(reference, grads), rtol=1e-6
  )


def test_znorm_adam_and_sgd_equal_their_chains():
  params = random_tree(6)
  grads = random_tree(7)
  pairs = [
    (zo.znorm_adam(1e-2, znorm_eps=1e-6), optax.chain(zo.znorm(1e-6), optax.adam(1e-2))),
    (
      zo.znorm_sgd(0.1, momentum=0.9, nesterov=True),
      optax.chain(zo.znorm(), optax.sgd(0.1, momentum=0.9, nesterov=True)),
    ),
  ]
  for ours, reference in pairs:
    s1, s2 = ours.init(params), reference.init(params)
    for _ in range(3):
      u1, s1 = jax.jit(ours.update)(grads, s1, params)
      u2, s2 = jax.jit(reference.update)(grads, s2, params)
      chex.assert_trees_all_close(u1, u2, rtol=1e-6)


# --- composition with optax ----------------------------------------------------------


def test_masked_znorm_leaves_biases_alone():
  grads = random_tree(8)
  tx = optax.masked(zo.znorm(), zo.masks.kernels_only)
  out = apply(tx, grads, params=grads)
  assert zo.masks.kernels_only(grads) == {
    "bn": {"bias": False, "scale": False},
    "conv": {"kernel": True},
    "dense": {"bias": False, "kernel": True},
  }
  chex.assert_trees_all_equal(out["bn"], grads["bn"])
  chex.assert_trees_all_equal(out["dense"]["bias"], grads["dense"]["bias"])
  np.testing.assert_allclose(
    out["conv"]["kernel"], numpy_znorm(grads["conv"]["kernel"]), rtol=1e-5, atol=1e-5
  )


def test_multi_transform_routes_by_label():
  grads = random_tree(9)
  labels = jax.tree.map(lambda p: "kernel" if p.ndim >= 2 else "vector", grads)
  tx = optax.multi_transform({"kernel": zo.znorm(), "vector": zo.clip_by_layer_norm(0.1)}, labels)
  out = apply(tx, grads, params=grads)
  np.testing.assert_allclose(
    out["dense"]["kernel"], numpy_znorm(grads["dense"]["kernel"]), rtol=1e-5, atol=1e-5
  )
  np.testing.assert_allclose(np.linalg.norm(out["dense"]["bias"]), 0.1, rtol=1e-5)


@pytest.mark.parametrize(
  "factory, hyperparams",
  [
    (zo.znorm, {"eps": 1e-3}),
    (zo.clip_by_layer_norm, {"max_norm": 0.5}),
    (zo.clip_by_global_norm, {"max_norm": 0.5}),
    (zo.znorm_adam, {"learning_rate": 1e-2, "znorm_eps": 1e-3}),
  ],
)
def test_inject_hyperparams_under_jit(factory, hyperparams):
  grads = random_tree(10)
  injected = optax.inject_hyperparams(factory)(**hyperparams)
  state = injected.init(grads)
  update = jax.jit(injected.update)
  out, state = update(grads, state, grads)
  chex.assert_trees_all_close(out, apply(factory(**hyperparams), grads, grads), rtol=1e-5)
  # Change a hyperparameter inside the state: the traced value is used, not re-validated.
  name = next(iter(hyperparams))
  state.hyperparams[name] = jnp.asarray(hyperparams[name] * 2.0)
  out2, _ = update(grads, state, grads)
  chex.assert_trees_all_close(
    out2, apply(factory(**{**hyperparams, name: hyperparams[name] * 2.0}), grads, grads), rtol=1e-5
  )


def test_gradient_stats_are_exact_and_updates_unchanged():
  grads = random_tree(11)
  grads["frozen"] = optax.MaskedNode()
  tx = optax.chain(zo.gradient_stats(), zo.znorm(), zo.gradient_stats())
  out, (before, _, after) = jax.jit(tx.update)(grads, tx.init(grads))
  chex.assert_trees_all_close(out, apply(zo.znorm(), grads), rtol=1e-6)
  for stats, tree in [(before, grads), (after, out)]:
    for path, g in jax.tree_util.tree_leaves_with_path(tree):
      g64 = np.asarray(g, np.float64)
      for field, expected in [
        ("norm", np.linalg.norm(g64)),
        ("mean", g64.mean()),
        ("std", g64.std()),
      ]:
        value = _get(getattr(stats, field), path)
        assert value.dtype == jnp.float32 and value.shape == ()
        np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6)
  assert isinstance(before.norm["frozen"], optax.MaskedNode)
  # gradient_stats alone is the identity on updates.
  chex.assert_trees_all_equal(apply(zo.gradient_stats(), random_tree(12)), random_tree(12))


def _get(tree, path):
  for key in path:
    tree = tree[key.key]
  return tree


@pytest.mark.parametrize("name", zo.GRADIENT_TRANSFORMS)
def test_transforms_add_no_optimizer_state(name):
  params = random_tree(13)
  adam = optax.adam(1e-3).init(params)
  chained = optax.chain(zo.gradient_transform(name), optax.adam(1e-3)).init(params)
  assert jax.tree.leaves(chained) and len(jax.tree.leaves(chained)) == len(jax.tree.leaves(adam))
  assert sum(x.nbytes for x in jax.tree.leaves(chained)) == sum(
    x.nbytes for x in jax.tree.leaves(adam)
  )
