"""Default config: ResNet-20 on CIFAR-10, Adam (lr 1e-3) on ZNorm'd gradients, batch 128.

The paper's setting as far as it is known (Adam, lr 1e-3, batch 128, BatchNorm momentum 0.9);
the epoch count, the cosine schedule and the 5% warmup are this project's choices.

    python train.py --workdir=/tmp/run --config=configs/default.py --config.model=resnet56
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # Model (`models.MODEL_NAMES`).
  config.model = "resnet20"
  config.model_widths = ()  # filters per stage, e.g. (8, 16, 32); () = the model's own
  config.bn_momentum = 0.9  # flax convention (torch momentum 0.1)
  config.dtype = "float32"  # compute dtype: float32 | bfloat16 | float16; params stay float32

  # Data (tfds).
  config.dataset = "cifar10"  # cifar10 | cifar100
  config.data_dir = config_dict.placeholder(str)  # tfds data dir; None = tfds default
  config.train_split = "train"  # tfds split strings; slices such as train[:5000] work
  config.eval_split = "test"
  # Held-out examples of the training data (e.g. "train[-2000:]", which must not overlap
  # train_split), evaluated beside eval_split: choose hyperparameters on it, never on the test
  # split. None = no validation evaluation.
  config.validation_split = config_dict.placeholder(str)
  # resident (None): whole splits on the device, the fastest for CIFAR-scale data; "stream": a
  # dataset too large for memory (ImageNet) read by Grain from the tfds copy, decoded and
  # augmented on the host (configs/imagenet.py; trainer/inputs.py).
  config.input = config_dict.placeholder(str)
  config.image_size = config_dict.placeholder(int)  # stream: images resized to this; None = own
  config.loader_workers = config_dict.placeholder(int)  # stream: decoding processes; None = auto
  # Resident: pad-4 random crop + horizontal flip, on device; stream: random-resized crop + flip
  # on the host (flax's ImageNet example).
  config.augment = True

  # Schedule of the run.
  config.batch_size = 128  # global, split over all devices of all hosts
  config.eval_batch_size = -1  # global; -1 = batch_size
  config.num_epochs = 100
  config.num_train_steps = -1  # -1 = num_epochs * (train examples // batch_size)

  # Optimizer: base optimizer after the gradient transform.
  config.optimizer = "adam"  # adam | adamw | sgd
  config.learning_rate = 1e-3
  config.momentum = 0.9  # sgd only; 0 = plain SGD
  config.nesterov = False  # sgd only
  config.weight_decay = 0.0  # adamw: decoupled; adam/sgd: L2 on the gradient; kernels only
  config.schedule = "cosine"  # constant | cosine | step (each after a linear warmup)
  config.warmup_fraction = 0.05  # of the training steps, from 0 to learning_rate
  config.step_boundaries = (0.5, 0.75)  # schedule=step: fractions of the training steps
  config.step_decay = 0.1  # schedule=step: factor at each boundary

  # Gradient transform, applied to the pmean'ed gradients: any name of
  # `znorm_optax.GRADIENT_TRANSFORMS` (none | znorm | centralize | clip_by_global_norm |
  # clip_by_layer_norm), called as `zo.gradient_transform(grad_transform, **kwargs)` with the
  # fields of grad_transform_kwargs that are set (None = the library's default), e.g.
  # --config.grad_transform_kwargs.axis='(0, 1, 2)' (znorm per output channel).
  config.grad_transform = "znorm"
  config.grad_transform_kwargs = ml_collections.ConfigDict(
    {
      "eps": config_dict.placeholder(float),  # znorm (1e-8)
      "axis": config_dict.placeholder(tuple),  # znorm (None = all axes)
      "max_norm": config_dict.placeholder(float),  # clip_by_global/layer_norm (1.0)
    }
  )
  config.grad_transform_params = "kernels"  # kernels (ndim >= 2) | all

  # Bookkeeping.
  config.seed = 0
  config.num_devices = -1  # local devices used by pmap; -1 = all
  config.log_every_steps = 50  # TensorBoard train scalars
  config.eval_every_steps = -1  # -1 = once per epoch (and always at the end)
  config.checkpoint_every_steps = -1  # -1 = once per epoch (and always at the end)
  config.keep_checkpoints = 3
  # Train steps per compiled call: amortizes the Python dispatch (a lax.scan on accelerators,
  # unrolled on CPU). Evaluation, checkpoints and diagnostics still happen at their steps; a
  # dispatch that would cross one runs as single steps. 8: measured 205.6 images/s of train.py
  # against 183.6 with 1 (ResNet-20, batch 128, 2 CPU cores; benchmarks/README.md section 3).
  # Results equal K single steps up to rounding (docs/harness.md).
  config.steps_per_dispatch = 8
  # Gradient diagnostics: 0 = off (the optimizer, its state, the checkpoints and the train
  # step are the same either way).  N > 0: at step 1 and every N steps, a line
  # {"kind": "diagnostics", "step", "epoch", "layers", "blocks", "seconds"} in metrics.jsonl
  # and TensorBoard scalars: per parameter, L2 norm / mean / std of the pmean'ed gradient
  # (grad_*) and of the gradient transform's output (update_*), and per residual block the
  # skip/branch split of dL/d(block input) (skip_norm, branch_norm, total_norm, cosine).
  # Costs one extra forward and backward pass on each diagnostic step, nothing otherwise.
  config.diagnostics_every_steps = 0

  return config
