"""Paper comparison: Adam on Z-score normalized gradients (ZNorm), i.e. default.py as is."""

from configs import default


def get_config():
  config = default.get_config()
  config.grad_transform = "znorm"
  return config
