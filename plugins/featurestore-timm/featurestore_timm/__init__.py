"""featurestore plugin: timm image backbones (CNNs and ViTs), named ones and the ``timm:`` family."""

from __future__ import annotations


def __getattr__(name: str) -> str:
    if name == "__version__":  # one source: this plugin's pyproject.toml, through the installed metadata
        from pathlib import Path

        from featurestore.distinfo import dist_version

        globals()["__version__"] = version = dist_version("featurestore-timm", Path(__file__).parent)
        return version
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
