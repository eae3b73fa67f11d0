"""Plugin loading: entry points of the group ``featurestore``, isolated failures.

pluggy's own ``load_setuptools_entrypoints`` stops at the first plugin that fails to
import; here every entry point is loaded on its own, and a plugin that fails to import
or raises inside a hook is recorded with its distribution name and error while the
other plugins load normally.

Environment variables (comma-separated entry point or distribution names):

- ``FEATURESTORE_PLUGINS``: allowlist; when set, only these plugins load.
- ``FEATURESTORE_DISABLE_PLUGINS``: blocklist; these plugins never load.

A name in either that matches no installed plugin (a typo) is reported: by
:func:`env_warnings`, in :attr:`PluginHost.env_warnings`, by ``featurestore plugins`` and, once
per command, on the CLI's stderr.
"""

from __future__ import annotations

import os
import re
import threading
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from featurestore import hookspecs
from featurestore.errors import DuplicateNameError
from featurestore.registry import Registry

ENTRY_POINT_GROUP = "featurestore"
ENV_ALLOW = "FEATURESTORE_PLUGINS"
ENV_BLOCK = "FEATURESTORE_DISABLE_PLUGINS"
KINDS = ("backbone", "aggregator", "adapter")


@dataclass
class PluginRecord:
    """What happened to one plugin entry point."""

    name: str  # entry point name
    module: str  # entry point value, e.g. "featurestore_transformers.plugin"
    dist: str | None
    version: str | None
    status: str = "loaded"  # loaded | failed | disabled
    errors: list[str] = field(default_factory=list)
    registers: dict[str, list[str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module,
            "distribution": self.dist,
            "version": self.version,
            "status": self.status,
            "registers": self.registers,
            "errors": self.errors,
        }


def _norm(name: str) -> str:
    """Distribution names compare normalised (PEP 503): ``Foo_Bar`` == ``foo-bar``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _split_env(var: str) -> set[str]:
    return {_norm(p.strip()) for p in os.environ.get(var, "").split(",") if p.strip()}


def _env_names(var: str) -> list[str]:
    """The names a user wrote in ``var``, as written (for messages)."""
    return [p.strip() for p in os.environ.get(var, "").split(",") if p.strip()]


def _installed(eps: Any) -> dict[str, str | None]:
    """Entry point name → distribution name, of each installed plugin."""
    out: dict[str, str | None] = {}
    for ep in eps:
        out.setdefault(ep.name, ep.dist.name if ep.dist is not None else None)
    return out


def env_warnings(eps: Any = None) -> list[str]:
    """One message per name in ``FEATURESTORE_PLUGINS`` / ``FEATURESTORE_DISABLE_PLUGINS`` that
    matches no installed plugin. Reads entry point metadata only: no plugin is imported."""
    import difflib

    if not (os.environ.get(ENV_ALLOW) or os.environ.get(ENV_BLOCK)):
        return []
    installed = _installed(metadata.entry_points(group=ENTRY_POINT_GROUP) if eps is None else eps)
    known = {_norm(n) for pair in installed.items() for n in pair if n}
    listing = ", ".join(f"{n} ({d})" if d else n for n, d in sorted(installed.items())) or "none"
    out = []
    for var in (ENV_ALLOW, ENV_BLOCK):
        for name in _env_names(var):
            if _norm(name) in known:
                continue
            close = difflib.get_close_matches(_norm(name), sorted(known), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            out.append(f"{var} names {name!r}, which matches no installed plugin; installed: {listing}.{hint}")
    return out


def _one_line(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


class PluginHost:
    """Loads plugins and fills one :class:`Registry` per kind."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.records: list[PluginRecord] = []
        self.registries: dict[str, Registry] = {k: Registry(k) for k in KINDS}
        self.env_warnings: list[str] = []  # allow/block list names that match no installed plugin
        self._load()

    # -- loading -------------------------------------------------------------
    def _load(self) -> None:
        allow, block = _split_env(ENV_ALLOW), _split_env(ENV_BLOCK)
        eps = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
        self.env_warnings = env_warnings(eps)
        seen: set[str] = set()
        for ep in eps:
            if ep.name in seen:  # the same dist visible twice on sys.path
                continue
            seen.add(ep.name)
            dist = ep.dist.name if ep.dist is not None else None
            version = ep.dist.version if ep.dist is not None else None
            rec = PluginRecord(ep.name, ep.value, dist, version)
            self.records.append(rec)
            keys = {_norm(ep.name), _norm(dist or "")}
            if (allow and not keys & allow) or keys & block:
                rec.status = "disabled"
                continue
            try:
                module = ep.load()
                self.pm.register(module, name=ep.name)
            except Exception as exc:  # a broken plugin is named, not fatal
                rec.status = "failed"
                what = "invalid hook" if isinstance(exc, pluggy.PluginValidationError) else "import failed"
                rec.errors.append(f"{what}: {_one_line(exc)}")
                # pluggy keeps the hooks it added before refusing one: a failed plugin contributes nothing
                if self.pm.get_plugin(ep.name) is not None:
                    self.pm.unregister(name=ep.name)
        while True:  # one PluginValidationError per plugin with a hook that has no spec
            try:
                self.pm.check_pending()
                break
            except pluggy.PluginValidationError as exc:
                name = self.pm.get_name(exc.plugin)
                self._record_error(name, f"invalid hook: {exc}")
                self.pm.unregister(exc.plugin)
        for kind in KINDS:
            self._call_register_hook(kind)

    def _record_error(self, plugin: str | None, message: str, *, failed: bool = True) -> None:
        for rec in self.records:
            if rec.name == plugin:
                if failed:
                    rec.status = "failed"
                rec.errors.append(message)
                return

    def _call_register_hook(self, kind: str) -> None:
        caller = getattr(self.pm.hook, f"register_{kind}s")
        registry = self.registries[kind]
        for impl in caller.get_hookimpls():
            plugin = impl.plugin_name
            rec = next((r for r in self.records if r.name == plugin), None)
            label = rec.dist if rec and rec.dist else plugin

            def register(name: str, factory: Any, _label: str = label, **meta: Any) -> None:
                try:
                    registry.register(name, factory, plugin=_label, **meta)
                except DuplicateNameError as exc:
                    self._record_error(plugin, str(exc), failed=False)

            try:
                kwargs = {"register": register} if "register" in impl.argnames else {}
                impl.function(**kwargs)
            except Exception as exc:
                self._record_error(plugin, f"register_{kind}s raised {_one_line(exc)}")
            if rec is not None:
                names = registry.by_plugin(label)
                if names:
                    rec.registers[kind + "s"] = names

    # -- queries ---------------------------------------------------------------
    @property
    def backbones(self) -> Registry:
        return self.registries["backbone"]

    @property
    def aggregators(self) -> Registry:
        return self.registries["aggregator"]

    @property
    def adapters(self) -> Registry:
        return self.registries["adapter"]

    def plugin_for(self, dist_or_name: str) -> PluginRecord | None:
        return next((r for r in self.records if dist_or_name in (r.name, r.dist)), None)


_HOST: PluginHost | None = None
_LOCK = threading.Lock()


def get_host(*, reload: bool = False) -> PluginHost:
    """The process-wide plugin host, loaded on first use (``reload`` re-reads entry points)."""
    global _HOST
    with _LOCK:
        if _HOST is None or reload:
            _HOST = PluginHost()
        return _HOST


def list_backbones(pattern: str | None = None) -> list[dict[str, Any]]:
    """Registered backbones (optionally filtered by a shell pattern) with their metadata.

    Also :func:`featurestore.list_backbones`; it lives here so that listing imports no more
    than the plugin host (no pyarrow, LanceDB or torch).
    """
    reg = get_host().backbones
    return [{"name": e.name, "plugin": e.plugin, **e.metadata} for e in reg.entries() if e.name in reg.names(pattern)]
