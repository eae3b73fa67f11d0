"""The catalog commands start light and answer from the store's catalog cache until the store changes.

What is checked is the mechanism (which modules a fresh process imports, whether the cache
file was used, whether every kind of change is seen), never a time.
"""

from __future__ import annotations

import json
import os

import pytest

from featurestore import FeatureStore
from featurestore.catalog_cache import cache_file, cached, fingerprint
from featurestore.cli import main
from featurestore.testing import MODEL_LIBRARIES, run_cli_fresh, write_images
from featurestore.versions import tag_version

HEAVY = (*MODEL_LIBRARIES, "lancedb", "pyarrow")


@pytest.fixture
def store(tmp_path, fs_tiny_dinov2):
    write_images(tmp_path / "a", 3)
    fs = FeatureStore(tmp_path / "store.lance")
    s = fs.extract([tmp_path / "a"], backbone=f"hf:{fs_tiny_dinov2}", workers=0)
    return tmp_path / "store.lance", s.table


def _json(capsys, *args) -> object:
    capsys.readouterr()
    assert main([*map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _uncached(capsys, monkeypatch, *args) -> object:
    with monkeypatch.context() as m:
        m.setenv("FEATURESTORE_CATALOG_CACHE", "0")
        return _json(capsys, *args)


@pytest.mark.slow  # fresh interpreters
def test_catalog_commands_import_no_model_library(store):
    path, table = store
    env = dict(os.environ, FEATURESTORE_CATALOG_CACHE="0")  # the LanceDB path itself: no torch either
    for args in (["models"], ["errors"], ["clips"], ["manifest"], ["versions", "-m", table]):
        got, err = run_cli_fresh([*args, "-s", path, "--json"], env)
        assert (got["rc"], got["imported"]) == (0, []), (args, err)
    for args in (["backbones"], ["plugins"], ["aggregators"]):
        got, err = run_cli_fresh([*args, "--json"], env, watch=HEAVY)
        assert (got["rc"], got["imported"]) == (0, []), (args, err)


@pytest.mark.slow  # fresh interpreters
def test_a_second_read_uses_the_cache_and_imports_no_lancedb(store):
    path, table = store
    before = {p.name for p in path.iterdir()}  # tables, and the writers' lock files
    for args in (["models"], ["errors"], ["clips"], ["manifest"], ["versions", "-m", table]):
        first, err = run_cli_fresh([*args, "-s", path, "--json"], watch=HEAVY)
        assert first["rc"] == 0 and "lancedb" in first["imported"], (args, err)
        again, err = run_cli_fresh([*args, "-s", path, "--json"], watch=HEAVY)
        assert (again["rc"], again["imported"], again["stdout"]) == (0, [], first["stdout"]), (args, err)
    assert cache_file(path).is_file()
    assert {p.name for p in path.iterdir()} == before  # nothing added to the store (the lock files were there before)


def test_cached_answers_print_what_lancedb_gives(store, capsys, monkeypatch):
    path, table = store
    for args in (["models"], ["errors"], ["clips"], ["manifest"], ["versions", "-m", table]):
        miss = _json(capsys, *args, "-s", path)
        hit = _json(capsys, *args, "-s", path)
        assert miss == hit == _uncached(capsys, monkeypatch, *args, "-s", path), args


def test_every_kind_of_change_is_seen(store, tmp_path, fs_tiny_dinov2, fs_tiny_model_factory, capsys, monkeypatch):
    path, table = store
    fs = FeatureStore(path)
    assert _json(capsys, "models", "-s", path)[0]["rows"] == 3
    # more rows in the same table (a new version)
    write_images(tmp_path / "b", 2, seed=50)
    fs.extract([tmp_path / "b"], backbone=f"hf:{fs_tiny_dinov2}", workers=0, tag="second")
    assert _json(capsys, "models", "-s", path)[0]["rows"] == 5
    # a tag alone (no new version), through the Python API
    assert "manual" not in _json(capsys, "versions", "-m", table, "-s", path)["tags"]
    tag_version(path, table, "manual")
    assert "manual" in _json(capsys, "versions", "-m", table, "-s", path)["tags"]
    # error rows (the errors table is created)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "broken.jpg").write_bytes(b"not an image")
    fs.extract([tmp_path / "c"], backbone=f"hf:{fs_tiny_dinov2}", workers=0)
    errors = _json(capsys, "errors", "-s", path)
    assert [e["uri"].rsplit("/", 1)[1] for e in errors] == ["broken.jpg"]
    # another model: a new table
    fs.extract([tmp_path / "a"], backbone=f"hf:{fs_tiny_model_factory('vit')}", workers=0)
    assert len(_json(capsys, "models", "-s", path)) == 2
    # old versions cleaned up: manifests removed
    assert main(["cleanup", "-s", str(path), "--older-than", "0"]) == 0
    versions = _json(capsys, "versions", "-m", table, "-s", path)
    assert versions == _uncached(capsys, monkeypatch, "versions", "-m", table, "-s", path)
    for args in (["models"], ["errors"], ["manifest"]):
        assert _json(capsys, *args, "-s", path) == _uncached(capsys, monkeypatch, *args, "-s", path), args


def test_fingerprint_changes_with_a_commit_and_not_with_a_read(store):
    path, table = store
    before = fingerprint(path)
    FeatureStore(path).models()
    FeatureStore(path).table(table).to_arrow()
    assert fingerprint(path) == before
    FeatureStore(path).table(table).delete("false")  # a commit that changes no row is still a version
    assert fingerprint(path) != before


def test_an_unwritable_cache_still_answers(store, capsys, monkeypatch, tmp_path):
    path, _ = store
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv("FEATURESTORE_CACHE_DIR", str(blocker))  # no directory can be made there
    first = _json(capsys, "models", "-s", path)
    assert first == _json(capsys, "models", "-s", path) and first[0]["rows"] == 3


def test_no_cache_for_missing_stores_or_uris(tmp_path):
    calls = []
    missing = tmp_path / "nowhere"
    assert cached(str(missing), "k", lambda: calls.append(1) or [1]) == [1]
    assert not missing.exists()  # the cache never creates a store
    assert cached("s3://bucket/store", "k", lambda: calls.append(2) or {"a": (1, 2)}) == {"a": [1, 2]}
    assert calls == [1, 2]


def test_errors_are_not_cached(store):
    path, _ = store
    calls = []

    def boom():
        calls.append(1)
        raise KeyError("x")

    for _ in range(2):
        with pytest.raises(KeyError):
            cached(str(path), "bad", boom)
    assert calls == [1, 1]


@pytest.mark.slow  # fresh interpreters
def test_extract_leaves_models_and_errors_answered(tmp_path, fs_tiny_dinov2):
    write_images(tmp_path / "a", 2)
    path = tmp_path / "store.lance"
    got, err = run_cli_fresh(["extract", tmp_path / "a", "-b", f"hf:{fs_tiny_dinov2}", "-s", path, "--workers", "0"], watch=HEAVY)
    assert got["rc"] == 0, err
    for args in (["models"], ["errors"]):
        again, err = run_cli_fresh([*args, "-s", path, "--json"], watch=HEAVY)
        assert (again["rc"], again["imported"]) == (0, []), (args, err)
    assert json.loads(again["stdout"]) == [] and json.loads(run_cli_fresh(["models", "-s", path, "--json"])[0]["stdout"])[0]["rows"] == 2


def test_a_store_written_again_from_scratch_is_not_taken_for_the_old_one(tmp_path, fs_tiny_dinov2, capsys):
    """As a DVC stage does: delete the store, write it again with as many commits, other content."""
    import shutil

    path = tmp_path / "store.lance"
    write_images(tmp_path / "a", 3)
    FeatureStore(path).extract([tmp_path / "a"], backbone=f"hf:{fs_tiny_dinov2}", workers=0, tag_run=False)
    first = _json(capsys, "manifest", "-s", path)
    shutil.rmtree(path)
    shutil.rmtree(tmp_path / "a")
    write_images(tmp_path / "a", 3, seed=7)  # the same number of images, other pixels
    FeatureStore(path).extract([tmp_path / "a"], backbone=f"hf:{fs_tiny_dinov2}", workers=0, tag_run=False)
    second = _json(capsys, "manifest", "-s", path)
    (name,) = [t for t, v in second["tables"].items() if v["kind"] == "features"]
    assert second["tables"][name]["content_digest"] != first["tables"][name]["content_digest"]
