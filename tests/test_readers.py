"""featurestore.readers on real LanceDB stores: values, selection, labels, pinning, workers, export."""

from __future__ import annotations

import json
import multiprocessing
import pickle
import pickletools
import subprocess
import sys
import textwrap
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from featurestore import FeatureStore
from featurestore.cli import main as cli_main
from featurestore.config import ModelCard, TokenLayout
from featurestore.errors import ConfigError, UnknownModelError
from featurestore.loader import worker_context
from featurestore.readers import FeatureDataset, table_versions, tag_version
from featurestore.store import Store, feature_batch, table_name_for
from featurestore.testing import write_images

DIM, TOKENS = 16, 6  # synthetic tables: cls (16,), patches (6, 16) on a 2x3 grid


def _card(model_hash: str, backbone: str = "toy", dense: bool = True) -> ModelCard:
    return ModelCard(
        model_hash=model_hash, weights_sha256="0" * 64, backbone=backbone, table=table_name_for(backbone, model_hash),
        plugin="test", plugin_version="0", weights_source="memory", architecture="Toy", dim=DIM, dense=dense,
        token_layout=TokenLayout(grid_h=2, grid_w=3, patch_size=14, num_prefix_tokens=1, cls_source="x", input_h=28, input_w=42),
        preprocessing={}, output_spec={}, decode_policy={}, library_versions={}, created_at=datetime.now(timezone.utc),
    )


def _append(table, start: int, n: int, *, video_every: int = 0) -> dict[str, np.ndarray]:
    """Write rows ``start..start+n`` (deterministic values from the row number) in one commit."""
    ids = [f"{i:064x}" for i in range(start, start + n)]
    rng = np.random.default_rng(start)
    cls = rng.standard_normal((n, DIM)).astype(np.float32)
    patches = rng.standard_normal((n, TOKENS, DIM)).astype(np.float16)
    video = [f"v{i % 3}" if video_every and i % video_every == 0 else None for i in range(start, start + n)]
    batch = feature_batch(
        table.schema, ids=ids, uris=[f"/data/img_{i}.jpg" for i in range(start, start + n)], sizes=[(640, 480)] * n,
        crop_boxes=np.tile(np.float32([0, 0, 640, 480]), (n, 1)), cls=cls,
        patches=list(patches) if "patches" in table.schema.names else None,
        grids=[(2, 3)] * n if "patches" in table.schema.names else None, run_id="r", video_ids=video,
        timestamps=[1.0 if v else None for v in video],
    )
    Store.write_features(table, batch)
    return {"id": np.array(ids), "cls": cls, "patches": patches, "video": np.array(video, dtype=object)}


def _synthetic(path: Path, n: int = 120, batch: int = 40, **kw) -> dict[str, np.ndarray]:
    """A store with one dense model of ``n`` rows written in several commits (several fragments)."""
    table = Store(path).register_model(_card("ab" * 32))
    parts = [_append(table, s, min(batch, n - s), **kw) for s in range(0, n, batch)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


@pytest.fixture
def synth(tmp_path):
    return tmp_path / "s", _synthetic(tmp_path / "s", video_every=4)


@pytest.fixture(scope="module")
def extracted(fs_tiny_dinov2, tmp_path_factory):
    """Real extraction (tiny DINOv2, dense, blocks 0 and 1) of 6 JPEGs."""
    root = tmp_path_factory.mktemp("readers")
    write_images(root / "img", 6)
    s = FeatureStore(root / "store").extract([root / "img"], backbone=f"hf:{fs_tiny_dinov2}", dense=True, layers="0,1", workers=0, batch_size=4)
    assert s.written == 6
    return root / "store", s


def _modules(data: bytes) -> set[str]:
    return {arg.split(" ")[0] for op, arg, _ in pickletools.genops(data) if op.name in ("GLOBAL", "STACK_GLOBAL") and isinstance(arg, str)}


# -- values --------------------------------------------------------------------------------


def test_items_of_a_real_extraction_equal_the_table_rows(extracted):
    store, s = extracted
    ds = FeatureDataset(store, s.model_hash, columns=["cls", "patches", "uri"])
    rows = {r["id"]: r for r in FeatureStore(store).table(s.table).to_arrow().to_pylist()}
    assert len(ds) == 6 and set(ds.ids) == set(rows)
    assert ds.token_layout == FeatureStore(store).card(s.model_hash).token_layout and ds.grid == (2, 2)
    for i in range(len(ds)):
        item = ds[i]
        row = rows[item["id"]]
        assert item["uri"] == row["uri"]
        assert item["cls"].dtype == torch.float32 and torch.equal(item["cls"], torch.tensor(row["cls"], dtype=torch.float32))
        want = torch.tensor(np.array(row["patches"], np.float16)).float()  # (4, 64): 2x2 tokens, 2 blocks
        assert item["patches"].shape == (4, 64) and torch.equal(item["patches"], want)
        assert item["grid"].tolist() == [row["grid_h"], row["grid_w"]]


def test_layer_slice_by_block_index(extracted):
    store, s = extracted
    full = FeatureDataset(store, s.table, columns=["cls", "patches"])
    card = full.card
    assert card.layers == [0, 1] and card.layer_dims == [32, 32]
    one = FeatureDataset(store, s.table, columns=["cls", "patches"], layer=1)
    a, b = full[2], one[2]
    assert torch.equal(b["cls"], a["cls"][32:]) and torch.equal(b["patches"], a["patches"][:, 32:])
    np.testing.assert_array_equal(one.to_numpy(["cls"])["cls"], full.to_numpy(["cls"])["cls"][:, 32:])
    assert one.to_arrow(["patches"]).schema.field("patches").type.value_type.list_size == 32
    with pytest.raises(ConfigError, match=r"layer 5 is not stored.*blocks \[0, 1\]"):
        FeatureDataset(store, s.table, layer=5)


def test_random_batches_duplicates_and_negative_indices(synth):
    path, src = synth
    ds = FeatureDataset(path, "toy", columns=["cls", "patches"])
    assert len(ds) == 120 and ds.ids == list(src["id"])  # row order = write order
    idx = [97, 3, 3, 119, 40, -1]
    items = ds.__getitems__(idx)
    for i, item in zip(idx, items):
        assert item["id"] == src["id"][i]
        np.testing.assert_array_equal(item["cls"].numpy(), src["cls"][i])
        np.testing.assert_array_equal(item["patches"].numpy(), src["patches"][i].astype(np.float32))
    with pytest.raises(IndexError):
        ds[120]


def test_ids_and_where_select_rows(synth):
    path, src = synth
    pick = [src["id"][i] for i in (50, 2, 77)]
    ds = FeatureDataset(path, "toy", ids=pick)
    assert [ds[i]["id"] for i in range(3)] == pick
    np.testing.assert_array_equal(ds.to_numpy()["cls"], src["cls"][[50, 2, 77]])
    again = FeatureDataset(path, "toy", ids=[pick[0], pick[1], pick[0]], columns=["patches"])  # repeats: read by take
    np.testing.assert_array_equal(again.to_numpy()["patches"], src["patches"][[50, 2, 50]])
    empty = FeatureDataset(path, "toy", where="uri = 'nothing'", columns=["cls", "patches"])
    assert len(empty) == 0 and empty.to_numpy()["cls"].shape == (0, DIM) and empty.to_arrow().num_rows == 0
    images = FeatureDataset(path, "toy", where="video_id IS NULL", columns=["cls", "video_id"])
    want = [i for i, v in enumerate(src["video"]) if v is None]
    assert len(want) == 90 and images.ids == [src["id"][i] for i in want]
    assert all(item["video_id"] is None for item in images.__getitems__(range(len(images))))
    with pytest.raises(ConfigError, match=r"2 ids are not rows of .* matching 'video_id IS NULL'"):
        FeatureDataset(path, "toy", ids=[src["id"][0], "nope"], where="video_id IS NULL")  # row 0 is a frame
    with pytest.raises(ConfigError, match=r"filter 'no_such > 1' cannot run.*Fix"):
        FeatureDataset(path, "toy", where="no_such > 1")
    with pytest.raises(ConfigError, match="holds no patch tokens"):
        Store(path).register_model(_card("cd" * 32, dense=False))
        FeatureDataset(path, "cd" * 6, columns=["patches"])


# -- labels --------------------------------------------------------------------------------


def test_labels_by_id_from_parquet_and_by_uri_from_csv(synth, tmp_path):
    path, src = synth
    ids, uris = list(src["id"]), [f"/data/img_{i}.jpg" for i in range(120)]
    pq.write_table(pa.table({"id": ids[:100], "label": list(range(100)), "caption": [f"c{i}" for i in range(100)]}), tmp_path / "l.parquet")
    by_id = FeatureDataset(path, "toy", labels=tmp_path / "l.parquet", drop_missing_labels=True)
    assert len(by_id) == 100 and by_id.label_names == ["label", "caption"]
    batch = next(iter(DataLoader(by_id, batch_size=8)))
    assert batch["label"].tolist() == list(range(8)) and batch["caption"][:2] == ["c0", "c1"]
    arrays = by_id.to_numpy(["cls", "label"])
    np.testing.assert_array_equal(arrays["cls"], src["cls"][:100])
    assert arrays["label"].tolist() == list(range(100))
    with pytest.raises(ConfigError, match=r"20 of 120 rows have no label by id: '0+64'.*drop_missing_labels"):
        FeatureDataset(path, "toy", labels=tmp_path / "l.parquet")

    lines = ["uri,label"] + [f"{u},{i % 2}" for i, u in reversed(list(enumerate(uris)))]
    (tmp_path / "l.csv").write_text("\n".join(lines) + "\n")
    by_uri = FeatureDataset(path, "toy", columns=["cls", "uri"], labels=tmp_path / "l.csv", label_key="uri")
    assert len(by_uri) == 120 and [by_uri[i]["label"] for i in (0, 1, 7)] == [0, 1, 1]
    assert by_uri[7]["uri"] == uris[7] and by_uri.ids == ids
    (tmp_path / "dup.csv").write_text(f"uri,label\n{uris[0]},1\n{uris[0]},2\n")
    with pytest.raises(ConfigError, match="repeats uri values"):
        FeatureDataset(path, "toy", labels=tmp_path / "dup.csv", label_key="uri")
    (tmp_path / "rel.csv").write_text("uri,label\nimg_0.jpg,1\n")
    with pytest.raises(ConfigError, match=r"no label by uri.*match as stored, relative ones from the current directory; e.g. '/data/img_0.jpg'"):
        FeatureDataset(path, "toy", labels=tmp_path / "rel.csv", label_key="uri")


# -- pinning -------------------------------------------------------------------------------


def test_model_pinning_by_hash_and_backbone_plus_prefix(synth):
    path, _ = synth
    other, near = "abcdef" + "0" * 58, "abababff" + "0" * 56
    for h in (other, near):  # more "toy" models: the backbone name alone is ambiguous
        Store(path).register_model(_card(h))
    assert FeatureDataset(path, "toy", expected_hash="abababab").card.model_hash == "ab" * 32
    assert FeatureDataset(path, "toy", expected_hash="ABCDEF").card.model_hash == other
    assert FeatureDataset(path, "ab" * 32, expected_hash="ab" * 32).card.model_hash == "ab" * 32
    with pytest.raises(UnknownModelError, match=r"has hash abababababababab… .*not the expected 123456"):
        FeatureDataset(path, "ab" * 32, expected_hash="123456")
    with pytest.raises(UnknownModelError, match="matches 3 models"):
        FeatureDataset(path, "toy")
    with pytest.raises(UnknownModelError, match="expected hash 'ababab' matches 2 models.*longer prefix"):
        FeatureDataset(path, "toy", expected_hash="ababab")
    with pytest.raises(ConfigError, match="'ab' is not a hash prefix"):
        FeatureDataset(path, "toy", expected_hash="ab")
    with pytest.raises(UnknownModelError, match="no model 'dino'"):
        FeatureDataset(path, "dino", expected_hash="ababab")


def test_version_and_tag_pinning(tmp_path):
    path = tmp_path / "s"
    src = _synthetic(path, n=80, batch=40)  # the empty table (and its indices), then 40 rows, then 80
    rows = {v["version"]: v["rows"] for v in table_versions(path, "toy")["versions"]}
    v40, v80 = min(v for v, n in rows.items() if n == 40), max(rows)
    assert rows[v80] == 80
    assert tag_version(path, "toy", "first", v40) == v40
    old = FeatureDataset(path, "toy", version="first")
    assert (old.version, old.tag, len(old)) == (v40, "first", 40)
    assert len(FeatureDataset(path, "toy", version=v80)) == 80 and FeatureDataset(path, "toy").version == v80
    np.testing.assert_array_equal(old.to_numpy()["cls"], src["cls"][:40])
    with pytest.raises(ConfigError, match=rf"no version 99 \(it has 1..{v80}"):
        FeatureDataset(path, "toy", version=99)
    with pytest.raises(ConfigError, match=rf"no tag 'nope' \(tags: first \(v{v40}\)\)"):
        FeatureDataset(path, "toy", version="nope")
    with pytest.raises(ConfigError, match="already has a tag 'first'"):
        tag_version(path, "toy", "first")


# a second writer in its own process: 4 commits of 30 rows through the store's write path
_WRITER = textwrap.dedent(
    """
    import time
    import numpy as np
    from featurestore.store import Store, feature_batch
    table = Store({path!r}).open_table({table!r})
    for k in range(4):
        ids = [f"{{i:064x}}" for i in range(1000 + 30 * k, 1030 + 30 * k)]
        batch = feature_batch(
            table.schema, ids=ids, uris=ids, sizes=[(1, 1)] * 30, crop_boxes=np.zeros((30, 4)),
            cls=np.ones((30, {dim}), np.float32), patches=[np.ones(({tokens}, {dim}), np.float16)] * 30,
            grids=[(2, 3)] * 30, run_id="writer",
        )
        Store.write_features(table, batch)
        time.sleep(0.05)
    table.optimize()  # compaction rewrites the fragments: row ids of the latest version change
    """
)


@pytest.mark.slow  # a writer in another process
def test_pinned_reader_keeps_its_version_while_another_process_appends(tmp_path):
    path = tmp_path / "s"
    src = _synthetic(path, n=64, batch=32)
    ds = FeatureDataset(path, "toy", columns=["cls", "patches"])
    pinned = ds.version
    writer = subprocess.Popen([sys.executable, "-c", _WRITER.format(path=str(path), table=ds.table_name, dim=DIM, tokens=TOKENS)])
    rng = np.random.default_rng(0)
    reads = 0
    while writer.poll() is None or reads < 3:
        idx = rng.choice(64, 16)
        for i, item in zip(idx, ds.__getitems__(idx)):
            assert item["id"] == src["id"][i] and np.array_equal(item["cls"].numpy(), src["cls"][i])
        reads += 1
    assert writer.wait() == 0
    assert Store(path).open_table(ds.table_name).count_rows() == 64 + 120  # the writer did append
    assert len(ds) == 64 and ds.version == pinned and len(ds.to_arrow()) == 64
    fresh = FeatureDataset(path, "toy")
    assert len(fresh) == 184 and fresh.version > pinned + 4  # 4 appends, then compaction
    assert len(pickle.loads(pickle.dumps(ds)).to_numpy()["cls"]) == 64  # a reopened copy reads v`pinned` too


# -- processes -----------------------------------------------------------------------------


def test_pickles_without_handles_and_reopens_per_process(synth):
    path, _ = synth
    ds = FeatureDataset(path, "toy", columns=["cls"])
    ds[0]  # opens the handle in this process
    data = pickle.dumps(ds)
    assert not any(m.split(".")[0] in ("lancedb", "lance", "_lancedb") for m in _modules(data)), _modules(data)
    copy = pickle.loads(data)
    assert copy._table is None and ds._table is not None
    assert torch.equal(copy[5]["cls"], ds[5]["cls"])
    assert copy._handle() is copy._handle() and copy._handle().version == ds.version
    copy._pid = -1  # as if this copy had been carried into a forked child
    with pytest.raises(ConfigError, match="forked process.*worker_context"):
        copy[0]


@pytest.mark.slow  # DataLoader worker processes
def test_dataloader_workers_give_the_same_batches(synth):
    path, _ = synth
    ds = FeatureDataset(path, "toy", columns=["cls", "patches"], where="video_id IS NULL")
    def seeded() -> torch.Generator:  # the same shuffled order for every loader
        return torch.Generator().manual_seed(0)

    ref = list(DataLoader(ds, batch_size=16, shuffle=True, generator=seeded(), num_workers=0))
    plain = list(DataLoader(ds, batch_size=16, shuffle=True, generator=seeded(), num_workers=2, multiprocessing_context=worker_context()))
    served = list(ds.loader(16, shuffle=True, generator=seeded(), num_workers=2))  # forkserver preloading the reader
    assert sorted(i for b in ref for i in b["id"]) == sorted(ds.ids) and ref[0]["id"] != ds.ids[:16]
    for other in (plain, served):
        assert len(other) == len(ref) == 6
        for a, b in zip(ref, other):
            assert a["id"] == b["id"] and torch.equal(a["cls"], b["cls"]) and torch.equal(a["patches"], b["patches"])
            assert a["patches"].shape[1:] == (TOKENS, DIM) and a["grid"].tolist() == [[2, 3]] * len(a["id"])


@pytest.mark.slow  # DataLoader worker processes
@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork start method on this platform")
def test_forked_dataloader_workers_are_refused_with_the_fix(synth):
    # LanceDB's runtime threads do not survive fork(): a forked worker can segfault or hang,
    # so a FeatureDataset refuses to read in one instead of crashing now and then
    path, _ = synth
    ds = FeatureDataset(path, "toy", columns=["cls"])
    # timeout: a worker that hung in LanceDB's after-fork hook fails the test instead of stalling it
    forked = DataLoader(ds, batch_size=4, num_workers=1, multiprocessing_context=multiprocessing.get_context("fork"), timeout=120)
    with pytest.raises(ConfigError, match="forked process.*ds.loader"):
        next(iter(forked))
    assert len(list(ds.loader(4, num_workers=1))) == -(-len(ds) // 4)  # the fix it names works


# -- export --------------------------------------------------------------------------------


def test_exports_round_trip(synth, tmp_path):
    path, src = synth
    ds = FeatureDataset(path, "toy", columns=["cls", "patches"], where="video_id IS NULL")
    arrays = ds.to_numpy()
    out = ds.export(tmp_path / "o" / "feat.npy")
    assert [Path(f["path"]).name for f in out["files"]] == ["feat.npy", "feat.patches.npy", "feat.ids.txt"]
    np.testing.assert_array_equal(np.load(tmp_path / "o" / "feat.npy"), arrays["cls"])
    patches = np.load(tmp_path / "o" / "feat.patches.npy")
    assert patches.dtype == np.float16 and patches.shape == (90, TOKENS, DIM)
    np.testing.assert_array_equal(patches, src["patches"][src["video"] == None])
    assert (tmp_path / "o" / "feat.ids.txt").read_text().split() == ds.ids

    pq.write_table(pa.table({"id": list(src["id"]), "y": np.arange(120)}), tmp_path / "y.parquet")
    lab = FeatureDataset(path, "toy", columns=["cls", "uri"], labels=tmp_path / "y.parquet")
    lab.export(tmp_path / "feat.parquet")
    back = pq.read_table(tmp_path / "feat.parquet")
    assert back.column_names == ["id", "cls", "uri", "y"] and back.equals(lab.to_arrow())
    np.testing.assert_array_equal(np.stack(back.column("cls").to_numpy(zero_copy_only=False)), src["cls"])
    assert back.column("y").to_pylist() == list(range(120))
    with pytest.raises(ConfigError, match="cannot go into .npy"):
        lab.export(tmp_path / "x.npy", columns=["cls", "y"])


def test_cli_export_and_versions(synth, tmp_path, capsys):
    path, src = synth
    v80 = next(v["version"] for v in table_versions(path, "toy")["versions"] if v["rows"] == 80)  # the first 80 rows
    assert cli_main(["tag", "v-img", "--store", str(path), "--model", "toy", "--version", str(v80)]) == 0
    capsys.readouterr()
    assert cli_main(["versions", "--store", str(path), "--model", "toy", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    # the empty table (and the commits adding its indices), then 40, 80, 120 rows
    assert info["tags"] == {"v-img": v80} and sorted({v["rows"] for v in info["versions"]}) == [0, 40, 80, 120]
    args = ["export", "-s", str(path), "-m", "toy", "-o", str(tmp_path / "e.npy"), "--where", "video_id IS NULL", "--version", "v-img"]
    assert cli_main([*args, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["rows"], summary["version"], summary["format"]) == (60, v80, "npy")
    np.testing.assert_array_equal(np.load(tmp_path / "e.npy"), src["cls"][:80][src["video"][:80] == None])
    assert cli_main([*args[:-1], "99"]) == 2
    assert "has no version 99" in capsys.readouterr().err
    assert cli_main(["export", "-s", str(path), "-m", "toy", "-o", str(tmp_path / "e.parquet"), "--expect-hash", "ffffff"]) == 2
    assert "not the expected ffffff" in capsys.readouterr().err
    assert cli_main(["export", "-s", str(path), "-m", "toy", "-o", str(tmp_path / "e.parquet"), "--columns", "cls,uri"]) == 0
    assert "120 rows of table toy-abababababab" in capsys.readouterr().out
    assert pq.read_table(tmp_path / "e.parquet").num_rows == 120

