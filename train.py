r"""Data-parallel CIFAR training of `models/` ResNets with `znorm_optax` gradient transforms.

    python train.py --workdir=/tmp/resnet20_znorm [--config=configs/default.py] \
        [--config.model=resnet56 --config.grad_transform=centralize ...]

In the manner of flax's `examples/imagenet`: the whole split lives in host memory as uint8, each
step's global batch is cut over the local devices and `jax.pmap`'ed `train_step` augments it on
device, averages the gradients with `lax.pmean` before the optimizer and synchronizes BatchNorm.
The step only uses an axis name and explicit collectives, so it maps as well with `jax.shard_map`.

Outputs in WORKDIR: `metrics.jsonl` (one line per evaluation), TensorBoard events, `config.json`
and Orbax checkpoints in `checkpoints/`.  With `--config.diagnostics_every_steps=N` metrics.jsonl
also gets a `{"kind": "diagnostics", ...}` line at step 1 and every N steps: per-layer gradient
statistics before and after the gradient transform, and the skip/branch split of the gradient at
every residual block input (see `diagnostics.diagnostics_row`); evaluation lines have no "kind"
key.

Re-running the same command resumes from the last complete checkpoint (`Resumed from step N`)
and ends with the same parameters and metrics as an uninterrupted run: everything random derives
from (seed, step) and the data order of epoch e from (seed, e).  SIGTERM saves a checkpoint at the
next step boundary and exits cleanly.

Next to this file: `input_pipeline` (data, augmentation), `checkpointing` (Orbax checkpoints,
SIGTERM), `metrics_io` (metrics.jsonl) and `diagnostics` (gradient diagnostics).
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct
from jax import lax

import checkpointing
import diagnostics
import input_pipeline as ip
import metrics_io

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "step")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
GRAD_TRANSFORM_PARAMS = ("kernels", "all")
AXIS_NAME = ip.AXIS_NAME  # "batch": the pmap'ed axis holding the devices

# Config field -> keyword argument of `znorm_optax.gradient_transform(name, ...)`.
_TRANSFORM_KWARGS = {
    "none": {},
    "znorm": {"znorm_eps": "eps"},
    "centralize": {},
    "clip": {"clip_norm": "max_norm"},
    "clip_layer": {"clip_norm": "max_norm"},
}


class TrainState(struct.PyTreeNode):
    """Everything a run needs to continue: resuming needs nothing else (plus the config)."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


# ------------------------------------------------------------------------------------------------
# Config -> model, optimizer
# ------------------------------------------------------------------------------------------------


def _one_of(field: str, value, valid) -> None:
    if value not in valid:
        raise ValueError(
            f"unknown {field} {value!r}; valid values: {', '.join(map(str, valid))}"
        )


def local_devices(config: ml_collections.ConfigDict) -> list:
    """The local devices pmap runs on: the first `config.num_devices` (-1 = all)."""
    devices = jax.local_devices()
    n = config.num_devices
    if n is None or n < 0:
        return devices
    if not 1 <= n <= len(devices):
        raise ValueError(
            f"num_devices={n} but this host has {len(devices)} devices; use -1 for all of them"
        )
    return devices[:n]


def create_model(config: ml_collections.ConfigDict, num_classes: int):
    """The flax module named by `config.model`, with synchronized BatchNorm over AXIS_NAME.

    Every dataset here has 32x32 images, so the ImageNet-style models (resnet18..152) get the
    CIFAR stem (3x3/1 convolution, no max-pool) instead of their 7x7/2 convolution and pool,
    which would leave an 8x8 map for the first stage.
    """
    import models

    _one_of("model", config.model, models.MODEL_NAMES)
    kwargs = {"stem": "cifar"}
    if config.model_widths:
        kwargs["widths"] = tuple(config.model_widths)
    return models.create_model(
        config.model,
        num_classes=num_classes,
        axis_name=AXIS_NAME,
        bn_momentum=config.bn_momentum,
        dtype=DTYPES[config.dtype],
        **kwargs,
    )


def create_learning_rate_schedule(
    config: ml_collections.ConfigDict, total_steps: int
) -> optax.Schedule:
    """Linear warmup over `warmup_fraction` of the steps, then constant, cosine or step decay."""
    _one_of("schedule", config.schedule, SCHEDULES)
    if not 0.0 <= config.warmup_fraction < 1.0:
        raise ValueError(f"warmup_fraction={config.warmup_fraction} must be in [0, 1)")
    lr = float(config.learning_rate)
    warmup = int(round(config.warmup_fraction * total_steps))
    if config.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, lr, warmup_steps=warmup, decay_steps=max(total_steps, warmup + 1), end_value=0.0
        )
    if config.schedule == "constant":
        main = optax.constant_schedule(lr)
    else:
        bounds = tuple(config.step_boundaries)
        if any(not 0.0 < b < 1.0 for b in bounds):
            raise ValueError(f"step_boundaries={bounds} must be fractions in (0, 1)")
        main = optax.piecewise_constant_schedule(
            lr,
            {max(1, int(round(b * total_steps)) - warmup): config.step_decay for b in bounds},
        )
    if warmup == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def diagnostics_every(config: ml_collections.ConfigDict) -> int:
    """`config.diagnostics_every_steps` (0, i.e. off, for configs that predate the field)."""
    return int(config.get("diagnostics_every_steps", 0) or 0)


def create_optimizer(
    config: ml_collections.ConfigDict, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """`optax.chain(gradient transform, base optimizer)` and its learning-rate schedule.

    The gradient transform comes from `znorm_optax.gradient_transform(config.grad_transform)`,
    restricted to kernels when `grad_transform_params == 'kernels'`; weight decay always applies
    to kernels only (decoupled for adamw, an L2 term on the gradient for adam and sgd).

    With diagnostics on (`diagnostics_every_steps > 0`) the chain is `(gradient_stats,
    transform, gradient_stats, base)`: the statistics of the raw (pmean'ed) gradients and of the
    transformed updates land in the optimizer state (see `diagnostics.gradient_stats_of`) and the
    updates are unchanged.  With diagnostics off the chain is exactly `(transform, base)`.
    """
    import znorm_optax as zo

    _one_of("grad_transform", config.grad_transform, zo.GRADIENT_TRANSFORMS)
    _one_of("optimizer", config.optimizer, OPTIMIZERS)
    _one_of("grad_transform_params", config.grad_transform_params, GRAD_TRANSFORM_PARAMS)
    if config.weight_decay < 0:
        raise ValueError(f"weight_decay={config.weight_decay} must be >= 0")
    if config.learning_rate <= 0:
        raise ValueError(f"learning_rate={config.learning_rate} must be > 0")
    schedule = create_learning_rate_schedule(config, total_steps)

    kwargs = {
        arg: config[field]
        for field, arg in _TRANSFORM_KWARGS.get(config.grad_transform, {}).items()
    }
    try:
        transform = zo.gradient_transform(config.grad_transform, **kwargs)
    except ValueError as e:  # a bad hyperparameter: name the config fields
        fields = ", ".join(f"--config.{f}" for f in _TRANSFORM_KWARGS[config.grad_transform])
        raise ValueError(f"grad_transform={config.grad_transform} ({fields}): {e}") from None
    if config.grad_transform_params == "kernels" and config.grad_transform != "none":
        transform = optax.masked(transform, zo.masks.kernels_only)

    wd = float(config.weight_decay)
    if config.optimizer == "adamw":
        base = optax.adamw(schedule, weight_decay=wd, mask=zo.masks.kernels_only)
    else:
        if config.optimizer == "adam":
            base = optax.adam(schedule)
        else:
            momentum = config.momentum or None
            base = optax.sgd(schedule, momentum=momentum, nesterov=config.nesterov)
        if wd:
            base = optax.chain(optax.add_decayed_weights(wd, mask=zo.masks.kernels_only), base)
    if diagnostics_every(config) > 0:
        return optax.chain(zo.gradient_stats(), transform, zo.gradient_stats(), base), schedule
    return optax.chain(transform, base), schedule


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Checks the config before any data is read or anything compiled.

    Raises:
      ValueError: with a one-line message naming the bad field and the valid values or the fix.
    """
    _one_of("dataset", config.dataset, tuple(ip.DATASETS))
    _one_of("dtype", config.dtype, tuple(DTYPES))
    create_model(config, ip.DATASETS[config.dataset].num_classes)
    create_optimizer(config, max(1, config.num_train_steps))
    for field in ("batch_size", "eval_batch_size"):
        bs = config[field]
        if field == "eval_batch_size" and bs == -1:
            continue
        if bs <= 0 or bs % num_devices:
            raise ValueError(
                f"{field}={bs} is not divisible by the {num_devices} devices in use; "
                f"set --config.{field} to a positive multiple of {num_devices}"
            )
    if config.num_train_steps == 0 or (config.num_train_steps < 0 and config.num_epochs <= 0):
        raise ValueError("nothing to train: set num_train_steps > 0 or num_epochs > 0")
    if diagnostics_every(config) < 0:
        raise ValueError(
            f"diagnostics_every_steps={config.diagnostics_every_steps} must be >= 0 (0 = off)"
        )


# ------------------------------------------------------------------------------------------------
# The pure steps (pmap'ed over AXIS_NAME; shard_map-ready)
# ------------------------------------------------------------------------------------------------


def train_step(
    state: TrainState,
    images: jax.Array,
    labels: jax.Array,
    *,
    apply_fn: Callable,
    tx: optax.GradientTransformation,
    seed: int,
    mean,
    std,
    dtype=jnp.float32,
    augment: bool = True,
    axis_name: str = AXIS_NAME,
) -> tuple[TrainState, dict]:
    """One optimizer step on this device's part of the global batch.

    Args:
      state: the (replicated) train state.
      images: ``uint8[per_device, H, W, C]``, rows ``d * per_device ...`` of the global batch.
      labels: ``int32[per_device]``.
      apply_fn, tx: the model's apply and the optimizer.
      seed: the run's seed; the augmentation key is ``fold_in(key(seed), step)``.
      mean, std, dtype: normalization and compute dtype.
      augment: pad-4 random crop + flip.
      axis_name: the mapped axis holding the devices.

    Returns:
      The new state (identical on every device) and the global batch's mean ``loss`` and
      ``accuracy``.
    """
    x = ip.train_inputs(state.step, images, seed=seed, mean=mean, std=std, dtype=dtype,
                        augment_images=augment, axis_name=axis_name)

    def loss_fn(params):
        logits, new_vars = apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            x,
            train=True,
            mutable=["batch_stats"],
        )
        logits = logits.astype(jnp.float32)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, (logits, new_vars["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params
    )
    grads = lax.pmean(grads, axis_name)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    accuracy = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
    metrics = lax.pmean({"loss": loss, "accuracy": accuracy}, axis_name)
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
    )
    return new_state, metrics


def eval_step(
    state: TrainState,
    images: jax.Array,
    labels: jax.Array,
    mask: jax.Array,
    *,
    apply_fn: Callable,
    mean,
    std,
    dtype=jnp.float32,
    axis_name: str = AXIS_NAME,
) -> dict:
    """Sums of loss, correct predictions and real examples (``mask``) over the global batch."""
    x = ip.normalize(images, mean, std, dtype)
    logits = apply_fn(
        {"params": state.params, "batch_stats": state.batch_stats}, x, train=False
    ).astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    sums = {"loss": jnp.sum(loss * mask), "correct": jnp.sum(correct * mask), "count": mask.sum()}
    return lax.psum(sums, axis_name)


def initial_state(
    config: ml_collections.ConfigDict, model, tx, image_shape
) -> TrainState:
    """The step-0 state on the host, from `config.seed` (only params and batch_stats are kept).

    The init key is an ``rbg`` key: XLA's RngBitGenerator compiles the initializers of a
    ResNet-20 in ~1.5 s on CPU where threefry takes ~10 s.
    """
    init_key = jax.random.key(config.seed, impl="rbg")

    @jax.jit
    def init(key):
        variables = model.init({"params": key}, jnp.zeros((1, *image_shape), jnp.float32),
                               train=False)
        params = variables["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=tx.init(params),
        )

    return jax.device_get(init(init_key))


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------


def _say(*args) -> None:
    """A console line that does not break the tqdm bar."""
    from tqdm import tqdm

    tqdm.write(" ".join(str(a) for a in args), file=sys.stdout)
    sys.stdout.flush()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Trains and evaluates as configured, writing metrics and checkpoints to `workdir`.

    Resumes from the latest checkpoint in ``workdir/checkpoints`` if there is one.

    Args:
      config: a config as built by ``configs/default.py``.
      workdir: output directory (created if needed).

    Returns:
      The final state, on the host (unreplicated NumPy arrays).

    Raises:
      ValueError: a bad config value (unknown name, indivisible batch size, ...).
      input_pipeline.DatasetNotFoundError: the dataset is absent and cannot be downloaded.
    """
    with checkpointing.Preemption() as preemption:
        return _train_and_evaluate(config, workdir, preemption)


def _train_and_evaluate(config, workdir, preemption: checkpointing.Preemption) -> TrainState:
    from tqdm import tqdm

    t_start = time.time()
    config = ml_collections.ConfigDict(config.to_dict())  # a private, unlocked copy
    devices = local_devices(config)
    n_local = len(devices)
    n_procs, proc = jax.process_count(), jax.process_index()
    n_global = n_local * n_procs
    validate_config(config, n_global)
    host0 = proc == 0
    workdir = os.path.abspath(os.path.expanduser(workdir))
    os.makedirs(workdir, exist_ok=True)

    # Data: whole splits in host memory as uint8.
    spec = ip.DATASETS[config.dataset]

    def load(field):
        try:
            return ip.load_split(config.dataset, config[field], config.data_dir)
        except ValueError as e:
            raise ValueError(f"--config.{field}={config[field]}: {e}") from None

    train_images, train_labels = load("train_split")
    eval_images, eval_labels = load("eval_split")
    n_train = train_images.shape[0]
    batch_size = config.batch_size
    steps_per_epoch = n_train // batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"batch_size={batch_size} exceeds the {n_train} examples of {config.train_split!r}"
        )
    total_steps = (
        config.num_train_steps if config.num_train_steps > 0
        else config.num_epochs * steps_per_epoch
    )
    eval_every = config.eval_every_steps if config.eval_every_steps > 0 else steps_per_epoch
    ckpt_every = (
        config.checkpoint_every_steps if config.checkpoint_every_steps > 0 else steps_per_epoch
    )
    eval_bs = config.eval_batch_size if config.eval_batch_size > 0 else batch_size
    eval_images, eval_labels, eval_mask = ip.pad_eval_split(eval_images, eval_labels, eval_bs)

    # Model, optimizer, state.
    dtype = DTYPES[config.dtype]
    model = create_model(config, spec.num_classes)
    tx, schedule = create_optimizer(config, total_steps)
    state = initial_state(config, model, tx, train_images.shape[1:])
    train_sums = np.zeros(3, np.float64)  # loss, accuracy, steps since the last evaluation

    if host0:
        _say(
            f"{config.model} on {config.dataset}: {n_train} train / {int(eval_mask.sum())} eval "
            f"examples; {n_global} device(s) x {batch_size // n_global} = batch {batch_size}; "
            f"{total_steps} steps ({total_steps / steps_per_epoch:.3g} epochs); "
            f"{config.optimizer} lr {config.learning_rate:g} ({config.schedule}) on "
            f"grad_transform={config.grad_transform}; workdir {workdir}"
        )
    mngr = checkpointing.checkpoint_manager(workdir, config.keep_checkpoints)
    latest = mngr.latest_step()
    start_step = 0
    if latest is not None:
        state, train_sums = checkpointing.restore(mngr, latest, state)
        start_step = int(state.step)
        _say(f"Resumed from step {start_step}")

    metrics_path = os.path.join(workdir, metrics_io.METRICS_FILE)
    writer = None
    if host0:
        metrics_io.truncate_metrics(metrics_path, start_step)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json(indent=2, sort_keys=True) + "\n")
        from tensorboardX import SummaryWriter

        writer = SummaryWriter(workdir)

    # pmap'ed steps.
    common = dict(apply_fn=model.apply, mean=spec.mean, std=spec.std, dtype=dtype)
    p_train_step = jax.pmap(
        functools.partial(
            train_step, tx=tx, seed=config.seed, augment=config.augment, **common
        ),
        axis_name=AXIS_NAME,
        devices=devices,
        donate_argnums=(0,),
    )
    p_eval_step = jax.pmap(
        functools.partial(eval_step, **common), axis_name=AXIS_NAME, devices=devices
    )
    diag_every = diagnostics_every(config)
    if diag_every:  # compiled only when diagnostics are on
        p_diagnostic_step = jax.pmap(
            functools.partial(
                diagnostics.diagnostic_step, model=model, seed=config.seed, augment=config.augment,
                mean=spec.mean, std=spec.std, dtype=dtype,
            ),
            axis_name=AXIS_NAME,
            devices=devices,
        )
        layer_order, block_order = diagnostics.forward_order(
            model, {"params": state.params, "batch_stats": state.batch_stats},
            train_images.shape[1:],
        )

    mesh = jax.sharding.Mesh(np.asarray(devices), (AXIS_NAME,))
    sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS_NAME))

    def to_devices(x):  # [local batch, ...] -> [n_local, per_device, ...] on the devices
        return jax.device_put(ip.shard_batch(x, n_local), sharded)

    def replicate(tree):
        return jax.tree.map(
            lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (n_local, *np.shape(x))),
                                     sharded),
            tree,
        )

    def unreplicate(tree):
        return jax.device_get(jax.tree.map(lambda x: x[0], tree))

    def evaluate(r_state) -> dict:
        sums = np.zeros(3, np.float64)
        for i in range(0, eval_images.shape[0], eval_bs):
            batch = [ip.host_slice(a[i:i + eval_bs], proc, n_procs)
                     for a in (eval_images, eval_labels, eval_mask)]
            out = jax.device_get(p_eval_step(r_state, *map(to_devices, batch)))
            sums += [float(out["loss"][0]), float(out["correct"][0]), float(out["count"][0])]
        return {"eval_loss": sums[0] / sums[2], "eval_accuracy": sums[1] / sums[2]}

    def save(step: int, r_state) -> None:
        # Without the diagnostics' statistics: fewer leaves to fetch, and they are not saved.
        opt_state = checkpointing.saved_opt_state(r_state.opt_state)
        checkpointing.save(mngr, step, unreplicate(r_state.replace(opt_state=opt_state)),
                           train_sums)

    r_state = replicate(state)
    pending = []  # per-step device metrics not yet added to train_sums
    log_sums = np.zeros(3, np.float64)
    # Throughput: training time only (no compilation, evaluation or checkpointing).
    train_time, images_seen, t_mark = 0.0, 0, time.time()

    def flush_pending():
        nonlocal pending
        for m in jax.device_get(pending):
            row = np.array([m["loss"][0], m["accuracy"][0], 1.0], np.float64)
            train_sums[:] += row
            log_sums[:] += row
        pending = []

    pbar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                disable=None if host0 else True, file=sys.stderr)
    step = start_step
    saved_step = start_step if latest is not None else None
    while step < total_steps and not preemption.requested:
        idx = ip.train_batch_indices(config.seed, step, n_train, batch_size)
        idx = ip.host_slice(idx, proc, n_procs)
        d_images, d_labels = to_devices(train_images[idx]), to_devices(train_labels[idx])
        split = None
        if diag_every and (step + 1 == 1 or (step + 1) % diag_every == 0):
            # The block split of this step's gradient, before the step donates the state.
            jax.block_until_ready(r_state)  # the steps in flight are training time
            t0 = time.time()
            split = jax.block_until_ready(p_diagnostic_step(r_state, d_images, d_labels))
            diag_seconds = time.time() - t0
            t_mark += diag_seconds  # diagnostics are not training time
        r_state, metrics = p_train_step(r_state, d_images, d_labels)
        pending.append(metrics)
        if step == start_step:  # the first step compiles: start the clock after it
            jax.block_until_ready(metrics)
            t_mark = time.time()
        else:
            images_seen += batch_size
        step += 1
        pbar.update(1)

        if split is not None:
            jax.block_until_ready(metrics)  # the step itself is training time
            t0 = time.time()
            stats = diagnostics.gradient_stats_of(r_state.opt_state)
            row = diagnostics.diagnostics_row(
                step, step / steps_per_epoch, layer_order, block_order,
                *[jax.tree.map(lambda x: x[0], t)  # one device_get, not a gather per leaf
                  for t in jax.device_get((stats, split))],
            )
            diag_seconds += time.time() - t0
            row["seconds"] = diag_seconds  # the first one includes compiling
            if host0:
                metrics_io.append_metrics(metrics_path, row)
                diagnostics.write_scalars(writer, step, row)
                writer.flush()
            t_mark += time.time() - t0

        if step % config.log_every_steps == 0 or step == total_steps:
            flush_pending()
            if writer is not None and log_sums[2]:
                writer.add_scalar("train/loss", log_sums[0] / log_sums[2], step)
                writer.add_scalar("train/accuracy", log_sums[1] / log_sums[2], step)
                writer.add_scalar("train/learning_rate", float(schedule(step - 1)), step)
                pbar.set_postfix(loss=f"{log_sums[0] / log_sums[2]:.4f}")
            log_sums[:] = 0

        if step % eval_every == 0 or step == total_steps:
            flush_pending()
            now = time.time()
            train_time += now - t_mark
            row = {
                "step": step,
                "epoch": step / steps_per_epoch,
                "train_loss": train_sums[0] / train_sums[2],
                "train_accuracy": train_sums[1] / train_sums[2],
                **evaluate(r_state),
                "learning_rate": float(schedule(step - 1)),
                "images_per_second": images_seen / train_time if images_seen else None,
                "wall_time": time.time(),
            }
            train_sums[:] = 0
            train_time, images_seen = 0.0, 0
            if host0:
                metrics_io.append_metrics(metrics_path, row)
                writer.add_scalar("eval/loss", row["eval_loss"], step)
                writer.add_scalar("eval/accuracy", row["eval_accuracy"], step)
                if row["images_per_second"] is not None:
                    writer.add_scalar("perf/images_per_second", row["images_per_second"], step)
                writer.flush()
                ips = row["images_per_second"]
                ips = "-" if ips is None else f"{ips:.0f}"
                _say(
                    f"step {step}/{total_steps} epoch {row['epoch']:.2f} | train loss "
                    f"{row['train_loss']:.4f} acc {row['train_accuracy']:.4f} | eval loss "
                    f"{row['eval_loss']:.4f} acc {row['eval_accuracy']:.4f} | lr "
                    f"{row['learning_rate']:.3g} | {ips} img/s"
                )
            t_mark = time.time()

        if step % ckpt_every == 0 or step == total_steps or preemption.requested:
            flush_pending()
            t0 = time.time()
            save(step, r_state)
            saved_step = step
            t_mark += time.time() - t0  # checkpoint time is not training time
    pbar.close()
    mngr.close()
    if writer is not None:
        writer.close()
    final = unreplicate(r_state)
    if host0:
        if preemption.requested and step < total_steps:
            what = "nothing to save" if saved_step is None else f"checkpoint at step {saved_step}"
            _say(f"SIGTERM: stopped at step {step} ({what}); re-run the command to resume")
        else:
            _say(f"Done at step {step} in {time.time() - t_start:.0f} s; outputs in {workdir}")
    return final


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------


def _define_flags():
    from absl import flags
    from ml_collections import config_flags

    flags.DEFINE_string("workdir", None, "Directory for metrics, TensorBoard and checkpoints.")
    flags.DEFINE_bool(
        "distributed", False,
        "Call jax.distributed.initialize() first (multi-host, e.g. TPU pods: run the same "
        "command on every host)."
    )
    config_flags.DEFINE_config_file(
        "config",
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "default.py"),
        "Training config file (ml_collections).",
        lock_config=True,
    )
    flags.mark_flags_as_required(["workdir"])
    return flags.FLAGS


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).strip("\"'").split())


def _config_error(e: BaseException) -> SystemExit:
    if isinstance(e, (AttributeError, KeyError)):
        return SystemExit(f"error: the config has no field {_one_line(e)!r} (bad --config.FIELD)")
    return SystemExit(f"error: bad --config: {_one_line(e)}")


def _parse_flags(argv):
    """absl's flag parsing, with a bad flag or `--config` as one line and exit status 1."""
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        raise SystemExit(f"error: {_one_line(e)} (see --helpfull)") from None
    except (AttributeError, KeyError, TypeError, ValueError, OSError) as e:  # config_flags
        raise _config_error(e) from None


def main(argv) -> None:
    from absl import flags, logging

    if len(argv) > 1:
        raise SystemExit(f"error: unexpected arguments: {' '.join(argv[1:])} (see --helpfull)")
    FLAGS = flags.FLAGS
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax and tfds are chatty at INFO
    try:
        config = FLAGS.config  # config_flags reports a file that failed to load only here
        config.get("model")
    except OSError as e:
        raise _config_error(e) from None
    if FLAGS.distributed:
        jax.distributed.initialize()
    try:
        train_and_evaluate(config, FLAGS.workdir)
    except (ValueError, FileNotFoundError) as e:  # expected input errors: one line, exit 1
        logging.debug("error details", exc_info=True)
        raise SystemExit(f"error: {_one_line(e)}") from None


if __name__ == "__main__":
    from absl import app

    try:
        _define_flags()  # config_flags already applies --config.FIELD overrides here
    except (AttributeError, KeyError, TypeError, ValueError, OSError) as e:
        raise _config_error(e) from None
    app.run(main, flags_parser=_parse_flags)
