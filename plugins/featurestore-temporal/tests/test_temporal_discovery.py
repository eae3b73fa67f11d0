"""The plugin is found through its real, installed entry point, as a third party's would be."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from importlib import metadata

from featurestore.aggregator import Aggregator
from featurestore.cli import main
from featurestore.plugins import get_host

DIST = "featurestore-temporal"
NAMES = ["max", "mean", "meanmax", "motion", "trimmed-mean"]


def test_entry_point_is_installed_and_loads_the_plugin_module():
    eps = [ep for ep in metadata.entry_points(group="featurestore") if ep.name == "temporal"]
    assert len(eps) == 1, "featurestore-temporal is not installed: pip install --no-deps -e plugins/featurestore-temporal"
    ep = eps[0]
    assert ep.value == "featurestore_temporal.plugin"
    assert ep.dist is not None and ep.dist.name == DIST
    assert ep.load() is importlib.import_module("featurestore_temporal.plugin")


def test_registry_has_the_five_aggregators_with_their_metadata():
    reg = get_host(reload=True).aggregators  # re-read the entry points, as a fresh process would
    entries = {e.name: e for e in reg.entries() if e.plugin == DIST}
    assert sorted(entries) == NAMES
    for name, e in entries.items():
        assert set(e.metadata) == {"summary", "patches", "params"}, name
        assert e.metadata["patches"] is True and e.metadata["summary"].strip()
        assert "[" not in e.metadata["summary"], "the core prints summaries through rich: '[…]' would vanish as markup"
    assert entries["trimmed-mean"].metadata["params"] == {"proportion": 0.1}
    assert all(entries[n].metadata["params"] == {} for n in NAMES if n != "trimmed-mean")


def test_registered_factories_build_what_the_metadata_says():
    reg = get_host().aggregators
    for name in NAMES:
        entry = reg.get(name)
        agg = entry.factory(name)  # how the core calls it, with no params
        assert isinstance(agg, Aggregator) and agg.name == name
        assert agg.params() == entry.metadata["params"]  # listed defaults == filled-in defaults
        assert (agg.patch_dim(8) is not None) is entry.metadata["patches"]
        assert agg.spec() == {"name": name, "params": entry.metadata["params"], "version": 1}


def test_plugins_json_lists_it_loaded_with_its_aggregators(capsys):
    get_host(reload=True)
    assert main(["plugins", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rec = next(p for p in out["plugins"] if p["name"] == "temporal")
    assert rec["status"] == "loaded", rec["errors"]
    assert rec["module"] == "featurestore_temporal.plugin"
    assert rec["distribution"] == DIST and rec["version"] == metadata.version(DIST)
    assert rec["registers"] == {"aggregators": NAMES}
    assert rec["errors"] == []
    assert not set(NAMES) & set(out["conflicts"].get("aggregator", {}))


def test_plugin_module_imports_nothing_heavy():
    """The core loads every plugin module for `featurestore plugins`; numpy must wait for the factory."""
    code = "import sys, featurestore_temporal.plugin; print(sorted({'numpy', 'torch'} & set(sys.modules)))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
