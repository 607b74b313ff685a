"""Paper comparison: Adam on gradients clipped to global norm `clip_norm` (default.py otherwise).

Clipping acts on the global norm of *all* parameters' gradients, as usual.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.grad_transform = "clip"
    config.grad_transform_params = "all"
    return config
