"""Values, invariants and composition of the znorm_optax transforms.

Tests are ``chex.TestCase`` methods run under ``chex.variants``: with and without
``jit``, and inside ``pmap`` (tests/conftest.py provides four CPU devices; chex
broadcasts the inputs to every device and checks the first device's output) where the
transform is meant to run per device.
"""

import inspect
import pathlib
import re
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized

import znorm_optax as zo
from tests.numpy_reference import (
  as_wide,
  numpy_centralize,
  numpy_clip_layer,
  numpy_stats,
  numpy_znorm,
)
from tests.trees import random_tree

DTYPES = (jnp.float32, jnp.bfloat16)
STATISTICS_TRANSFORMS = {
  "znorm": zo.znorm,
  "centralize": zo.centralize,
  "gradient_stats": zo.gradient_stats,
  "clip_by_layer_norm": lambda: zo.clip_by_layer_norm(1.0),
}


def tolerance(dtype):
  return {"rtol": 2e-2, "atol": 2e-2} if dtype == jnp.bfloat16 else {"rtol": 1e-5, "atol": 1e-5}


def wide(tree):
  """Every leaf as a float64 (complex128) NumPy array, for comparison with references."""
  return jax.tree.map(as_wide, tree)


def reference(fn, tree):
  return jax.tree.map(lambda g: fn(as_wide(g)), tree)


def global_norm(tree):
  return np.sqrt(sum(np.sum(np.abs(g) ** 2) for g in jax.tree.leaves(wide(tree))))


class _TransformTestCase(chex.TestCase):
  def update(self, tx, updates, params=None):
    """One update of ``tx`` under the current variant (jit, no jit or pmap)."""
    state = tx.init(updates if params is None else params)
    new_updates, _ = self.variant(tx.update)(updates, state, params)
    return new_updates


# --- znorm -------------------------------------------------------------------------


class ZNormTest(_TransformTestCase):
  @chex.variants(with_jit=True, without_jit=True, with_pmap=True)
  @parameterized.product(dtype=DTYPES, axis=(None, (0, 1, 2), -1))
  def test_matches_numpy(self, dtype, axis):
    grads = random_tree(0, dtype)
    if axis == (0, 1, 2):  # Per output channel of the conv kernel, the only 4-D leaf.
      grads = grads["conv"]
    out = self.update(zo.znorm(axis=axis), grads)
    chex.assert_trees_all_equal_shapes_and_dtypes(out, grads)
    expected = reference(lambda g: numpy_znorm(g, axis=axis), grads)
    chex.assert_trees_all_close(wide(out), expected, **tolerance(dtype))

  @chex.variants(with_jit=True, without_jit=True)
  def test_axis_out_of_range_is_a_clear_error(self):
    with pytest.raises(ValueError, match="axis 3 is out of range.*optax.masked"):
      self.update(zo.znorm(axis=3), {"b": jnp.ones((4, 2))})

  @chex.variants(with_jit=True, without_jit=True)
  def test_hand_computed_values(self):
    out = self.update(zo.znorm(eps=0.0), jnp.array([1.0, 2.0, 3.0, 4.0]))
    std = np.sqrt(1.25)  # Population std of 1..4.
    chex.assert_trees_all_close(out, np.array([-1.5, -0.5, 0.5, 1.5]) / std, rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*DTYPES)
  def test_zero_mean_unit_std_and_a_descent_direction(self, dtype):
    grads = random_tree(1, dtype)
    out = wide(self.update(zo.znorm(), grads))
    atol = 2e-2 if dtype == jnp.bfloat16 else 1e-5
    chex.assert_trees_all_close(
      jax.tree.map(np.mean, out), jax.tree.map(lambda _: 0.0, out), atol=atol
    )
    chex.assert_trees_all_close(
      jax.tree.map(np.std, out), jax.tree.map(lambda _: 1.0, out), atol=atol
    )
    # <g, z> = n * std(g) >= 0: ZNorm keeps a descent direction.
    inner = jax.tree.map(np.vdot, wide(grads), out)
    assert min(jax.tree.leaves(inner)) >= 0, inner

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters((1e-2, 1e-4), (1.0, 1e-3), (-3e4, 1.0))
  def test_accurate_when_the_mean_dwarfs_the_spread(self, mean, std):
    # A one-pass E[g^2] - E[g]^2 in float32 loses ~(mean/std)^2 * 6e-8 of the variance:
    # 6% at mean/std = 1e3. The two-pass, pivot-shifted statistics keep it to rounding.
    rng = np.random.default_rng(0)
    g = (mean + std * rng.standard_normal(4096)).astype(np.float32)
    out = self.update(zo.znorm(eps=0.0), jnp.asarray(g))
    chex.assert_trees_all_close(wide(out), numpy_znorm(g, 0.0), atol=2e-3)
    _, state = self.variant(zo.gradient_stats().update)(jnp.asarray(g), None)
    _, expected_mean, expected_std = numpy_stats(g)
    chex.assert_trees_all_close(wide(state.std), expected_std, rtol=1e-3)
    chex.assert_trees_all_close(wide(state.mean), expected_mean, rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(value=(0.0, 7.5, -1e30, 3e38), eps=(0.0, 1e-8))
  def test_zero_variance_gives_zeros(self, value, eps):
    out = self.update(zo.znorm(eps=eps), jnp.full((5, 3), value))
    chex.assert_trees_all_equal(out, jnp.zeros((5, 3)))

  @chex.variants(with_jit=True, without_jit=True)
  def test_single_elements_pass_through(self):
    grads = {"scalar": jnp.array(3.0), "one": jnp.array([-2.0]), "row": jnp.ones((1, 4)) * 5}
    out = self.update(zo.znorm(), {"scalar": grads["scalar"], "one": grads["one"]})
    chex.assert_trees_all_equal(out, {"scalar": grads["scalar"], "one": grads["one"]})
    # Reducing over a size-1 axis leaves nothing to standardize.
    chex.assert_trees_all_equal(self.update(zo.znorm(axis=0), grads["row"]), grads["row"])

  @chex.variants(with_jit=True, without_jit=True, with_pmap=True)
  def test_handles_none_and_masked_nodes(self):
    grads = {"w": jnp.arange(4.0), "skip": None, "frozen": optax.MaskedNode()}
    out = self.update(zo.znorm(), grads)
    assert out["skip"] is None and isinstance(out["frozen"], optax.MaskedNode)
    chex.assert_trees_all_close(wide(out["w"]), numpy_znorm(np.arange(4.0)), rtol=1e-6)


# --- centralize ----------------------------------------------------------------------


class CentralizeTest(_TransformTestCase):
  @chex.variants(with_jit=True, without_jit=True, with_pmap=True)
  @parameterized.parameters(*DTYPES)
  def test_matches_numpy_and_zeroes_input_axis_means(self, dtype):
    grads = random_tree(2, dtype)
    out = self.update(zo.centralize(), grads)
    chex.assert_trees_all_equal_shapes_and_dtypes(out, grads)
    chex.assert_trees_all_close(wide(out), reference(numpy_centralize, grads), **tolerance(dtype))
    kernels = {"conv": out["conv"]["kernel"], "dense": out["dense"]["kernel"]}
    means = jax.tree.map(lambda c: c.mean(axis=tuple(range(c.ndim - 1))), wide(kernels))
    zeros = jax.tree.map(np.zeros_like, means)
    chex.assert_trees_all_close(means, zeros, atol=tolerance(dtype)["atol"])
    # Leaves with fewer than two dimensions are returned unchanged.
    chex.assert_trees_all_equal(out["bn"], grads["bn"])
    chex.assert_trees_all_equal(out["dense"]["bias"], grads["dense"]["bias"])

  @chex.variants(with_jit=True, without_jit=True)
  def test_differs_from_optax_on_flax_kernels(self):
    # A Flax Dense kernel is (in, out): GC centres each output unit's weights, i.e. over
    # axis 0. optax.centralize keeps axis 0 (PyTorch's out axis) and centres over axis 1.
    kernel = jnp.array([[1.0, 2.0, 3.0], [5.0, 8.0, 9.0]])  # (in=2, out=3)
    ours = self.update(zo.centralize(), kernel)
    theirs = self.update(optax.centralize(), kernel)
    chex.assert_trees_all_close(ours, jnp.array([[-2.0, -3.0, -3.0], [2.0, 3.0, 3.0]]))
    expected = jnp.array([[-1.0, 0.0, 1.0], [-7 / 3, 2 / 3, 5 / 3]])
    chex.assert_trees_all_close(theirs, expected, rtol=1e-6)
    chex.assert_trees_all_close(ours.sum(axis=0), jnp.zeros(3), atol=1e-6)
    assert np.abs(np.asarray(theirs).sum(axis=0)).max() > 1.0


# --- clipping ------------------------------------------------------------------------


class ClippingTest(_TransformTestCase):
  @chex.variants(with_jit=True, without_jit=True, with_pmap=True)
  @parameterized.product(dtype=DTYPES, max_norm=(0.5, 1e3))
  def test_clip_by_layer_norm(self, dtype, max_norm):
    grads = random_tree(3, dtype)
    out = self.update(zo.clip_by_layer_norm(max_norm), grads)
    chex.assert_trees_all_equal_shapes_and_dtypes(out, grads)
    expected = reference(lambda g: numpy_clip_layer(g, max_norm), grads)
    chex.assert_trees_all_close(wide(out), expected, **tolerance(dtype))
    norms = jax.tree.leaves(jax.tree.map(np.linalg.norm, wide(out)))
    assert max(norms) <= max_norm * (1 + tolerance(dtype)["rtol"]), norms
    # The identity below the bound.
    below = {
      jax.tree_util.keystr(path): g
      for path, g in jax.tree_util.tree_leaves_with_path(grads)
      if np.linalg.norm(as_wide(g)) <= max_norm
    }
    if max_norm > 100:
      assert len(below) == len(jax.tree.leaves(grads))
    out_by_path = {jax.tree_util.keystr(p): c for p, c in jax.tree_util.tree_leaves_with_path(out)}
    chex.assert_trees_all_equal({k: out_by_path[k] for k in below}, below)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(0.5, 1e3)
  def test_clip_by_global_norm_bounds_the_global_norm(self, max_norm):
    grads = random_tree(4)
    out = self.update(zo.clip_by_global_norm(max_norm), grads)
    norm_in, norm_out = global_norm(grads), global_norm(out)
    np.testing.assert_allclose(norm_out, min(norm_in, max_norm), rtol=1e-5)
    if norm_in > max_norm:  # One shared factor: every leaf keeps its share of the norm.
      expected = jax.tree.map(lambda g: g * max_norm / norm_in, wide(grads))
      chex.assert_trees_all_close(wide(out), expected, rtol=1e-5, atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_clip_by_value(self):
    out = self.update(zo.clip(0.5), jnp.array([-2.0, 0.25, 3.0]))
    chex.assert_trees_all_close(out, jnp.array([-0.5, 0.25, 0.5]))


# --- complex gradients and non-float leaves -----------------------------------------------


class ComplexAndIntegerLeavesTest(_TransformTestCase):
  """complex64 gradients against a complex128 NumPy reference; integer/bool refused."""

  @chex.variants(with_jit=True, without_jit=True, with_pmap=True)
  @parameterized.product(axis=(None, (0, 1, 2), -1))
  def test_znorm_complex_matches_numpy(self, axis):
    grads = random_tree(20, jnp.complex64)
    if axis == (0, 1, 2):
      grads = grads["conv"]
    out = self.update(zo.znorm(axis=axis), grads)
    chex.assert_trees_all_equal_shapes_and_dtypes(out, grads)
    expected = reference(lambda g: numpy_znorm(g, axis=axis), grads)
    chex.assert_trees_all_close(wide(out), expected, rtol=1e-5, atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_znorm_complex_zero_spread_and_unit_std(self):
    constant = jnp.full((4, 3), 2.0 - 7.0j, jnp.complex64)
    out = self.update(
      zo.znorm(eps=0.0), {"c": constant, "g": random_tree(21, jnp.complex64)["conv"]}
    )
    chex.assert_trees_all_equal(out["c"], jnp.zeros((4, 3), jnp.complex64))
    z = as_wide(out["g"]["kernel"])
    np.testing.assert_allclose([abs(z.mean()), z.std()], [0.0, 1.0], atol=1e-5)
    # A real-only spread is kept real: the imaginary part is centred to zero.
    ramp = jnp.arange(4.0).astype(jnp.complex64) + 5.0j
    chex.assert_trees_all_close(
      wide(self.update(zo.znorm(), ramp)), numpy_znorm(np.arange(4.0)).astype(complex), atol=1e-6
    )

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(0.5, 1e3)
  def test_clip_by_layer_norm_complex_matches_numpy(self, max_norm):
    grads = random_tree(22, jnp.complex64)
    out = self.update(zo.clip_by_layer_norm(max_norm), grads)
    chex.assert_trees_all_equal_shapes_and_dtypes(out, grads)
    expected = reference(lambda g: numpy_clip_layer(g, max_norm), grads)
    chex.assert_trees_all_close(wide(out), expected, rtol=1e-5, atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_centralize_complex_matches_numpy(self):
    grads = random_tree(23, jnp.complex64)
    out = self.update(zo.centralize(), grads)
    chex.assert_trees_all_equal_shapes_and_dtypes(out, grads)
    chex.assert_trees_all_close(wide(out), reference(numpy_centralize, grads), atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True, with_pmap=True)
  def test_gradient_stats_complex_matches_numpy(self):
    grads = {"c": random_tree(24, jnp.complex64)["conv"], "r": random_tree(24)["dense"]}
    tx = zo.gradient_stats()
    initial = tx.init(grads)
    _, state = self.variant(tx.update)(grads, initial)
    # The state keeps its structure, shapes and dtypes (mean is complex64 for a complex
    # leaf from init on), so it can be carried through lax.scan or a checkpoint.
    chex.assert_trees_all_equal_shapes_and_dtypes(state, initial)
    chex.assert_type(jax.tree.leaves(state.mean), [jnp.complex64, jnp.float32, jnp.float32])
    chex.assert_type(jax.tree.leaves((state.norm, state.std)), jnp.float32)
    for field, index in (("norm", 0), ("mean", 1), ("std", 2)):
      expected = reference(lambda g, i=index: np.asarray(numpy_stats(g)[i]), grads)
      chex.assert_trees_all_close(wide(getattr(state, field)), expected, rtol=1e-5, atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(name=tuple(STATISTICS_TRANSFORMS), dtype=(jnp.int32, jnp.bool_))
  def test_integer_and_boolean_leaves_are_refused(self, name, dtype):
    grads = {"w": jnp.ones((2, 3)), "layer": {"count": jnp.ones((2, 3), dtype)}}
    tx = STATISTICS_TRANSFORMS[name]()
    message = rf"{name}: the gradient leaf at \['layer'\]\['count'\] has dtype {jnp.dtype(dtype)}"
    with pytest.raises(TypeError, match=message):
      self.variant(tx.update)(grads, tx.init(grads))


# --- hyperparameters and the factory ---------------------------------------------------


class ZeroSizeLeavesTest(_TransformTestCase):
  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*STATISTICS_TRANSFORMS)
  def test_zero_size_leaves_pass_and_get_zero_statistics(self, name):
    grads = {"empty": jnp.zeros((0, 3)), "w": jnp.array([[3.0, 4.0]])}
    tx = STATISTICS_TRANSFORMS[name]()
    updates, state = self.variant(tx.update)(grads, tx.init(grads))
    assert updates["empty"].shape == (0, 3)
    if name == "gradient_stats":
      for field in ("norm", "mean", "std"):
        assert float(getattr(state, field)["empty"]) == 0.0
      assert (float(state.norm["w"]), float(state.mean["w"])) == (5.0, 3.5)


class FactoryTest(_TransformTestCase):
  @parameterized.parameters(
    (lambda: zo.znorm(eps=-1e-8), "eps must be a finite number >= 0"),
    (lambda: zo.znorm(eps=float("nan")), "eps must be a finite number"),
    (lambda: zo.clip_by_layer_norm(0.0), "max_norm must be a finite number > 0"),
    (lambda: zo.clip_by_global_norm(-1.0), "max_norm must be a finite number > 0"),
    (lambda: zo.clip_by_global_norm(float("inf")), "max_norm must be a finite number > 0"),
    (lambda: zo.clip(0), "max_delta must be a finite number > 0"),
    (lambda: zo.znorm_adam(1e-3, znorm_eps=-1.0), "eps must be a finite number >= 0"),
    (
      lambda: zo.gradient_transform("clip_by_global_norm", max_norm=np.float32(-2)),
      "max_norm must be",
    ),
    (lambda: zo.znorm(eps="small"), "eps must be a real scalar"),
    (
      lambda: zo.gradient_transform("zscore"),
      "valid names: none, znorm, centralize, clip_by_global_norm, clip_by_layer_norm$",
    ),
  )
  def test_bad_hyperparameters_raise_at_construction(self, make, message):
    with pytest.raises(ValueError, match=message):
      make()

  def test_names_are_the_library_function_names(self):
    assert zo.GRADIENT_TRANSFORMS == (
      "none",
      "znorm",
      "centralize",
      "clip_by_global_norm",
      "clip_by_layer_norm",
    )
    for name in zo.GRADIENT_TRANSFORMS[1:]:
      assert name in zo.__all__ and callable(getattr(zo, name))

  @parameterized.parameters("clip", "clip_layer", "clip_by_value")
  def test_no_other_name_is_accepted(self, name):
    # `clip` would be ambiguous: zo.clip clips by value, the old alias clipped by global norm.
    with pytest.raises(ValueError, match=f"^unknown gradient transform '{name}'; valid names"):
      zo.gradient_transform(name)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(
    ("none", "none", {}, optax.identity),
    ("znorm", "znorm", {"eps": 1e-6}, lambda: zo.znorm(1e-6)),
    ("znorm_axis", "znorm", {"eps": 1e-8, "axis": (0, 1)}, lambda: zo.znorm(axis=(0, 1))),
    ("centralize", "centralize", {}, zo.centralize),
    ("global_norm", "clip_by_global_norm", {}, lambda: optax.clip_by_global_norm(1.0)),
    ("layer_norm", "clip_by_layer_norm", {}, lambda: zo.clip_by_layer_norm(1.0)),
    ("layer_norm_2", "clip_by_layer_norm", {"max_norm": 2.0}, lambda: zo.clip_by_layer_norm(2.0)),
  )
  def test_gradient_transform_factory(self, name, kwargs, make_expected):
    grads = {"kernel": random_tree(5)["dense"]["kernel"] * 3, "conv": random_tree(5)["conv"]}
    with warnings.catch_warnings():
      warnings.simplefilter("error")  # Nothing is deprecated.
      tx = zo.gradient_transform(name, **kwargs)
    expected = make_expected()
    chex.assert_trees_all_close(self.update(tx, grads), self.update(expected, grads), rtol=1e-6)

  @parameterized.parameters(
    ("none", {"max_norm": 1.0}, "max_norm; valid keyword arguments: \\(none\\)$"),
    ("znorm", {"epsilon": 1e-6}, "epsilon; valid keyword arguments: eps, axis$"),
    ("centralize", {"axis": 0}, "axis; valid keyword arguments: \\(none\\)$"),
    ("clip_by_global_norm", {"max_delta": 1.0}, "max_delta; valid keyword arguments: max_norm$"),
    ("clip_by_layer_norm", {"norm": 1.0, "x": 2}, "norm, x; valid keyword arguments: max_norm$"),
  )
  def test_unknown_keyword_argument_is_a_one_line_error(self, name, kwargs, message):
    with pytest.raises(TypeError, match=f"^gradient transform '{name}' got unknown .*{message}"):
      zo.gradient_transform(name, **kwargs)

  def test_znorm_adam_and_sgd_equal_their_chains(self):
    params = random_tree(6)
    grads = random_tree(7)
    pairs = [
      (zo.znorm_adam(1e-2, znorm_eps=1e-6), optax.chain(zo.znorm(1e-6), optax.adam(1e-2))),
      (
        zo.znorm_sgd(0.1, momentum=0.9, nesterov=True),
        optax.chain(zo.znorm(), optax.sgd(0.1, momentum=0.9, nesterov=True)),
      ),
    ]
    for ours, expected in pairs:
      s1, s2 = ours.init(params), expected.init(params)
      for _ in range(3):
        u1, s1 = jax.jit(ours.update)(grads, s1, params)
        u2, s2 = jax.jit(expected.update)(grads, s2, params)
        chex.assert_trees_all_close(u1, u2, rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(
    optimizer=("adam", "sgd"),
    mask=("none", "kernels_only", "tree", "callable_tree"),
  )
  def test_znorm_optimizers_mask_against_numpy(self, optimizer, mask):
    """Three steps of znorm_adam / znorm_sgd against a NumPy Adam / momentum SGD whose input
    is ZNorm'd on the masked leaves and raw elsewhere."""
    params, grads = random_tree(6), [random_tree(seed) for seed in (7, 8, 9)]
    kernels = zo.masks.kernels_only(params)
    masks = {
      "none": (None, jax.tree.map(lambda _: True, params)),
      "kernels_only": (zo.masks.kernels_only, kernels),
      "tree": (kernels, kernels),
      "callable_tree": (lambda p: {**kernels, "bn": {"bias": True, "scale": False}}, None),
    }
    mask_arg, normalized = masks[mask]
    if normalized is None:
      normalized = mask_arg(params)
    lr = 1e-2
    if optimizer == "adam":
      tx = zo.znorm_adam(lr, znorm_eps=1e-6, mask=mask_arg)
    else:
      tx = zo.znorm_sgd(lr, momentum=0.9, znorm_eps=1e-6, mask=mask_arg)
    state = tx.init(params)
    update = self.variant(tx.update)
    m = v = None
    for step, g in enumerate(grads, start=1):
      updates, state = update(g, state, params)
      g_in = jax.tree.map(lambda x, on: numpy_znorm(x, 1e-6) if on else as_wide(x), g, normalized)
      if optimizer == "adam":
        m = (
          jax.tree.map(lambda x: 0.1 * x, g_in)
          if m is None
          else jax.tree.map(lambda a, x: 0.9 * a + 0.1 * x, m, g_in)
        )
        v = (
          jax.tree.map(lambda x: 0.001 * x**2, g_in)
          if v is None
          else jax.tree.map(lambda a, x: 0.999 * a + 0.001 * x**2, v, g_in)
        )
        c1, c2 = 1 - 0.9**step, 1 - 0.999**step
        want = jax.tree.map(
          lambda a, b, c1=c1, c2=c2: -lr * (a / c1) / (np.sqrt(b / c2) + 1e-8), m, v
        )
      else:
        m = g_in if m is None else jax.tree.map(lambda a, x: 0.9 * a + x, m, g_in)
        want = jax.tree.map(lambda a: -lr * a, m)
      chex.assert_trees_all_close(wide(updates), want, rtol=2e-4, atol=1e-7)

  def test_znorm_optimizers_mask_changes_only_the_unmasked_leaves(self):
    params = {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}
    grads = {"kernel": jnp.arange(6.0).reshape(3, 2), "bias": jnp.array([0.25, 0.75])}
    everything = zo.znorm_sgd(1.0).update(grads, zo.znorm_sgd(1.0).init(params))[0]
    masked_tx = zo.znorm_sgd(1.0, mask=zo.masks.kernels_only)
    masked = masked_tx.update(grads, masked_tx.init(params), params)[0]
    np.testing.assert_allclose(everything["bias"], [1.0, -1.0], rtol=1e-6)  # standardized
    np.testing.assert_array_equal(masked["bias"], [-0.25, -0.75])  # the raw gradient
    chex.assert_trees_all_equal(everything["kernel"], masked["kernel"])


# --- composition with optax ----------------------------------------------------------


class CompositionTest(_TransformTestCase):
  @chex.variants(with_jit=True, without_jit=True, with_pmap=True)
  def test_masked_znorm_leaves_biases_alone(self):
    grads = random_tree(8)
    tx = optax.masked(zo.znorm(), zo.masks.kernels_only)
    out = self.update(tx, grads, params=grads)
    assert zo.masks.kernels_only(grads) == {
      "bn": {"bias": False, "scale": False},
      "conv": {"kernel": True},
      "dense": {"bias": False, "kernel": True},
    }
    chex.assert_trees_all_equal(out["bn"], grads["bn"])
    chex.assert_trees_all_equal(out["dense"]["bias"], grads["dense"]["bias"])
    expected = numpy_znorm(grads["conv"]["kernel"])
    chex.assert_trees_all_close(wide(out["conv"]["kernel"]), expected, rtol=1e-5, atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_multi_transform_routes_by_label(self):
    grads = random_tree(9)
    labels = jax.tree.map(lambda p: "kernel" if p.ndim >= 2 else "vector", grads)
    transforms = {"kernel": zo.znorm(), "vector": zo.clip_by_layer_norm(0.1)}
    out = self.update(optax.multi_transform(transforms, labels), grads, params=grads)
    expected = numpy_znorm(grads["dense"]["kernel"])
    chex.assert_trees_all_close(wide(out["dense"]["kernel"]), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out["dense"]["bias"]), 0.1, rtol=1e-5)

  @parameterized.parameters(
    (zo.znorm, {"eps": 1e-3}),
    (zo.clip_by_layer_norm, {"max_norm": 0.5}),
    (zo.clip_by_global_norm, {"max_norm": 0.5}),
    (zo.znorm_adam, {"learning_rate": 1e-2, "znorm_eps": 1e-3}),
  )
  def test_inject_hyperparams_under_jit(self, factory, hyperparams):
    grads = random_tree(10)

    def apply(tx):
      return jax.jit(tx.update)(grads, tx.init(grads), grads)[0]

    injected = optax.inject_hyperparams(factory)(**hyperparams)
    state = injected.init(grads)
    update = jax.jit(injected.update)
    out, state = update(grads, state, grads)
    chex.assert_trees_all_close(out, apply(factory(**hyperparams)), rtol=1e-5)
    # Change a hyperparameter inside the state: the traced value is used, not re-validated.
    name = next(iter(hyperparams))
    state.hyperparams[name] = jnp.asarray(hyperparams[name] * 2.0)
    out2, _ = update(grads, state, grads)
    expected = apply(factory(**{**hyperparams, name: hyperparams[name] * 2.0}))
    chex.assert_trees_all_close(out2, expected, rtol=1e-5)

  @chex.variants(with_jit=True, without_jit=True, with_pmap=True)
  def test_gradient_stats_are_exact_and_updates_unchanged(self):
    grads = random_tree(11)
    grads["frozen"] = optax.MaskedNode()
    tx = optax.chain(zo.gradient_stats(), zo.znorm(), zo.gradient_stats())
    initial = tx.init(grads)
    out, state = self.variant(tx.update)(grads, initial)
    chex.assert_trees_all_equal_shapes_and_dtypes(state, initial)
    before, _, after = state
    chex.assert_trees_all_close(out, self.update(zo.znorm(), grads), rtol=1e-6)
    for stats, tree in [(before, grads), (after, out)]:
      for field, index in (("norm", 0), ("mean", 1), ("std", 2)):
        values = getattr(stats, field)
        chex.assert_type(jax.tree.leaves(values), jnp.float32)
        chex.assert_shape(jax.tree.leaves(values), ())
        expected = reference(lambda g, i=index: np.asarray(numpy_stats(g)[i]), tree)
        chex.assert_trees_all_close(wide(values), expected, rtol=1e-5, atol=1e-6)
    assert isinstance(before.norm["frozen"], optax.MaskedNode)
    # gradient_stats alone is the identity on updates.
    chex.assert_trees_all_equal(self.update(zo.gradient_stats(), random_tree(12)), random_tree(12))

  @parameterized.parameters(*zo.GRADIENT_TRANSFORMS)
  def test_transforms_add_no_optimizer_state(self, name):
    params = random_tree(13)
    adam = optax.adam(1e-3).init(params)
    chained = optax.chain(zo.gradient_transform(name), optax.adam(1e-3)).init(params)
    assert jax.tree.leaves(chained) and len(jax.tree.leaves(chained)) == len(jax.tree.leaves(adam))
    assert sum(x.nbytes for x in jax.tree.leaves(chained)) == sum(
      x.nbytes for x in jax.tree.leaves(adam)
    )


# --- the public API and its reference ------------------------------------------------------


def test_every_public_name_has_an_api_page_and_a_documented_example():
  api = (pathlib.Path(__file__).parents[1] / "docs" / "api.rst").read_text()
  listed = set(re.findall(r"^   (\w+)$", api, flags=re.M))
  assert listed == set(zo.__all__), set(zo.__all__) ^ listed
  for name in zo.__all__:
    obj = getattr(zo, name)
    if callable(obj) and not isinstance(obj, type):
      doc = inspect.getdoc(obj)
      for section in ("Returns:", "Example:", ">>> "):
        assert section in doc, (name, section)
