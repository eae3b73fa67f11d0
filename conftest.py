"""The repository's tests opt in to the fixtures featurestore and its plugins offer plugin authors.

Installing featurestore adds no fixture to anyone's pytest run; a test suite that wants them
names the modules in ``pytest_plugins`` in its top-level ``conftest.py``, as this one does.
"""

from __future__ import annotations

from importlib import metadata

import pytest

FIXTURE_MODULES = (
    "featurestore.testing",  # fs_image_dir, fs_store_path, fs_silent_hub; catalog cache in a temporary directory
    "featurestore_transformers.testing",  # fs_tiny_dinov2, fs_tiny_model_factory
    "featurestore_openclip.testing",  # fs_tiny_openclip, fs_tiny_siglip, fs_tiny_openclip_factory
    "featurestore_timm.testing",  # fs_tiny_timm_factory, fs_tiny_timm_resnet, fs_tiny_timm_vit
)

# An environment installed before these modules stopped being ``pytest11`` entry points still
# declares them there (until it is installed again), so pytest has loaded them already, and
# registering one module twice is an error.
_LOADED_BY_ENTRY_POINT = {ep.value for ep in metadata.entry_points(group="pytest11")}

pytest_plugins = [m for m in FIXTURE_MODULES if m not in _LOADED_BY_ENTRY_POINT]


# Multi-process tests whose modules do not mark them ``slow`` themselves: several writer
# processes, extraction with worker processes. The fast lane (``-m "not slow"``) leaves them out.
SLOW_ELSEWHERE = (
    "tests/test_concurrency.py::",
    "tests/test_writer.py::test_extract_in_workers_skips_stored_images",
)


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by mark
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid.startswith(SLOW_ELSEWHERE):
            item.add_marker(pytest.mark.slow)
