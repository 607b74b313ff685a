"""Independent NumPy references for the transforms, in float64 (complex128 for complex)."""

import numpy as np


def as_wide(g):
  """``g`` as float64, or complex128 if it is complex."""
  g = np.asarray(g)
  return g.astype(np.complex128 if np.iscomplexobj(g) else np.float64)


def mean(g, axis=None, keepdims=False):
  """The mean, of the real and imaginary parts separately for complex ``g``.

  NumPy's complex mean divides by ``n`` as a complex number, which can round the mean
  of a constant array away from the constant; per part, it stays exact.
  """
  g = as_wide(g)
  if np.iscomplexobj(g):
    return g.real.mean(axis=axis, keepdims=keepdims) + 1j * g.imag.mean(
      axis=axis, keepdims=keepdims
    )
  return g.mean(axis=axis, keepdims=keepdims)


def std(g, axis=None, keepdims=False):
  """Population standard deviation sqrt(mean |g - mean|^2), as ``jnp.std`` defines it."""
  g = as_wide(g)
  centered = g - mean(g, axis=axis, keepdims=True)
  return np.sqrt(np.mean(np.abs(centered) ** 2, axis=axis, keepdims=keepdims))


def numpy_znorm(g, eps=1e-8, axis=None):
  """(g - mean) / (population std + eps) over ``axis``."""
  g = as_wide(g)
  return (g - mean(g, axis=axis, keepdims=True)) / (std(g, axis=axis, keepdims=True) + eps)


def numpy_centralize(g):
  g = as_wide(g)
  if g.ndim < 2:
    return g
  return g - mean(g, axis=tuple(range(g.ndim - 1)), keepdims=True)


def numpy_clip_layer(g, max_norm):
  g = as_wide(g)
  norm = np.linalg.norm(g)
  return g * min(1.0, max_norm / norm) if norm > 0 else g


def numpy_stats(g):
  """(L2 norm, mean, population std) of one leaf."""
  g = as_wide(g)
  return np.linalg.norm(g), mean(g), std(g)
