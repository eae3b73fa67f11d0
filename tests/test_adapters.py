"""Domain adapters through the core: fit on stored rows, save, apply, read, search, extract.

The adapters are the first-party plugin's (``featurestore-adapters``, found through its
entry point); their arithmetic is checked against numpy in that plugin's own tests. Here:
the store, hashing, tables, readers, search and CLI around them.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from featurestore import FeatureStore
from featurestore.adapters import ADAPTERS_TABLE, adapter_card, adapter_cards, load_fitted
from featurestore.cli import main as cli_main
from featurestore.config import ModelCard, TokenLayout
from featurestore.errors import ConfigError, StoreError, UnknownModelError, UnknownNameError
from featurestore.readers import FeatureDataset
from featurestore.store import Store, feature_batch, table_name_for
from featurestore.testing import write_images

DIM, TOKENS, CLASSES = 24, 4, 3


def _card(model_hash: str, backbone: str, dense: bool = True) -> ModelCard:
    return ModelCard(
        model_hash=model_hash, weights_sha256="0" * 64, backbone=backbone, table=table_name_for(backbone, model_hash),
        plugin="test", plugin_version="0", weights_source="memory", architecture="Toy", dim=DIM, dense=dense,
        token_layout=TokenLayout(grid_h=2, grid_w=2, patch_size=14, num_prefix_tokens=1, cls_source="x", input_h=28, input_w=28),
        preprocessing={}, output_spec={}, decode_policy={}, library_versions={}, created_at=datetime.now(timezone.utc),
    )


def _rows(start: int, n: int) -> dict[str, np.ndarray]:
    """Rows of 3 well separated classes in a random 24-d basis (deterministic per row number)."""
    rng = np.random.default_rng(1234)
    centres = 4.0 * rng.standard_normal((CLASSES, DIM)).astype(np.float32)
    label = np.arange(start, start + n) % CLASSES
    noise = np.random.default_rng(start).standard_normal((n, DIM)).astype(np.float32)
    cls = centres[label] + noise
    patches = (cls[:, None, :] + np.random.default_rng(start + 1).standard_normal((n, TOKENS, DIM))).astype(np.float16)
    return {"id": np.array([f"{i:064x}" for i in range(start, start + n)]), "cls": cls, "patches": patches, "label": label}


def _write(table, rows: dict[str, np.ndarray]) -> None:
    n = len(rows["id"])
    dense = "patches" in table.schema.names
    Store.write_features(table, feature_batch(
        table.schema, ids=list(rows["id"]), uris=[f"/data/{i}.jpg" for i in rows["id"]], sizes=[(64, 64)] * n,
        crop_boxes=np.tile(np.float32([0, 0, 64, 64]), (n, 1)), cls=rows["cls"],
        patches=list(rows["patches"]) if dense else None, grids=[(2, 2)] * n if dense else None, run_id="r",
    ))


@pytest.fixture
def store(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    """A dense model ``toy`` (300 rows, two commits) and a second model ``other``."""
    path = tmp_path / "store"
    st = Store(path)
    table = st.register_model(_card("ab" * 32, "toy"))
    rows = _rows(0, 200)
    _write(table, rows)
    more = _rows(200, 100)
    _write(table, more)
    _write(st.register_model(_card("cd" * 32, "other", dense=False)), _rows(0, 50))
    data = {k: np.concatenate([rows[k], more[k]]) for k in rows}
    labels = tmp_path / "labels.csv"
    labels.write_text("id,label\n" + "".join(f"{i},c{l}\n" for i, l in zip(data["id"], data["label"])))
    data["labels_file"] = labels
    return path, data


def _stored(path: Path, table: str, column: str = "cls") -> dict[str, np.ndarray]:
    t = Store(path).open_table(table).to_arrow()
    vals = t.column(column).combine_chunks()
    arr = vals.flatten().to_numpy(zero_copy_only=False).reshape(len(vals), -1) if column != "patches" else None
    return dict(zip(t.column("id").to_pylist(), arr if arr is not None else t.column(column).to_pylist()))


# -- fit ---------------------------------------------------------------------------------


def test_fit_saves_tensors_and_card_and_refitting_is_the_same_adapter(store):
    path, data = store
    fs = FeatureStore(path)
    card = fs.fit_adapter("toy", "project:dim=8")
    assert card.name == "project" and card.params["dim"] == 8 and card.in_dim == DIM and card.out_dim == 8
    assert card.base_model_hash == "ab" * 32 and card.base_table == fs.card("toy").table and card.fit_rows == 300
    assert card.fit_version == Store(path).open_table(card.base_table).version and card.plugin == "featurestore-adapters"
    assert card.out_dtype == "float32" and card.invertible and card.patches  # dense base, same width
    artifact = path / card.artifact
    assert artifact.is_file() and artifact.name == f"{card.adapter_hash}.safetensors"
    assert 0 < card.metrics["explained_variance_ratio"] <= 1
    again = fs.fit_adapter("toy", "project:dim=8")  # same rows, same params: same tensors, same hash
    assert again.adapter_hash == card.adapter_hash and again.created_at == card.created_at
    assert Store(path).open_table(ADAPTERS_TABLE).count_rows() == 1
    other = fs.fit_adapter("toy", "project:dim=4")
    subset = fs.fit_adapter("toy", "project:dim=8", where="width = 64", max_rows=100)
    assert len({card.adapter_hash, other.adapter_hash, subset.adapter_hash}) == 3 and subset.fit_rows == 100
    assert [c.adapter_hash for c in adapter_cards(Store(path))] == [card.adapter_hash, other.adapter_hash, subset.adapter_hash]


def test_the_same_adapter_on_another_model_has_another_hash(store):
    path, _ = store
    fs = FeatureStore(path)
    a = fs.fit_adapter("toy", "pca-whiten:dim=8")
    b = fs.fit_adapter("other", "pca-whiten:dim=8")
    assert a.adapter_hash != b.adapter_hash and b.base_model_hash == "cd" * 32 and not b.patches


def test_fit_errors_name_the_input_and_the_fix(store):
    path, data = store
    fs = FeatureStore(path)
    with pytest.raises(UnknownNameError, match="nope.*Known adapters"):
        fs.fit_adapter("toy", "nope")
    with pytest.raises(ConfigError, match="labels"):
        fs.fit_adapter("toy", "linear-head")
    with pytest.raises(ConfigError, match="no rows matching"):
        fs.fit_adapter("toy", "project:dim=4", where="width = 1")
    with pytest.raises(ConfigError, match="dim"):
        fs.fit_adapter("toy", "project:dim=oops")
    card = fs.fit_adapter("toy", "project:dim=4")
    fs.apply_adapter(card.adapter_hash)
    with pytest.raises(ConfigError, match="fit adapters on a model's own features"):
        fs.fit_adapter(card.table, "project:dim=2")


# -- apply -------------------------------------------------------------------------------


def test_apply_writes_every_row_once_and_values_are_the_transform(store):
    path, data = store
    fs = FeatureStore(path)
    card = fs.fit_adapter("toy", "pca-whiten")
    res = fs.apply_adapter(card.adapter_hash)
    assert res.written == 300 and res.skipped_existing == 0 and res.rows == 300 and res.table == card.table
    got = _stored(path, card.table)
    base = dict(zip(data["id"], data["cls"]))
    adapter = load_fitted(Store(path), card)
    for i in list(got)[:50]:
        np.testing.assert_array_equal(got[i], adapter.transform(base[i][None])[0])
    # whitened on its own fit rows: identity covariance (independent of how the plugin computes it)
    x = np.stack([got[i] for i in data["id"]]).astype(np.float64)
    np.testing.assert_allclose(np.cov(x, rowvar=False), np.eye(DIM), atol=1e-3)
    # patch tokens go through the same transform
    prow = Store(path).open_table(card.table).search().where(f"id = '{data['id'][0]}'").select(["patches"]).to_arrow()
    tokens = np.array(prow.column("patches")[0].as_py(), np.float32)  # (4, D) float16 stored
    want = adapter.transform(data["patches"][0].astype(np.float32)).astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(tokens, want)
    # idempotent: a second apply writes nothing; new base rows are picked up by the next
    assert fs.apply_adapter(card.adapter_hash).written == 0
    _write(Store(path).open_table(card.base_table), _rows(300, 10))
    again = fs.apply_adapter("pca-whiten")  # by name: the only fit
    assert again.written == 10 and again.skipped_existing == 300 and again.rows == 310


def test_applying_to_another_model_names_both_hashes(store):
    path, _ = store
    fs = FeatureStore(path)
    card = fs.fit_adapter("toy", "project:dim=4")
    with pytest.raises(ConfigError) as err:
        fs.apply_adapter(card.adapter_hash, model="other")
    assert ("ab" * 32)[:12] in str(err.value) and ("cd" * 32)[:12] in str(err.value) and "Fix" in str(err.value)
    assert card.table not in Store(path).table_names()  # nothing written


def test_models_show_the_chain_and_readers_take_an_adapter_like_a_model(store):
    path, data = store
    fs = FeatureStore(path)
    card = fs.fit_adapter("toy", "project:dim=6")
    fs.apply_adapter(card.adapter_hash)
    models = {m["table"]: m for m in fs.models()}
    m = models[card.table]
    assert m["adapter"] == "project" and m["base_model_hash"] == "ab" * 32 and m["base_table"] == card.base_table
    assert m["dim"] == 6 and m["rows"] == 300 and m["model_hash"] == card.adapter_hash
    assert models[card.base_table]["adapter"] is None
    ds = FeatureDataset(path, card.adapter_hash[:10], columns=["cls", "patches"])
    assert ds.card.adapter.adapter_hash == card.adapter_hash and len(ds) == 300
    item = ds[0]
    assert item["cls"].shape == (6,) and item["patches"].shape == (TOKENS, 6)
    got = _stored(path, card.table)
    assert torch.equal(item["cls"], torch.from_numpy(got[item["id"]]))
    # decode is the stored inverse: close to the base features for a rank-6 projection of 3 clusters
    rec = load_fitted(Store(path), card).decode(np.stack([got[i] for i in data["id"]]))
    rel = np.linalg.norm(rec - data["cls"]) / np.linalg.norm(data["cls"] - data["cls"].mean(0))
    assert rel == pytest.approx(np.sqrt(card.metrics["relative_reconstruction_error"]), rel=1e-3) or rel < 1


def test_search_on_an_adapted_table(store):
    path, data = store
    fs = FeatureStore(path)
    card = fs.fit_adapter("toy", "pca-whiten:dim=8")
    fs.apply_adapter(card.adapter_hash)
    hit = fs.search_id(card.table, data["id"][7], k=5)
    assert hit.hits[0]["id"] == data["id"][7] and hit.hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    same_class = {i for i, l in zip(data["id"], data["label"]) if l == data["label"][7]}
    assert all(h["id"] in same_class for h in hit.hits)
    patches = fs.search_patches(card.table, row_id=data["id"][7], k=3)
    assert patches.hits[0]["id"] == data["id"][7]


# -- integer codes ----------------------------------------------------------------------


@pytest.mark.slow  # a DataLoader worker process
def test_int8_codes_are_stored_decoded_on_read_and_searched(store):
    path, data = store
    fs = FeatureStore(path)
    card = fs.fit_adapter("toy", "quantize")
    assert card.out_dtype == "int8" and card.out_dim == DIM and not card.patches
    fs.apply_adapter(card.adapter_hash)
    table = Store(path).open_table(card.table)
    assert "cls" not in table.schema.names and table.schema.field("codes").type == pa.list_(pa.int8(), DIM)
    assert "patches" not in table.schema.names
    ds = FeatureDataset(path, card.table, columns=["cls"])
    assert fs.card(card.table).cls_dtype == "int8" and fs.card(card.table).dim == DIM
    dec = ds.to_numpy(["cls"])["cls"]
    base = dict(zip(data["id"], data["cls"]))
    err = np.abs(dec - np.stack([base[i] for i in ds.ids]))
    step = (data["cls"].max(0) - data["cls"].min(0)) / 255  # the int8 grid of each dimension
    assert np.all(err <= step / 2 + 1e-5)
    assert torch.allclose(ds[3]["cls"], torch.from_numpy(dec[3]))
    assert ds.to_numpy(["codes"])["codes"].dtype == np.int8
    # a worker process rebuilds the decoder from the store's artifact
    batches = list(ds.loader(100, num_workers=1))
    assert torch.equal(torch.cat([b["cls"] for b in batches]), torch.from_numpy(dec))
    hit = fs.search_id(card.table, data["id"][11], k=3)
    assert hit.hits[0]["id"] == data["id"][11] and hit.method == "exact" and "decoded" in hit.note
    with pytest.raises(ConfigError, match="integer codes"):
        fs.index(card.table)


def test_pq_codes_are_one_byte_per_sub_vector(store):
    path, data = store
    fs = FeatureStore(path)
    card = fs.fit_adapter("toy", "quantize:method=pq,m=6")
    fs.apply_adapter(card.adapter_hash)
    table = Store(path).open_table(card.table)
    assert table.schema.field("codes").type == pa.list_(pa.uint8(), 6) and card.out_dim == 6
    dec = FeatureDataset(path, card.table, columns=["cls"]).to_numpy(["cls"])["cls"]
    assert dec.shape == (300, DIM)
    assert fs.search_id(card.table, data["id"][5], k=1).hits[0]["id"] == data["id"][5]


# -- a trained head ---------------------------------------------------------------------


def test_linear_head_outputs_class_logits(store):
    path, data = store
    fs = FeatureStore(path)
    card = fs.fit_adapter("toy", "linear-head", labels=data["labels_file"])
    assert card.classes == ["c0", "c1", "c2"] and card.out_dim == CLASSES and card.labels_file == str(data["labels_file"])
    assert card.metrics["train_accuracy"] > 0.95
    fs.apply_adapter(card.adapter_hash)
    got = _stored(path, card.table)
    pred = {i: int(np.argmax(v)) for i, v in got.items()}
    acc = np.mean([pred[i] == l for i, l in zip(data["id"], data["label"])])
    assert acc > 0.95


# -- artifacts ----------------------------------------------------------------------------


def test_changed_or_missing_tensors_are_refused(store):
    path, _ = store
    fs = FeatureStore(path)
    card = fs.fit_adapter("toy", "project:dim=4")
    from safetensors.numpy import load_file, save_file

    artifact = path / card.artifact
    state = load_file(str(artifact))
    key = sorted(state)[0]
    state[key] = state[key] + 1
    save_file(state, str(artifact))
    with pytest.raises(StoreError, match="do not match"):
        fs.apply_adapter(card.adapter_hash)
    artifact.unlink()
    with pytest.raises(StoreError, match="missing"):
        fs.apply_adapter(card.adapter_hash)
    with pytest.raises(UnknownModelError, match="no fitted adapter"):
        adapter_card(Store(path), "fffffff")


def test_an_ambiguous_name_lists_the_fits(store):
    path, _ = store
    fs = FeatureStore(path)
    fs.fit_adapter("toy", "project:dim=4")
    fs.fit_adapter("toy", "project:dim=5")
    with pytest.raises(UnknownModelError, match="matches 2 fitted adapters"):
        fs.apply_adapter("project")


# -- CLI ----------------------------------------------------------------------------------


def test_cli_adapters_fit_apply_list_models(store, capsys):
    path, data = store
    s = str(path)
    assert cli_main(["adapters", "--json"]) == 0
    names = {a["name"]: a for a in json.loads(capsys.readouterr().out)}
    assert {"pca-whiten", "project", "quantize", "linear-head"} <= set(names) and names["linear-head"]["labels"]
    assert cli_main(["adapt", "fit", "-s", s, "-m", "toy", "-a", "project", "-p", "dim=5", "--json"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["params"]["dim"] == 5 and card["fit_rows"] == 300
    assert cli_main(["adapt", "apply", "-s", s, "-a", card["adapter_hash"][:12], "-m", "toy", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["written"] == 300
    assert cli_main(["adapt", "list", "-s", s, "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["applied_rows"] == 300 and row["out"] == "float32[5]"
    assert cli_main(["models", "-s", s]) == 0
    out = capsys.readouterr().out
    assert "adapted" in out and "project" in out  # the column only appears once a table is adapted
    assert cli_main(["models", "-s", s, "--json"]) == 0
    chain = {m["table"]: (m["adapter"], m["base_model_hash"]) for m in json.loads(capsys.readouterr().out)}
    assert chain[card["table"]] == ("project", "ab" * 32) and chain[card["base_table"]] == (None, None)
    assert cli_main(["adapt", "apply", "-s", s, "-a", card["adapter_hash"][:12], "-m", "other"]) == 2
    assert "fitted on model" in capsys.readouterr().err
    assert cli_main(["adapt", "fit", "-s", s, "-m", "toy", "-a", "linear-head"]) == 2
    assert "--labels" in capsys.readouterr().err


# -- on the fly during extraction --------------------------------------------------------


def test_extract_with_adapter_writes_raw_and_adapted_rows(fs_tiny_dinov2, tmp_path):
    write_images(tmp_path / "a", 6, seed=0)
    write_images(tmp_path / "b", 5, seed=100)
    fs = FeatureStore(tmp_path / "store")
    first = fs.extract([tmp_path / "a"], backbone=f"hf:{fs_tiny_dinov2}", dense=True, workers=0, batch_size=4)
    card = fs.fit_adapter(first.model_hash, "project:dim=3")
    second = fs.extract([tmp_path / "a", tmp_path / "b"], backbone=f"hf:{fs_tiny_dinov2}", dense=True, workers=0, batch_size=4, adapters=[card.adapter_hash[:8]])
    assert second.written == 5 and second.skipped_existing == 6
    assert second.adapted_tables == {card.table: 11}  # 5 new rows as they were written + the 6 stored before
    base = _stored(tmp_path / "store", first.table)
    got = _stored(tmp_path / "store", card.table)
    adapter = load_fitted(Store(tmp_path / "store"), card)
    assert set(got) == set(base) and len(got) == 11
    for i in got:
        np.testing.assert_array_equal(got[i], adapter.transform(base[i][None])[0])
    # another model's adapter is refused before any image is read
    other = fs.extract([tmp_path / "a"], backbone=f"hf:{fs_tiny_dinov2}", workers=0)  # not dense: another hash
    with pytest.raises(ConfigError, match="fitted on model"):
        fs.extract([tmp_path / "b"], backbone=f"hf:{fs_tiny_dinov2}", workers=0, adapters=[card.adapter_hash])
    assert fs.models()[[m["table"] for m in fs.models()].index(other.table)]["rows"] == 6
    # a query image is encoded by the base model, then adapted
    img = sorted((tmp_path / "b").iterdir())[0]
    hit = fs.search_image(card.table, img, k=1)
    assert hit.hits[0]["uri"] == str(img) and hit.hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
