"""The plugin is found through its real, installed entry point, as a third party's would be."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from featurestore.cli import main
from featurestore.plugins import get_host

DIST = "featurestore-example"


def test_entry_point_is_installed_and_loads_the_plugin_module():
    eps = [ep for ep in metadata.entry_points(group="featurestore") if ep.name == "example"]
    assert len(eps) == 1, "featurestore-example is not installed: pip install --no-deps -e plugins/featurestore-example"
    ep = eps[0]
    assert ep.value == "featurestore_example.plugin"
    assert ep.dist is not None and ep.dist.name == DIST
    assert ep.load() is importlib.import_module("featurestore_example.plugin")


def test_plugins_json_lists_it_loaded_with_its_backbone(capsys):
    get_host(reload=True)  # re-read the entry points now, as a fresh process would
    assert main(["plugins", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rec = next(p for p in out["plugins"] if p["name"] == "example")
    assert rec["status"] == "loaded", rec["errors"]
    assert rec["module"] == "featurestore_example.plugin"
    assert rec["distribution"] == DIST and rec["version"] == metadata.version(DIST)
    assert rec["registers"] == {"backbones": ["example_patchnet"]}
    assert rec["errors"] == []
    assert "example_patchnet" not in out["conflicts"].get("backbone", {})


def test_backbones_json_lists_example_patchnet_with_metadata(capsys):
    assert main(["backbones", "example_*", "--json"]) == 0
    items = json.loads(capsys.readouterr().out)
    assert [b["name"] for b in items] == ["example_patchnet"]
    b = items[0]
    assert b["plugin"] == DIST
    assert (b["dim"], b["patch_size"]) == (64, 8)
    assert "PatchNet" in b["summary"] and "--weights" in b["source"]


def test_console_script_in_a_fresh_process_finds_it():
    exe = Path(sys.executable).with_name("featurestore")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "featurestore.cli"]
    res = subprocess.run(cmd + ["backbones", "--json"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    by_name = {b["name"]: b for b in json.loads(res.stdout)}
    assert by_name["example_patchnet"]["plugin"] == DIST


def test_plugin_module_imports_nothing_heavy():
    """The core loads every plugin module for `featurestore plugins`; torch must wait for the factory."""
    code = "import sys, featurestore_example.plugin; print(sorted({'torch', 'numpy', 'PIL'} & set(sys.modules)))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
