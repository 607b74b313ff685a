"""The documentation's examples run as written: every ``python`` block of the getting-started
page, each in a fresh namespace (the Flax linen and NNX examples must learn their toy task)."""

import re

import pytest

from tests.helpers import ROOT

PAGE = ROOT / "docs" / "getting_started.md"
BLOCKS = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.DOTALL)


def test_the_page_has_the_linen_and_nnx_examples():
  assert len(BLOCKS) == 4
  assert "train_state.TrainState.create" in BLOCKS[2] and "nnx.Optimizer" in BLOCKS[3]


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_each_python_block_runs(index, capsys):
  namespace: dict = {}
  exec(compile(BLOCKS[index], f"{PAGE}:block{index}", "exec"), namespace)  # noqa: S102
  if "accuracy" in namespace:  # the Flax examples: XOR of signs, learned
    assert namespace["accuracy"] > 0.9, capsys.readouterr().out
    assert float(namespace["loss"]) < 0.2
