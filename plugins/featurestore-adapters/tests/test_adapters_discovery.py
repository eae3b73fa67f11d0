"""The plugin is found through its real, installed entry point, as a third party's would be."""

from __future__ import annotations

import importlib
import subprocess
import sys
from importlib import metadata

import pytest

from featurestore.adapter import Adapter
from featurestore.errors import ConfigError
from featurestore.plugins import get_host

DIST = "featurestore-adapters"
NAMES = ["linear-head", "pca-whiten", "project", "quantize"]
DEFAULTS = {
    "pca-whiten": {"dim": None, "eps": 1e-6},
    "project": {"dim": None},
    "quantize": {"iters": 20, "m": 0, "method": "int8", "seed": 0},
    "linear-head": {"dim": None, "l2": 1e-4, "max_iter": 200, "seed": 0, "standardize": True},
}


def test_entry_point_is_installed_and_loads_the_plugin_module():
    eps = [ep for ep in metadata.entry_points(group="featurestore") if ep.name == "adapters"]
    assert len(eps) == 1, "featurestore-adapters is not installed: pip install --no-deps -e plugins/featurestore-adapters"
    ep = eps[0]
    assert ep.value == "featurestore_adapters.plugin"
    assert ep.dist is not None and ep.dist.name == DIST
    assert ep.load() is importlib.import_module("featurestore_adapters.plugin")


def test_registry_has_the_four_adapters_with_their_metadata():
    host = get_host(reload=True)  # re-read the entry points, as a fresh process would
    entries = {e.name: e for e in host.adapters.entries() if e.plugin == DIST}
    assert sorted(entries) == NAMES
    for name, e in entries.items():
        assert set(e.metadata) == {"summary", "params", "required", "labels", "invertible"}, name
        assert e.metadata["params"] == DEFAULTS[name], name
        assert e.metadata["summary"].strip() and "[" not in e.metadata["summary"], "rich would take '[…]' for markup"
        assert e.metadata["labels"] is (name == "linear-head")
    assert entries["project"].metadata["required"] == ["dim"]
    assert all(entries[n].metadata["required"] == [] for n in NAMES if n != "project")
    rec = host.plugin_for(DIST)
    assert rec is not None and rec.status == "loaded" and rec.errors == []
    assert rec.registers == {"adapters": NAMES}
    assert not set(NAMES) & set(host.adapters.conflicts())


def test_registered_factories_build_what_the_metadata_says():
    reg = get_host().adapters
    for name in NAMES:
        entry = reg.get(name)
        given = {"dim": 4} if entry.metadata["required"] else {}  # how the core calls it: parsed params
        adapter = entry.factory(name, **given)
        assert isinstance(adapter, Adapter) and adapter.name == name
        assert adapter.params() == {**entry.metadata["params"], **given}  # listed defaults == filled-in defaults
        assert adapter.needs_labels is entry.metadata["labels"]
        assert adapter.invertible is entry.metadata["invertible"]
        assert adapter.spec() == {"name": name, "params": adapter.params(), "version": 1}
    with pytest.raises(ConfigError, match="needs the parameter 'dim'"):
        reg.get("project").factory("project")
    with pytest.raises(ConfigError, match="has no adapter 'mean'"):
        reg.get("project").factory("mean")


def test_plugin_module_imports_nothing_heavy():
    """The core loads every plugin module for `featurestore plugins`; numpy and torch must wait for the factory."""
    code = "import sys, featurestore_adapters.plugin; print(sorted({'numpy', 'torch'} & set(sys.modules)))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
