"""Tuned-learning-rate study preset `tuned_long_gpu`: the protocol of `tuned_long_cpu` at the
paper's scale, 200 epochs (70,200 steps), the same splits, grid, seeds and transfer depth.

    python -m experiments.tuned_lr --preset tuned_long_gpu --data_dir ~/tensorflow_datasets

Prepared for an accelerator, smoke-tested through `tuned_long_test` (the same machinery with a
tiny budget); its cost has not been measured.
"""

from configs import study_tuned_long_cpu


def get_config():
  config = study_tuned_long_cpu.get_config()
  config.update(
    {
      "name": "tuned_long_gpu",
      "results_name": "tuned_long_gpu",
      "epochs": 200,
      "note": "200 epochs of the whole training split: the paper's budget",
    }
  )
  return config
