"""Paper comparison, baseline: Adam with no gradient transform (default.py otherwise)."""

from configs import default


def get_config():
  config = default.get_config()
  config.grad_transform = "none"
  return config
