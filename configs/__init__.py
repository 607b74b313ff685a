"""ml_collections configs for `train.py` (`--config=configs/NAME.py`), `make_config`, the one
builder of a run's config for the experiments and the benchmarks, and `ROOT`, the checkout they
run from."""

import importlib
from pathlib import Path

import ml_collections

ROOT = Path(__file__).resolve().parent.parent


def make_config(name: str = "default", **fields) -> ml_collections.ConfigDict:
  """The config of ``configs/{name}.py`` with ``fields`` set.

  Raises:
    ValueError: a field that the config does not have (a typo would otherwise add it).
  """
  config = importlib.import_module(f"configs.{name}").get_config()
  unknown = sorted(set(fields) - set(config))
  if unknown:
    raise ValueError(f"configs/{name}.py has no field {', '.join(unknown)}")
  for field, value in fields.items():
    config[field] = value
  return config
