"""featurestore: versioned image features (CLS + patch tokens) in LanceDB, keyed by model hash."""

from __future__ import annotations

__version__ = "0.1.0"

from featurestore.hookspecs import hookimpl  # noqa: E402

__all__ = ["__version__", "hookimpl", "FeatureStore", "FeatureDataset", "create_backbone", "list_backbones", "errors"]


def __getattr__(name: str):  # heavy imports (torch, lancedb) only when used
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
