"""Name → factory registries filled by plugin hooks.

A name ending in ``:`` is a *family*: ``"hf:"`` answers ``"hf:facebook/dinov2-small"``
and ``"hf:/models/my-vit"``. Exact names win over families.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable

from featurestore.errors import DuplicateNameError, UnknownNameError

# Where names a user is likely to type come from, so an unknown name can say
# which distribution to install. Prefix → distribution.
KNOWN_PROVIDERS: dict[str, dict[str, str]] = {
    "backbone": {
        "dinov2_": "featurestore-transformers",
        "hf:": "featurestore-transformers",
        "open_clip:": "featurestore-openclip",
        "clip_": "featurestore-openclip",
        "siglip": "featurestore-openclip",
        "biomedclip": "featurestore-openclip",
        "timm:": "featurestore-timm",
        "resnet": "featurestore-timm",
        "convnext": "featurestore-timm",
        "efficientnet": "featurestore-timm",
        "mobilenetv3": "featurestore-timm",
    },
}


@dataclass(frozen=True)
class Entry:
    """One registration: a name, its factory, the plugin that provided it and metadata."""

    name: str
    factory: Callable[..., Any]
    plugin: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def is_family(self) -> bool:
        return self.name.endswith(":")


class Registry:
    """Registry of one kind of object (``backbone``, ``aggregator``, ``adapter``)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        # name -> every plugin that registered it, when more than one did
        self._conflicts: dict[str, list[str]] = {}

    def register(self, name: str, factory: Callable[..., Any], *, plugin: str, **metadata: Any) -> None:
        """Add ``factory`` under ``name``; a second registration of a name marks it conflicted.

        Raises:
            DuplicateNameError: when ``name`` is already registered. The registry keeps
                the name unusable (``get`` raises the same error) until one plugin is
                disabled, so the error can never be silently resolved by load order.
        """
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"plugin {plugin!r} registered a {self.kind} with an empty or non-string name: {name!r}")
        if not callable(factory):
            raise TypeError(f"plugin {plugin!r} registered {self.kind} {name!r} with a non-callable factory")
        if name in self._entries or name in self._conflicts:
            owners = self._conflicts.setdefault(name, [self._entries.pop(name).plugin] if name in self._entries else [])
            owners.append(plugin)
            raise self._duplicate_error(name)
        self._entries[name] = Entry(name, factory, plugin, dict(metadata))

    def _duplicate_error(self, name: str) -> DuplicateNameError:
        owners = self._conflicts[name]
        return DuplicateNameError(
            f"{self.kind} {name!r} is registered by more than one plugin: {', '.join(repr(o) for o in owners)}. "
            f"Fix: uninstall one, or disable it with FEATURESTORE_DISABLE_PLUGINS=<plugin name>."
        )

    def get(self, name: str) -> Entry:
        """Return the entry for ``name`` (exact name first, then its family)."""
        if name in self._conflicts:
            raise self._duplicate_error(name)
        if name in self._entries and not self._entries[name].is_family:
            return self._entries[name]
        if name in self._entries:  # a bare family name: "hf:" with nothing after it
            raise UnknownNameError(f"{self.kind} {name!r} needs a name after the colon, e.g. {name}<id or path>")
        if ":" in name:
            family = name.split(":", 1)[0] + ":"
            if family in self._conflicts:
                raise self._duplicate_error(family)
            if family in self._entries and len(name) > len(family):
                return self._entries[family]
        raise UnknownNameError(self._unknown_message(name))

    def _unknown_message(self, name: str) -> str:
        known = ", ".join(sorted(self._entries)) or "(none: no plugin registers any)"
        msg = f"unknown {self.kind} {name!r}. Known {self.kind}s: {known}."
        for prefix, dist in KNOWN_PROVIDERS.get(self.kind, {}).items():
            if name.lower().startswith(prefix):
                msg += f" {name!r} looks like one that {dist} provides: pip install {dist}"
                break
        return msg + f" List them with: featurestore {self.kind}s"

    def names(self, pattern: str | None = None) -> list[str]:
        """Sorted registered names, optionally filtered by a shell-style ``pattern``."""
        names = sorted(self._entries)
        if pattern:
            names = [n for n in names if fnmatch.fnmatch(n, pattern)]
        return names

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def conflicts(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self._conflicts.items()}

    def by_plugin(self, plugin: str) -> list[str]:
        names = [e.name for e in self._entries.values() if e.plugin == plugin]
        names += [n for n, owners in self._conflicts.items() if plugin in owners]
        return sorted(names)

    def __contains__(self, name: str) -> bool:
        try:
            self.get(name)
        except (UnknownNameError, DuplicateNameError):
            return False
        return True
