"""Test session set-up shared by every test.

Two facts of the environment shape this file:
- importing tensorflow before torchvision in one process crashes, so torchvision (when present) is
  imported first, before any test module can pull in tensorflow;
- mesh tests need several devices, so the CPU backend is split into 8 before jax starts.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

try:  # order matters: see the module docstring
    import torchvision  # noqa: F401
except ImportError:
    pass

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

from tests.data.coco_mock import mock_coco  # noqa: E402, F401 - a fixture for tests/data and tests/eval


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` run only where both JAX and torch see a GPU (`make test-gpu`);
    elsewhere they are reported as skipped, never as passed."""
    # the marker, not item.keywords: those also hold directory names (tests/gpu/)
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    try:
        import torch

        has_gpu = torch.cuda.is_available() and any(d.platform == "gpu" for d in jax.devices())
    except Exception:  # noqa: BLE001 - any import/back-end failure means no usable GPU
        has_gpu = False
    if has_gpu:
        return
    import pytest

    skip = pytest.mark.skip(reason="needs a GPU visible to both JAX and torch")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


@pytest.fixture
def absl_verbosity():
    """absl's verbosity restored after a test that lets a command line tool set it."""
    from absl import logging as absl_logging

    before = absl_logging.get_verbosity()
    yield
    absl_logging.set_verbosity(before)
