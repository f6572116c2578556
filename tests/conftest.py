"""Shared pytest setup: 8 host CPU devices for sharding tests, GPU skipping."""

import os

# Must happen before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
  del config
  if any(d.platform == "gpu" for d in jax.devices()):
    return
  skip = pytest.mark.skip(reason="needs a GPU; none is present")
  for item in items:
    if "gpu" in item.keywords:
      item.add_marker(skip)
