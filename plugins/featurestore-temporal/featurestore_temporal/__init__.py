"""featurestore plugin: temporal aggregators that turn a video's frame features into clip features.

Registers ``mean``, ``max``, ``meanmax``, ``trimmed-mean`` and ``motion`` through the
``register_aggregators`` hook (see :mod:`featurestore_temporal.plugin`); the arithmetic is
in :mod:`featurestore_temporal.aggregators`, parameter checking and the ``NAME:key=value``
syntax in :mod:`featurestore_temporal.spec`. Nothing is imported here, so loading the
entry point stays cheap.
"""

from __future__ import annotations


def __getattr__(name: str) -> str:
    if name == "__version__":  # one source: this plugin's pyproject.toml, through the installed metadata
        from pathlib import Path

        from featurestore.distinfo import dist_version

        globals()["__version__"] = version = dist_version("featurestore-temporal", Path(__file__).parent)
        return version
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
