"""Tuned-learning-rate study preset `tuned_cpu` (experiments/tuned_lr_protocol.md): each method at
its own best learning rate, chosen on a validation slice of the training split.

The paper study's `cpu` preset (4 epochs of train[:4096], batch 128, cosine schedule, test
accuracy on test[:2000] after each epoch) plus a validation slice, train[-2000:], that no run
trains on, evaluated after each epoch. `python -m experiments.tuned_lr` runs it.
"""

from configs import study_cpu


def get_config():
  config = study_cpu.get_config()
  config.update(
    {
      "name": "tuned_cpu",
      "results_name": "tuned_lr",  # experiments/results/{results_name}.{jsonl,md,png}
      "protocol": "tuned_lr_protocol.md",  # in experiments/, fixed before the first run
      # Transfer-model runs recorded by the depth study (paper_study.jsonl) are reused once
      # this study reproduces that study's runs at its rate (the protocol, "ResNet-110").
      "reuse_paper_runs": True,
      "validation_split": "train[-2000:]",
      "note": "a few epochs on a train subset, one budget: early training only",
    }
  )
  config.methods = ("adam", "znorm")  # Adam; ZNorm (kernels only) + Adam
  config.learning_rates = (5e-4, 1e-3, 2e-3, 4e-3, 8e-3)  # the grid, the same for both
  config.max_extensions = 2  # x2 (or /2) steps added per side while the best rate is an edge
  config.final_seeds = (0, 1, 2, 3, 4)  # at the chosen rates (config.seeds: the grid's)
  # Models trained at the rates chosen at the last model of `models` (no grid of their own).
  config.transfer_models = ("resnet110",)
  return config
