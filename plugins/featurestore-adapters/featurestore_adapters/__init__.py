"""featurestore plugin: domain adapters fitted on stored features.

Registers ``pca-whiten``, ``project``, ``quantize`` and ``linear-head`` through the
``register_adapters`` hook (see :mod:`featurestore_adapters.plugin`). Parameters are
declared and checked in :mod:`featurestore_adapters.params`; the arithmetic is in
:mod:`~featurestore_adapters.pca`, :mod:`~featurestore_adapters.quantize` (with
:mod:`~featurestore_adapters.kmeans`) and :mod:`~featurestore_adapters.linear`. Nothing is
imported here, so loading the entry point stays cheap.
"""

from __future__ import annotations


def __getattr__(name: str) -> str:
    if name == "__version__":  # one source: this plugin's pyproject.toml, through the installed metadata
        from pathlib import Path

        from featurestore.distinfo import dist_version

        globals()["__version__"] = version = dist_version("featurestore-adapters", Path(__file__).parent)
        return version
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
