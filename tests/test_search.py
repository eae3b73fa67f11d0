"""``featurestore search`` / ``index``: kNN over cls, ANN indexes, MaxSim patch search.

Expected rankings are recomputed with numpy from the rows read back from the table, never
from the code under test. Real stores come from a real extraction (tiny random DINOv2 via
the transformers plugin); index tests use synthetic clustered rows written through the
store's own write path.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featurestore import FeatureStore
from featurestore.cli import main
from featurestore.config import ModelCard, TokenLayout
from featurestore.errors import ConfigError
from featurestore.search import INDEX_KINDS, region_tokens
from featurestore.store import Store, feature_batch, table_name_for
from featurestore.testing import write_images

DIM = 32  # synthetic tables


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _rows(fs: FeatureStore, table: str) -> list[dict]:
    return fs.table(table).to_arrow().to_pylist()


def _cli_json(capsys, *argv) -> object:
    rc = main([*map(str, argv), "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return json.loads(out.out)


def _cli_err(capsys, *argv) -> str:
    assert main(list(map(str, argv))) == 2
    return capsys.readouterr().err


# -- real extraction -------------------------------------------------------------------


@pytest.fixture(scope="module")
def grid4_model(fs_tiny_dinov2, tmp_path_factory) -> Path:
    """fs_tiny_dinov2 with a 56x56 crop: a 4x4 patch grid (DINOv2 interpolates its position embeddings)."""
    d = tmp_path_factory.mktemp("grid4") / "m"
    shutil.copytree(fs_tiny_dinov2, d)
    cfg = json.loads((d / "preprocessor_config.json").read_text())
    cfg.update(size={"shortest_edge": 64}, crop_size={"height": 56, "width": 56})
    (d / "preprocessor_config.json").write_text(json.dumps(cfg))
    return d


def _mosaics(directory: Path, n: int, seed: int) -> list[Path]:
    """Images of 4x3 flat colour blocks: a crop of one shares its local content with no other image."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        blocks = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
        p = directory / f"mosaic_{i}.png"
        Image.fromarray(np.kron(blocks, np.ones((24, 24, 1), np.uint8))).save(p)  # (72, 96, 3)
        out.append(p)
    return out


@pytest.fixture(scope="module")
def real(grid4_model, tmp_path_factory):
    """One store, the same 8 images (6 smooth, 2 mosaics) as a dense table and as a cls-only table."""
    root = tmp_path_factory.mktemp("search")
    paths = write_images(root / "img", 6, size=(96, 72), fmt="PNG", seed=7) + _mosaics(root / "img", 2, seed=8)
    fs = FeatureStore(root / "store")
    dense = fs.extract([root / "img"], backbone=f"hf:{grid4_model}", dense=True, workers=0, batch_size=3).table
    flat = fs.extract([root / "img"], backbone=f"hf:{grid4_model}", workers=0).table
    rows = {r["uri"]: r for r in _rows(fs, dense)}
    return fs, dense, flat, [str(p) for p in paths], rows


def test_id_query_ranks_by_cosine_over_all_rows(real, capsys):
    fs, dense, _, paths, rows = real
    uris = list(rows)
    cls = _unit([rows[u]["cls"] for u in uris])
    q = rows[paths[2]]
    out = _cli_json(capsys, "search", "-s", fs.path, "-m", dense, "--id", q["id"], "-k", 5)
    sims = cls @ _unit(q["cls"])
    order = np.argsort(-sims)[:5]
    assert [h["uri"] for h in out["hits"]] == [uris[i] for i in order]
    np.testing.assert_allclose([h["score"] for h in out["hits"]], sims[order], atol=1e-5)
    assert out["hits"][0]["id"] == q["id"] and out["hits"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert (out["method"], out["index"], out["query"]["kind"]) == ("exact", None, "id")
    # a unique prefix finds the same row
    short = _cli_json(capsys, "search", "-s", fs.path, "-m", dense, "--id", q["id"][:10], "-k", 5)
    assert short["hits"] == out["hits"]


def test_image_query_equals_id_query(real, capsys):
    fs, dense, flat, paths, rows = real
    for table in (dense, flat):
        by_image = _cli_json(capsys, "search", "-s", fs.path, "-m", table, "--image", paths[5], "-k", 8)
        by_id = _cli_json(capsys, "search", "-s", fs.path, "-m", table, "--id", rows[paths[5]]["id"], "-k", 8)
        assert [h["id"] for h in by_image["hits"]] == [h["id"] for h in by_id["hits"]]
        np.testing.assert_allclose([h["score"] for h in by_image["hits"]], [h["score"] for h in by_id["hits"]], atol=1e-5)
        assert by_image["hits"][0]["uri"] == paths[5] and by_image["hits"][0]["score"] > 0.9999
        assert by_image["query"] == {"kind": "image", "path": paths[5]}


def test_vector_query_from_npy(real, tmp_path, capsys):
    fs, dense, _, paths, rows = real
    uris = list(rows)
    rng = np.random.default_rng(3)
    v = np.asarray(rows[paths[0]]["cls"], np.float32) + rng.standard_normal(DIM).astype(np.float32)
    np.save(tmp_path / "q.npy", v)
    out = _cli_json(capsys, "search", "-s", fs.path, "-m", dense, "--vector", tmp_path / "q.npy", "-k", 3)
    sims = _unit([rows[u]["cls"] for u in uris]) @ _unit(v)
    order = np.argsort(-sims)[:3]
    assert [h["uri"] for h in out["hits"]] == [uris[i] for i in order]
    np.testing.assert_allclose([h["score"] for h in out["hits"]], sims[order], atol=1e-5)
    # the plain table output names the method and the hits
    assert main(["search", "-s", fs.path, "-m", dense, "--vector", str(tmp_path / "q.npy"), "-k", "3"]) == 0
    text = capsys.readouterr().out
    assert "exact" in text and rows[uris[order[0]]]["id"][:12] in text


def _maxsim(query: np.ndarray, stored: list[np.ndarray]) -> np.ndarray:
    q = _unit(query)
    return np.array([(q @ _unit(s).T).max(axis=1).mean() for s in stored])


def test_patch_search_by_id_matches_numpy_maxsim(real, capsys):
    fs, dense, _, paths, rows = real
    uris = list(rows)
    stored = [np.asarray(rows[u]["patches"], np.float32) for u in uris]
    q = rows[paths[4]]
    out = _cli_json(capsys, "search", "-s", fs.path, "-m", dense, "--id", q["id"], "--patches", "-k", 8)
    want = _maxsim(np.asarray(q["patches"], np.float32), stored)
    order = np.argsort(-want)
    assert [h["uri"] for h in out["hits"]] == [uris[i] for i in order]
    np.testing.assert_allclose([h["score"] for h in out["hits"]], want[order], atol=2e-3)  # fp16 tokens
    assert out["hits"][0]["uri"] == paths[4] and out["query"]["tokens"] == 16 and out["method"] == "exact"


def test_patch_search_by_image_and_by_crop_finds_the_source(real, tmp_path, capsys):
    fs, dense, _, paths, _ = real
    out = _cli_json(capsys, "search", "-s", fs.path, "-m", dense, "--image", paths[6], "--patches", "-k", 3)
    assert out["hits"][0]["uri"] == paths[6] and out["hits"][0]["score"] > 0.999
    for i in (6, 7):  # the mosaics
        with Image.open(paths[i]) as im:  # the centre 60% of a stored image, saved as a new file
            w, h = im.size
            im.crop((int(0.2 * w), int(0.2 * h), int(0.8 * w), int(0.8 * h))).save(tmp_path / f"crop{i}.png")
        out = _cli_json(capsys, "search", "-s", fs.path, "-m", dense, "--image", tmp_path / f"crop{i}.png", "--patches", "-k", 3)
        assert out["hits"][0]["uri"] == paths[i], out["hits"]


def test_region_selects_the_tokens_under_it(real, capsys):
    fs, dense, _, paths, rows = real
    q = rows[paths[3]]
    left, top, right, bottom = q["crop_box"]
    cell_w, cell_h = (right - left) / 4, (bottom - top) / 4
    # the top-left 2x2 cells of the 4x4 grid
    region = f"{left},{top},{left + 2 * cell_w},{top + 2 * cell_h}"
    out = _cli_json(capsys, "search", "-s", fs.path, "-m", dense, "--id", q["id"], "--patches", "--region", region, "-k", 8)
    assert out["query"]["token_indices"] == [0, 1, 4, 5] and out["query"]["tokens"] == 4
    uris = list(rows)
    tokens = np.asarray(q["patches"], np.float32)[[0, 1, 4, 5]]
    want = _maxsim(tokens, [np.asarray(rows[u]["patches"], np.float32) for u in uris])
    got = {h["uri"]: h["score"] for h in out["hits"]}
    np.testing.assert_allclose([got[u] for u in uris], want, atol=2e-3)
    assert out["hits"][0]["uri"] == paths[3]
    # the same region of the image file itself: the region is in the query image's pixels
    img = _cli_json(capsys, "search", "-s", fs.path, "-m", dense, "--image", paths[3], "--patches", "--region", region, "-k", 2)
    assert img["query"]["token_indices"] == [0, 1, 4, 5] and img["hits"][0]["uri"] == paths[3]
    # the plain output names the query; the region's brackets are printed, not read as markup
    assert main(["search", "-s", fs.path, "-m", dense, "--id", q["id"], "--patches", "--region", region, "-k", "2"]) == 0
    text = capsys.readouterr().out
    assert "4 patch tokens" in text and f"[{left}," in text and q["id"][:12] in text


def test_region_geometry():
    layout = TokenLayout(grid_h=4, grid_w=4, patch_size=14, num_prefix_tokens=1, cls_source="x", input_h=56, input_w=56)
    crop = (10.0, 0.0, 122.0, 112.0)  # 112 px seen as 56 input px: a cell is 28 original px
    assert region_tokens((10, 0, 66, 56), crop, (4, 4), layout).tolist() == [0, 1, 4, 5]
    assert region_tokens((95, 85, 122, 112), crop, (4, 4), layout).tolist() == [15]
    # smaller than a cell and between centres: the cell under the region's centre
    assert region_tokens((40, 30, 42, 32), crop, (4, 4), layout).tolist() == [5]
    # a grid that does not cover the whole input (60 px input, 4 patches of 14 px)
    wide = layout.model_copy(update={"input_w": 60})
    assert region_tokens((10, 0, 122, 28), (10.0, 0.0, 130.0, 112.0), (4, 4), wide).tolist() == [0, 1, 2, 3]
    with pytest.raises(ConfigError, match="outside the part of the image"):
        region_tokens((0, 0, 5, 5), crop, (4, 4), layout)


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--id", "f" * 64], "no row with id"),
        (["--id", "nothex'"], "no row with id"),
        (["--patches", "--region", "1,2,3"], "not x0,y0,x1,y1"),
        (["--region", "0,0,10,10"], "needs --patches"),
        (["-k", "0"], "-k must be at least 1"),
    ],
)
def test_bad_search_input(real, argv, needle, capsys):
    fs, dense, _, paths, rows = real
    if "--id" not in argv:
        argv = ["--id", rows[paths[0]]["id"], *argv]
    assert needle in _cli_err(capsys, "search", "-s", fs.path, "-m", dense, *argv)


def test_bad_vectors_and_non_dense_tables(real, tmp_path, capsys):
    fs, dense, flat, paths, rows = real
    np.save(tmp_path / "short.npy", np.ones(DIM - 1, np.float32))
    err = _cli_err(capsys, "search", "-s", fs.path, "-m", dense, "--vector", tmp_path / "short.npy")
    assert f"shape ({DIM - 1},)" in err and f"width {DIM}" in err
    np.save(tmp_path / "zero.npy", np.zeros(DIM, np.float32))
    assert "all zeros" in _cli_err(capsys, "search", "-s", fs.path, "-m", dense, "--vector", tmp_path / "zero.npy")
    assert "no such file" in _cli_err(capsys, "search", "-s", fs.path, "-m", dense, "--vector", tmp_path / "none.npy")
    err = _cli_err(capsys, "search", "-s", fs.path, "-m", flat, "--id", rows[paths[0]]["id"], "--patches")
    assert "holds no patch tokens" in err and "--dense" in err
    assert "--patches needs --image or --id" in _cli_err(capsys, "search", "-s", fs.path, "-m", dense, "--vector", tmp_path / "zero.npy", "--patches")
    err = _cli_err(capsys, "index", "-s", fs.path, "-m", dense)
    assert "has 8 rows" in err and "needs at least 256 rows" in err


def test_other_weights_are_refused_for_image_queries(real, grid4_model, fs_tiny_model_factory, tmp_path, capsys):
    fs, dense, _, paths, _ = real
    other = fs_tiny_model_factory("dinov2", seed=5)
    err = _cli_err(capsys, "search", "-s", fs.path, "-m", dense, "--image", paths[0], "--weights", other)
    assert "not the ones that produced" in err and dense in err
    # same tensors, another image processor: the recomputed model hash catches it
    moved = tmp_path / "moved"
    shutil.copytree(grid4_model, moved)
    cfg = json.loads((moved / "preprocessor_config.json").read_text())
    cfg["image_mean"] = [0.5, 0.5, 0.5]
    (moved / "preprocessor_config.json").write_text(json.dumps(cfg))
    err = _cli_err(capsys, "search", "-s", fs.path, "-m", dense, "--image", paths[0], "--weights", moved)
    assert "the preprocessing of" in err and dense in err


def test_text_search_prints_the_object_every_query_prints_and_takes_exact(fs_tiny_openclip, tmp_path, capsys):
    """--text --json prints the same object as the other query kinds, with or without --exact; a
    --layers table of the same CLIP model (no text space) still takes image queries: its text tower
    is not held against it."""
    write_images(tmp_path / "img", 5, fmt="PNG", seed=21)
    fs = FeatureStore(tmp_path / "s")
    table = fs.extract([tmp_path / "img"], backbone=f"open_clip:local-dir:{fs_tiny_openclip}", workers=0).table
    plain = _cli_json(capsys, "search", "-s", fs.path, "-m", table, "--text", "a red square", "-k", 3)
    exact = _cli_json(capsys, "search", "-s", fs.path, "-m", table, "--text", "a red square", "-k", 3, "--exact")
    image = _cli_json(capsys, "search", "-s", fs.path, "-m", table, "--image", tmp_path / "img" / "img_00000.png", "-k", 3)
    assert isinstance(plain, dict) and set(plain) == set(exact) == set(image)
    assert plain["query"] == {"kind": "text", "text": "a red square"} and plain["table"] == table
    assert (plain["method"], exact["method"]) == ("exact", "exact")  # no index: every row compared
    assert [h["id"] for h in plain["hits"]] == [h["id"] for h in exact["hits"]]
    np.testing.assert_allclose([h["score"] for h in plain["hits"]], [h["score"] for h in exact["hits"]], atol=1e-5)
    assert set(plain["hits"][0]) == {"rank", "id", "uri", "score"}
    layers = fs.extract([tmp_path / "img"], backbone=f"open_clip:local-dir:{fs_tiny_openclip}", layers="last2", workers=0).table
    img = str(tmp_path / "img" / "img_00002.png")
    out = _cli_json(capsys, "search", "-s", fs.path, "-m", layers, "--image", img, "-k", 2)
    assert out["hits"][0]["uri"] == img and out["hits"][0]["score"] > 0.9999


# -- ANN index on synthetic clustered rows ----------------------------------------------


def _card(model_hash: str) -> ModelCard:
    return ModelCard(
        model_hash=model_hash, weights_sha256="0" * 64, backbone="toy", table=table_name_for("toy", model_hash),
        plugin="test", plugin_version="0", weights_source="memory", architecture="Toy", dim=DIM, dense=False,
        preprocessing={}, output_spec={}, decode_policy={}, library_versions={}, created_at=datetime.now(timezone.utc),
    )


def _clustered(rng: np.random.Generator, centers: np.ndarray, n: int) -> np.ndarray:
    return (centers[rng.integers(0, len(centers), n)] + 0.35 * rng.standard_normal((n, DIM))).astype(np.float32)


def _write(table, start: int, cls: np.ndarray) -> list[str]:
    n = len(cls)
    ids = [f"{i:064x}" for i in range(start, start + n)]
    batch = feature_batch(
        table.schema, ids=ids, uris=[f"/x/{i}.jpg" for i in range(start, start + n)], sizes=[(64, 64)] * n,
        crop_boxes=np.tile(np.float32([0, 0, 64, 64]), (n, 1)), cls=cls, patches=None, grids=None, run_id="r",
    )
    Store.write_features(table, batch)
    return ids


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """2048 clustered rows (32 clusters) in one table, plus held-out queries from the same clusters."""
    path = tmp_path_factory.mktemp("ann") / "store"
    table = Store(path).register_model(_card("cd" * 32))
    rng = np.random.default_rng(11)
    centers = rng.standard_normal((32, DIM)).astype(np.float32)
    cls = _clustered(rng, centers, 2048)
    ids = _write(table, 0, cls)
    return str(path), table.name, np.array(ids), cls, _clustered(rng, centers, 20), centers


def _recall(fs: FeatureStore, table: str, ids: np.ndarray, cls: np.ndarray, queries: np.ndarray, **kw) -> tuple[float, set[str]]:
    truth = np.argsort(-(_unit(queries) @ _unit(cls).T), axis=1)[:, :10]
    found, methods = 0, set()
    for q, t in zip(queries, truth):
        res = fs.search_vector(table, q, k=10, **kw)
        methods.add(res.method)
        found += len({h["id"] for h in res.hits} & set(ids[t]))
    return found / truth.size, methods


@pytest.mark.parametrize("kind", list(INDEX_KINDS))
def test_every_index_kind_is_built_and_used(synth, kind, capsys):
    path, table, ids, cls, queries, _ = synth
    fs = FeatureStore(path)
    info = _cli_json(capsys, "index", "-s", path, "-m", table, "--kind", kind)
    assert info["kind"] == kind and info["rows"] == info["indexed_rows"] == 2048 and info["distance_type"] == "cosine"
    assert info["partitions"] == (1 if "hnsw" in kind else 8)  # sqrt(2048) capped at 2048 // 256
    assert info["sub_vectors"] == (DIM // 8 if kind.endswith("pq") else None)
    recall, methods = _recall(fs, table, ids, cls, queries)
    assert methods == {"ann"} and recall >= 0.9
    exact, methods = _recall(fs, table, ids, cls, queries, exact=True)
    assert methods == {"exact"} and exact == 1.0
    res = _cli_json(capsys, "search", "-s", path, "-m", table, "--id", ids[0], "-k", 3)
    assert res["method"] == "ann" and res["index"]["kind"] == kind and res["hits"][0]["id"] == ids[0]
    assert res["params"]["nprobes"] == 20


def test_index_is_approximate_and_exact_bypasses_it(synth, capsys):
    path, table, ids, cls, queries, _ = synth
    fs = FeatureStore(path)
    fs.index(table, kind="ivf_pq", sub_vectors=2)  # coarse codes: 16 dims per byte
    rough, _ = _recall(fs, table, ids, cls, queries, nprobes=1, refine_factor=1)
    refined, _ = _recall(fs, table, ids, cls, queries)
    exact, methods = _recall(fs, table, ids, cls, queries, exact=True)
    assert rough < refined and exact == 1.0 and methods == {"exact"}
    # scores of the exact path are the cosine similarities, whatever the index
    q = queries[0]
    hits = fs.search_vector(table, q, k=5, exact=True).hits
    sims = _unit(cls) @ _unit(q)
    np.testing.assert_allclose([h["score"] for h in hits], np.sort(sims)[::-1][:5], atol=1e-5)


def test_rows_added_after_the_index_are_still_found(tmp_path, synth, capsys):
    _, _, _, _, _, centers = synth
    table = Store(tmp_path / "s").register_model(_card("ef" * 32))
    rng = np.random.default_rng(5)
    _write(table, 0, _clustered(rng, centers, 512))
    fs = FeatureStore(tmp_path / "s")
    fs.index(table.name, kind="ivf_sq")
    late = _clustered(rng, centers, 3)
    late_ids = _write(table, 10_000, late)
    res = _cli_json(capsys, "search", "-s", fs.path, "-m", table.name, "--id", late_ids[1], "-k", 1)
    assert res["method"] == "ann" and res["index"]["unindexed_rows"] == 3
    assert res["hits"][0]["id"] == late_ids[1]
    dropped = _cli_json(capsys, "index", "-s", fs.path, "-m", table.name, "--drop")
    assert dropped["dropped"]["kind"] == "ivf_sq"
    assert fs.search_id(table.name, late_ids[1]).method == "exact" and fs.index_info(table.name) is None


def test_bad_index_options(synth, capsys):
    path, table, *_ = synth
    err = _cli_err(capsys, "index", "-s", path, "-m", table, "--partitions", "9")
    assert "needs at least 2304 rows" in err and "--partitions 8" in err
    assert "does not divide the vector width 32" in _cli_err(capsys, "index", "-s", path, "-m", table, "--kind", "ivf_pq", "--sub-vectors", "5")
    assert "not ivf_sq" in _cli_err(capsys, "index", "-s", path, "-m", table, "--kind", "ivf_sq", "--sub-vectors", "4")
    assert "at least 1" in _cli_err(capsys, "index", "-s", path, "-m", table, "--partitions", "0")
