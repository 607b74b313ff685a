"""Tuned-learning-rate study preset `tuned_long_cpu` (experiments/tuned_long_protocol.md): the
question of `tuned_cpu` (is ZNorm better than a tuned Adam?) at a ~27x larger budget.

10 epochs of the whole training split but a 5,000-image validation slice (train[:45000], 351
steps per epoch, 3,510 steps), batch 128, cosine schedule; validation accuracy on
train[45000:] and test accuracy on the whole test split after each epoch. Grid at ResNet-20
only (1e-3, 2e-3, 4e-3, seeds 0 and 1); final seeds 0-2; ResNet-56 at the ResNet-20 rates.

    python -m experiments.tuned_lr --preset tuned_long_cpu --data_dir ~/tensorflow_datasets
"""

from configs import study_tuned_cpu


def get_config():
  config = study_tuned_cpu.get_config()
  config.update(
    {
      "name": "tuned_long_cpu",
      "results_name": "tuned_long",
      "protocol": "tuned_long_protocol.md",
      "models": ("resnet20",),
      "epochs": 10,
      "train_split": "train[:45000]",
      "validation_split": "train[45000:]",
      "eval_split": "test",
      "seeds": (0, 1),
      "reuse_paper_runs": False,
      "note": "10 epochs of the whole training split, one schedule: longer than tuned_cpu's 4 "
      "epochs of 4,096 images, far shorter than the paper's 200",
    }
  )
  config.learning_rates = (1e-3, 2e-3, 4e-3)
  config.final_seeds = (0, 1, 2)
  config.transfer_models = ("resnet56",)
  # The default 8 steps per dispatch (12% faster than 1 on 2 CPU cores for ResNet-20,
  # benchmarks/README.md section 3); each epoch's last 7 of its 351 steps run singly.
  config.overrides = {}
  return config
