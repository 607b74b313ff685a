"""Tuned-learning-rate study preset `tuned_test`: the whole pipeline in seconds (smoke test)."""

from configs import study_test, study_tuned_cpu


def get_config():
  config = study_tuned_cpu.get_config()
  smoke = study_test.get_config()
  config.update(
    {
      "name": "tuned_test",
      "results_name": "tuned_lr_test",
      "models": ("resnet20",),
      "epochs": smoke.epochs,
      "train_split": smoke.train_split,
      "eval_split": smoke.eval_split,
      "validation_split": "train[-32:]",
      "batch_size": smoke.batch_size,
      "seeds": (0,),
      "learning_rates": (1e-3, 4e-3),
      "max_extensions": 0,
      "final_seeds": (0,),
      "transfer_models": (),
      "note": "smoke test only",
    }
  )
  config.overrides = dict(smoke.overrides)
  return config
