"""`WORKDIR/metrics.jsonl` for `train.py`: one JSON object per line, appended and fsync'ed.

Evaluation lines have no ``"kind"`` key; gradient diagnostics lines have ``"kind":
"diagnostics"`` (see `diagnostics.diagnostics_row`).  Every line has a ``"step"``: on a resume
`truncate_metrics` drops the lines of the steps after the restored checkpoint, which the resumed
run writes again.
"""

from __future__ import annotations

import json
import math
import os

METRICS_FILE = "metrics.jsonl"


def read_metrics(path: str) -> list[dict]:
    """The lines of a metrics file as dicts ([] if there is no file), skipping a cut last line."""
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    pass  # a line cut by a kill: the evaluation is redone after the resume
    return rows


def truncate_metrics(path: str, max_step: int) -> None:
    """Keeps the metrics lines of steps <= max_step (those the restored run already did)."""
    if not os.path.exists(path):
        return
    keep = [r for r in read_metrics(path) if r.get("step", math.inf) <= max_step]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in keep)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def append_metrics(path: str, row: dict) -> None:
    """Appends `row` as one line, flushed to disk (a kill loses at most a cut last line)."""
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())
