"""The commit path at small scale: indices, compaction, lookups skipped or not, the
background writer, and what the extraction workers are given."""

from __future__ import annotations

import pickle
import time
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pytest

from featurestore import FeatureStore
from featurestore.commit import Committer, MaintainPolicy, StoredIds, optimize, stored_keys
from featurestore.config import ModelCard
from featurestore.errors import StoreError
from featurestore.loader import SourceDataset
from featurestore.readers import FeatureDataset
from featurestore.store import Store, feature_batch, table_name_for
from featurestore.testing import write_images
from featurestore.writer import TableWriter

DIM = 4


def _card(h: str = "ab" * 32) -> ModelCard:
    return ModelCard(
        model_hash=h, weights_sha256="0" * 64, backbone="toy", table=table_name_for("toy", h), plugin="test",
        plugin_version="0", weights_source="memory", architecture="Toy", dim=DIM, dense=False, preprocessing={},
        output_spec={}, decode_policy={}, library_versions={}, created_at=datetime.now(timezone.utc),
    )


def _batch(table, lo: int, hi: int) -> pa.Table:
    ids = [f"{i:064x}" for i in range(lo, hi)]
    n = len(ids)
    return feature_batch(
        table.schema, ids=ids, uris=ids, sizes=[(1, 1)] * n, crop_boxes=np.zeros((n, 4)),
        cls=np.full((n, DIM), 0.5, np.float32), patches=None, grids=None, run_id="r",
    )


def _ids(table) -> list[str]:
    table.checkout_latest()
    return table.search().select(["id"]).limit(None).to_arrow().column("id").to_pylist()


def test_feature_tables_get_btree_indices_that_serve_the_lookup(tmp_path):
    store = Store(tmp_path / "s")
    table = store.register_model(_card())
    indexed = {tuple(i.columns): i.index_type for i in table.list_indices()}
    assert indexed == {("id",): "BTree", ("video_id",): "BTree"}  # made with the (empty) table
    assert Store.write_features(table, _batch(table, 0, 50)) == 50
    optimize(table)
    assert table.index_stats("id_idx").num_indexed_rows == 50
    query = table.search().where(f"id IN ('{0:064x}', '{7:064x}')").select(["id"])
    assert "ScalarIndexQuery" in query.explain_plan(verbose=True)
    # rows appended after the index was updated are found too (scanned until the next optimize)
    Store.write_features(table, _batch(table, 50, 60))
    assert stored_keys(table, [f"{i:064x}" for i in (3, 55, 99)]) == {f"{3:064x}", f"{55:064x}"}


def test_fragments_stay_bounded_over_many_small_commits(tmp_path):
    table = Store(tmp_path / "s").register_model(_card())
    policy = MaintainPolicy(check_every=4, max_small_fragments=6, max_unindexed_rows=30, background=False)
    c = Committer(table, policy=policy)
    for k in range(60):
        c.commit(_batch(table, 3 * k, 3 * k + 3))
    table.checkout_latest()
    frag = table.stats()["fragment_stats"]
    # without maintenance every commit leaves a fragment: 60
    assert frag["num_fragments"] <= policy.max_small_fragments + policy.check_every + 1
    assert table.index_stats("id_idx").num_unindexed_rows <= policy.max_unindexed_rows + policy.check_every * 3
    assert sorted(_ids(table)) == [f"{i:064x}" for i in range(180)]


def test_background_compaction_runs_beside_the_commits(tmp_path):
    table = Store(tmp_path / "s").register_model(_card())
    c = Committer(table, policy=MaintainPolicy(check_every=2, max_small_fragments=3, max_unindexed_rows=10))
    looked_up = 0
    for k in range(30):
        looked_up += c.commit(_batch(table, 3 * k, 3 * k + 3), absent_at=int(table.version)).looked_up
        if k % 7 == 0:
            c.wait()  # let some compactions finish between commits
    c.wait()
    assert c.optimizations >= 1 and c.maintenance_error is None
    # compactions add no rows: the commits after them still skipped their lookups
    assert looked_up == 0
    table.checkout_latest()
    assert table.stats()["fragment_stats"]["num_fragments"] < 30
    assert sorted(_ids(table)) == [f"{i:064x}" for i in range(90)]


def test_lookup_is_skipped_only_when_nobody_else_committed(tmp_path):
    store = Store(tmp_path / "s")
    table = store.register_model(_card())
    mine = Committer(store.db.open_table(table.name))
    v0 = int(table.version)
    r = mine.commit(_batch(table, 0, 10), absent_at=v0)  # the ids were absent at v0: nothing to look up
    assert (r.inserted, r.looked_up) == (10, 0)
    # the same ids again, "absent at v0": our own commit after v0 may hold them, so they are checked
    r = mine.commit(_batch(table, 5, 15), absent_at=v0)
    assert (r.inserted, r.duplicates) == (5, 5) and 0 < r.looked_up <= 10
    # another writer commits: every group checked before that commit goes through the lookup
    other = Committer(store.db.open_table(table.name))
    assert other.commit(_batch(table, 20, 30)).inserted == 10
    r = mine.commit(_batch(table, 25, 35), absent_at=r.version)
    assert (r.inserted, r.looked_up) == (5, 10)
    assert sorted(_ids(table)) == [f"{i:064x}" for i in range(15)] + [f"{i:064x}" for i in range(20, 35)]


def test_writer_groups_commits_and_counts_what_it_inserted(tmp_path):
    store = Store(tmp_path / "s")
    table = store.register_model(_card())
    Store.write_features(table, _batch(table, 0, 5))
    before = len(table.list_versions())
    with TableWriter(store.db.open_table(table.name), commit_rows=10, commit_seconds=3600) as w:
        for k in range(5):
            w.put(_batch(table, 5 * k, 5 * k + 5))
    assert (w.handed, w.inserted, w.commits) == (25, 20, 3)  # 10 + 10 + 5 rows: three versions, not five
    table.checkout_latest()
    assert len(table.list_versions()) == before + 3 and table.count_rows() == 25


def test_writer_commits_on_its_own_after_commit_seconds(tmp_path):
    store = Store(tmp_path / "s")
    table = store.register_model(_card())
    w = TableWriter(store.db.open_table(table.name), commit_rows=10**6, commit_seconds=0.1)
    w.put(_batch(table, 0, 3))
    deadline = time.monotonic() + 60
    while w.commits == 0 and time.monotonic() < deadline:  # no flush: the background thread commits
        time.sleep(0.05)
    assert w.commits == 1 and Store(tmp_path / "s").db.open_table(table.name).count_rows() == 3
    w.close()


def test_a_failing_commit_stops_the_writer_and_says_what_was_committed(tmp_path):
    store = Store(tmp_path / "s")
    table = store.register_model(_card())
    w = TableWriter(store.db.open_table(table.name), commit_rows=3, commit_seconds=3600)
    w.put(_batch(table, 0, 3))
    w.flush()
    w.put(_batch(table, 3, 6).append_column("bogus", pa.array([1, 2, 3])))  # a column the table lacks
    with pytest.raises(StoreError, match=r"3 rows were committed by this writer before the failure"):
        for _ in range(100):  # raised by the next put or flush on this thread
            w.put(_batch(table, 10, 11))
            w.flush()
    with pytest.raises(StoreError):
        w.close()
    table.checkout_latest()
    assert table.count_rows() == 3


def test_workers_get_a_lookup_not_an_id_set(tmp_path):
    store = Store(tmp_path / "s")
    table = store.register_model(_card())
    Store.write_features(table, _batch(table, 0, 2000))
    stored = StoredIds(store.path, table.name)
    found, version = stored.check([f"{i:064x}" for i in (1, 1999, 5000)])
    assert found == {f"{1:064x}", f"{1999:064x}"} and version == table.version
    ds = SourceDataset(["/nowhere.jpg"], preprocessor=None, stored=stored, max_pixels=None)  # type: ignore[arg-type]
    assert len(pickle.dumps(ds)) < 1000  # what a worker receives does not grow with the table


def test_extract_groups_error_rows_and_tags_after_the_last_commit(tiny_dinov2, tmp_path):
    d = tmp_path / "in"
    write_images(d, 3, size=(32, 32))
    for i in range(20):
        (d / f"broken{i:02d}.jpg").write_bytes(b"not an image")
    s = FeatureStore(tmp_path / "s").extract(
        [d], backbone=f"hf:{tiny_dinov2}", workers=0, batch_size=2, commit_seconds=3600, tag="end"
    )
    assert (s.written, s.errors) == (3, 20)
    errors = Store(tmp_path / "s").db.open_table("errors")
    assert errors.count_rows() == 20 and len(errors.list_versions()) <= 2  # one commit, not one per batch
    assert len(FeatureDataset(tmp_path / "s", s.table, version="end")) == 3  # the tag holds every row of the run


def test_extract_in_workers_skips_stored_images(tiny_dinov2, tmp_path):
    d = tmp_path / "in"
    write_images(d, 6, size=(32, 32))
    first = FeatureStore(tmp_path / "s").extract([d], backbone=f"hf:{tiny_dinov2}", workers=0, batch_size=2)
    write_images(tmp_path / "more", 2, size=(32, 32), seed=99)
    again = FeatureStore(tmp_path / "s").extract([d, tmp_path / "more"], backbone=f"hf:{tiny_dinov2}", workers=1, batch_size=2)
    assert (first.written, again.written, again.skipped_existing) == (6, 2, 6)
