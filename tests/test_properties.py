"""Property tests over generated pytrees: finiteness at any scale, agreement with float64."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import znorm_optax as zo
from tests.numpy_reference import numpy_centralize, numpy_clip_layer, numpy_znorm

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def leaves(draw, max_magnitude=1e30):
  """A float32 array at a random scale, sometimes constant or a single element."""
  shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=6))
  unit = draw(hnp.arrays(np.float64, shape, elements=st.floats(-1, 1, allow_nan=False, width=64)))
  if draw(st.booleans()):
    unit = np.full(shape, unit.flat[0])  # Zero variance.
  offset = draw(st.floats(-1, 1)) * draw(st.sampled_from([0.0, 1.0, 1e2]))
  exponent = draw(st.floats(np.log10(1 / max_magnitude), np.log10(max_magnitude)))
  return ((unit + offset) * 10.0**exponent).astype(np.float32)


@st.composite
def pytrees(draw, max_magnitude=1e30):
  """A dict tree of leaves, with optional ``None`` and ``optax.MaskedNode`` entries."""
  keys = draw(st.lists(st.sampled_from("abcdefgh"), unique=True, max_size=5))
  tree = {k: jnp.asarray(draw(leaves(max_magnitude))) for k in keys}
  if draw(st.booleans()):
    tree["none"] = None
  if draw(st.booleans()):
    tree["masked"] = optax.MaskedNode()
  if draw(st.booleans()):
    tree = {"nested": tree, "leaf": jnp.asarray(draw(leaves(max_magnitude)))}
  return tree


TRANSFORMS = {
  "znorm": (lambda: zo.znorm(), lambda g: numpy_znorm(g) if g.size > 1 else g),
  "centralize": (zo.centralize, numpy_centralize),
  "clip_layer": (lambda: zo.clip_by_layer_norm(1.0), lambda g: numpy_clip_layer(g, 1.0)),
}

_jitted_updates = {name: jax.jit(make().update) for name, (make, _) in TRANSFORMS.items()}
_exact_znorm = jax.jit(zo.znorm(eps=0.0).update)


def _check_against_reference(tree, name, rtol, atol):
  make, reference = TRANSFORMS[name]
  out, _ = _jitted_updates[name](tree, make().init(tree))
  assert jax.tree.structure(out) == jax.tree.structure(tree)
  for g, o in zip(jax.tree.leaves(tree), jax.tree.leaves(out), strict=True):
    o64 = np.asarray(o, np.float64)
    assert o.dtype == g.dtype and np.all(np.isfinite(o64)), (name, g, o)
    expected = reference(np.asarray(g, np.float64))
    # Errors are relative to the natural scale: ZNorm's output is O(1) (exactly 0 for a
    # constant leaf), the others are rounding errors of the input's magnitude.
    natural = expected if name == "znorm" else np.asarray(g, np.float64)
    leaf_scale = max(np.abs(natural).max(initial=0.0), np.finfo(np.float32).tiny)
    np.testing.assert_allclose(o64 / leaf_scale, expected / leaf_scale, rtol=rtol, atol=atol)


@SETTINGS
@given(tree=pytrees(max_magnitude=1e30), name=st.sampled_from(sorted(TRANSFORMS)))
def test_finite_and_matches_float64_at_any_scale(tree, name):
  # Relative spreads down to 1e-2 of the offset keep float32's cancellation error
  # within 1e-3 of the output scale.
  _check_against_reference(tree, name, rtol=1e-3, atol=1e-3)


@SETTINGS
@given(tree=pytrees(max_magnitude=1e18))
def test_global_norm_clipping_is_finite_and_matches_float64_up_to_1e18(tree):
  leaves_ = jax.tree.leaves(tree)
  out, _ = jax.jit(zo.clip_by_global_norm(1.0).update)(tree, optax.EmptyState())
  norm = np.sqrt(sum(np.sum(np.square(np.asarray(g, np.float64))) for g in leaves_))
  for g, o in zip(leaves_, jax.tree.leaves(out), strict=True):
    assert np.all(np.isfinite(np.asarray(o)))
    expected = np.asarray(g, np.float64) * (min(1.0, 1.0 / norm) if norm > 0 else 1.0)
    np.testing.assert_allclose(np.asarray(o, np.float64), expected, rtol=1e-4, atol=1e-6)


@SETTINGS
@given(tree=pytrees())
def test_znorm_invariants(tree):
  out, _ = _exact_znorm(tree, optax.EmptyState())  # eps = 0: exact unit std.
  for g, z in zip(jax.tree.leaves(tree), jax.tree.leaves(out), strict=True):
    g64, z64 = np.asarray(g, np.float64), np.asarray(z, np.float64)
    if g.size == 1:
      np.testing.assert_array_equal(z64, g64)
      continue
    assert np.vdot(g64 / np.abs(g64).max(initial=1.0), z64) >= -1e-6  # Descent direction.
    if g64.std() == 0:
      np.testing.assert_array_equal(z64, 0.0)
    elif g64.std() > 1e-2 * np.abs(g64).max():  # Well-conditioned in float32.
      np.testing.assert_allclose([z64.mean(), z64.std()], [0.0, 1.0], atol=1e-4)


def test_empty_pytrees():
  for make, _ in TRANSFORMS.values():
    tx = make()
    for empty in [{}, (), None, {"a": None}, {"m": optax.MaskedNode()}]:
      out, _ = jax.jit(tx.update)(empty, tx.init(empty))
      assert jax.tree.structure(out) == jax.tree.structure(empty)
