"""Plugin loading through real entry points.

Every fake plugin here is a real installed-looking distribution: a package directory and
a ``<dist>-1.0.dist-info`` (``METADATA`` + ``entry_points.txt``) written to a temporary
directory that is put on ``sys.path``, so ``importlib.metadata`` finds it exactly as it
finds a pip-installed plugin. Nothing is mocked.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from featurestore.errors import DuplicateNameError, UnknownNameError
from featurestore.plugins import ENV_ALLOW, ENV_BLOCK, PluginHost, get_host

TRANSFORMERS_DIST = "featurestore-transformers"
TRANSFORMERS_EP = "transformers"

# A minimal but honest Backbone: 4x4 RGB input, 2x2 patches of 2 px, a Linear(12 -> 8)
# per patch, CLS = mean of the patch tokens. Written into the fake plugin packages.
TOY_BACKBONE_SRC = '''
import numpy as np
import torch
from PIL import Image

from featurestore.backbone import Backbone, BackboneOutput, Preprocessed
from featurestore.config import TokenLayout

SIDE, PATCH, DIM = 4, 2, 8
GRID = SIDE // PATCH


def preprocess(img):
    """Module-level, so it pickles into DataLoader workers."""
    w, h = img.size
    arr = np.asarray(img.convert("RGB").resize((SIDE, SIDE), Image.BILINEAR), dtype=np.float32) / 255.0
    return Preprocessed(torch.from_numpy(arr).permute(2, 0, 1).contiguous(), (0.0, 0.0, float(w), float(h)))


class ToyBackbone(Backbone):
    def __init__(self, name, weights=None, plugin="?", seed=0):
        self.name = name
        self.dim = DIM
        self.plugin = plugin
        self.weights = weights
        self.linear = torch.nn.Linear(3 * PATCH * PATCH, DIM)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(DIM, 3 * PATCH * PATCH, generator=g))
            self.linear.bias.zero_()

    def layout(self):
        return TokenLayout(grid_h=GRID, grid_w=GRID, patch_size=PATCH, num_prefix_tokens=0,
                           cls_source="mean of patch tokens", input_h=SIDE, input_w=SIDE)

    def preprocessor(self):
        return preprocess

    def preprocess_spec(self):
        return {"resize": [SIDE, SIDE], "resample": "bilinear", "scale": "1/255", "mean": None, "std": None}

    def output_spec(self, dense):
        return {"layer": "linear", "cls": "mean of patch tokens", "patches": bool(dense), "normalize": False}

    def named_tensors(self):
        return list(self.linear.state_dict().items())

    def to(self, device):
        self.linear.to(device)
        return self

    def forward(self, pixel_values, *, dense):
        b = pixel_values.shape[0]
        p = pixel_values.unfold(2, PATCH, PATCH).unfold(3, PATCH, PATCH)  # (B, C, G, G, P, P)
        p = p.permute(0, 2, 3, 1, 4, 5).reshape(b, GRID * GRID, -1)  # (B, N, C*P*P), row-major
        tokens = self.linear(p)
        return BackboneOutput(cls=tokens.mean(1), patches=tokens if dense else None, layout=self.layout())

    def card_info(self):
        return {
            "plugin": self.plugin,
            "plugin_version": "1.0",
            "weights_source": self.weights or "random(seed)",
            "weights_revision": None,
            "architecture": "ToyLinear",
            "library_versions": {"torch": torch.__version__},
            "token_layout": self.layout().model_dump(),
        }
'''

GOOD_PLUGIN = '''
import featurestore
from ._toy import ToyBackbone


def factory(name, weights=None, **_):
    return ToyBackbone(name, weights, plugin="fs-good-plugin")


@featurestore.hookimpl
def register_backbones(register):
    register("toy_backbone", factory, dim=8, patch_size=2, summary="toy linear backbone for tests")
'''

BROKEN_IMPORT_PLUGIN = '''
import featurestore
import fs_definitely_missing_dependency  # ModuleNotFoundError on import


@featurestore.hookimpl
def register_backbones(register):
    register("never_registered", lambda name, weights=None: None)
'''

HOOK_RAISES_PLUGIN = '''
import featurestore


@featurestore.hookimpl
def register_backbones(register):
    raise RuntimeError("toy hook exploded")
'''


def dup_plugin(tag: str) -> str:
    return f'''
import featurestore
from ._toy import ToyBackbone


def factory(name, weights=None, **_):
    return ToyBackbone(name, weights, plugin="fs-dup-{tag}")


@featurestore.hookimpl
def register_backbones(register):
    register("shared_net", factory, dim=8)
    register("dup_{tag}_only", factory, dim=8)
'''


FAMILY_PLUGIN = '''
import featurestore
from ._toy import ToyBackbone


def family_factory(name, weights=None, **_):
    b = ToyBackbone(name, weights, plugin="fs-family-plugin", seed=1)
    b.made_by = "family"
    return b


def exact_factory(name, weights=None, **_):
    b = ToyBackbone(name, weights, plugin="fs-family-plugin", seed=2)
    b.made_by = "exact"
    return b


@featurestore.hookimpl
def register_backbones(register):
    register("toy:", family_factory, summary="toy:<anything>")
    register("toy:special", exact_factory, dim=8)
'''

# wrong argument name: pluggy refuses it at registration (PluginValidationError). The
# valid aggregator hook sorts before it, so pluggy has already added it when it refuses.
BAD_SIGNATURE_PLUGIN = '''
import featurestore


@featurestore.hookimpl
def register_aggregators(register):
    register("bad_sig_agg", lambda name, **kw: None)


@featurestore.hookimpl
def register_backbones(reg):
    reg("bad_sig_net", lambda name, weights=None: None)
'''

# a hookimpl for a hook that does not exist (typo): caught by pluggy's check_pending
UNKNOWN_HOOK_PLUGIN = '''
import featurestore


@featurestore.hookimpl
def register_backbone(register):
    register("typo_net", lambda name, weights=None: None)


@featurestore.hookimpl
def register_aggregators(register):
    register("typo_agg", lambda name, **kw: None)
'''

# (distribution, entry point name, package, source)
GOOD = ("fs-good-plugin", "good", "fs_good_plugin", GOOD_PLUGIN)
BROKEN_IMPORT = ("fs-broken-import", "broken_import", "fs_broken_import", BROKEN_IMPORT_PLUGIN)
HOOK_RAISES = ("fs-hook-raises", "hook_raises", "fs_hook_raises", HOOK_RAISES_PLUGIN)
DUP_A = ("fs-dup-a", "dup_a", "fs_dup_a", dup_plugin("a"))
DUP_B = ("fs-dup-b", "dup_b", "fs_dup_b", dup_plugin("b"))
FAMILY = ("fs-family-plugin", "family", "fs_family_plugin", FAMILY_PLUGIN)
BAD_SIGNATURE = ("fs-bad-signature", "bad_signature", "fs_bad_signature", BAD_SIGNATURE_PLUGIN)
UNKNOWN_HOOK = ("fs-unknown-hook", "unknown_hook", "fs_unknown_hook", UNKNOWN_HOOK_PLUGIN)


class PluginSite:
    """A directory on sys.path holding fake installed distributions."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch):
        self.root = root
        self.monkeypatch = monkeypatch
        self.packages: list[str] = []
        root.mkdir()
        monkeypatch.syspath_prepend(str(root))

    def install(self, dist: str, ep_name: str, package: str, source: str, version: str = "1.0") -> None:
        pkg = self.root / package
        pkg.mkdir()
        (pkg / "__init__.py").write_text(textwrap.dedent(source))
        (pkg / "_toy.py").write_text(TOY_BACKBONE_SRC)
        info = self.root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[featurestore]\n{ep_name} = {package}\n")
        self.packages.append(package)
        importlib.invalidate_caches()

    def install_all(self, *plugins: tuple[str, str, str, str]) -> "PluginSite":
        for p in plugins:
            self.install(*p)
        return self

    def host(self, allow: str | None = None, block: str | None = None) -> PluginHost:
        """A fresh host that reads the entry points (and env vars) now."""
        for var, value in ((ENV_ALLOW, allow), (ENV_BLOCK, block)):
            if value is None:
                self.monkeypatch.delenv(var, raising=False)
            else:
                self.monkeypatch.setenv(var, value)
        importlib.invalidate_caches()
        return PluginHost()

    def subprocess_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in (ENV_ALLOW, ENV_BLOCK)}
        env["PYTHONPATH"] = os.pathsep.join([str(self.root), *filter(None, [os.environ.get("PYTHONPATH")])])
        return env

    def cleanup(self) -> None:
        for name in list(sys.modules):
            if any(name == p or name.startswith(p + ".") for p in self.packages):
                del sys.modules[name]


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(ENV_ALLOW, raising=False)
    monkeypatch.delenv(ENV_BLOCK, raising=False)
    s = PluginSite(tmp_path / "site", monkeypatch)
    yield s
    # leave the process-wide host as every other test expects it: the real plugins only
    monkeypatch.undo()
    s.cleanup()
    importlib.invalidate_caches()
    get_host(reload=True)


def record(host: PluginHost, ep_name: str):
    rec = next((r for r in host.records if r.name == ep_name), None)
    assert rec is not None, f"no record for {ep_name!r}: {[r.name for r in host.records]}"
    return rec


def run_cli(site: PluginSite, *args: str, **env: str) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "featurestore.cli", *args], capture_output=True, text=True,
                       timeout=120, env=site.subprocess_env() | env)
    assert p.returncode == 0, f"exit {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"
    return p


def toy_image():
    from PIL import Image

    from featurestore.testing import smooth_image

    return Image.fromarray(smooth_image(20, 12, 0))


# -- loading -------------------------------------------------------------------


def test_good_plugin_loads_next_to_transformers(site):
    host = site.install_all(GOOD).host()
    rec = record(host, "good")
    assert rec.status == "loaded", rec.errors
    assert (rec.dist, rec.version, rec.module) == ("fs-good-plugin", "1.0", "fs_good_plugin")
    assert rec.registers == {"backbones": ["toy_backbone"]}
    assert rec.errors == []
    entry = host.backbones.get("toy_backbone")
    assert entry.plugin == "fs-good-plugin"
    assert entry.metadata == {"dim": 8, "patch_size": 2, "summary": "toy linear backbone for tests"}

    tr = record(host, TRANSFORMERS_EP)
    assert (tr.status, tr.dist) == ("loaded", TRANSFORMERS_DIST)
    assert "dinov2_vits14" in tr.registers["backbones"]
    assert host.backbones.get("dinov2_vits14").plugin == TRANSFORMERS_DIST
    assert host.plugin_for("fs-good-plugin") is rec and host.plugin_for("good") is rec


def test_create_backbone_from_plugin(site):
    import torch

    from featurestore.api import create_backbone, list_backbones
    from featurestore.backbone import Backbone

    site.install_all(GOOD)
    get_host(reload=True)
    bb = create_backbone("toy_backbone")
    assert isinstance(bb, Backbone) and (bb.name, bb.dim) == ("toy_backbone", 8)
    pre = bb.preprocessor()(toy_image())
    assert pre.pixel_values.shape == (3, 4, 4)
    out = bb.to(torch.device("cpu")).forward(pre.pixel_values[None], dense=True)
    assert out.cls.shape == (1, 8) and out.patches.shape == (1, 4, 8)
    assert torch.allclose(out.cls, out.patches.mean(1))
    assert create_backbone("toy_backbone").named_tensors()[0][1].equal(bb.named_tensors()[0][1])  # deterministic
    listed = {b["name"]: b for b in list_backbones("toy_*")}
    assert listed == {"toy_backbone": {"name": "toy_backbone", "plugin": "fs-good-plugin", "dim": 8,
                                       "patch_size": 2, "summary": "toy linear backbone for tests"}}


def test_plugin_backbone_extracts_into_store(site, fs_image_dir, fs_store_path):
    from featurestore.api import FeatureStore

    site.install_all(GOOD)
    get_host(reload=True)
    fs = FeatureStore(fs_store_path)
    summary = fs.extract([fs_image_dir], backbone="toy_backbone", dense=True, workers=0, device="cpu", batch_size=3)
    assert (summary.written, summary.errors, summary.ok) == (8, 0, True)
    (model,) = fs.models()
    assert (model["backbone"], model["rows"], model["dim"], model["plugin"]) == ("toy_backbone", 8, 8, "fs-good-plugin 1.0")


def test_import_error_is_isolated(site, fs_tiny_dinov2):
    from featurestore.api import create_backbone

    host = site.install_all(BROKEN_IMPORT, GOOD).host()
    broken = record(host, "broken_import")
    assert broken.status == "failed"
    assert broken.dist == "fs-broken-import" and broken.registers == {}
    assert len(broken.errors) == 1
    assert "ModuleNotFoundError" in broken.errors[0] and "fs_definitely_missing_dependency" in broken.errors[0]
    assert "never_registered" not in host.backbones.names()

    assert record(host, "good").status == "loaded"
    assert record(host, TRANSFORMERS_EP).status == "loaded"
    assert host.backbones.get("toy_backbone").plugin == "fs-good-plugin"

    # the global host sees the same, and both working plugins really build backbones
    get_host(reload=True)
    assert create_backbone("toy_backbone").dim == 8
    assert create_backbone(f"hf:{fs_tiny_dinov2}").dim == 32


def test_raising_hook_is_recorded(site):
    host = site.install_all(HOOK_RAISES, GOOD).host()
    rec = record(host, "hook_raises")
    assert rec.status == "failed" and rec.dist == "fs-hook-raises"
    assert rec.errors == ["register_backbones raised RuntimeError: toy hook exploded"]
    assert rec.registers == {}
    assert record(host, "good").status == "loaded"
    assert record(host, TRANSFORMERS_EP).status == "loaded"
    assert {"toy_backbone", "dinov2_vits14", "hf:"} <= set(host.backbones.names())


def test_wrong_hook_argument_name_fails_that_plugin_only(site):
    host = site.install_all(BAD_SIGNATURE, GOOD).host()
    rec = record(host, "bad_signature")
    assert rec.status == "failed"
    assert len(rec.errors) == 1
    assert rec.errors[0].startswith("invalid hook:") and "register_backbones(reg)" in rec.errors[0]
    assert "{'reg'}" in rec.errors[0]
    # a plugin reported as failed contributes nothing, not even its valid hooks
    assert rec.registers == {}
    assert "bad_sig_net" not in host.backbones.names()
    assert "bad_sig_agg" not in host.aggregators.names()
    assert record(host, "good").status == "loaded"
    assert record(host, TRANSFORMERS_EP).status == "loaded"
    assert "toy_backbone" in host.backbones


def test_unknown_hook_name_is_reported(site):
    second = ("fs-unknown-hook-2", "unknown_hook_2", "fs_unknown_hook_2", UNKNOWN_HOOK_PLUGIN)
    host = site.install_all(UNKNOWN_HOOK, second, GOOD).host()
    for name in ("unknown_hook", "unknown_hook_2"):  # every such plugin, not just the first
        rec = record(host, name)
        assert rec.status == "failed"
        assert len(rec.errors) == 1 and "unknown hook 'register_backbone'" in rec.errors[0], rec.errors
        assert rec.registers == {}
    assert "typo_agg" not in host.aggregators.names() and "typo_net" not in host.backbones.names()
    assert record(host, "good").status == "loaded" and "toy_backbone" in host.backbones


# -- conflicts -----------------------------------------------------------------


def test_duplicate_name_across_distributions(site):
    host = site.install_all(DUP_A, DUP_B, GOOD).host()
    with pytest.raises(DuplicateNameError) as ei:
        host.backbones.get("shared_net")
    msg = str(ei.value)
    assert "'fs-dup-a'" in msg and "'fs-dup-b'" in msg and "FEATURESTORE_DISABLE_PLUGINS" in msg
    assert "shared_net" not in host.backbones
    assert host.backbones.conflicts() == {"shared_net": ["fs-dup-a", "fs-dup-b"]}
    # every other name of both plugins is still usable
    assert host.backbones.get("dup_a_only").plugin == "fs-dup-a"
    assert host.backbones.get("dup_b_only").plugin == "fs-dup-b"
    assert host.backbones.get("toy_backbone").plugin == "fs-good-plugin"
    # both stay loaded; the conflict shows up in what each registers
    a, b = record(host, "dup_a"), record(host, "dup_b")
    assert a.status == b.status == "loaded"
    assert a.registers == {"backbones": ["dup_a_only", "shared_net"]}
    assert b.registers == {"backbones": ["dup_b_only", "shared_net"]}
    assert any("shared_net" in e for e in a.errors + b.errors)

    # disabling one of them resolves the name
    host = site.host(block="fs-dup-b")
    assert host.backbones.get("shared_net").plugin == "fs-dup-a"


@pytest.mark.slow  # the CLI in a subprocess
def test_duplicate_name_shown_by_cli(site):
    site.install_all(DUP_A, DUP_B)
    out = json.loads(run_cli(site, "plugins", "--json").stdout)
    assert out["conflicts"] == {"backbone": {"shared_net": ["fs-dup-a", "fs-dup-b"]}}
    by_name = {p["name"]: p for p in out["plugins"]}
    assert by_name["dup_a"]["status"] == by_name["dup_b"]["status"] == "loaded"
    assert "shared_net" in by_name["dup_b"]["registers"]["backbones"]
    # the conflicted name is not listed as a usable backbone
    names = {b["name"] for b in json.loads(run_cli(site, "backbones", "--json").stdout)}
    assert {"dup_a_only", "dup_b_only", "dinov2_vits14"} <= names and "shared_net" not in names


# -- allow / block lists ---------------------------------------------------------


@pytest.mark.parametrize("allow", ["good", "fs-good-plugin", " good , nothing_else "])
def test_allowlist(site, allow):
    host = site.install_all(GOOD, HOOK_RAISES).host(allow=allow)
    status = {r.name: r.status for r in host.records}
    assert {k: status[k] for k in ("good", "hook_raises", TRANSFORMERS_EP)} == {
        "good": "loaded", "hook_raises": "disabled", TRANSFORMERS_EP: "disabled"}
    # every other installed plugin (first-party ones included) is disabled too
    assert {v for k, v in status.items() if k != "good"} == {"disabled"}
    assert host.backbones.names() == ["toy_backbone"]
    disabled = record(host, TRANSFORMERS_EP)
    assert disabled.registers == {} and disabled.errors == [] and disabled.dist == TRANSFORMERS_DIST


@pytest.mark.parametrize("allow", ["good,transformers", "fs-good-plugin,featurestore-transformers"])
def test_allowlist_several(site, allow):
    host = site.install_all(GOOD, HOOK_RAISES).host(allow=allow)
    status = {r.name: r.status for r in host.records}
    assert {k: status[k] for k in ("good", "hook_raises", TRANSFORMERS_EP)} == {
        "good": "loaded", "hook_raises": "disabled", TRANSFORMERS_EP: "loaded"}
    assert {v for k, v in status.items() if k not in ("good", TRANSFORMERS_EP)} == {"disabled"}


@pytest.mark.parametrize("block", ["transformers", "featurestore-transformers"])
def test_blocklist(site, block):
    host = site.install_all(GOOD).host(block=block)
    status = {r.name: r.status for r in host.records}
    assert (status["good"], status[TRANSFORMERS_EP]) == ("loaded", "disabled")
    # other installed plugins still load: only the blocked one is off
    assert all(v == "loaded" for k, v in status.items() if k != TRANSFORMERS_EP)
    assert "toy_backbone" in host.backbones.names()
    assert not any(n.startswith("dinov2_") or n == "hf:" for n in host.backbones.names())
    with pytest.raises(UnknownNameError, match="pip install featurestore-transformers"):
        host.backbones.get("dinov2_vits14")


@pytest.mark.parametrize("block", ["good", "fs-good-plugin"])
def test_blocklist_wins_over_allowlist(site, block):
    host = site.install_all(GOOD).host(allow="good,transformers", block=block)
    assert record(host, "good").status == "disabled"
    assert record(host, TRANSFORMERS_EP).status == "loaded"
    assert "toy_backbone" not in host.backbones


def test_blocking_a_broken_plugin_silences_it(site):
    host = site.install_all(BROKEN_IMPORT, GOOD).host(block="fs-broken-import")
    rec = record(host, "broken_import")
    assert (rec.status, rec.errors) == ("disabled", [])


@pytest.mark.slow  # the CLI in a subprocess
def test_env_vars_reach_the_cli(site):
    site.install_all(GOOD)
    p = run_cli(site, "plugins", "--json", **{ENV_BLOCK: "featurestore-transformers"})
    statuses = {r["name"]: r["status"] for r in json.loads(p.stdout)["plugins"]}
    assert (statuses["good"], statuses[TRANSFORMERS_EP]) == ("loaded", "disabled")
    p = run_cli(site, "plugins", "--json", **{ENV_ALLOW: "good"})
    statuses = {r["name"]: r["status"] for r in json.loads(p.stdout)["plugins"]}
    assert statuses["good"] == "loaded" and {v for k, v in statuses.items() if k != "good"} == {"disabled"}


# -- names -----------------------------------------------------------------------


def test_family_registration(site):
    from featurestore.api import create_backbone

    host = site.install_all(FAMILY).host()
    assert record(host, "family").registers == {"backbones": ["toy:", "toy:special"]}
    assert host.backbones.get("toy:anything").name == "toy:"
    assert host.backbones.get("toy:some/path:with-colons").name == "toy:"
    assert host.backbones.get("toy:special").name == "toy:special"  # exact wins over the family
    get_host(reload=True)
    fam = create_backbone("toy:anything")
    assert (fam.made_by, fam.name) == ("family", "toy:anything")
    assert create_backbone("toy:special").made_by == "exact"


def test_unknown_backbone_names_known_and_suggests_install(site):
    # only these two: as if the openclip / timm distributions were not installed
    host = site.install_all(GOOD).host(allow="good,transformers")
    with pytest.raises(UnknownNameError) as ei:
        host.backbones.get("no_such_net")
    msg = str(ei.value)
    assert "no_such_net" in msg and "toy_backbone" in msg and "dinov2_vits14" in msg and "pip install" not in msg
    assert isinstance(ei.value, KeyError)
    for name, dist in [("open_clip:ViT-B-32", "featurestore-openclip"), ("timm:resnet50", "featurestore-timm"),
                       ("resnet50", "featurestore-timm"), ("clip_vitb32", "featurestore-openclip")]:
        with pytest.raises(UnknownNameError, match=f"pip install {dist}"):
            host.backbones.get(name)


def test_create_backbone_unknown_name(site):
    from featurestore.api import create_backbone

    site.install_all(GOOD)
    site.monkeypatch.setenv(ENV_ALLOW, "good,transformers")  # as if featurestore-openclip were not installed
    get_host(reload=True)
    with pytest.raises(UnknownNameError, match="pip install featurestore-openclip") as ei:
        create_backbone("open_clip:ViT-B-32")
    assert "toy_backbone" in str(ei.value)


# -- CLI -------------------------------------------------------------------------


@pytest.mark.slow  # the CLI in a subprocess
def test_cli_plugins_json(site):
    site.install_all(GOOD, BROKEN_IMPORT, HOOK_RAISES)
    allow = "good,broken_import,hook_raises,transformers"  # leave other installed plugins out of the picture
    out = json.loads(run_cli(site, "plugins", "--json", **{ENV_ALLOW: allow}).stdout)
    assert out["conflicts"] == {}
    for p in out["plugins"]:
        assert {"name", "distribution", "version", "status", "registers", "errors"} <= set(p)
    by_name = {p["name"]: p for p in out["plugins"] if p["status"] != "disabled"}
    assert set(by_name) == {"good", "broken_import", "hook_raises", TRANSFORMERS_EP}
    assert by_name["good"] == {"name": "good", "module": "fs_good_plugin", "distribution": "fs-good-plugin",
                               "version": "1.0", "status": "loaded",
                               "registers": {"backbones": ["toy_backbone"]}, "errors": []}
    assert by_name["broken_import"]["status"] == "failed"
    assert "ModuleNotFoundError" in by_name["broken_import"]["errors"][0]
    assert by_name["hook_raises"]["status"] == "failed"
    assert "toy hook exploded" in by_name["hook_raises"]["errors"][0]
    tr = by_name[TRANSFORMERS_EP]
    assert (tr["distribution"], tr["status"], tr["errors"]) == (TRANSFORMERS_DIST, "loaded", [])
    assert "dinov2_vits14" in tr["registers"]["backbones"]

    human = run_cli(site, "plugins", COLUMNS="250").stdout  # wide enough that rich wraps no cell
    assert "fs-broken-import" in human and "failed" in human


@pytest.mark.slow  # the CLI in a subprocess
def test_cli_backbones_json(site):
    site.install_all(GOOD)
    items = json.loads(run_cli(site, "backbones", "--json").stdout)
    by_name = {b["name"]: b for b in items}
    assert by_name["dinov2_vits14"]["dim"] == 384
    assert by_name["dinov2_vits14"]["plugin"] == TRANSFORMERS_DIST
    assert by_name["toy_backbone"]["plugin"] == "fs-good-plugin" and by_name["toy_backbone"]["dim"] == 8
    filtered = json.loads(run_cli(site, "backbones", "dinov2_vits*", "--json").stdout)
    assert [b["name"] for b in filtered] == ["dinov2_vits14", "dinov2_vits14_reg"]


def test_normal_host_has_no_fake_plugins():
    """Runs after the tests above: the fixture restored the process-wide host."""
    host = get_host()
    assert not any(r.name in {"good", "dup_a", "broken_import"} for r in host.records)
    assert record(host, TRANSFORMERS_EP).status == "loaded"
