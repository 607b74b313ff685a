"""Property tests over generated pytrees: finiteness at any scale, agreement with float64."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import znorm_optax as zo
from tests.numpy_reference import as_wide, numpy_centralize, numpy_clip_layer, numpy_znorm, std

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def leaves(draw, max_magnitude=1e30, allow_complex=False):
  """A float32 (or complex64) array whose largest magnitude lies in [1/M, M], M = max_magnitude.

  Sometimes constant or a single element; the offset sets how far the mean dwarfs the
  spread (up to 100x). The leaf is normalized to a largest magnitude of 1, then scaled by
  10**e with e uniform in [-log10(M), log10(M)]: the documented range is the leaf's scale
  (a leaf drawn for a 1e18 bound never reaches 1e20), while single elements may be far
  smaller than the leaf's largest one.
  """
  shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=6))
  parts = 2 if allow_complex and draw(st.booleans()) else 1
  components = []
  for _ in range(parts):
    unit = draw(hnp.arrays(np.float64, shape, elements=st.floats(-1, 1, allow_nan=False, width=64)))
    if draw(st.booleans()):
      unit = np.full(shape, unit.flat[0])  # Zero variance.
    offset = draw(st.floats(-1, 1)) * draw(st.sampled_from([0.0, 1.0, 1e2]))
    components.append(unit + offset)
  largest = np.sqrt(sum(np.square(c) for c in components)).max()
  if largest > 0:  # Real divisions: a complex one by a subnormal `largest` overflows.
    components = [c / largest for c in components]
  value = components[0] if parts == 1 else components[0] + 1j * components[1]
  exponent = draw(st.floats(np.log10(1 / max_magnitude), np.log10(max_magnitude)))
  return (value * 10.0**exponent).astype(np.complex64 if parts == 2 else np.float32)


@st.composite
def pytrees(draw, max_magnitude=1e30, allow_complex=False):
  """A dict tree of leaves, with optional ``None`` and ``optax.MaskedNode`` entries."""
  keys = draw(st.lists(st.sampled_from("abcdefgh"), unique=True, max_size=5))
  tree = {k: jnp.asarray(draw(leaves(max_magnitude, allow_complex))) for k in keys}
  if draw(st.booleans()):
    tree["none"] = None
  if draw(st.booleans()):
    tree["masked"] = optax.MaskedNode()
  if draw(st.booleans()):
    tree = {"nested": tree, "leaf": jnp.asarray(draw(leaves(max_magnitude, allow_complex)))}
  return tree


TRANSFORMS = {
  "znorm": (lambda: zo.znorm(), lambda g: numpy_znorm(g) if g.size > 1 else g),
  "centralize": (zo.centralize, numpy_centralize),
  "clip_layer": (lambda: zo.clip_by_layer_norm(1.0), lambda g: numpy_clip_layer(g, 1.0)),
}

_jitted_updates = {name: jax.jit(make().update) for name, (make, _) in TRANSFORMS.items()}
_exact_znorm = jax.jit(zo.znorm(eps=0.0).update)


# XLA on CPU flushes subnormal float32 values (below 1.2e-38) to zero, so errors that
# small are not resolved; they are allowed in absolute terms.
TINY = float(np.finfo(np.float32).tiny)
EPS = float(np.finfo(np.float32).eps)


def _check_against_reference(tree, name, rtol, atol):
  make, reference = TRANSFORMS[name]
  out, _ = _jitted_updates[name](tree, make().init(tree))
  chex.assert_trees_all_equal_structs(out, tree)
  chex.assert_trees_all_equal_shapes_and_dtypes(out, tree)
  chex.assert_tree_all_finite(out)
  for g, o in zip(jax.tree.leaves(tree), jax.tree.leaves(out), strict=True):
    expected = reference(as_wide(g))
    # Errors are relative to the natural scale: ZNorm's output is O(1) (exactly 0 for a
    # constant leaf), the others are rounding errors of the input's magnitude.
    natural = expected if name == "znorm" else as_wide(g)
    leaf_scale = max(np.abs(natural).max(initial=0.0), TINY)
    chex.assert_trees_all_close(
      as_wide(o) / leaf_scale, expected / leaf_scale, rtol=rtol, atol=atol + TINY / leaf_scale
    )


@SETTINGS
@given(
  tree=pytrees(max_magnitude=1e30, allow_complex=True), name=st.sampled_from(sorted(TRANSFORMS))
)
def test_finite_and_matches_float64_at_any_scale(tree, name):
  # Relative spreads down to 1e-2 of the offset keep float32's cancellation error
  # within 1e-3 of the output scale. Complex leaves are compared with complex128.
  _check_against_reference(tree, name, rtol=1e-3, atol=1e-3)


@SETTINGS
@given(tree=pytrees(max_magnitude=1e18))
def test_global_norm_clipping_is_finite_and_matches_float64_up_to_1e18(tree):
  assert all(np.abs(as_wide(g)).max() <= 1e18 for g in jax.tree.leaves(tree))
  out, _ = jax.jit(zo.clip_by_global_norm(1.0).update)(tree, optax.EmptyState())
  chex.assert_tree_all_finite(out)
  norm = np.sqrt(sum(np.sum(np.square(as_wide(g))) for g in jax.tree.leaves(tree)))
  factor = min(1.0, 1.0 / norm) if norm > 0 else 1.0
  expected = jax.tree.map(lambda g: as_wide(g) * factor, tree)
  chex.assert_trees_all_close(jax.tree.map(as_wide, out), expected, rtol=1e-4, atol=1e-6)


def _float32_standardization_error(g64):
  """A bound on float32's error in the mean and std of a two-pass standardization of g.

  Summing n float32 terms errs by at most n * eps/2 * sum|g| (Higham, Accuracy and
  Stability of Numerical Algorithms, 2002, eq. 4.4), so the computed mean is off by up
  to n * eps/2 * max|g| (twice that for complex parts); every centered value carries
  that error, which the standardization divides by std(g). Subnormal inputs flushed to
  zero move each element by up to TINY more. Pre-scaling by a power of two is exact.
  """
  return g64.size * EPS * (np.abs(g64).max() + TINY) / std(g64)


# All 0.992 but one element with +0.124j: std/max = 0.0101, yet float32's rounding of the
# mean (of 150 terms) puts |mean(z)| near 1.1e-4. A fixed std/max cut admitted it.
_ILL_CONDITIONED = np.full((5, 5, 6), 0.992, np.complex64)
_ILL_CONDITIONED.flat[0] += 0.124j


@SETTINGS
@given(tree=pytrees(allow_complex=True))
@example(tree={"a": jnp.asarray(_ILL_CONDITIONED)})
def test_znorm_invariants(tree):
  out, _ = _exact_znorm(tree, optax.EmptyState())  # eps = 0: exact unit std.
  for g, z in zip(jax.tree.leaves(tree), jax.tree.leaves(out), strict=True):
    g64, z64 = as_wide(g), as_wide(z)
    if g.size == 1:
      chex.assert_trees_all_equal(z, g)
      continue
    if std(g64) == 0:
      chex.assert_trees_all_equal(z, jnp.zeros_like(g))
      continue
    # Checked where float32 can resolve the answer, to within its own error bound: a
    # one-pass variance (mean of squares minus squared mean) errs by the bound's square.
    rounding = _float32_standardization_error(g64)
    if rounding <= 1e-2:
      np.testing.assert_allclose([abs(z64.mean()), z64.std()], [0.0, 1.0], atol=1e-4 + rounding)
      # Descent direction in the zero-mean subspace, where the update lives:
      # Re<g - mean(g), z> = n * std(g) > 0. (Against g itself the mean's component adds
      # n * Re(conj(mean(g)) * mean(z)): float32's rounding of mean(z), allowed above,
      # times |mean(g)|, which can be 100x the spread: a 95-100j tensor did that.)
      centered = g64 - g64.mean()
      expected = g.size * std(g64)
      assert np.real(np.vdot(centered, z64)) == pytest.approx(expected, rel=1e-3 + rounding)


def test_empty_pytrees():
  for make, _ in TRANSFORMS.values():
    tx = make()
    for empty in [{}, (), None, {"a": None}, {"m": optax.MaskedNode()}]:
      out, _ = jax.jit(tx.update)(empty, tx.init(empty))
      chex.assert_trees_all_equal_structs(out, empty)
