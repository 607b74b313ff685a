"""ImageNet, streamed by Grain: ResNet-50 with flax's examples/imagenet recipe.

SGD with Nesterov momentum 0.9, peak learning rate 0.1 per 256 images (0.4 at batch 1024), a
linear warmup over the first 5 of 100 epochs then cosine decay, weight decay 1e-4 on the
kernels, batch 1024 split over every device of every host, bfloat16 compute (float32 on a CPU:
``--config.dtype=float32``); random-resized crop + flip at 224 for training, resize + centre
crop for evaluation, decoded on the host (`trainer/streaming.py`). Any image-classification
tfds dataset with ``image`` and ``label`` works (``--config.dataset=imagenette``,
``imagenet2012_subset``, ...): its classes and pixel statistics are read from it.

    python train.py --workdir=runs/imagenet --config=configs/imagenet.py \\
      --config.data_dir=~/tensorflow_datasets

Not run on ImageNet yet (no accelerator run of this project so far); the path is tested with
generated data (`tests/test_streaming.py`).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.update(
    {
      "dataset": "imagenet2012",
      "input": "stream",
      "image_size": 224,
      "train_split": "train",
      "eval_split": "validation",
      "model": "resnet50",
      "dtype": "bfloat16",
      "batch_size": 1024,
      "num_epochs": 100,
      "optimizer": "sgd",
      "momentum": 0.9,
      "nesterov": True,
      "learning_rate": 0.1 * 1024 / 256,
      "weight_decay": 1e-4,
      "schedule": "cosine",
      "warmup_fraction": 0.05,  # 5 of 100 epochs
      "grad_transform": "none",
      "log_every_steps": 100,
    }
  )
  return config
