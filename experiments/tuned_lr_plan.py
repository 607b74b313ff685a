"""The tuned-learning-rate study's plan: which runs, in which order, and the rate each method
gets, as pure functions of the recorded runs (`experiments.tuned_lr` runs them; the protocol is
`experiments/tuned_lr_protocol.md`).

A method's rates at a model (`grid`) are the preset's grid, then, while its best rate (`choose`:
the best mean final validation accuracy over the grid seeds; of tied rates, the smallest) is the
largest or the smallest it has, the next rate beyond it (x2 or /2), at most
``preset.max_extensions`` per side. The chosen rate is that best once no extension is pending.

Run order: per grid model, the grid seed by seed, then its extensions, then the final seeds the
grid lacks at each chosen rate; then each transfer model at the last grid model's rates, seed
by seed, once both methods are chosen (pair by pair).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from experiments.study_report import parse_method


def method_name(base: str, learning_rate: float) -> str:
  """``adam_lr0.002``: the study method of ``base`` at ``learning_rate``."""
  return f"{base}_lr{learning_rate:g}"


def _grid_scores(records: Sequence[dict], model: str, base: str, seeds) -> dict[float, float]:
  """``{rate: mean final validation accuracy}`` over the rates whose every grid seed is
  recorded."""
  by_rate: dict[float, dict[int, float]] = {}
  for r in records:
    name, rate = parse_method(r["method"])
    if r["model"] == model and name == base and rate is not None and r["seed"] in seeds:
      by_rate.setdefault(rate, {})[r["seed"]] = r["final_validation_accuracy"]
  return {
    rate: statistics.fmean(acc.values()) for rate, acc in by_rate.items() if len(acc) == len(seeds)
  }


def choose(scores: dict[float, float]) -> float:
  """The rate with the best mean final validation accuracy; of tied rates, the smallest."""
  best = max(scores.values())
  return min(rate for rate, score in scores.items() if math.isclose(score, best, abs_tol=1e-12))


def grid(
  records: Sequence[dict], preset, model: str, base: str
) -> tuple[list[float], float | None]:
  """The rates ``base`` runs at on ``model``: the preset's grid, then the edge extensions that
  the recorded runs call for (in the order they were added), and the chosen rate (None until
  every rate of the grid so far has all its seeds and no extension is pending)."""
  rates = list(preset.learning_rates)
  up = down = 0
  while True:
    scores = _grid_scores(records, model, base, preset.seeds)
    if any(rate not in scores for rate in rates):
      return rates, None
    best = choose({rate: scores[rate] for rate in rates})
    if best == max(rates) and up < preset.max_extensions:
      rates.append(best * 2)
      up += 1
    elif best == min(rates) and down < preset.max_extensions:
      rates.append(best / 2)
      down += 1
    else:
      return rates, best


def chosen_rates(records: Sequence[dict], preset, model: str) -> dict[str, float | None]:
  """``{method: chosen rate or None}`` at ``model``."""
  return {base: grid(records, preset, model, base)[1] for base in preset.methods}


def planned_runs(records: Sequence[dict], preset) -> list[tuple[str, str, int]]:
  """``(model, method, seed)`` of every run planned so far, in run order (see the module
  docstring); ``records`` are the preset's."""
  plan = []
  for model in preset.models:
    rates = {base: grid(records, preset, model, base)[0] for base in preset.methods}
    n_grid = len(preset.learning_rates)
    for seed in preset.seeds:
      for rate in preset.learning_rates:
        plan += [(model, method_name(base, rate), seed) for base in preset.methods]
    for base in preset.methods:
      for rate in rates[base][n_grid:]:
        plan += [(model, method_name(base, rate), seed) for seed in preset.seeds]
    plan += _final_runs(chosen_rates(records, preset, model), model, preset.final_seeds)
  chosen = chosen_rates(records, preset, preset.models[-1])
  if all(rate is not None for rate in chosen.values()):  # a transfer depth runs in pairs
    for model in preset.transfer_models:
      plan += _final_runs(chosen, model, preset.final_seeds)
  return list(dict.fromkeys(plan))  # a final seed already in the grid is run once


def _final_runs(chosen: dict[str, float | None], model: str, seeds) -> list[tuple[str, str, int]]:
  return [
    (model, method_name(base, rate), seed)
    for seed in seeds
    for base, rate in chosen.items()
    if rate is not None
  ]
