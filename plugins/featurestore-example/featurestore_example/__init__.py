"""featurestore plugin: ``example_patchnet``, a tiny pure-torch ViT loaded from safetensors.

It exists to show, end to end, what a backbone plugin needs: see
``docs/writing-a-backbone-plugin.md`` in the featurestore repository. The version is
read from the installed distribution's metadata (``importlib.metadata``), so there is
one source of truth: ``pyproject.toml``.
"""

from __future__ import annotations


def __getattr__(name: str) -> str:
    if name == "__version__":  # one source: this plugin's pyproject.toml, through the installed metadata
        from pathlib import Path

        from featurestore.distinfo import dist_version

        globals()["__version__"] = version = dist_version("featurestore-example", Path(__file__).parent)
        return version
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
