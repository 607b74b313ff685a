"""Paper comparison: Adam on centralized gradients (Yong et al., 2020), default.py otherwise."""

from configs import default


def get_config():
  config = default.get_config()
  config.grad_transform = "centralize"
  return config
