"""A multi-host job's lost process, told in one line: `train.py --distributed` runs the job in
a child process and watches it, so that a process lost without notice (killed, its host gone)
ends every survivor within the heartbeat timeout with

  error: process 1 of 2 stopped answering at step 37; the job stopped; run the same command on
  every host to resume from step 20 (the last checkpoint)

and exit status 1, instead of JAX's native abort (SIGABRT, a C++ stack trace and the
coordination service's logs).

Why a child: when a process of the job is lost, JAX's distributed runtime ends every survivor
from native code (a failed collective, then its shutdown barrier or its error poll abort the
process), and nothing inside the process can stop that or take back what it wrote. So the
parent (`supervise`) starts the same command again as a child in its own session, forwards
SIGINT and SIGTERM to it, passes its stdout through and its stderr too, except from the first
line of a failure on: that is held back. When the child is ended by a signal with JAX's
coordination service named in what it held back, the parent prints the line above (the lost
process read from JAX's words; the step and the last checkpoint from what the child reported
through `progress`), writes the held-back text to ``WORKDIR/job_stopped.processI.log`` (I:
its own index) and exits 1
(``--verbosity=1`` prints that text as well). Any other end is passed through as it is: the
exit status, and held-back text (a Python traceback, a one-line error) printed unchanged.

The child dies with its parent (Linux: ``PR_SET_PDEATHSIG``), so killing the process that was
started kills the job's process on that host, as it would without the parent.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

HEARTBEAT_TIMEOUT_SECONDS = 60  # train.py's --heartbeat_timeout_seconds default
CHILD = "ZNORM_OPTAX_HOST_CHILD"  # set in the child's environment: the fd of its progress pipe
LOG_NAME = "job_stopped.process{}.log"  # in the workdir, by the survivor's process index

# The first line of a failure: a Python traceback, a fatal error, or a glog error or fatal line
# of JAX's native runtime ("E1206 21:37:03.935424 ...").
_FAILURE_START = re.compile(
  rb"^(Traceback \(most recent call last\)|Fatal Python error|[EF]\d{4} )"
)
_COORDINATION = re.compile(rb"coordination service|CoordinationService|heartbeat timeout")
_TASK_TIMEOUT = re.compile(rb"Task (\d+) heartbeat timeout")
_LEADER_LOST = re.compile(rb"leader task|Failed to send RPC to coordination service")


def _report(*words) -> None:
  fd = os.environ.get(CHILD)
  if fd:
    os.write(int(fd), (" ".join(map(str, words)) + "\n").encode())


def joined(process_id: int, num_processes: int) -> None:
  """Tells the parent this process's index and the job's size, once the job is set up (a child
  of `supervise` only; nothing otherwise)."""
  _report("process", process_id, num_processes)


def progress(step: int, checkpoint: int | None) -> None:
  """Tells the parent the step reached and the last committed checkpoint (a child of
  `supervise` only; nothing otherwise)."""
  _report("step", step, -1 if checkpoint is None else checkpoint)


def is_child() -> bool:
  return bool(os.environ.get(CHILD))


def _die_with_parent() -> None:
  """In the child, before exec: SIGKILL when the parent dies (Linux; elsewhere nothing)."""
  try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    pass


class _Stderr:
  """The child's stderr, passed through as it comes until the first line of a failure; from
  there on held back."""

  def __init__(self, pipe):
    self.pipe, self.held = pipe, bytearray()
    self.thread = threading.Thread(target=self._run, daemon=True)
    self.thread.start()

  def _run(self) -> None:
    out, at_line_start = sys.stderr.buffer, True
    while chunk := os.read(self.pipe, 1 << 16):
      if not self.held:
        starts = [0] * at_line_start + [m.end() for m in re.finditer(rb"\n", chunk)]
        failure = next((i for i in starts if _FAILURE_START.match(chunk, i)), None)
        out.write(chunk if failure is None else chunk[:failure])
        out.flush()
        chunk = b"" if failure is None else chunk[failure:]
      self.held += chunk
      at_line_start = chunk.endswith(b"\n") if chunk else at_line_start
    os.close(self.pipe)


class _Progress:
  """What the child reported: its process index and the job's size, then after every dispatch
  the step reached and the last committed checkpoint."""

  def __init__(self, pipe):
    self.pipe = pipe
    self.process_id = self.num_processes = self.step = self.checkpoint = None
    self.thread = threading.Thread(target=self._run, daemon=True)
    self.thread.start()

  def _run(self) -> None:
    with os.fdopen(self.pipe, "rb") as lines:
      for line in lines:
        kind, a, b = line.split()
        if kind == b"process":
          self.process_id, self.num_processes = int(a), int(b)
        else:
          self.step, self.checkpoint = int(a), None if int(b) < 0 else int(b)


def lost_line(held: bytes, process_id, num_processes, step, checkpoint) -> str:
  """The one line of a survivor: who was lost (from JAX's words), at which step, and where to
  resume from."""
  task = _TASK_TIMEOUT.search(held)
  if task:
    who = f"process {int(task.group(1))}"
  elif _LEADER_LOST.search(held):
    who = "process 0 (the coordinator)"
  elif num_processes == 2 and process_id is not None:
    who = f"process {1 - process_id}"
  else:
    who = "a process"
  of = f" of {num_processes}" if num_processes else ""
  at = "" if step is None else f" at step {step}"
  resume = (
    "start again (no checkpoint was written)"
    if checkpoint is None
    else f"resume from step {checkpoint} (the last checkpoint)"
  )
  return (
    f"error: {who}{of} stopped answering{at}; the job stopped; run the same command on every "
    f"host to {resume}"
  )


def supervise(workdir: str, show: bool) -> int:
  """Runs this command again as a child (see the module docstring) and returns the exit status
  to end with."""
  progress_read, progress_write = os.pipe()
  err_read, err_write = os.pipe()
  child = subprocess.Popen(
    [sys.executable, *sys.orig_argv[1:]],  # this interpreter, its options and arguments
    env={**os.environ, CHILD: str(progress_write)},
    pass_fds=(progress_write,),
    stderr=err_write,
    start_new_session=True,  # a terminal's Ctrl-C reaches the child once, through us
    preexec_fn=_die_with_parent,
  )
  os.close(progress_write)
  os.close(err_write)
  for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, lambda signum, frame: child.send_signal(signum))
  stderr, reported = _Stderr(err_read), _Progress(progress_read)
  status = child.wait()
  # The child's own children (Grain's workers) may hold its stderr a while after it died.
  stderr.thread.join(timeout=10)
  reported.thread.join(timeout=5)
  held = bytes(stderr.held)
  if status >= 0 or not _COORDINATION.search(held):  # not a lost process: as it ended
    sys.stderr.buffer.write(held)
    sys.stderr.flush()
    return status if status >= 0 else 128 - status
  log = Path(workdir) / LOG_NAME.format(reported.process_id)
  try:
    log.write_bytes(held)
  except OSError:
    pass
  if show:
    sys.stderr.buffer.write(held)
  line = lost_line(
    held, reported.process_id, reported.num_processes, reported.step, reported.checkpoint
  )
  print(line, file=sys.stderr, flush=True)
  return 1
