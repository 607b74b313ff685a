"""Independent NumPy references for the transforms, in float64 (complex128 for complex)."""

import numpy as np


def as_wide(g):
  """``g`` as float64, or complex128 if it is complex."""
  g = np.asarray(g)
  return g.astype(np.complex128 if np.iscomplexobj(g) else np.float64)


def numpy_znorm(g, eps=1e-8, axis=None):
  """(g - mean) / (population std + eps) over ``axis``; std = sqrt(mean |g - mean|^2)."""
  g = as_wide(g)
  mean = g.mean(axis=axis, keepdims=True)
  std = g.std(axis=axis, keepdims=True)
  return (g - mean) / (std + eps)


def numpy_centralize(g):
  g = as_wide(g)
  if g.ndim < 2:
    return g
  return g - g.mean(axis=tuple(range(g.ndim - 1)), keepdims=True)


def numpy_clip_layer(g, max_norm):
  g = as_wide(g)
  norm = np.linalg.norm(g)
  return g * min(1.0, max_norm / norm) if norm > 0 else g


def numpy_stats(g):
  """(L2 norm, mean, population std) of one leaf."""
  g = as_wide(g)
  return np.linalg.norm(g), g.mean(), g.std()
