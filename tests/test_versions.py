"""Run tags, compaction, cleanup that keeps tagged versions, and the store manifest."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest

from featurestore import FeatureStore
from featurestore.cli import main as cli_main
from featurestore.config import Manifest
from featurestore.errors import ConfigError, StoreNotFoundError
from featurestore.maintenance import cleanup, compact, parse_duration
from featurestore.manifest import build_manifest, content_digest
from featurestore.readers import FeatureDataset, table_versions
from featurestore.store import Store
from featurestore.testing import write_images


@pytest.fixture
def images(tmp_path):
    write_images(tmp_path / "a", 6, seed=0)
    write_images(tmp_path / "b", 4, seed=50)
    return tmp_path


def _extract(store, images, model, sub="a", **kw):
    return FeatureStore(store).extract([images / sub], backbone=f"hf:{model}", workers=0, batch_size=2, **kw)


def test_each_run_tags_the_version_it_ends_at(fs_tiny_dinov2, images, tmp_path):
    store = tmp_path / "s"
    first = _extract(store, images, fs_tiny_dinov2)
    assert first.tag == f"run-{first.run_id}" and first.version == Store(store).open_table(first.table).version
    second = _extract(store, images, fs_tiny_dinov2, sub="b", tag="paper-v1")
    assert second.tag == "paper-v1" and second.version > first.version
    info = table_versions(store, first.table)
    assert info["tags"] == {first.tag: first.version, "paper-v1": second.version}
    # a reader pinned to the first run's tag sees its 6 rows, not the 4 added later
    assert len(FeatureDataset(store, first.table, version=first.tag)) == 6
    assert len(FeatureDataset(store, first.table, version="paper-v1")) == 10
    with pytest.raises(ConfigError, match="already has a tag 'paper-v1'"):
        _extract(store, images, fs_tiny_dinov2, sub="b", tag="paper-v1")
    untagged = _extract(store, images, fs_tiny_dinov2, sub="b", tag_run=False)
    assert untagged.tag is None and set(table_versions(store, first.table)["tags"]) == {first.tag, "paper-v1"}


def test_compaction_keeps_rows_digest_and_tagged_versions(fs_tiny_dinov2, images, tmp_path):
    store = tmp_path / "s"
    first = _extract(store, images, fs_tiny_dinov2, tag_run=False)  # 3 commits of 2 rows
    _extract(store, images, fs_tiny_dinov2, sub="b", tag="kept")  # 2 more commits
    st = Store(store)
    table = st.open_table(first.table)
    before_digest, rows = content_digest(table)
    before_versions = len(table.list_versions())
    ids = sorted(FeatureDataset(store, first.table).ids)
    (res,) = compact(st, first.table)
    assert res["files_before"] > 1 and res["files"] == 1 and res["version"] > res["version_before"]
    table = st.open_table(first.table)
    assert content_digest(table) == (before_digest, rows) and rows == 10
    assert sorted(FeatureDataset(store, first.table).ids) == ids
    # versions before the tag went; the tagged one is still readable and says so
    left = [int(v["version"]) for v in table.list_versions()]
    tagged = table_versions(store, first.table)["tags"]["kept"]
    # the first run's versions are gone (versions committed within the 10 ms margin before
    # the tag may stay)
    assert tagged in left and min(left) > first.version and len(left) < before_versions
    assert "tagged kept" in res["note"]
    assert len(FeatureDataset(store, first.table, version="kept")) == 10


def test_cleanup_without_tags_leaves_one_version_and_parses_durations(fs_tiny_dinov2, images, tmp_path):
    store = tmp_path / "s"
    s = _extract(store, images, fs_tiny_dinov2, tag_run=False)
    st = Store(store)
    (kept,) = cleanup(st, s.table, older_than=parse_duration("7d"))  # nothing that old (but compacted)
    assert kept["versions"] >= kept["versions_before"] > 1
    with pytest.warns(UserWarning, match="removes every version except the latest"):  # LanceDB's own warning, kept
        (res,) = cleanup(st, s.table, older_than=parse_duration("0"))
    assert res["versions"] == 1 and len(FeatureDataset(store, s.table)) == 6
    assert parse_duration("12h").total_seconds() == 43200
    with pytest.raises(ConfigError, match="NUMBER followed by d, h, m or s"):
        parse_duration("soon")


def test_manifest_digest_equals_across_clean_reruns_and_differs_with_content(fs_tiny_dinov2, images, tmp_path):
    a, b = tmp_path / "a_store", tmp_path / "b_store"
    sa = _extract(a, images, fs_tiny_dinov2, tag_run=False)
    sb = _extract(b, images, fs_tiny_dinov2, tag_run=False)
    ma, mb = build_manifest(Store(a)), build_manifest(Store(b))
    ta, tb = ma.tables[sa.table], mb.tables[sb.table]
    assert ta.kind == "features" and ta.rows == 6 and ta.model_hash == sa.model_hash and ta.card["table"] == sa.table
    # the guarantee: same files, model, batch size, device, threads and library versions →
    # bit-identical features, whatever the store's history (other commits, other files)
    assert ta.content_digest == tb.content_digest and ma.rows == mb.rows == 6
    assert ma.tables["models"].kind == "catalog"
    _extract(b, images, fs_tiny_dinov2, sub="b", tag_run=False)
    assert build_manifest(Store(b)).tables[sb.table].content_digest != ta.content_digest
    Manifest.model_validate_json(ma.model_dump_json())  # the schema in schemas/manifest.schema.json


def test_another_batch_size_gives_the_same_rows_within_verify_tolerance(fs_tiny_dinov2, images, tmp_path):
    # Not bit-identical in general: BLAS blocks its sums by the matrix sizes, so batch 2 and
    # batch 4 may differ in the last bits (the README says so). Same ids, same rows, and
    # values within verify's default tolerance is what holds.
    from featurestore.verify import DEFAULT_ATOL

    a, b = tmp_path / "a_store", tmp_path / "b_store"
    sa = _extract(a, images, fs_tiny_dinov2, tag_run=False)
    FeatureStore(b).extract([images / "a"], backbone=f"hf:{fs_tiny_dinov2}", workers=0, batch_size=4, tag_run=False)

    def rows(store):
        t = Store(store).open_table(sa.table).to_arrow().sort_by("id")
        return t.column("id").to_pylist(), np.asarray(t.column("cls").to_pylist(), np.float64)

    (ids_a, cls_a), (ids_b, cls_b) = rows(a), rows(b)
    assert ids_a == ids_b and len(ids_a) == 6
    assert np.abs(cls_a - cls_b).max() <= DEFAULT_ATOL


def test_cli_tag_compact_cleanup_manifest(fs_tiny_dinov2, images, tmp_path, capsys):
    store = tmp_path / "s"
    s = _extract(store, images, fs_tiny_dinov2, tag_run=False)
    st = str(store)
    assert cli_main(["tag", "v1", "-s", st, "-m", s.table, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"model": s.table, "tag": "v1", "version": s.version}
    assert cli_main(["tag", "v1", "-s", st, "-m", s.table]) == 2
    assert "already has a tag" in capsys.readouterr().err
    assert cli_main(["compact", "-s", st, "--tag", "compacted", "--json"]) == 0
    rows = {r["table"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows[s.table]["files"] == 1
    assert table_versions(store, s.table)["tags"]["compacted"] == rows[s.table]["version"]
    assert cli_main(["cleanup", "-s", st, "--older-than", "0", "--json"]) == 0
    assert all(r["versions"] >= 1 for r in json.loads(capsys.readouterr().out))
    out = tmp_path / "m" / "manifest.json"
    assert cli_main(["manifest", "-s", st, "-o", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["format"] == "featurestore-manifest/1" and doc["tables"][s.table]["rows"] == 6
    assert set(doc["tables"][s.table]["tags"]) == {"v1", "compacted"}
    assert cli_main(["cleanup", "-s", st, "--older-than", "later"]) == 2
    shutil.rmtree(store)


# -- drift -----------------------------------------------------------------------------------


def test_verify_reextracts_and_catches_changed_weights_and_files(fs_tiny_dinov2, images, tmp_path, capsys):
    from featurestore.verify import verify

    store = tmp_path / "s"
    s = FeatureStore(store).extract([images / "a"], backbone=f"hf:{fs_tiny_dinov2}", dense=True, workers=0, batch_size=3)
    rep = verify(store, s.table, sample=4)
    assert rep.ok and rep.weights_ok and rep.checked == 4 and rep.max_abs_cls <= 1e-4 and rep.min_cos_patches > 0.999
    # a source file changed since extraction is reported, not compared
    victim = sorted((images / "a").iterdir())[0]
    victim.write_bytes(victim.read_bytes() + b"\0")
    rep = verify(store, s.table, sample=6)
    assert rep.checked == 5 and rep.skipped == {"source changed since extraction": 1} and rep.ok
    # a tolerance below the batched-vs-single forward noise fails with the figures
    strict = verify(store, s.table, sample=6, atol=-1.0)
    assert not strict.ok and "drifted" in strict.message
    # other weights: refused before anything is compared
    from safetensors.torch import load_file, save_file

    other = tmp_path / "other"
    shutil.copytree(fs_tiny_dinov2, other)
    (w,) = other.glob("*.safetensors")
    tensors = load_file(str(w))
    k = sorted(tensors)[0]
    tensors[k] = tensors[k] + 1
    save_file(tensors, str(w))
    bad = verify(store, s.table, sample=2, weights=str(other))
    assert not bad.ok and not bad.weights_ok and bad.checked == 0 and "not the one that made" in bad.message
    assert cli_main(["verify", "-s", str(store), "-m", s.table, "--sample", "2", "--weights", str(other)]) == 1
    assert "FAILED" in capsys.readouterr().out
    assert cli_main(["verify", "-s", str(store), "-m", s.table, "--sample", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["checked"] == 3


def test_reading_commands_take_a_version_or_tag(fs_tiny_dinov2, images, tmp_path, capsys):
    from featurestore.probe import probe

    store = tmp_path / "s"
    first = _extract(store, images, fs_tiny_dinov2, tag="first")
    _extract(store, images, fs_tiny_dinov2, sub="b")
    fs = FeatureStore(store)
    old_ids = set(FeatureDataset(store, first.table, version="first").ids)
    query = sorted(old_ids)[0]
    hits = fs.search_id(first.table, query, k=10, version="first").hits
    assert len(hits) == 6 and {h["id"] for h in hits} == old_ids
    assert len(fs.search_id(first.table, query, k=10).hits) == 10
    assert cli_main(["search", "-s", str(store), "-m", first.table, "--id", query, "-k", "10", "--version", str(first.version), "--json"]) == 0
    assert {h["id"] for h in json.loads(capsys.readouterr().out)["hits"]} == old_ids
    assert cli_main(["search", "-s", str(store), "-m", first.table, "--id", query, "--version", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
    labels = tmp_path / "labels.csv"
    every = FeatureDataset(store, first.table, columns=["uri"]).to_numpy(["uri"])
    labels.write_text("id,label\n" + "".join(f"{i},{'ab'[n % 2]}\n" for n, i in enumerate(every["id"])))
    assert probe(store, first.table, labels, folds=2, version="first").matched == 6
    assert probe(store, first.table, labels, folds=2).matched == 10


def test_catalog_digests_leave_out_card_timestamps_and_a_missing_store_is_an_error(fs_tiny_dinov2, images, tmp_path):
    store = tmp_path / "s"
    _extract(store, images, fs_tiny_dinov2, tag_run=False)
    st = Store(store)
    before = build_manifest(st).tables["models"].content_digest
    models = st.db.open_table("models")
    card = json.loads(models.to_arrow().column("card")[0].as_py())
    card["created_at"] = "2000-01-01T00:00:00Z"  # what a clean rerun changes in the catalog
    models.update(values={"card": json.dumps(card)}, where="true")
    assert build_manifest(st).tables["models"].content_digest == before
    card["dim"] += 1  # a real change is seen
    models.update(values={"card": json.dumps(card)}, where="true")
    assert build_manifest(st).tables["models"].content_digest != before
    with pytest.raises(StoreNotFoundError, match="does not exist"):
        build_manifest(Store(tmp_path / "typo"))
    assert not (tmp_path / "typo").exists()


def test_pictures_read_a_version(fs_tiny_dinov2, images, tmp_path):
    pytest.importorskip("matplotlib", reason="pictures need matplotlib (the viz extra; dev installs it)")
    from featurestore.pictures import map_picture, search_picture

    store = tmp_path / "s"
    first = _extract(store, images, fs_tiny_dinov2, tag="first")
    _extract(store, images, fs_tiny_dinov2, sub="b")
    query = FeatureDataset(store, first.table, version="first").ids[0]
    old = search_picture(store, first.table, tmp_path / "g.png", row_id=query, k=8, version="first")
    new = search_picture(store, first.table, tmp_path / "h.png", row_id=query, k=8)
    assert len(old["hits"]) == 5 and len(new["hits"]) == 8  # the query itself is left out
    assert map_picture(store, first.table, tmp_path / "m.png", method="pca", version="first")["points"] == 6


def test_verify_decodes_video_frames_again(fs_tiny_dinov2, tmp_path):
    from featurestore.testing import write_video
    from featurestore.verify import verify

    (tmp_path / "v").mkdir()
    video = write_video(tmp_path / "v" / "clip.mp4", n_frames=20, fps=10, rotation=90)
    store = tmp_path / "s"
    s = FeatureStore(store).extract([video], backbone=f"hf:{fs_tiny_dinov2}", sample="uniform:4", workers=0)
    assert s.frames_written == 4
    rep = verify(store, s.table, sample=4)
    assert rep.ok and rep.checked == 4 and rep.skipped == {} and rep.max_abs_cls <= 1e-4
    # a moved video: its frames are missing (the file named once), then found under --root
    shutil.move(tmp_path / "v", tmp_path / "w")
    gone = verify(store, s.table, sample=4)
    assert gone.skipped == {"source missing": 4} and gone.missing == [str(video)] and not gone.ok
    back = verify(store, s.table, sample=4, roots={str(tmp_path / "v"): str(tmp_path / "w")})
    assert back.ok and back.checked == 4 and back.missing == []
    shutil.move(tmp_path / "w", tmp_path / "v")
    video.write_bytes(video.read_bytes()[:-10])  # another file now: its hash is not the video id
    assert verify(store, s.table, sample=4).skipped == {"source changed since extraction": 4}


def test_tag_is_another_name_for_version_on_reading_commands(fs_tiny_dinov2, images, tmp_path, capsys):
    store = tmp_path / "s"
    first = _extract(store, images, fs_tiny_dinov2, tag="first")
    _extract(store, images, fs_tiny_dinov2, sub="b")
    out = tmp_path / "x.parquet"
    assert cli_main(["export", "-s", str(store), "-m", first.table, "-o", str(out), "--tag", "first", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 6


def test_cleanup_retries_with_a_wider_margin_when_lancedb_would_reach_a_tag(fs_tiny_dinov2, images, tmp_path):
    from datetime import timedelta

    from featurestore.maintenance import _cleanup, _cleanup_cutoff

    store = tmp_path / "s"
    _extract(store, images, fs_tiny_dinov2, tag_run=False)
    s = _extract(store, images, fs_tiny_dinov2, sub="b", tag="kept")
    table = Store(store).open_table(s.table)
    time.sleep(0.6)  # the tagged version is now > 0.5 s old
    # a cutoff that lands past the tag (as when the process stalls longer than the margin
    # between our clock reading and LanceDB's) is refused with the message _cleanup matches
    cutoff, _ = _cleanup_cutoff(table, timedelta(0), timedelta(seconds=-0.3))
    with pytest.raises(RuntimeError, match="tagged version"):
        table.optimize(cleanup_older_than=cutoff)
    note = _cleanup(table, timedelta(0))
    assert "tagged kept" in note and len(FeatureDataset(store, s.table, version="kept")) == 10
