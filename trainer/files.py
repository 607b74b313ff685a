"""Writing the harness's files: whole files atomically, and markdown tables.

`write_atomic` writes a temporary file beside the target and renames it over the target
(`os.replace`), so a kill or a full disk leaves the old file or the new one, never a cut one.
`write_json` writes the benchmarks' figures; `markdown_table` renders the tables of the reports
(experiments, benchmarks).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path


def write_atomic(
  path: str | os.PathLike, content: str | bytes | Callable[[Path], object], *, fsync: bool = False
) -> Path:
  """Writes ``content`` to ``path`` all at once: text, bytes, or a function that writes the
  file at the path it is given (a figure's ``savefig``; the temporary name keeps the suffix, so
  the format is inferred as for ``path``). ``fsync``: flush to disk before the rename (files a
  restart relies on). Creates the parent folder; returns ``path``."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f"{path.name}.tmp{path.suffix}")  # beside it, starting with its name
  try:
    if callable(content):
      content(tmp)
    else:
      with open(tmp, "wb") as f:
        f.write(content.encode() if isinstance(content, str) else content)
        if fsync:
          f.flush()
          os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)
  return path


def write_json(path: str | os.PathLike, data) -> Path:
  """``data`` as indented JSON, written atomically."""
  return write_atomic(path, json.dumps(data, indent=2) + "\n")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence], right: Sequence[bool] = ()):
  """The lines of a markdown table; ``right[i]`` right-aligns column ``i`` (numbers); cells are
  written with ``str``."""
  align = [("---:" if i < len(right) and right[i] else "---") for i in range(len(header))]
  lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "|".join(align) + "|"]
  lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
  return lines
