"""``featurestore doctor``: keys stored twice by older versions are found and repaired."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa

from featurestore.cli import main
from featurestore.config import ModelCard
from featurestore.doctor import doctor, duplicate_keys
from featurestore.readers import FeatureDataset
from featurestore.store import MODELS_SCHEMA, MODELS_TABLE, Store, feature_batch, table_name_for


def _card(h: str = "ab" * 32) -> ModelCard:
    return ModelCard(
        model_hash=h, weights_sha256="0" * 64, backbone="toy", table=table_name_for("toy", h), plugin="test",
        plugin_version="0", weights_source="memory", architecture="Toy", dim=4, dense=False, preprocessing={},
        output_spec={}, decode_policy={}, library_versions={}, created_at=datetime.now(timezone.utc),
    )


def _batch(table, lo: int, hi: int, run_id: str, when: datetime) -> pa.Table:
    ids = [f"{i:064x}" for i in range(lo, hi)]
    n = len(ids)
    b = feature_batch(
        table.schema, ids=ids, uris=ids, sizes=[(1, 1)] * n, crop_boxes=np.zeros((n, 4)),
        cls=np.full((n, 4), float(lo), np.float32), patches=None, grids=None, run_id=run_id,
    )
    return b.set_column(b.schema.get_field_index("created_at"), "created_at", pa.array([when] * n, b.schema.field("created_at").type))


def _duplicated_store(path):
    """A store as two racing older versions left it: ids 0-9 twice, one model registered twice."""
    store = Store(path)
    table = store.register_model(_card())
    t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    table.add(_batch(table, 0, 30, "first", t0))  # straight into LanceDB, as merge_insert races did
    table.add(_batch(table, 0, 10, "late", t0 + timedelta(hours=1)))
    models = store.db.open_table(MODELS_TABLE)
    models.add(models.to_arrow().cast(MODELS_SCHEMA))
    return store, table


def test_a_model_registered_twice_is_still_found_by_name_before_repair(tmp_path):
    store, _ = _duplicated_store(tmp_path / "s")
    assert store.db.open_table(MODELS_TABLE).count_rows() == 2
    assert [c.model_hash for c in store.cards()] == [_card().model_hash]
    assert store.card(_card().backbone).model_hash == _card().model_hash  # was "matches 2 models"


def test_doctor_finds_and_repairs_duplicates_keeping_the_earliest_row(tmp_path):
    store, table = _duplicated_store(tmp_path / "s")
    assert sorted(duplicate_keys(table)) == [f"{i:064x}" for i in range(10)]
    # readers do not crash on such a table
    assert len(FeatureDataset(store.path, table.name)) == 40
    found = {c.table: c for c in doctor(store)}
    assert (found[table.name].duplicate_keys, found[table.name].extra_rows) == (10, 10)
    assert found[MODELS_TABLE].extra_rows == 1
    before = int(table.version)
    fixed = {c.table: c for c in doctor(store, repair=True)}
    assert fixed[table.name].removed == 10 and fixed[MODELS_TABLE].removed == 1
    table.checkout_latest()
    assert int(table.version) == before + 1  # one commit
    rows = table.to_arrow().to_pylist()
    assert len(rows) == 30 and max(Counter(r["id"] for r in rows).values()) == 1
    assert {r["run_id"] for r in rows} == {"first"}  # the earliest copy of each id is the one kept
    assert len(store.cards()) == 1
    assert all(c.extra_rows == 0 for c in doctor(store))


def test_doctor_cli_exit_code_and_json(tmp_path, capsys):
    store, table = _duplicated_store(tmp_path / "s")
    assert main(["doctor", "-s", store.path, "--json"]) == 1
    out = {r["table"]: r for r in json.loads(capsys.readouterr().out)}
    assert out[table.name]["extra_rows"] == 10
    assert main(["doctor", "-s", store.path, "--repair", "--json"]) == 0
    capsys.readouterr()
    assert main(["doctor", "-s", store.path]) == 0


# -- derived tables: clips, adapted rows, k-means ----------------------------------------


def _hex(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()  # ids of unrelated look: prefixes differ


def _frames(table, video: int, lo: int, hi: int) -> pa.Table:
    """Frame rows lo..hi-1 of video ``video`` (4 frames a second)."""
    ids = [_hex(1000 * video + i) for i in range(lo, hi)]
    n = len(ids)
    return feature_batch(
        table.schema, ids=ids, uris=[f"/v/{video}.mp4"] * n, sizes=[(8, 8)] * n, crop_boxes=np.zeros((n, 4)),
        cls=np.arange(lo, hi, dtype=np.float32)[:, None] * np.ones((1, 4), np.float32) + video, patches=None, grids=None,
        run_id="r", video_ids=[_hex(-video - 1)] * n, timestamps=[i / 4 for i in range(lo, hi)], frame_indices=list(range(lo, hi)),
    )


def _json(capsys, *argv) -> object:
    rc = main([*map(str, argv), "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return json.loads(out.out)


def _doctor(capsys, path, *extra) -> tuple[int, dict]:
    rc = main(["doctor", "-s", str(path), *extra, "--json"])
    return rc, {r["table"]: r for r in json.loads(capsys.readouterr().out)}


def test_clip_tables_holding_duplicates_are_read_aggregated_and_repaired(tmp_path, capsys):
    store = Store(tmp_path / "s")
    table = store.register_model(_card())
    for v in range(2):
        Store.write_features(table, _frames(table, v, 0, 4))
    [first] = _json(capsys, "aggregate", "-s", store.path, "-m", table.name, "-a", "mean")
    clips = store.db.open_table(first["table"])
    clips.add(clips.to_arrow())  # every clip twice, a catalog row twice, two frames twice: around the commit path
    catalog = store.db.open_table("clips")
    catalog.add(catalog.to_arrow())
    table.add(_frames(table, 1, 0, 2))
    Store.write_features(table, _frames(table, 0, 4, 6))  # video 0 gets two more frames
    [again] = _json(capsys, "aggregate", "-s", store.path, "-m", table.name, "-a", "mean")
    assert again["written"] == 1 and again["replaced"] == 2  # video 0's clip (both copies) replaced; video 1's kept
    [listed] = _json(capsys, "clips", "-s", store.path)
    assert listed["table"] == first["table"]
    rc, found = _doctor(capsys, store.path)
    assert rc == 1
    assert (found[first["table"]]["extra_rows"], found["clips"]["extra_rows"], found[table.name]["extra_rows"]) == (1, 1, 2)
    rc, fixed = _doctor(capsys, store.path, "--repair")
    assert rc == 0 and fixed[first["table"]]["removed"] == 1
    assert _doctor(capsys, store.path)[0] == 0
    clips.checkout_latest()
    rows = {r["video_id"]: r for r in clips.to_arrow().to_pylist()}
    # one clip per video, each frame counted once (video 1's frames were stored twice)
    assert len(rows) == 2 == clips.count_rows()
    assert rows[_hex(-1)]["frame_ids"] == [_hex(i) for i in range(6)]
    assert rows[_hex(-2)]["frame_ids"] == [_hex(1000 + i) for i in range(4)]
    np.testing.assert_allclose(rows[_hex(-2)]["cls"], np.full(4, 1.5 + 1), rtol=1e-6)
    [last] = _json(capsys, "aggregate", "-s", store.path, "-m", table.name, "-a", "mean")
    assert last["written"] == 0


def test_adapted_tables_holding_duplicates_are_read_applied_and_repaired(tmp_path, capsys):
    from featurestore import FeatureStore

    store = Store(tmp_path / "s")
    table = store.register_model(_card())
    ids = [_hex(i) for i in range(60)]
    Store.write_features(table, feature_batch(
        table.schema, ids=ids, uris=ids, sizes=[(1, 1)] * 60, crop_boxes=np.zeros((60, 4)),
        cls=np.random.default_rng(0).standard_normal((60, 4)).astype(np.float32), patches=None, grids=None, run_id="r",
    ))
    fs = FeatureStore(store.path)
    card = fs.fit_adapter(table.name, "project:dim=2")
    fs.apply_adapter(card.adapter_hash)
    adapted = store.db.open_table(card.table)
    adapted.add(adapted.to_arrow().slice(0, 5))  # five adapted rows twice, the adapter's catalog row twice
    adapters = store.db.open_table("adapters")
    adapters.add(adapters.to_arrow())
    ref = card.adapter_hash[:12]
    assert _json(capsys, "adapt", "apply", "-s", store.path, "-a", ref)["written"] == 0
    assert [a["adapter_hash"] for a in _json(capsys, "adapt", "list", "-s", store.path)] == [card.adapter_hash]
    dup = adapted.to_arrow().column("id")[0].as_py()
    exported = _json(capsys, "export", "-s", store.path, "-m", card.table, "-o", tmp_path / "x.parquet")
    assert exported["rows"] == 65
    hits = _json(capsys, "search", "-s", store.path, "-m", card.table, "--id", dup[:10], "-k", "3")
    assert hits["hits"][0]["id"] == dup
    assert _json(capsys, "cluster", "-s", store.path, "-m", card.table, "--k", "2")["rows"] == 65
    rc, found = _doctor(capsys, store.path)
    assert rc == 1 and (found[card.table]["extra_rows"], found["adapters"]["extra_rows"]) == (5, 1)
    assert _doctor(capsys, store.path, "--repair")[0] == 0
    adapted.checkout_latest()
    got = adapted.to_arrow()
    assert got.num_rows == 60 and set(got.column("id").to_pylist()) == set(ids)
    assert got.column("cluster_k2").null_count == 0  # the kept copies carry the clustering too


def test_clustered_tables_and_centroids_holding_duplicates_are_read_and_repaired(tmp_path, capsys):
    from featurestore.cluster import load_centroids

    store = Store(tmp_path / "s")
    table = store.register_model(_card())
    rng = np.random.default_rng(2)
    centres = rng.standard_normal((3, 4))
    ids = [_hex(i) for i in range(45)]
    Store.write_features(table, feature_batch(
        table.schema, ids=ids, uris=ids, sizes=[(1, 1)] * 45, crop_boxes=np.zeros((45, 4)),
        cls=(centres[np.arange(45) % 3] + 0.05 * rng.standard_normal((45, 4))).astype(np.float32), patches=None, grids=None, run_id="r",
    ))
    first = _json(capsys, "cluster", "-s", store.path, "-m", table.name, "--k", "3")
    table.add(table.to_arrow().slice(0, 9))  # nine clustered rows twice
    second = _json(capsys, "cluster", "-s", store.path, "-m", table.name, "--k", "3")
    assert second["rows"] == 54 and second["written"]
    assert _json(capsys, "export", "-s", store.path, "-m", table.name, "-o", tmp_path / "x.parquet", "--columns", "cls,cluster_k3")["rows"] == 54
    # a second run's centroids appended beside the first's (around featurestore): readers take the latest
    cents = store.db.open_table(first["centroids_table"])
    old = cents.to_arrow()
    later = old.set_column(old.schema.get_field_index("created_at"), "created_at",
                           pa.array([datetime.now(timezone.utc) + timedelta(hours=1)] * 3, old.schema.field("created_at").type))
    later = later.set_column(later.schema.get_field_index("seed"), "seed", pa.array([99] * 3, pa.int64()))
    cents.add(later)
    assert load_centroids(store.path, table.name, 3).shape == (3, 4)
    rc, found = _doctor(capsys, store.path)
    assert rc == 1 and (found[table.name]["extra_rows"], found[first["centroids_table"]]["extra_rows"]) == (9, 3)
    assert _doctor(capsys, store.path, "--repair")[0] == 0
    cents.checkout_latest()
    table.checkout_latest()
    kept = cents.to_arrow()
    assert kept.num_rows == 3 and set(kept.column("seed").to_pylist()) == {99}  # the latest run's rows
    rows = table.to_arrow()
    assert rows.num_rows == 45 and rows.column("cluster_k3").null_count == 0
