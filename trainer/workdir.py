"""The run's workdir: created, and ``config.json`` written (host 0) as the record of the run."""

from __future__ import annotations

import os

import ml_collections

CONFIG_FILE = "config.json"


def prepare(workdir: str) -> str:
  """The absolute workdir, created if needed."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  os.makedirs(workdir, exist_ok=True)
  return workdir


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Writes ``config.json`` atomically (a kill leaves the old one or the new one)."""
  path = os.path.join(workdir, CONFIG_FILE)
  with open(path + ".tmp", "w") as f:
    f.write(config.to_json(indent=2, sort_keys=True) + "\n")
  os.replace(path + ".tmp", path)
