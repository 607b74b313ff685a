"""The one owner of the trainer's JSON-lines files: ``WORKDIR/metrics.jsonl`` and the run records
of the studies.

metrics.jsonl holds one JSON object per line, appended and fsync'ed. Evaluation lines have no
``"kind"`` key (the format predates kinds; `read_metrics` gives them the kind ``"eval"``);
gradient diagnostics lines have ``"kind": "diagnostics"`` (see `trainer.diagnostics`). Every line
has a ``"step"``: on a resume `MetricsWriter` drops the lines of the steps after the restored
checkpoint, which the resumed run writes again. TensorBoard events go to the workdir beside it.

`append_record` / `read_records` are the same line discipline for any other JSON-lines file
(a line cut by a kill is skipped on reading and never swallows the next one).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

from tensorboardX import SummaryWriter

from trainer.errors import TrainerError
from trainer.files import write_atomic

METRICS_FILE = "metrics.jsonl"
EVAL = "eval"
DIAGNOSTICS = "diagnostics"


def read_records(path: str | os.PathLike) -> list[dict]:
  """The JSON objects of a JSON-lines file, in order ([] if there is no file); blank lines and
  lines that are not whole JSON objects (a write cut by a kill) are skipped."""
  path = Path(path)
  if not path.is_file():
    return []
  records = []
  for line in path.read_text().splitlines():
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue
    if isinstance(record, dict):
      records.append(record)
  return records


def append_record(path: str | os.PathLike, record: dict) -> None:
  """Appends ``record`` as one line in a single write, flushed and fsync'ed; a line cut by an
  earlier kill is closed first so that it cannot swallow this one."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  data = (json.dumps(record) + "\n").encode()
  with open(path, "ab") as f:
    if f.tell() > 0:
      with open(path, "rb") as g:
        g.seek(-1, os.SEEK_END)
        if g.read(1) != b"\n":
          data = b"\n" + data
    f.write(data)
    f.flush()
    os.fsync(f.fileno())


def kind_of(row: dict) -> str:
  """``"eval"`` for an evaluation line, else the line's ``"kind"``."""
  return row.get("kind", EVAL)


def read_metrics(workdir: str | os.PathLike, kind: str | None = EVAL) -> list[dict]:
  """The lines of ``WORKDIR/metrics.jsonl`` of one kind (``None``: all), in order."""
  rows = read_records(Path(workdir) / METRICS_FILE)
  return [r for r in rows if kind is None or kind_of(r) == kind]


def column(rows: Sequence[dict], x: str, y: str) -> tuple[list[float], list[float]]:
  """``(xs, ys)`` of the rows where both fields are finite numbers, sorted by ``x``; a step
  logged twice keeps its later line."""

  def number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

  by_step = {r.get("step", ("line", i)): r for i, r in enumerate(rows)}
  pairs = sorted((r[x], r[y]) for r in by_step.values() if number(r.get(x)) and number(r.get(y)))
  return [p[0] for p in pairs], [p[1] for p in pairs]


class MetricsWriter:
  """metrics.jsonl and TensorBoard for one run; a no-op on every host but the first."""

  def __init__(self, workdir: str, enabled: bool, resumed_step: int):
    self.path = Path(workdir) / METRICS_FILE
    self.enabled = enabled
    self._tb = None
    if enabled:
      self._truncate(resumed_step)
      self._tb = SummaryWriter(workdir)

  def _truncate(self, max_step: int) -> None:
    """Keeps the lines of steps <= max_step (those the restored run already did)."""
    if not self.path.exists():
      return
    keep = [r for r in read_records(self.path) if r.get("step", math.inf) <= max_step]
    write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in keep), fsync=True)

  def scalars(self, step: int, values: dict[str, float]) -> None:
    """TensorBoard scalars only."""
    if self.enabled:
      for tag, value in values.items():
        self._tb.add_scalar(tag, value, step)

  def write(self, row: dict, values: dict[str, float]) -> None:
    """One metrics.jsonl line and its TensorBoard scalars, flushed.

    Raises:
      TrainerError: the line could not be written (e.g. a full disk); the lines before it and
        the checkpoints are intact, and a re-run writes it again.
    """
    if self.enabled:
      try:
        append_record(self.path, row)
      except OSError as e:
        raise TrainerError(
          f"could not write {self.path}: {e.strerror or e}; free space or fix permissions and "
          "re-run to resume from the last checkpoint"
        ) from None
      self.scalars(row["step"], values)
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
