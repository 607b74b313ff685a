"""A first try: the default run (ResNet-20, Adam + ZNorm, CIFAR-10) cut to about two minutes on
a laptop CPU, that still learns: 3 epochs of 5,120 training images, evaluated on 2,000 test
images after each epoch.

    python train.py --workdir=runs/quick --config=configs/quick.py
"""

from configs import default


def get_config():
  config = default.get_config()
  config.train_split = "train[:5120]"  # 40 steps per epoch at batch 128
  config.eval_split = "test[:2000]"
  config.num_epochs = 3
  return config
