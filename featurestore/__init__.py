"""featurestore: versioned image features (CLS + patch tokens) in LanceDB, keyed by model hash."""

from __future__ import annotations

from featurestore.hookspecs import hookimpl

__all__ = ["__version__", "hookimpl", "FeatureStore", "FeatureDataset", "create_backbone", "list_backbones", "errors"]


def __getattr__(name: str):  # heavy imports (torch, lancedb, importlib.metadata) only when used
    if name == "__version__":  # one source: pyproject.toml, through the installed metadata
        from pathlib import Path

        from featurestore.distinfo import dist_version

        globals()["__version__"] = version = dist_version("featurestore", Path(__file__).parent)
        return version
    if name in ("FeatureStore", "create_backbone", "list_backbones"):
        from featurestore import api

        return getattr(api, name)
    if name == "FeatureDataset":
        from featurestore.readers import FeatureDataset

        return FeatureDataset
    if name == "errors":
        import importlib

        return importlib.import_module("featurestore.errors")
    raise AttributeError(f"module 'featurestore' has no attribute {name!r}")
