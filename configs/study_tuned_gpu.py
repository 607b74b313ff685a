"""Tuned-learning-rate study preset `tuned_gpu`: the protocol of `tuned_cpu` (grid, choice on a
validation slice, final seeds, ResNet-110 at the ResNet-56 rates) at an accelerator's budget:
the full training split but for a 5,000-image validation slice, 30 epochs, the full test set.

    python -m experiments.tuned_lr --preset tuned_gpu --data_dir ~/tensorflow_datasets

Not run yet; its cost has not been measured (`benchmarks.accelerator` runs it for as long as
its time allows, and a later run of the same command goes on where it stopped).
"""

from configs import study_tuned_cpu


def get_config():
  config = study_tuned_cpu.get_config()
  config.update(
    {
      "name": "tuned_gpu",
      "results_name": "tuned_lr_gpu",
      "epochs": 30,
      "train_split": "train[:45000]",
      "validation_split": "train[45000:]",
      "eval_split": "test",
      "note": "30 epochs: longer than the cpu preset's 4, shorter than the paper's 200",
    }
  )
  config.overrides = {}  # the default steps per dispatch (a lax.scan on accelerators)
  return config
