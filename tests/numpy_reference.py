"""Independent float64 NumPy references for the transforms."""

import numpy as np


def numpy_znorm(g, eps=1e-8, axis=None):
  """Float64 reference: (g - mean) / (population std + eps) over ``axis``."""
  g = np.asarray(g, np.float64)
  mean = g.mean(axis=axis, keepdims=True)
  std = g.std(axis=axis, keepdims=True)
  return (g - mean) / (std + eps)


def numpy_centralize(g):
  g = np.asarray(g, np.float64)
  if g.ndim < 2:
    return g
  return g - g.mean(axis=tuple(range(g.ndim - 1)), keepdims=True)


def numpy_clip_layer(g, max_norm):
  g = np.asarray(g, np.float64)
  norm = np.linalg.norm(g)
  return g * min(1.0, max_norm / norm) if norm > 0 else g
