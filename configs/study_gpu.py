"""Paper-study preset `gpu`: the paper's setting as far as it is known.

Adam lr 1e-3 (betas 0.9/0.999), batch 128, 200 epochs, cosine decay, full CIFAR-10, ResNet-56;
the paper's exact hyperparameters are not published. `python -m experiments.paper_study --budget
gpu` runs it.
"""

from configs import study_cpu


def get_config():
  config = study_cpu.get_config()
  config.update(
    {
      "name": "gpu",
      "models": ("resnet56",),
      "epochs": 200,
      "train_split": "train",
      "eval_split": "test",
      "note": "our choice in the paper's spirit (its exact hyperparameters are not available)",
    }
  )
  return config
