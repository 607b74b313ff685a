"""Tests of the streamed input path (trainer/streaming.py, trainer/inputs.py): each example once
per epoch in the (seed, epoch) order, two processes reading disjoint halves of every global
batch, a resumed stream seeing the uninterrupted batches, worker processes changing nothing,
the preprocessing against PIL, kill-and-resume mid-epoch ending as the uninterrupted run, an
ImageNet-shaped run through train.py, and bad input as one line."""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from benchmarks import input_pipeline
from configs import imagenet
from tests.helpers import MOCK_CLI, ROOT, flat_state, subprocess_env
from trainer import checkpoints, datasets, streaming
from trainer import input_pipeline as ip
from trainer.errors import ConfigError, DataError
from trainer.loop import train_and_evaluate
from trainer.metrics import read_metrics

N = 64  # examples per split under mock_data


@pytest.fixture(scope="module")
def source():
  with tfds.testing.mock_data(num_examples=N):
    return datasets.open_split("cifar10", "train")  # reads without the mock too


def stream(source, **kwargs):
  args = dict(seed=3, global_batch=16, image_size=32, augment=False)
  return streaming.TrainStream(source=source, **{**args, **kwargs})


def test_the_stream_yields_each_example_once_per_epoch_in_the_seed_epoch_order(source):
  s = stream(source)
  assert s.steps_per_epoch == 4
  batches = list(s.batches(0, 8))  # two epochs
  for step, (images, labels) in enumerate(batches):
    want = ip.train_batch_indices(3, step, N, 16)
    np.testing.assert_array_equal(labels, [source[i][1] for i in want])
    np.testing.assert_array_equal(images, np.stack([source[i][0] for i in want]))
  for epoch in (0, 1):
    seen = np.concatenate(
      [ip.train_batch_indices(3, s, N, 16) for s in range(4 * epoch, 4 * epoch + 4)]
    )
    assert sorted(seen) == list(range(N))
  assert not np.array_equal(batches[0][1], batches[4][1])  # another order in epoch 2


def test_two_processes_read_disjoint_halves_of_the_one_process_batch(source):
  one = list(stream(source, augment=True, image_size=24).batches(0, 4))
  halves = [
    list(
      stream(source, augment=True, image_size=24, process_index=p, process_count=2).batches(0, 4)
    )
    for p in (0, 1)
  ]
  for step in range(4):
    rows = [stream(source, process_index=p, process_count=2) for p in (0, 1)]
    indices = [[r.example_index(step, i) for i in range(8)] for r in rows]
    assert not set(indices[0]) & set(indices[1])  # disjoint
    for k in (0, 1):  # images (augmented), labels
      np.testing.assert_array_equal(
        np.concatenate([halves[0][step][k], halves[1][step][k]]), one[step][k]
      )


def test_a_resumed_stream_sees_the_batches_of_the_uninterrupted_one(source):
  s = stream(source, augment=True, image_size=24)
  whole = list(s.batches(0, 7))
  resumed = list(s.batches(3, 7))  # mid-epoch 1
  assert len(resumed) == 4
  for a, b in zip(whole[3:], resumed, strict=True):
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
  assert whole[0][0].shape == (16, 24, 24, 3) and whole[0][0].dtype == np.uint8


@pytest.mark.slow  # starts worker processes
def test_worker_processes_give_the_same_batches(source):
  alone = list(stream(source, augment=True, image_size=24).batches(2, 6))
  workers = list(stream(source, augment=True, image_size=24, workers=2).batches(2, 6))
  for a, b in zip(alone, workers, strict=True):
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_the_eval_stream_counts_every_example_once(source):
  for process_count in (1, 2):
    rows = []
    for p in range(process_count):
      e = streaming.EvalStream(
        source=source, global_batch=24, image_size=32, process_index=p, process_count=process_count
      )
      rows.append(list(e.batches()))
    labels = np.concatenate(
      [np.concatenate([rows[p][b][1] for p in range(process_count)]) for b in range(3)]
    )
    mask = np.concatenate(
      [np.concatenate([rows[p][b][2] for p in range(process_count)]) for b in range(3)]
    )
    assert mask.sum() == N and len(mask) == 72  # 64 padded to 3 batches of 24
    np.testing.assert_array_equal(labels[mask == 1], [source[i][1] for i in range(N)])


def test_center_crop_matches_a_pil_resize_and_crop():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (60, 40, 3), np.uint8)
  got = streaming.center_crop(image, 16)
  short = round(16 * 256 / 224)  # 18
  resized = np.asarray(
    Image.fromarray(image).resize((short, round(60 * short / 40)), Image.BICUBIC)
  )
  top, left = (resized.shape[0] - 16) // 2, (resized.shape[1] - 16) // 2
  np.testing.assert_array_equal(got, resized[top : top + 16, left : left + 16])
  square = rng.integers(0, 256, (16, 16, 3), np.uint8)
  assert streaming.center_crop(square, 16) is square  # already the size: as it is


def test_random_resized_crop_is_a_resized_part_of_the_image_flipped_half_the_time():
  image = np.zeros((80, 120, 3), np.uint8)
  image[:, :60] = 255  # left half white: a flip shows on the mean of the left columns
  flips, means = 0, []
  for seed in range(200):
    out = streaming.random_resized_crop(image, 32, np.random.default_rng(seed))
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    again = streaming.random_resized_crop(image, 32, np.random.default_rng(seed))
    np.testing.assert_array_equal(out, again)  # a function of the generator's seed
    means.append(out.mean())
    flips += int(out[:, 0].mean() < out[:, -1].mean())
  assert 70 <= flips <= 130  # about half
  assert np.std(means) > 10  # crops of various places and sizes


def tiny_imagenet(**overrides):
  config = imagenet.get_config()
  config.update(
    dict(
      image_size=72,  # above 64 pixels: the ImageNet stem
      model="resnet18",
      model_widths=(4, 8, 8, 16),
      batch_size=16,
      num_train_steps=6,
      eval_every_steps=3,
      checkpoint_every_steps=3,
      dtype="float32",
      num_devices=2,
      steps_per_dispatch=1,
      loader_workers=0,
      **overrides,
    )
  )
  return config


def test_kill_and_resume_mid_epoch_ends_as_the_uninterrupted_run(tmp_path):
  """40 examples at batch 16: 2 steps per epoch; the resumed run starts at step 3, mid-epoch
  2, from the checkpoint of step 3 (later checkpoints deleted, as by a SIGKILL before them)."""
  with tfds.testing.mock_data(num_examples=40):
    want = flat_state(train_and_evaluate(tiny_imagenet(), str(tmp_path / "whole")))
    train_and_evaluate(tiny_imagenet(), str(tmp_path / "cut"))
    shutil.rmtree(Path(checkpoints.checkpoint_dir(str(tmp_path / "cut"))) / "6")
    got = flat_state(train_and_evaluate(tiny_imagenet(), str(tmp_path / "cut")))
  for key in want:
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)
  rows = {n: read_metrics(tmp_path / n) for n in ("whole", "cut")}
  assert [r["eval_loss"] for r in rows["cut"]] == [r["eval_loss"] for r in rows["whole"]]


def test_a_streamed_split_it_cannot_serve_names_the_field(tmp_path):
  """A slice beyond the split (an unknown split name of a prepared copy is refused the same
  way, in every format: test_datasets.py)."""
  with tfds.testing.mock_data(num_examples=32), pytest.raises(ConfigError) as info:
    train_and_evaluate(tiny_imagenet(eval_split="validation[:500]"), str(tmp_path))
  message = str(info.value)
  assert "--config.eval_split=validation[:500]" in message and "32 examples" in message


def test_a_dataset_without_images_is_one_line_naming_it(tmp_path):
  config = tiny_imagenet(dataset="imdb_reviews", eval_split="test")
  with tfds.testing.mock_data(num_examples=8), pytest.raises(DataError) as info:
    train_and_evaluate(config, str(tmp_path))
  message = str(info.value)
  assert "'imdb_reviews' has no 'image' feature" in message and "\n" not in message


@pytest.mark.slow  # a subprocess compiling a ResNet-18
def test_train_py_trains_an_imagenet_shaped_stream_end_to_end(tmp_path):
  flags = {
    "image_size": 72,
    "model": "resnet18",
    "model_widths": "(4,8,8,16)",
    "batch_size": 16,
    "num_train_steps": 4,
    "eval_every_steps": 2,
    "dtype": "float32",
    "num_devices": 2,
    "steps_per_dispatch": 2,
    "loader_workers": 2,
  }
  proc = subprocess.run(
    [sys.executable, "-c", MOCK_CLI, f"--workdir={tmp_path}", "--config=configs/imagenet.py"]
    + [f"--config.{k}={v}" for k, v in flags.items()],
    env=subprocess_env(tmp_path / "cache"),
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "resnet18 on imagenet2012, streamed: 64 train / 64 eval examples" in proc.stdout
  rows = read_metrics(tmp_path)
  assert [r["step"] for r in rows] == [2, 4]
  assert all(np.isfinite(r["eval_loss"]) for r in rows)


def test_the_input_pipeline_benchmark_times_a_generated_jpeg_copy(tmp_path, capsys):
  """A smoke run of benchmarks/input_pipeline.py: the copy is written and read back through
  `datasets.open_split` (a dataset tfds does not know), every figure is positive."""
  out = input_pipeline.main(
    ["--images", "224", "--batch", "16", "--image_size", "64", "--workers", "0"]
    + ["--feed", "500", "--json", str(tmp_path / "p.json")]
  )
  assert json.loads((tmp_path / "p.json").read_text()) == json.loads(json.dumps(out))
  (result,) = out["results"]
  assert result["images_per_second"] > 0 and result["per_cpu_second"] > 0
  assert out["cores_to_feed"] == {500: math.ceil(500 / result["per_cpu_second"])}
  assert "images per CPU-second" in capsys.readouterr().out
