"""znorm_optax: Z-score gradient normalization and its peers as Optax transforms.

Every public factory returns an :class:`optax.GradientTransformation` that composes
with ``optax.chain``, ``optax.masked``, ``optax.multi_transform`` and
``optax.inject_hyperparams`` and runs under ``jit``, inside ``pmap`` and on sharded
arrays.
"""

from znorm_optax import _optimizers, masks
from znorm_optax._centralization import centralize
from znorm_optax._clipping import clip, clip_by_global_norm, clip_by_layer_norm
from znorm_optax._diagnostics import GradientStatsState, gradient_stats
from znorm_optax._normalization import znorm
from znorm_optax._optimizers import gradient_transform, znorm_adam, znorm_sgd

__version__ = "0.1.0"

GRADIENT_TRANSFORMS: tuple[str, ...] = _optimizers.GRADIENT_TRANSFORMS
"""The names :func:`gradient_transform` accepts, which are the library's function names.

``('none', 'znorm', 'centralize', 'clip_by_global_norm', 'clip_by_layer_norm')``;
``'none'`` is :func:`optax.identity`. A config can validate its transform name against
this tuple and pass its keyword arguments straight to :func:`gradient_transform`.

Example:
  >>> import znorm_optax as zo
  >>> 'clip_by_layer_norm' in zo.GRADIENT_TRANSFORMS
  True
"""

__all__ = (
  "GRADIENT_TRANSFORMS",
  "GradientStatsState",
  "centralize",
  "clip",
  "clip_by_global_norm",
  "clip_by_layer_norm",
  "gradient_stats",
  "gradient_transform",
  "masks",
  "znorm",
  "znorm_adam",
  "znorm_sgd",
)
