"""``featurestore cluster``: seeded spherical k-means on stored cls, written back as columns.

Planted clusters are written through the store's own write path; expected distances are
recomputed with numpy from the rows and centroids read back from the store.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pytest

from featurestore import FeatureStore
from featurestore.cli import main
from featurestore.cluster import cluster, kmeans, load_centroids
from featurestore.config import ModelCard
from featurestore.errors import ConfigError, StoreError
from featurestore.readers import FeatureDataset
from featurestore.store import Store, feature_batch, table_name_for
from featurestore.testing import write_images

DIM = 24


def _card(model_hash: str) -> ModelCard:
    return ModelCard(
        model_hash=model_hash, weights_sha256="0" * 64, backbone="toy", table=table_name_for("toy", model_hash),
        plugin="test", plugin_version="0", weights_source="memory", architecture="Toy", dim=DIM, dense=False,
        preprocessing={}, output_spec={}, decode_policy={}, library_versions={}, created_at=datetime.now(timezone.utc),
    )


def _write(table, start: int, cls: np.ndarray) -> list[str]:
    n = len(cls)
    ids = [f"{i:064x}" for i in range(start, start + n)]
    batch = feature_batch(
        table.schema, ids=ids, uris=[f"/x/{i}.jpg" for i in range(start, start + n)], sizes=[(8, 8)] * n,
        crop_boxes=np.tile(np.float32([0, 0, 8, 8]), (n, 1)), cls=cls.astype(np.float32), patches=None, grids=None, run_id="r",
    )
    Store.write_features(table, batch)
    return ids


def _planted(rng: np.random.Generator, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    centres = rng.standard_normal((k, DIM))
    truth = rng.integers(0, k, n)
    return centres[truth] + 0.15 * rng.standard_normal((n, DIM)), truth


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to renaming the clusters: each cluster of one is exactly one cluster of the other."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def _rows(path, table: str) -> dict[str, dict]:
    return {r["id"]: r for r in FeatureStore(path).table(table).to_arrow().to_pylist()}


def _cli(capsys, *argv) -> dict:
    rc = main([*map(str, argv), "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return json.loads(out.out)


def test_planted_clusters_are_recovered_and_written_back(tmp_path, capsys):
    table = Store(tmp_path / "s").register_model(_card("ab" * 32))
    x, truth = _planted(np.random.default_rng(0), 300, 5)
    ids = _write(table, 0, x)
    before = table.version
    res = _cli(capsys, "cluster", "-s", tmp_path / "s", "-m", table.name, "--k", 5, "--seed", 3)
    assert (res["column"], res["dist_column"], res["rows"], res["k"]) == ("cluster_k5", "cluster_k5_dist", 300, 5)
    assert res["version"] > before and res["source_version"] == before
    assert res["sizes"] == sorted(res["sizes"], reverse=True) and sum(res["sizes"]) == 300
    rows = _rows(tmp_path / "s", table.name)
    got = np.array([rows[i]["cluster_k5"] for i in ids])
    assert _same_partition(got, truth)
    schema = FeatureStore(tmp_path / "s").table(table.name).schema
    assert schema.field("cluster_k5").type == pa.int32() and schema.field("cluster_k5_dist").type == pa.float32()
    # distances are 1 - cos to the saved (unit) centroid of the row's cluster
    cent = load_centroids(tmp_path / "s", table.name, 5)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    want = 1.0 - (unit * cent[got]).sum(1)
    np.testing.assert_allclose([rows[i]["cluster_k5_dist"] for i in ids], want, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(cent, axis=1), 1.0, atol=1e-5)
    # each row's centroid is its nearest: the assignment is a fixed point of Lloyd's step
    assert (np.argmax(unit @ cent.T, axis=1) == got).all()
    cents = FeatureStore(tmp_path / "s").table(res["centroids_table"]).to_arrow()
    assert cents.column("size").to_pylist() == res["sizes"] and set(cents.column("table_version").to_pylist()) == {res["version"]}
    # the old version is still there, without the columns
    old = FeatureStore(tmp_path / "s").table(table.name)
    old.checkout(before)
    assert "cluster_k5" not in old.schema.names


def test_same_seed_same_columns_new_rows_get_nulls_until_rerun(tmp_path, capsys):
    path = tmp_path / "s"
    table = Store(path).register_model(_card("cd" * 32))
    rng = np.random.default_rng(1)
    x, _ = _planted(rng, 200, 4)
    ids = _write(table, 0, x)
    first = cluster(path, table.name, 4, seed=7)
    a = _rows(path, table.name)
    late = _write(table, 1000, _planted(rng, 5, 4)[0])  # rows written after clustering
    rows = _rows(path, table.name)
    assert all(rows[i]["cluster_k4"] is None and rows[i]["cluster_k4_dist"] is None for i in late)
    again = cluster(path, table.name, 4, seed=7)
    b = _rows(path, table.name)
    assert again.version > first.version and again.rows == 205
    assert all(b[i]["cluster_k4"] is not None for i in late)
    # the 200 old rows keep their clusters (the 5 new ones sit on the planted centres)
    assert _same_partition(np.array([a[i]["cluster_k4"] for i in ids]), np.array([b[i]["cluster_k4"] for i in ids]))
    # and the same rows with the same seed give the very same columns
    third = cluster(path, table.name, 4, seed=7)
    c = _rows(path, table.name)
    assert [c[i]["cluster_k4"] for i in b] == [b[i]["cluster_k4"] for i in b]
    assert [c[i]["cluster_k4_dist"] for i in b] == [b[i]["cluster_k4_dist"] for i in b]
    assert third.sizes == again.sizes and third.version == again.version + 1
    # two k side by side; readers see the columns like any other
    cluster(path, table.name, 2, seed=0)
    ds = FeatureDataset(path, table.name, columns=["cluster_k4", "cluster_k2"])
    item = ds[0]
    assert isinstance(item["cluster_k4"], int) and item["cluster_k2"] in (0, 1)


def test_kmeans_is_seeded_and_checks_k():
    x, truth = _planted(np.random.default_rng(2), 400, 6)
    a, b = kmeans(x, 6, seed=11), kmeans(x, 6, seed=11)
    assert (a.labels == b.labels).all() and np.array_equal(a.centroids, b.centroids) and a.inertia == b.inertia
    assert _same_partition(a.labels, truth) and a.converged
    with pytest.raises(ConfigError, match="distinct directions"):
        kmeans(np.repeat(np.eye(3, DIM), 10, axis=0), 4)  # 3 distinct rows, 4 clusters
    with pytest.raises(ConfigError, match="between 1 and the number of rows"):
        kmeans(x[:3], 4)


def test_cluster_errors(tmp_path, capsys):
    table = Store(tmp_path / "s").register_model(_card("ef" * 32))
    _write(table, 0, _planted(np.random.default_rng(3), 10, 2)[0])
    err = lambda *a: (main(["cluster", "-s", str(tmp_path / "s"), "-m", table.name, *map(str, a)]), capsys.readouterr().err)
    assert err("--k", 1) == (2, "featurestore: error: --k 1: k-means needs at least 2 clusters.\n")
    rc, msg = err("--k", 11)
    assert rc == 2 and "more than the 10 rows" in msg and "--k 10 or fewer" in msg
    rc, msg = main(["cluster", "-s", str(tmp_path / "s"), "-m", "nope", "--k", "2"]), capsys.readouterr().err
    assert rc == 2 and "no model 'nope'" in msg
    with pytest.raises(ConfigError, match="no k-means with k=3"):
        load_centroids(tmp_path / "s", table.name, 3)
    # a column of that name but another type is not overwritten
    FeatureStore(tmp_path / "s").table(table.name).add_columns(pa.schema([pa.field("cluster_k2", pa.string())]))
    with pytest.raises(StoreError, match="already has a column 'cluster_k2' of type string"):
        cluster(tmp_path / "s", table.name, 2)


@pytest.fixture
def clustered_real(fs_tiny_dinov2, tmp_path, capsys):
    """8 images extracted with the tiny DINOv2, then clustered with k=3 through the CLI."""
    d = tmp_path / "img"
    write_images(d, 8, seed=0)
    fs = FeatureStore(tmp_path / "store")
    s = fs.extract([d], backbone=f"hf:{fs_tiny_dinov2}", workers=0)
    assert main(["cluster", "-s", fs.path, "-m", s.table, "--k", "3"]) == 0
    return fs, s.table, capsys.readouterr().out


def test_cluster_a_real_extraction(clustered_real):
    fs, table, out = clustered_real
    assert "cluster_k3" in out and f"{table}-centroids-k3" in out
    rows = fs.table(table).to_arrow().to_pylist()
    assert len(rows) == 8 and {r["cluster_k3"] for r in rows} <= {0, 1, 2} and len({r["cluster_k3"] for r in rows}) == 3
    assert fs.models()[0]["rows"] == 8 and len(fs.models()) == 1  # the centroid table is no model of its own


def test_extract_into_a_clustered_table(fs_tiny_dinov2, clustered_real, tmp_path):
    fs, table, _ = clustered_real
    more = fs.extract(write_images(tmp_path / "more", 2, seed=90), backbone=f"hf:{fs_tiny_dinov2}", workers=0)
    assert more.written == 2 and more.table == table, more.error_samples
    rows = fs.table(table).to_arrow().to_pylist()
    assert sum(r["cluster_k3"] is None for r in rows) == 2 and len(rows) == 10


def test_a_table_holding_duplicate_ids_is_read_and_clustered(tmp_path):
    """Older versions could store an id twice (two runs at once): readers and cluster cope."""
    path = tmp_path / "s"
    table = Store(path).register_model(_card("ef" * 32))
    x, _ = _planted(np.random.default_rng(3), 40, 3)
    n = len(x)
    ids = [f"{i:064x}" for i in range(n)]
    batch = feature_batch(
        table.schema, ids=ids, uris=[f"/x/{i}.jpg" for i in range(n)], sizes=[(8, 8)] * n,
        crop_boxes=np.tile(np.float32([0, 0, 8, 8]), (n, 1)), cls=x.astype(np.float32), patches=None, grids=None, run_id="r",
    )
    table.add(batch)
    table.add(batch.slice(0, 10))  # bypassing the store's commit path, as a racing older version did
    ds = FeatureDataset(path, table.name, columns=["cls"])
    assert len(ds) == n + 10 and ds[0]["cls"].shape == (DIM,)
    res = cluster(path, table.name, 3, seed=0)
    rows = FeatureStore(path).table(table.name).to_arrow().to_pylist()
    assert len(rows) == n + 10 and all(r["cluster_k3"] is not None for r in rows)
    assert res.rows == n + 10


def test_a_fit_of_fewer_older_rows_never_overwrites_a_newer_one(tmp_path):
    """Two runs at once, one of which read the table before more rows were committed: the
    fit of more rows keeps its columns and centroids whichever run commits last; a fit of
    the same rows (another seed) replaces both, and they always come from one fit."""
    from featurestore.cluster import commit_fit

    path = tmp_path / "s"
    st = Store(path)
    table = st.register_model(_card("12" * 32))
    rng = np.random.default_rng(4)
    _write(table, 0, _planted(rng, 60, 3)[0])
    early = FeatureDataset(path, table.name, columns=["cls"])  # the slow run reads 60 rows, then fits them
    stale = kmeans(early.to_numpy(["cls"])["cls"], 3, seed=1)
    _write(table, 1000, _planted(rng, 30, 3)[0])
    newer = cluster(path, table.name, 3, seed=0)  # meanwhile another run fits all 90
    rows, cent = _rows(path, table.name), load_centroids(path, table.name, 3)
    version, kept = commit_fit(st, table, list(early.ids), stale, seed=1, model_hash=early.card.model_hash, source_version=early.version)
    assert kept == (newer.source_version, 90) and version == newer.version
    assert _rows(path, table.name) == rows
    np.testing.assert_array_equal(load_centroids(path, table.name, 3), cent)
    # the same 90 rows with another seed: written, columns and centroids together
    again = cluster(path, table.name, 3, seed=5)
    assert again.written and again.note is None
    cents = FeatureStore(path).table(again.centroids_table).to_arrow()
    assert set(cents.column("seed").to_pylist()) == {5} and set(cents.column("table_version").to_pylist()) == {again.version}
    got = _rows(path, table.name)
    x = np.array([got[i]["cls"] for i in got], np.float32)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert (unit @ load_centroids(path, table.name, 3).T).argmax(1).tolist() == [got[i]["cluster_k3"] for i in got]
