"""The example DVC pipeline (dvc.yaml, params.yaml, pipeline/) reproduced by real DVC.

The pipeline files are copied into two fresh git repositories under tmp, ``a`` and ``b``;
``dvc init`` runs there, never in this checkout. The module fixture runs every DVC command
once, in this order, and the tests check what it recorded:

1. ``dvc repro`` in ``a`` and ``b`` at the same time (two clean reproductions, one each);
2. then, at the same time: in ``a``, ``dvc status`` and a second ``dvc repro`` (nothing to
   do), then ``adapt.dim`` 8 -> 4, ``dvc status`` and ``dvc repro``; in ``b``,
   ``dvc repro --force --single-item extract@backbone0`` then ``dvc repro`` (a clean
   reproduction of one backbone's stores in place).

The pipeline's commands run ``python`` and ``featurestore`` from this interpreter's
environment (its bin directory goes first on PATH).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
PIPELINE_FILES = ("dvc.yaml", "params.yaml", "pipeline")
NEW_DIM = 4  # adapt.dim after the change (params.yaml has 8)

if shutil.which("git") is None:
    pytest.skip("git is not installed: DVC pipelines live in a git repository", allow_module_level=True)

pytestmark = pytest.mark.slow


def _yaml(path: Path) -> Any:
    import yaml  # PyYAML: a dependency of dvc (the dev extra)

    return yaml.safe_load(path.read_text())


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@dataclass
class Repo:
    """A temporary git + DVC repository holding a copy of the pipeline."""

    root: Path
    env: dict[str, str]
    log: list[str] = field(default_factory=list)

    def run(self, *args: str, stdout_only: bool = False) -> str:
        """Run a command here; its stdout + stderr. Fails the test, showing the output, on exit != 0."""
        cmd = [sys.executable, "-m", "dvc", *args[1:]] if args[0] == "dvc" else list(args)
        proc = subprocess.run(cmd, check=False, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=600)
        out = proc.stdout + proc.stderr
        self.log.append(f"$ {' '.join(args)}\n{out}")
        if proc.returncode != 0:
            raise AssertionError(f"`{' '.join(args)}` in {self.root} exited {proc.returncode}:\n{out[-6000:]}")
        return proc.stdout if stdout_only else out

    def lock(self) -> dict[str, Any]:
        return _yaml(self.root / "dvc.lock")["stages"]

    def manifests(self) -> dict[str, dict[str, Any]]:
        return {p.name: json.loads(p.read_text()) for p in sorted((self.root / "manifests").glob("*.json"))}

    def set_param(self, pattern: str, replacement: str) -> None:
        params = self.root / "params.yaml"
        text, n = re.subn(pattern, replacement, params.read_text(), flags=re.MULTILINE)
        assert n == 1, f"{pattern!r} matches {n} lines of params.yaml"
        params.write_text(text)


def _make_repo(root: Path, env: dict[str, str]) -> Repo:
    root.mkdir()
    for name in PIPELINE_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, root / name)
    repo = Repo(root, env)
    repo.run("git", "init", "-q")
    repo.run("dvc", "init", "-q")
    return repo


def _both(f: Callable[[], Any], g: Callable[[], Any]) -> tuple[Any, Any]:
    """f() and g() at the same time (two repositories; each DVC run is mostly one busy core)."""
    with ThreadPoolExecutor(2) as pool:
        ff, gf = pool.submit(f), pool.submit(g)
        return ff.result(), gf.result()


def _ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def _skipped(output: str) -> set[str]:
    return set(re.findall(r"Stage '([^']+)' didn't change, skipping", output))


@dataclass
class Record:
    """What the fixture saw."""

    a: Repo
    b: Repo
    params: dict[str, Any]
    stages: set[str]
    lock1: dict[str, Any] = field(default_factory=dict)  # a, after the first repro
    manifests1: dict[str, Any] = field(default_factory=dict)
    b_lock1: dict[str, Any] = field(default_factory=dict)
    b_manifests1: dict[str, Any] = field(default_factory=dict)
    status_clean: str = ""
    noop: str = ""
    lock_noop: dict[str, Any] = field(default_factory=dict)
    status_changed: dict[str, Any] = field(default_factory=dict)
    repro_changed: str = ""
    lock2: dict[str, Any] = field(default_factory=dict)
    manifests2: dict[str, Any] = field(default_factory=dict)
    b_forced: str = ""
    b_after_forced: str = ""
    b_lock2: dict[str, Any] = field(default_factory=dict)
    b_manifests2: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(scope="module")
def rec(tmp_path_factory: pytest.TempPathFactory) -> Record:
    if shutil.which("featurestore", path=str(Path(sys.executable).parent)) is None:
        pytest.fail(f"no featurestore script next to {sys.executable}: pip install -e '.[dev]' and the plugins")
    tmp = tmp_path_factory.mktemp("dvc")
    env = dict(os.environ)
    env.update(
        PATH=str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
        DVC_NO_ANALYTICS="1",
        DVC_SITE_CACHE_DIR=str(tmp / "dvc-site-cache"),
        OMP_NUM_THREADS="1",  # two pipelines share the cores; also the fastest for 24 tiny images
    )
    env.pop("DVC_ROOT", None)
    a, b = _make_repo(tmp / "a", env), _make_repo(tmp / "b", env)
    params = _yaml(a.root / "params.yaml")
    n = len(params["backbones"])
    stages = {"images", "weights"} | {f"{s}@backbone{i}" for s in ("extract", "adapt") for i in range(n)}
    r = Record(a=a, b=b, params=params, stages=stages)

    _both(lambda: a.run("dvc", "repro"), lambda: b.run("dvc", "repro"))
    r.lock1, r.manifests1, r.b_lock1, r.b_manifests1 = a.lock(), a.manifests(), b.lock(), b.manifests()

    def in_a() -> None:
        r.status_clean = a.run("dvc", "status", "--json", stdout_only=True)
        r.noop = a.run("dvc", "repro")
        r.lock_noop = a.lock()
        a.set_param(r"^  dim: 8\b", f"  dim: {NEW_DIM}")
        r.status_changed = json.loads(a.run("dvc", "status", "--json", stdout_only=True))
        r.repro_changed = a.run("dvc", "repro")
        r.lock2, r.manifests2 = a.lock(), a.manifests()

    def in_b() -> None:
        r.b_forced = b.run("dvc", "repro", "--force", "--single-item", "extract@backbone0")
        r.b_after_forced = b.run("dvc", "repro")
        r.b_lock2, r.b_manifests2 = b.lock(), b.manifests()

    _both(in_a, in_b)
    return r


def _outs(lock: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {o["path"]: o for stage in lock.values() for o in stage.get("outs", [])}


def _digests(manifest: dict[str, Any], kinds: tuple[str, ...] | None = None) -> dict[str, str]:
    return {k: t["content_digest"] for k, t in manifest["tables"].items() if kinds is None or t["kind"] in kinds}


def test_repro_builds_every_stage_and_locks_its_outputs(rec: Record):
    root, lock = rec.a.root, rec.lock1
    assert set(lock) == rec.stages
    count = rec.params["images"]["count"]
    dim = rec.params["adapt"]["dim"]
    for bb in rec.params["backbones"]:
        name = bb["name"]
        for store in (f"stores/{name}", f"stores/{name}-adapted"):
            assert (root / store / "models.lance").is_dir(), f"{store} is not a featurestore store"
        plain, adapted = rec.manifests1[f"{name}.json"], rec.manifests1[f"{name}-adapted.json"]
        for m in (plain, adapted):
            assert m["format"] == "featurestore-manifest/1"
        feats = {k: t for k, t in plain["tables"].items() if t["kind"] == "features"}
        assert len(feats) == 1 and feats.popitem()[1]["rows"] == count, plain["tables"].keys()
        kinds = sorted(t["kind"] for t in adapted["tables"].values())
        assert kinds.count("features") == 1 and kinds.count("adapted") == 1, kinds
        (ad,) = [t for t in adapted["tables"].values() if t["kind"] == "adapted"]
        assert ad["rows"] == count and ad["card"]["dim"] == dim
        assert all(t["tags"] == {} for t in adapted["tables"].values())  # --no-tag: nothing pins old files

    # the outputs as they are now (after the later reproductions too) against dvc.lock now
    outs = _outs(rec.a.lock())
    expected = {"data/images", "data/weights"}
    for bb in rec.params["backbones"]:
        expected |= {f"stores/{bb['name']}", f"stores/{bb['name']}-adapted"}
        expected |= {f"manifests/{bb['name']}.json", f"manifests/{bb['name']}-adapted.json"}
    assert set(outs) == expected
    for path, out in outs.items():
        target = root / path
        if target.is_file():
            assert out["md5"] == _md5(target), path
            continue
        # a directory: its md5 names DVC's listing of (relpath, md5) in the cache
        assert out["md5"].endswith(".dir"), out
        h = out["md5"]
        listing = json.loads((root / ".dvc" / "cache" / "files" / "md5" / h[:2] / h[2:]).read_text())
        files = {p.relative_to(target).as_posix(): _md5(p) for p in target.rglob("*") if p.is_file()}
        assert {e["relpath"]: e["md5"] for e in listing} == files, path
        assert out["nfiles"] == len(files)
        if path.startswith("stores/"):
            # compacted before DVC hashed it: one version and one data file per table
            tables = sorted(target.glob("*.lance"))
            assert tables
            for t in tables:
                assert len(list((t / "_versions").glob("*.manifest"))) == 1, f"{t} keeps old versions"
                assert len(list((t / "data").iterdir())) == 1, f"{t} is not compacted"
            # besides: the writers' lock files, the BTREE indices of feature tables (id, video_id)
            # and the stat cache (its own database: what each input file hashed to)
            extra = len(list(target.glob("_featurestore_locks/*.lock"))) + len(list(target.glob("*.lance/_indices/*/*")))
            extra += sum(1 for p in target.glob("_featurestore_state/**/*") if p.is_file())
            assert out["nfiles"] - extra <= 4 * len(tables) + 1, f"{path}: {out['nfiles']} files for {len(tables)} tables"


def test_second_repro_runs_nothing(rec: Record):
    assert json.loads(rec.status_clean) == {}
    assert _ran(rec.noop) == set(), rec.noop
    assert _skipped(rec.noop) == rec.stages, rec.noop
    assert rec.lock_noop == rec.lock1


def test_changing_adapt_dim_reruns_only_the_adapt_stages(rec: Record):
    adapt = {s for s in rec.stages if s.startswith("adapt@")}
    assert set(rec.status_changed) == adapt, rec.status_changed
    for stage, changes in rec.status_changed.items():
        params = [c["changed deps"]["params.yaml"] for c in changes if isinstance(c, dict) and "changed deps" in c]
        assert params == [{"adapt.dim": "modified"}], (stage, changes)
    assert _ran(rec.repro_changed) == adapt, rec.repro_changed
    assert _skipped(rec.repro_changed) == rec.stages - adapt, rec.repro_changed
    for stage in rec.stages - adapt:
        assert rec.lock2[stage] == rec.lock1[stage], f"{stage} changed in dvc.lock"
    for stage in adapt:
        assert rec.lock2[stage]["params"]["params.yaml"]["adapt.dim"] == NEW_DIM
        assert rec.lock2[stage]["outs"] != rec.lock1[stage]["outs"]
    for bb in rec.params["backbones"]:
        before, after = rec.manifests1[f"{bb['name']}-adapted.json"], rec.manifests2[f"{bb['name']}-adapted.json"]
        assert _digests(after, ("features",)) == _digests(before, ("features",))  # nothing re-extracted
        (ad,) = [t for t in after["tables"].values() if t["kind"] == "adapted"]
        assert ad["card"]["dim"] == NEW_DIM
        assert set(_digests(after, ("adapted",))).isdisjoint(_digests(before, ("adapted",)))  # a new adapter


def test_a_fresh_copy_reproduces_every_feature_table(rec: Record):
    """``a`` and ``b``: same digests for every features and adapted table, other files.

    Catalog tables (models, adapters) are compared in place (next test): their cards
    record the absolute path the weights were loaded from, which differs between copies.
    """
    assert rec.manifests1.keys() == rec.b_manifests1.keys()
    for name, m in rec.manifests1.items():
        mb = rec.b_manifests1[name]
        assert m["tables"].keys() == mb["tables"].keys(), name
        digests = _digests(m, ("features", "adapted"))
        assert digests and digests == _digests(mb, ("features", "adapted")), name
    a_outs, b_outs = _outs(rec.lock1), _outs(rec.b_lock1)
    assert a_outs["data/images"]["md5"] == b_outs["data/images"]["md5"]
    for path in a_outs:
        if path.startswith("stores/"):  # LanceDB writes uuids and timestamps into file names and files
            assert a_outs[path]["md5"] != b_outs[path]["md5"], path


def test_a_clean_reproduction_in_place_has_the_same_digests(rec: Record):
    """``b``: extract@backbone0 forced, then adapt@backbone0 reruns (its input changed); every table."""
    assert _ran(rec.b_forced) == {"extract@backbone0"}, rec.b_forced
    assert _ran(rec.b_after_forced) == {"adapt@backbone0"}, rec.b_after_forced
    name = rec.params["backbones"][0]["name"]
    before, after = _outs(rec.b_lock1), _outs(rec.b_lock2)
    for store in (f"stores/{name}", f"stores/{name}-adapted"):
        assert before[store]["md5"] != after[store]["md5"], f"{store}: the files did not change"
    differ = []
    for manifest in (f"{name}.json", f"{name}-adapted.json"):
        old, new = rec.b_manifests1[manifest], rec.b_manifests2[manifest]
        assert old["tables"].keys() == new["tables"].keys(), manifest
        differ += [f"{manifest}: {t}" for t in old["tables"] if _digests(old)[t] != _digests(new)[t]]
    assert not differ, f"content digests differ between two clean reproductions: {differ}"
