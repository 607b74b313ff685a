"""Paper comparison: Adam on gradients clipped to global norm 1.0 (default.py otherwise).

Clipping acts on the global norm of *all* parameters' gradients, as usual; the norm is the
library's default `max_norm=1.0` (`--config.grad_transform_kwargs.max_norm` changes it).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.grad_transform = "clip_by_global_norm"
  config.grad_transform_params = "all"
  return config
