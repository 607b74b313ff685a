"""Paper-study preset `cpu`: both depths in minutes per run on 2 CPU cores.

ResNet-20 and -56 (the paper's point is that the skip/branch gradient overlap grows with depth),
4 epochs of 4096 training images (32 steps per epoch, 128 steps), evaluated on 2000 test images
after each epoch. `python -m experiments.paper_study --budget cpu` runs it.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
    {
      "name": "cpu",
      "models": ("resnet20", "resnet56"),
      "epochs": 4,
      "train_split": "train[:4096]",
      "eval_split": "test[:2000]",
      "validation_split": None,  # evaluated beside eval_split when set (the tuned-lr study)
      "batch_size": 128,
      "learning_rate": 1e-3,
      "schedule": "cosine",
      "seeds": (0, 1, 2),
      # Further fields of configs/paper_*.py: one step per dispatch, as the 24 runs recorded
      # before K steps per dispatch existed (K = 8 only changes rounding, but its 8x larger
      # program takes minutes to compile for ResNet-110 on CPU).
      "overrides": {"steps_per_dispatch": 1},
      "note": "a few epochs on a train subset: early training only, not the paper's final "
      "accuracies",
    }
  )
