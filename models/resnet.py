"""ResNets in Flax linen: the CIFAR family of He et al. (2016) and the ImageNet ResNet-18..152.

One `ResNet` module covers both families; the depths are `functools.partial` aliases, as in
flax's `examples/imagenet/models.py`.  Convolutions have no bias (BatchNorm follows), use He
(kaiming) normal init with fan_out as torchvision does, and 3x3 convolutions pad by 1 on each
side so that stride-2 convolutions sample the same pixels as the option-A shortcut.  The global
average pool and the dense head run in float32 and the logits are float32 whatever `dtype` is.
"""

from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from models.overlap import split_input

ModuleDef = Any

SHORTCUTS = ("A", "B")
STEMS = ("cifar", "imagenet")

_HE_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _check_choice(field: str, value: Any, valid: Sequence[Any]) -> None:
  """Raises a one-line ValueError if `value` is not one of `valid`."""
  if value not in valid:
    choices = ", ".join(map(repr, valid))
    raise ValueError(f"{field}={value!r} is invalid; valid values: {choices}")


def _shortcut(x, features: int, strides: int, option: str, conv: ModuleDef, norm: ModuleDef):
  """Matches a block input to its branch output: identity when shapes agree, else option A/B.

  Args:
    x: block input, NHWC.
    features: channels of the branch output.
    strides: spatial stride of the block.
    option: "A" (stride subsampling plus zero-padded channels, parameter-free) or
      "B" (1x1 strided convolution plus BatchNorm).
    conv: convolution constructor.
    norm: BatchNorm constructor.
  """
  if strides == 1 and x.shape[-1] == features:
    return x
  if option == "B":
    return norm(name="proj_bn")(conv(features, (1, 1), strides, name="proj_conv")(x))
  x = x[:, ::strides, ::strides, :]
  return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, features - x.shape[-1])))


def _last_scale_init(zero: bool):
  """Scale init of a block's last BatchNorm: zeros makes the block start as the identity."""
  return nn.initializers.zeros if zero else nn.initializers.ones


class ResidualBlock(nn.Module):
  """Fields shared by the residual blocks; subclasses define the branch.

  Args:
    filters: BasicBlock: output channels; BottleneckBlock: channels of the 3x3 convolution
      (the block outputs 4 * filters).
    conv: convolution constructor (no bias, He init).
    norm: BatchNorm constructor with the train/eval mode already bound.
    strides: stride of the (first) strided convolution and of the shortcut.
    shortcut: "A" or "B", used when the block changes shape.
    zero_init_residual: initialise the last BatchNorm scale to zero.
  """

  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  shortcut: str = "B"
  zero_init_residual: bool = False


class BasicBlock(ResidualBlock):
  """Two 3x3 convolutions with a residual connection (ResNet-18/34 and the CIFAR family)."""

  @nn.compact
  def __call__(self, x):
    skip_in, branch_in = split_input(self, x)
    y = self.conv(self.filters, (3, 3), self.strides, padding=1, name="conv1")(branch_in)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(self.filters, (3, 3), padding=1, name="conv2")(y)
    y = self.norm(scale_init=_last_scale_init(self.zero_init_residual), name="bn2")(y)
    skip = _shortcut(skip_in, y.shape[-1], self.strides, self.shortcut, self.conv, self.norm)
    return nn.relu(y + skip)


class BottleneckBlock(ResidualBlock):
  """1x1 reduce, 3x3 (strided), 1x1 expand by 4, with a residual connection (ResNet-50+)."""

  @nn.compact
  def __call__(self, x):
    skip_in, branch_in = split_input(self, x)
    y = nn.relu(self.norm(name="bn1")(self.conv(self.filters, (1, 1), name="conv1")(branch_in)))
    y = self.conv(self.filters, (3, 3), self.strides, padding=1, name="conv2")(y)
    y = nn.relu(self.norm(name="bn2")(y))
    y = self.conv(4 * self.filters, (1, 1), name="conv3")(y)
    y = self.norm(scale_init=_last_scale_init(self.zero_init_residual), name="bn3")(y)
    skip = _shortcut(skip_in, y.shape[-1], self.strides, self.shortcut, self.conv, self.norm)
    return nn.relu(y + skip)


class ResNet(nn.Module):
  """Stem, stages of residual blocks (stride 2 at the start of every stage but the first),
  global average pooling and a float32 dense head.

  Call as `model.apply(variables, images, train=bool)` with float NHWC images, passing
  `mutable=["batch_stats"]` when `train=True`.

  Args:
    stage_sizes: number of blocks per stage.
    block_cls: `BasicBlock` or `BottleneckBlock`.
    num_classes: size of the logits.
    widths: filters per stage (the stem uses `widths[0]`).
    stem: "imagenet" (7x7/2 conv + 3x3/2 max-pool) or "cifar" (3x3/1 conv, no pool).
    shortcut: "A" (parameter-free: subsample + zero channels) or "B" (1x1 projection).
    zero_init_residual: initialise the last BatchNorm scale of every block to zero.
    bn_momentum: BatchNorm running-average momentum (flax convention, 0.9 = torch's 0.1).
    axis_name: pmap/shard_map axis for synchronized BatchNorm statistics; None outside pmap.
    dtype: compute dtype of the convolutions and BatchNorm (e.g. jnp.bfloat16).
    param_dtype: dtype of the parameters (flax keeps BatchNorm statistics in float32).
  """

  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  num_classes: int
  widths: Sequence[int] = (64, 128, 256, 512)
  stem: str = "imagenet"
  shortcut: str = "B"
  zero_init_residual: bool = False
  bn_momentum: float = 0.9
  axis_name: str | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    _check_choice("shortcut", self.shortcut, SHORTCUTS)
    _check_choice("stem", self.stem, STEMS)
    if len(self.widths) != len(self.stage_sizes):
      raise ValueError(
        f"widths {tuple(self.widths)} and stage_sizes "
        f"{tuple(self.stage_sizes)} must have the same length"
      )
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool):
    conv = partial(
      nn.Conv, use_bias=False, kernel_init=_HE_INIT, dtype=self.dtype, param_dtype=self.param_dtype
    )
    norm = partial(
      nn.BatchNorm,
      use_running_average=not train,
      momentum=self.bn_momentum,
      epsilon=1e-5,
      axis_name=self.axis_name,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
    )
    if self.stem == "imagenet":
      x = conv(self.widths[0], (7, 7), 2, padding=3, name="stem_conv")(x)
    else:
      x = conv(self.widths[0], (3, 3), padding=1, name="stem_conv")(x)
    x = nn.relu(norm(name="stem_bn")(x))
    if self.stem == "imagenet":
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i, (num_blocks, filters) in enumerate(zip(self.stage_sizes, self.widths, strict=True)):
      for j in range(num_blocks):
        x = self.block_cls(
          filters,
          conv=conv,
          norm=norm,
          strides=2 if i > 0 and j == 0 else 1,
          shortcut=self.shortcut,
          zero_init_residual=self.zero_init_residual,
          name=f"stage{i + 1}_block{j}",
        )(x)
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=self.param_dtype, name="head")(
      x
    )


_CifarResNet = partial(
  ResNet, block_cls=BasicBlock, widths=(16, 32, 64), stem="cifar", shortcut="A"
)
ResNet20 = partial(_CifarResNet, stage_sizes=(3, 3, 3))
ResNet32 = partial(_CifarResNet, stage_sizes=(5, 5, 5))
ResNet44 = partial(_CifarResNet, stage_sizes=(7, 7, 7))
ResNet56 = partial(_CifarResNet, stage_sizes=(9, 9, 9))
ResNet110 = partial(_CifarResNet, stage_sizes=(18, 18, 18))
ResNet1202 = partial(_CifarResNet, stage_sizes=(200, 200, 200))

ResNet18 = partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet34 = partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock)
ResNet50 = partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BottleneckBlock)
ResNet101 = partial(ResNet, stage_sizes=(3, 4, 23, 3), block_cls=BottleneckBlock)
ResNet152 = partial(ResNet, stage_sizes=(3, 8, 36, 3), block_cls=BottleneckBlock)

_REGISTRY = {
  "resnet20": ResNet20,
  "resnet32": ResNet32,
  "resnet44": ResNet44,
  "resnet56": ResNet56,
  "resnet110": ResNet110,
  "resnet1202": ResNet1202,
  "resnet18": ResNet18,
  "resnet34": ResNet34,
  "resnet50": ResNet50,
  "resnet101": ResNet101,
  "resnet152": ResNet152,
}
MODEL_NAMES = tuple(_REGISTRY)


def create_model(name: str, num_classes: int, **kwargs) -> ResNet:
  """Builds a registered model.

  Args:
    name: one of `MODEL_NAMES`.
    num_classes: size of the logits.
    **kwargs: `ResNet` fields to override (axis_name, bn_momentum, dtype, param_dtype,
      zero_init_residual, shortcut, stem, ...).

  Raises:
    ValueError: unknown `name`, or an invalid field value such as shortcut="C".
  """
  if name not in _REGISTRY:
    raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")
  return _REGISTRY[name](num_classes=num_classes, **kwargs)
