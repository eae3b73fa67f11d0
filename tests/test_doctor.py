"""``featurestore doctor``: keys stored twice by older versions are found and repaired."""

from __future__ import annotations

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
