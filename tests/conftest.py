"""Test configuration, set before JAX is imported anywhere.

* The platform: by default four fake CPU devices (multi-device code is tested on them). With
  ``ZNORM_TEST_PLATFORM`` set (``benchmarks.accelerator`` sets it), JAX keeps the machine's
  own accelerator and its device count; tests that need four devices skip with fewer.
* A persistent compilation cache for this session: every in-process run builds its steps anew
  (new function objects), so without it each run compiles the same programs again (measured:
  the reliability tests take 81 s without it, 44 s with it).
"""

import atexit
import os
import shutil
import tempfile

ON_CPU = not os.environ.get("ZNORM_TEST_PLATFORM")
if ON_CPU:
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
  ).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jax_cache_")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)

import jax  # noqa: E402

if ON_CPU:
  jax.config.update("jax_platforms", "cpu")
  assert jax.local_device_count() == 4, (
    "tests need 4 fake CPU devices: XLA_FLAGS was read before tests/conftest.py ran"
  )
