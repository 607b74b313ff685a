"""Tuned-learning-rate study preset `tuned_long_test`: the shape of `tuned_long_cpu` (two grid
seeds, three final seeds, a transfer depth) in seconds (smoke test)."""

from configs import study_test, study_tuned_long_cpu


def get_config():
  config = study_tuned_long_cpu.get_config()
  smoke = study_test.get_config()
  config.update(
    {
      "name": "tuned_long_test",
      "results_name": "tuned_long_test",
      "epochs": smoke.epochs,
      "train_split": "train[:32]",
      "validation_split": "train[32:48]",
      "eval_split": smoke.eval_split,
      "batch_size": smoke.batch_size,
      "note": "smoke test only",
    }
  )
  config.learning_rates = (1e-3, 4e-3)
  config.max_extensions = 0
  config.overrides = {**smoke.overrides, "steps_per_dispatch": 1}
  return config
