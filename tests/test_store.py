from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pytest

from featurestore.commit import stored_keys
from featurestore.config import ModelCard, TokenLayout
from featurestore.errors import UnknownModelError
from featurestore.store import Store, feature_batch, feature_schema, table_name_for


def _card(model_hash: str, backbone: str = "toy", dim: int = 384, dense: bool = True) -> ModelCard:
    return ModelCard(
        model_hash=model_hash,
        weights_sha256="0" * 64,
        backbone=backbone,
        table=table_name_for(backbone, model_hash),
        plugin="test",
        plugin_version="0",
        weights_source="memory",
        architecture="Toy",
        dim=dim,
        dense=dense,
        token_layout=TokenLayout(grid_h=16, grid_w=16, patch_size=14, num_prefix_tokens=1, cls_source="x", input_h=224, input_w=224),
        preprocessing={},
        output_spec={},
        decode_policy={},
        library_versions={},
        created_at=datetime.now(timezone.utc),
    )


def _rows(schema, ids, rng, n_patches=256, dim=384):
    n = len(ids)
    patches = rng.standard_normal((n, n_patches, dim)).astype(np.float16)
    cls = rng.standard_normal((n, dim)).astype(np.float32)
    batch = feature_batch(
        schema,
        ids=ids,
        uris=[f"/data/{i}.jpg" for i in ids],
        sizes=[(640, 480)] * n,
        crop_boxes=np.tile(np.float32([0, 16, 640, 464]), (n, 1)),
        cls=cls,
        patches=list(patches),
        grids=[(16, 16)] * n,
        run_id="run",
    )
    return batch, cls, patches


def test_dense_round_trip_at_real_size(tmp_path):
    """200 rows of 256x384 float16 patch tokens, written in batches as extraction does, read back exactly."""
    store = Store(tmp_path / "s")
    table = store.register_model(_card("ab" * 32))
    rng = np.random.default_rng(0)
    ids = [f"{i:064x}" for i in range(200)]
    all_cls, all_patches = [], []
    for start in range(0, 200, 32):
        batch, cls, patches = _rows(table.schema, ids[start : start + 32], rng)
        Store.write_features(table, batch)
        all_cls.append(cls)
        all_patches.append(patches)
    # reopen from disk, as a reader in another process would
    back = Store(tmp_path / "s").open_table(table.name).to_arrow()
    assert back.num_rows == 200
    assert back.schema.field("patches").type == pa.list_(pa.list_(pa.float16(), 384))
    order = np.argsort(back.column("id").to_pylist())
    patches = back.column("patches").combine_chunks()
    got = patches.values.values.to_numpy(zero_copy_only=False).reshape(200, 256, 384)[order]
    np.testing.assert_array_equal(got, np.concatenate(all_patches))
    cls = np.asarray(back.column("cls").combine_chunks().values.to_numpy()).reshape(200, 384)[order]
    np.testing.assert_array_equal(cls, np.concatenate(all_cls))
    assert back.column("grid_h").to_pylist()[0] == 16


def test_write_is_idempotent_on_id(tmp_path):
    store = Store(tmp_path / "s")
    table = store.register_model(_card("cd" * 32, dim=8, dense=False))
    rng = np.random.default_rng(1)
    ids = [f"{i:064x}" for i in range(5)]
    batch = feature_batch(
        table.schema, ids=ids, uris=list("abcde"), sizes=[(1, 1)] * 5, crop_boxes=np.zeros((5, 4)),
        cls=rng.standard_normal((5, 8)).astype(np.float32), patches=None, grids=None, run_id="r1",
    )
    assert Store.write_features(table, batch.slice(0, 3)) == 3
    # a re-committed batch adds only what is new; a batch repeating an id inside it, once
    assert Store.write_features(table, pa.concat_tables([batch, batch.slice(4)])) == 2
    assert Store.write_features(table, batch.slice(2)) == 0
    assert table.count_rows() == 5
    assert stored_keys(table, ids + ["ff" * 32]) == set(ids)
    # a handle that never wrote (another process's view) is moved to the latest version
    other = Store(tmp_path / "s").db.open_table(table.name)
    assert Store.write_features(other, batch) == 0 and other.count_rows() == 5


def test_catalog_one_row_per_hash_and_lookup(tmp_path):
    store = Store(tmp_path / "s")
    a, b = _card("aa" * 32, "dinov2_vits14"), _card("ab" * 32, "dinov2_vits14")
    store.register_model(a)
    store.register_model(a)  # again: still one catalog row
    store.register_model(b)
    assert [c.model_hash for c in store.cards()] == [a.model_hash, b.model_hash]
    assert store.card(a.table).model_hash == a.model_hash
    assert store.card("aaaaaaaa").model_hash == a.model_hash  # hash prefix
    with pytest.raises(UnknownModelError, match="matches 2 models"):
        store.card("dinov2_vits14")
    with pytest.raises(UnknownModelError, match="no model 'zzz'"):
        store.card("zzz")
    models = store.models()
    assert {m["table"] for m in models} == {a.table, b.table}
    assert all(m["rows"] == 0 and m["dim"] == 384 for m in models)


def test_table_names_are_valid_and_keyed_by_hash():
    name = table_name_for("hf:/models/My ViT-B/16", "0123456789abcdef" * 4)
    assert name == "hf_models_my_vit_b_16-0123456789ab"
    assert table_name_for("x", "1" * 64) != table_name_for("x", "2" * 64)


def test_feature_schema_never_nests_fixed_size_lists():
    schema = feature_schema(384, dense=True)
    t = schema.field("patches").type
    assert pa.types.is_list(t) and pa.types.is_fixed_size_list(t.value_type)
