"""Fixtures for the featurestore-example tests; images and stores come from featurestore.testing."""

from __future__ import annotations

from pathlib import Path

import pytest

try:
    from featurestore_example.make_weights import write_weights
except ModuleNotFoundError as exc:  # say how to fix it, instead of a bare import error per test module
    raise ImportError(
        "the featurestore-example plugin is not installed, so its tests cannot run. "
        "Fix: pip install --no-deps -e plugins/featurestore-example"
    ) from exc


@pytest.fixture(scope="session")
def example_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PatchNet safetensors file with random weights (seed 0), written by the plugin's own helper."""
    return write_weights(tmp_path_factory.mktemp("patchnet") / "patchnet.safetensors", seed=0)
