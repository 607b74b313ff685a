"""ImageNet, streamed: configs/imagenet.py with the paper's optimizer, Adam on ZNorm'd kernel
gradients (peak learning rate 1e-3, as on CIFAR; not tuned for ImageNet), no weight decay.

    python train.py --workdir=runs/imagenet_znorm --config=configs/imagenet_znorm.py \\
      --config.data_dir=~/tensorflow_datasets
"""

from configs import imagenet


def get_config():
  config = imagenet.get_config()
  config.update(
    {
      "optimizer": "adam",
      "learning_rate": 1e-3,
      "weight_decay": 0.0,
      "grad_transform": "znorm",
    }
  )
  return config
