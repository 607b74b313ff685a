"""Test configuration: four fake CPU devices, set before JAX is imported anywhere."""

import os

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Keep TensorFlow (imported by tfds) off the fake devices and quiet.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import jax  # noqa: E402

jax.config.update("jax_platforms", "cpu")

assert jax.local_device_count() == 4, (
  "tests need 4 fake CPU devices: XLA_FLAGS was read before tests/conftest.py ran"
)
