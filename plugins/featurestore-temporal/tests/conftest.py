"""The featurestore-temporal tests need the plugin installed: its entry point is what they test."""

from __future__ import annotations

try:
    import featurestore_temporal.plugin  # noqa: F401
except ModuleNotFoundError as exc:  # say how to fix it, instead of a bare import error per test module
    raise ImportError(
        "the featurestore-temporal plugin is not installed, so its tests cannot run. "
        "Fix: pip install --no-deps -e plugins/featurestore-temporal"
    ) from exc
