"""The streamed input pipeline alone at ImageNet sizes: images/s of decoding + augmenting +
batching (`trainer.streaming.TrainStream`, what `train.py --config=configs/imagenet.py` runs
on the host), by worker processes, and how many host cores feed a train step of a given rate.

It writes a generated tfds copy first (JPEG photos-like noise of ImageNet's sizes, each side
drawn from 256-512 pixels, ArrayRecord, no TensorFlow), then times the stream of
``--batch``-image batches at ``--image_size`` with the training preprocessing (random-resized
crop + flip), after a warm-up batch, for each ``--workers`` count (0: decoded in this process
by Grain's threads). Run from the project root:

  python -m benchmarks.input_pipeline [--images 768] [--workers 0,1,2] [--json out.json]

``--keep DIR`` keeps the copy (tfds dataset ``generated_images`` in data dir DIR), which
``train.py --config=configs/imagenet.py --config.dataset=generated_images
--config.data_dir=DIR --config.eval_split='train[:128]'`` trains on (the accelerator check's
``imagenet_step``).

Per core: images per CPU-second, the CPU time of this process and its workers (user + system,
psutil) over the timed batches; "cores busy" is that CPU time per second. ``--feed R,...``: the
cores that feed a train step of R images/s at the best per-core rate measured (R is yours: the
step's rate on your accelerator).
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time

import numpy as np
import psutil
import tensorflow_datasets as tfds
from PIL import Image

from trainer import datasets, streaming
from trainer.files import markdown_table, write_json

NAME = "generated_images"
WARMUP = 10  # batches before timing: more than the prefetch buffer holds (8)


class GeneratedImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Images of ImageNet's sizes (sides 256-512) as JPEG, 1000 classes; smooth noise, which
  compresses and decodes like a photograph more than white noise does. Not registered: the
  copy is read back from its files, as any dataset tfds does not know."""

  VERSION = tfds.core.Version("1.0.0")
  name = NAME

  def __init__(self, *, num_images: int, **kwargs):
    self._num_images = num_images
    super().__init__(**kwargs)

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
          "label": tfds.features.ClassLabel(num_classes=1000),
        }
      ),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(self._num_images)}

  def _generate_examples(self, n: int):
    rng = np.random.default_rng(0)
    for i in range(n):
      h, w = rng.integers(256, 513, 2)
      coarse = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3)).astype(np.uint8)
      image = np.kron(coarse, np.ones((16, 16, 1), np.uint8))[:h, :w]
      noise = rng.integers(-12, 13, image.shape)
      jpeg = io.BytesIO()  # encoded here: tfds's own encoder needs TensorFlow
      Image.fromarray(np.clip(image + noise, 0, 255).astype(np.uint8)).save(
        jpeg, "jpeg", quality=90
      )
      yield i, {"image": jpeg.getvalue(), "label": i % 1000}


def write_copy(data_dir: str, num_images: int) -> None:
  builder = GeneratedImages(num_images=num_images, data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare()


def _cpu_seconds() -> float:
  """CPU time of this process and its live children (the loader's workers), user + system."""
  me = psutil.Process()
  return sum(sum(p.cpu_times()[:2]) for p in [me, *me.children(recursive=True)])


def time_stream(source, *, batch: int, image_size: int, workers: int, batches: int) -> dict:
  """Images/s and images per CPU-second over ``batches`` batches, timed from the moment the
  first `WARMUP` batches are out (start-up and the filled prefetch buffer excluded)."""
  stream = streaming.TrainStream(
    source=source, seed=0, global_batch=batch, image_size=image_size, augment=True, workers=workers
  )
  iterator = stream.batches(0, WARMUP + batches)
  for _ in range(WARMUP):
    next(iterator)
  start, cpu = time.perf_counter(), _cpu_seconds()
  for _ in range(batches):
    images, _ = next(iterator)
  seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
  assert images.shape == (batch, image_size, image_size, 3)
  return {
    "workers": workers,
    "images_per_second": batches * batch / seconds,
    "per_cpu_second": batches * batch / cpu,
    "cores_busy": cpu / seconds,
  }


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--images", type=int, default=768, help="images in the generated copy")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
  parser.add_argument("--feed", default="1000,3000", help="train-step rates (images/s) to feed")
  parser.add_argument("--json", default=None, help="also write the figures here")
  parser.add_argument(
    "--keep", default=None, help="write the generated copy into this data dir and keep it"
  )
  args = parser.parse_args(argv)
  cores = os.cpu_count() or 1
  batches = args.images // args.batch - WARMUP
  if batches < 4:
    raise SystemExit(
      f"error: --images {args.images} is too few: use at least {(WARMUP + 4) * args.batch}"
    )
  with tempfile.TemporaryDirectory() as scratch:
    data_dir = args.keep or scratch
    write_copy(data_dir, args.images)
    source = datasets.open_split(NAME, "train", data_dir, download=False)  # as train.py does
    results = [
      time_stream(source, batch=args.batch, image_size=args.image_size, workers=w, batches=batches)
      for w in (int(w) for w in args.workers.split(","))
    ]
  rows = [
    (
      r["workers"],
      f"{r['images_per_second']:.0f}",
      f"{r['cores_busy']:.2f}",
      f"{r['per_cpu_second']:.0f}",
    )
    for r in results
  ]
  best = max(r["per_cpu_second"] for r in results)
  feeds = {int(r): int(np.ceil(int(r) / best)) for r in args.feed.split(",")}
  print(
    f"{args.images} generated JPEGs (sides 256-512) -> {args.batch} x {args.image_size}^2, "
    f"random-resized crop + flip; {cores} cores here; {batches} batches timed\n"
  )
  header = ("workers", "images/s", "cores busy", "images per CPU-second")
  print("\n".join(markdown_table(header, rows, [True] * 4)))
  for rate, needed in feeds.items():
    print(f"a train step of {rate} images/s needs about {needed} host cores at {best:.0f}/core")
  out = {
    "images": args.images,
    "batch": args.batch,
    "image_size": args.image_size,
    "cores": cores,
    "results": results,
    "cores_to_feed": feeds,
  }
  if args.json:
    write_json(args.json, out)
  return out


if __name__ == "__main__":
  main()
