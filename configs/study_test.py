"""Paper-study preset `test`: a smoke test of the whole pipeline in seconds."""

from configs import study_cpu


def get_config():
  config = study_cpu.get_config()
  config.update(
    {
      "name": "test",
      "models": ("resnet20",),
      "epochs": 2,
      "train_split": "train[:32]",
      "eval_split": "test[:32]",
      "batch_size": 16,
      "seeds": (0,),
      "note": "smoke test only",
    }
  )
  config.overrides = {"model_widths": (4, 8, 16), "log_every_steps": 1}
  return config
