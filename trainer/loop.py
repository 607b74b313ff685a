"""`train_and_evaluate`: the training loop, top to bottom.

config -> devices and plan -> data (whole splits on the devices) -> model, optimizer, state
(restored from the last checkpoint if any) -> dispatches of K pmapped train steps, with
diagnostics, evaluation and checkpoints between them -> metrics.jsonl / TensorBoard.
"""

from __future__ import annotations

import collections
import contextlib
import sys
import time

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from trainer import checkpoints, diagnostics, hosts, inputs
from trainer import input_pipeline as ip
from trainer import workdir as workdir_lib
from trainer.errors import DivergedError, Interrupted
from trainer.metrics import MetricsWriter
from trainer.optimizers import Optimizer, create_optimizer
from trainer.plan import RunPlan, local_devices, validate_config
from trainer.state import DTYPES, TrainState, create_model, create_train_state
from trainer.steps import Steps, config_steps

DISPATCHES_IN_FLIGHT = 2  # see `DispatchWindow`


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains and evaluates as configured, writing metrics and checkpoints to `workdir`.

  Resumes from the newest good checkpoint in ``workdir/checkpoints`` if there is one, once the
  config has been checked against the workdir's ``config.json``.

  Returns:
    The final state, on the host (unreplicated NumPy arrays); after SIGTERM, the state saved.

  Raises:
    trainer.errors.ConfigError: a bad config value, or one that changes the trajectory of the
      workdir's run.
    trainer.errors.DataError: the dataset is absent and cannot be downloaded, or damaged.
    trainer.errors.TrainerError: the workdir is in use or not writable, a checkpoint or metrics
      line cannot be restored or written, or the training diverged (one-line messages).
    trainer.errors.Interrupted: Ctrl-C; a checkpoint was saved at the step reached.
  """
  t_start = time.time()
  config = ml_collections.ConfigDict(config.to_dict())  # a private, unlocked copy
  devices = local_devices(config)
  n_global = len(devices) * jax.process_count()
  host0 = jax.process_index() == 0
  validate_config(config, n_global)
  workdir = workdir_lib.prepare(workdir)
  with workdir_lib.lock(workdir), checkpoints.StopRequest() as stop:
    saved_steps = checkpoints.saved_steps(workdir)
    for note in workdir_lib.check_config(workdir, config, max(saved_steps, default=0)):
      say(note)
    data = inputs.load(config)
    spec, plan = data.spec, RunPlan.create(config, data.num_train)
    model = create_model(config, spec.num_classes, data.image_shape[0])
    optimizer = create_optimizer(config, plan.total_steps)
    state = create_train_state(config, model, optimizer.tx, data.image_shape)
    saved = checkpoints.latest_good_step(workdir, warn=say)
    mngr = checkpoints.checkpoint_manager(workdir, config.keep_checkpoints)
    train_sums = np.zeros(3, np.float64)  # loss, accuracy, steps since the last evaluation
    if saved is not None:
      state, train_sums = checkpoints.restore(mngr, saved, state)
      say(f"Resumed from step {saved}")
    step = int(state.step)
    hosts.progress(step, saved)
    if host0:
      workdir_lib.write_config(workdir, config)
      say(describe(config, plan, data, n_global, workdir))
    writer = MetricsWriter(workdir, enabled=host0, resumed_step=step)
    train_metrics = TrainMetrics(train_sums, plan, optimizer, writer)

    dtype = DTYPES[config.dtype]
    steps = config_steps(config, model, optimizer.tx, devices, spec)
    data.place(plan, devices, step)
    measure = None
    if plan.diagnostics_every:
      train_data = data.resident_train()
      measure = diagnostics.Measure(
        config, model, optimizer.grad_transform, spec, dtype, devices, state, data.image_shape
      )
    r_state = ip.replicate(state, devices)
    watch, stopping, window, first_step = Stopwatch(), False, DispatchWindow(), step
    pbar = progress_bar(plan, step, host0)
    try:
      while step < plan.total_steps and not stopping:
        if measure is not None and plan.measures_before(step):
          with watch.paused(r_state):
            row = measure(r_state, train_data, step, plan.steps_per_epoch)
            writer.write(row, diagnostics.scalars(row))
        n = plan.dispatch_size(step)
        args = data.train_args(step, n)
        watch.before_dispatch(n, r_state)
        r_state, metrics = steps.train(r_state, *args)
        rate = watch.after_dispatch(n, n * config.batch_size, metrics)
        if rate is not None and host0:  # the first timed dispatch: how long the run takes
          say(forecast_line(plan, step + n, first_step, rate, devices[0].platform))
        train_metrics.add(step, metrics)
        window.add(metrics)
        step += n
        pbar.update(n)
        if any(plan.logs_after(s) for s in range(step - n + 1, step + 1)):
          pbar.set_postfix(loss=train_metrics.flush())
        if plan.evaluates_after(step):
          with watch.paused(r_state):
            row = evaluation_row(steps, r_state, data, train_metrics, step, plan, optimizer)
            row["images_per_second"] = watch.rate()
            writer.write(row, eval_scalars(row))
            if host0:
              say(progress_line(row, plan))
        stopping = stop.should_stop()
        if plan.checkpoints_after(step) or stopping:
          with watch.paused(r_state):
            train_metrics.flush()
            checkpoints.save(mngr, workdir, ip.unreplicate(r_state), train_metrics.sums)
            saved = step
        hosts.progress(step, saved)
    except DivergedError as e:  # nothing non-finite was saved
      raise DivergedError(f"training diverged: {e}; {last_good(saved, workdir)}") from None
    finally:
      pbar.close()
      mngr.close()
      writer.close()
  return finish(stop.signal, step, plan, workdir, time.time() - t_start, ip.unreplicate(r_state))


def last_good(saved: int | None, workdir: str) -> str:
  if saved is None:
    return f"no checkpoint was written in {workdir}; lower --config.learning_rate and start again"
  return (
    f"the last good checkpoint is step {saved} in {checkpoints.checkpoint_dir(workdir)}; lower "
    "--config.learning_rate in a new --workdir, or delete the workdir to start again"
  )


def finish(signal_name, step: int, plan: RunPlan, workdir: str, seconds: float, state):
  """The last console line; Ctrl-C raises `Interrupted` once the checkpoint is saved."""
  if signal_name == "SIGINT":
    raise Interrupted(
      f"Ctrl-C: stopped at step {step} with a checkpoint in {workdir}; re-run the "
      "same command to resume"
    )
  if jax.process_index() == 0:
    if step < plan.total_steps:
      say(
        f"{signal_name}: stopped at step {step} (checkpoint at step {step}); re-run the "
        "command to resume"
      )
    else:
      say(f"Done at step {step} in {seconds:.0f} s; outputs in {workdir}")
  return state


def eval_scalars(row: dict) -> dict[str, float]:
  scalars = {"perf/images_per_second": row["images_per_second"] or 0.0}
  for name in inputs.EVAL_SPLITS:
    if f"{name}_loss" in row:
      scalars[f"{name}/loss"] = row[f"{name}_loss"]
      scalars[f"{name}/accuracy"] = row[f"{name}_accuracy"]
  return scalars


class TrainMetrics:
  """The per-step train loss and accuracy, fetched from the devices only when needed.

  ``sums`` (float64 loss, accuracy and step count since the last evaluation) is checkpointed,
  so the first metrics line after a resume equals the uninterrupted run's; the TensorBoard
  ``train/*`` scalars average the steps since the last logging step.
  """

  def __init__(self, sums: np.ndarray, plan: RunPlan, optimizer: Optimizer, writer):
    self.sums, self._log_sums, self._pending = sums, np.zeros(3, np.float64), []
    self._plan, self._schedule, self._writer = plan, optimizer.schedule, writer

  def add(self, first_step: int, metrics: dict) -> None:
    self._pending.append((first_step, metrics))

  def flush(self) -> str:
    """Adds the pending steps to the sums, writing the logging steps' scalars; returns the
    last logged loss for the progress bar."""
    first_steps = [first_step for first_step, _ in self._pending]
    fetched = ip.unreplicate([metrics for _, metrics in self._pending])
    for first_step, metrics in zip(first_steps, fetched, strict=True):
      for k, (loss, accuracy) in enumerate(zip(metrics["loss"], metrics["accuracy"], strict=True)):
        row = np.array([loss, accuracy, 1.0], np.float64)
        self.sums += row
        self._log_sums += row
        step = first_step + k + 1
        if not np.isfinite(loss):
          raise DivergedError(f"the training loss is {loss} at step {step}")
        if self._plan.logs_after(step):
          loss, accuracy, count = self._log_sums
          self._writer.scalars(
            step,
            {
              "train/loss": loss / count,
              "train/accuracy": accuracy / count,
              "train/learning_rate": float(self._schedule(step - 1)),
            },
          )
          self._log_sums[:] = 0
    self._pending = []
    return f"{self.sums[0] / max(self.sums[2], 1):.4f}"

  def take(self) -> dict:
    """The train loss and accuracy since the last evaluation; the sums start again."""
    self.flush()
    loss, accuracy, count = self.sums
    self.sums = np.zeros(3, np.float64)
    return {"train_loss": loss / count, "train_accuracy": accuracy / count}


def evaluation_row(
  steps: Steps,
  r_state,
  data: inputs.ResidentInputs | inputs.StreamedInputs,
  train_metrics: TrainMetrics,
  step: int,
  plan: RunPlan,
  optimizer: Optimizer,
) -> dict:
  """The metrics.jsonl line of an evaluation: ``eval_loss``, ``eval_accuracy`` and those of
  the other evaluated splits (``validation_*``); the loop adds ``images_per_second``."""
  row = {"step": step, "epoch": step / plan.steps_per_epoch, **train_metrics.take()}
  for name in data.eval_sizes():
    sums = steps.evaluate(r_state, data.eval_batches(name))
    row[f"{name}_loss"] = sums["loss"] / sums["count"]
    row[f"{name}_accuracy"] = sums["correct"] / sums["count"]
  row["learning_rate"] = float(optimizer.schedule(step - 1))
  row["wall_time"] = time.time()
  return row


class DispatchWindow:
  """At most `DISPATCHES_IN_FLIGHT` dispatches queued on the devices: `add` waits for the
  dispatch before last. Dispatches return at once; unbounded, the host would queue every
  dispatch up to its next blocking read (an evaluation) and a SIGTERM would wait behind them
  (minutes, for a deep ResNet on CPU). Two in flight keep the device fed and the stop within
  two dispatches."""

  def __init__(self):
    self._queue = collections.deque()

  def add(self, outputs) -> None:
    self._queue.append(outputs)
    if len(self._queue) > DISPATCHES_IN_FLIGHT:
      jax.block_until_ready(self._queue.popleft())


def progress_bar(plan: RunPlan, step: int, host0: bool) -> tqdm:
  """The step progress bar on stderr (off on other hosts and, by tqdm, off a terminal)."""
  return tqdm(
    total=plan.total_steps,
    initial=step,
    unit="step",
    dynamic_ncols=True,
    disable=None if host0 else True,
    file=sys.stderr,
  )


class Stopwatch:
  """Training time between evaluations: compiling (the first dispatch of each size),
  evaluating, checkpointing and diagnostics are left out (`paused`, after waiting for the steps
  in flight), so ``images_per_second`` is the steady-state rate."""

  def __init__(self):
    self.seconds, self.images, self._since, self._pending = 0.0, 0, time.perf_counter(), 0
    self._compiled: set[int] = set()
    self._first_rate_taken = False

  def before_dispatch(self, size: int, in_flight) -> None:
    if size not in self._compiled:  # this dispatch compiles: not training time
      self.stop(in_flight)

  def after_dispatch(self, size: int, images: int, outputs) -> float | None:
    """Counts a dispatch of ``size`` steps; returns the rate of the first timed dispatch (the
    first of a size already compiled, waited for and measured alone), else None."""
    if size not in self._compiled:
      jax.block_until_ready(outputs)
      self._compiled.add(size)
      self.start()
      return None
    self.count(images)
    if self._first_rate_taken:
      return None
    self._first_rate_taken = True
    jax.block_until_ready(outputs)
    return self._pending / (time.perf_counter() - self._since)

  def start(self) -> None:
    self._since, self._pending = time.perf_counter(), 0

  def count(self, images: int) -> None:
    self._pending += images

  def stop(self, in_flight) -> None:
    jax.block_until_ready(in_flight)
    self.seconds += time.perf_counter() - self._since
    self.images += self._pending
    self._pending = 0

  @contextlib.contextmanager
  def paused(self, in_flight):
    self.stop(in_flight)
    yield
    self.start()

  def rate(self) -> float | None:
    rate = self.images / self.seconds if self.images else None
    self.seconds, self.images = 0.0, 0
    return rate


def forecast_line(plan: RunPlan, step: int, start: int, rate: float, platform: str) -> str:
  """How long the rest of the run and the next evaluation take at ``rate`` images/s, counted
  from ``step`` (training time: evaluations, checkpoints and compiling add to it); ``start``:
  the step this sitting began at (0, or where it resumed)."""
  seconds_per_step = plan.batch_size / rate
  next_eval = min(plan.total_steps, (step // plan.eval_every + 1) * plan.eval_every)
  epochs = (plan.total_steps - start) / plan.steps_per_epoch
  run = duration((plan.total_steps - start) * seconds_per_step)
  scope, evaluation = ("", "first") if start == 0 else (" left", "next")
  return (
    f"{rate:.0f} img/s on {platform}: about {run} for the {count(epochs, 'epoch')}{scope}; "
    f"{evaluation} evaluation in about {duration((next_eval - step) * seconds_per_step)}"
  )


def count(n: float, unit: str) -> str:
  """``1 epoch``, ``2 epochs``, ``0.5 epochs``: ``n`` to 3 significant digits and its unit."""
  shown = f"{n:.3g}"
  return f"{shown} {unit}" + ("" if shown == "1" else "s")


def duration(seconds: float) -> str:
  if seconds < 90:
    return f"{seconds:.0f} s"
  if seconds < 90 * 60:
    return f"{seconds / 60:.0f} min"
  return f"{seconds / 3600:.1f} h"


def say(*args) -> None:
  """A console line that does not break the tqdm bar."""
  tqdm.write(" ".join(str(a) for a in args), file=sys.stdout)
  sys.stdout.flush()


def describe(config, plan: RunPlan, data, n_devices: int, workdir) -> str:
  evaluated = " / ".join(f"{n} {name}" for name, n in data.eval_sizes().items())
  streamed = "" if config.input in (None, "resident") else ", streamed"
  return (
    f"{config.model} on {config.dataset}{streamed}: {data.num_train} train / {evaluated} "
    "examples; "
    f"{n_devices} device(s) x {config.batch_size // n_devices} = batch {config.batch_size}; "
    f"{plan.total_steps} steps ({count(plan.total_steps / plan.steps_per_epoch, 'epoch')}, "
    f"{plan.steps_per_dispatch} per dispatch); {config.optimizer} lr {config.learning_rate:g} "
    f"({config.schedule}) on grad_transform={config.grad_transform}; workdir {workdir}"
  )


def progress_line(row: dict, plan: RunPlan) -> str:
  ips = "-" if row["images_per_second"] is None else f"{row['images_per_second']:.0f}"
  validation = (
    f" | validation acc {row['validation_accuracy']:.4f}" if "validation_accuracy" in row else ""
  )
  return (
    f"step {row['step']}/{plan.total_steps} epoch {row['epoch']:.2f} | train loss "
    f"{row['train_loss']:.4f} acc {row['train_accuracy']:.4f} | eval loss "
    f"{row['eval_loss']:.4f} acc {row['eval_accuracy']:.4f}{validation} | lr "
    f"{row['learning_rate']:.3g} | {ips} img/s"
  )
