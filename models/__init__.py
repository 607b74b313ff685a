"""Flax (linen) ResNets trained by `train.py`, and the exact skip/branch split of the gradient at
every residual block's input (`overlap`)."""

from models.overlap import (
  block_gradient_split,
  block_input_grads,
  block_names,
  param_and_block_input_grads,
  softmax_cross_entropy,
  split_input,
)
from models.resnet import (
  MODEL_NAMES,
  BasicBlock,
  BottleneckBlock,
  ResNet,
  ResNet18,
  ResNet20,
  ResNet32,
  ResNet34,
  ResNet44,
  ResNet50,
  ResNet56,
  ResNet101,
  ResNet110,
  ResNet152,
  ResNet1202,
  create_model,
)

__all__ = [
  "MODEL_NAMES",
  "BasicBlock",
  "BottleneckBlock",
  "ResNet",
  "ResNet18",
  "ResNet20",
  "ResNet32",
  "ResNet34",
  "ResNet44",
  "ResNet50",
  "ResNet56",
  "ResNet101",
  "ResNet110",
  "ResNet152",
  "ResNet1202",
  "block_gradient_split",
  "block_input_grads",
  "block_names",
  "create_model",
  "param_and_block_input_grads",
  "softmax_cross_entropy",
  "split_input",
]
