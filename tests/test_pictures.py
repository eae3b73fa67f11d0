"""``featurestore show patches|search|map``: PNG pictures of stored features.

Every picture is opened again with Pillow: a real PNG of the documented size whose pixels
change when the features change. Planted patch tokens check the foreground mask; search
grids are checked against a numpy ranking of the rows read back from the table.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featurestore import FeatureStore
from featurestore.cli import main
from featurestore.cluster import cluster
from featurestore.config import ModelCard, TokenLayout
from featurestore.errors import ConfigError
from featurestore.pictures import grid_box, patch_pca_rgb, render_overlay
from featurestore.store import Store, feature_batch, table_name_for
from featurestore.testing import smooth_image, write_images

pytest.importorskip("matplotlib")

DIM = 16
G = 6  # synthetic patch grid: 6 x 6 tokens


def _png(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB")).astype(np.int16)


def _cli(capsys, *argv) -> dict:
    rc = main([*map(str, argv), "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return json.loads(out.out)


def _card(model_hash: str, dense: bool) -> ModelCard:
    layout = TokenLayout(grid_h=G, grid_w=G, patch_size=14, num_prefix_tokens=1, cls_source="x", input_h=14 * G, input_w=14 * G)
    return ModelCard(
        model_hash=model_hash, weights_sha256="0" * 64, backbone="toy", table=table_name_for("toy", model_hash),
        plugin="test", plugin_version="0", weights_source="memory", architecture="Toy", dim=DIM, dense=dense,
        token_layout=layout if dense else None, preprocessing={}, output_spec={}, decode_policy={},
        library_versions={}, created_at=datetime.now(timezone.utc),
    )


def _planted_tokens(rng: np.random.Generator, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(36, D) tokens: background everywhere, an object of two parts in the centre 2x3 cells."""
    bg, part_a, part_b = 4.0 * rng.standard_normal((3, DIM))
    tokens = np.tile(bg, (G * G, 1))
    obj = np.zeros((G, G), bool)
    obj[2:4, 1:4] = True
    tokens[obj.reshape(-1)] = part_a
    tokens[(obj & (np.arange(G) >= 3)[None, :]).reshape(-1)] = part_b  # the object's right column
    return scale * (tokens + 0.05 * rng.standard_normal(tokens.shape)), obj


def test_pca_mask_finds_the_planted_object():
    tokens, obj = _planted_tokens(np.random.default_rng(0))
    for sign in (1.0, -1.0):  # the orientation does not depend on the sign PCA happens to give
        rgb, fg, info = patch_pca_rgb(sign * tokens, (G, G))
        assert (fg == obj).all() and info["foreground"] == pytest.approx(obj.mean())
        assert (rgb[~fg] == 0).all() and rgb.min() >= 0 and rgb.max() <= 1
        left, right = rgb[2, 1], rgb[2, 3]  # the two parts of the object get different colours
        assert np.abs(left - right).max() > 0.5
    # an object that fills most of the frame (25 of 36 cells, 9 of them on the border) is still
    # the foreground: the side of the first component that the border leans to is background
    rng = np.random.default_rng(1)
    big = np.zeros((G, G), bool)
    big[1:, 1:] = True
    obj_vec, bg_vec = 4.0 * rng.standard_normal((2, DIM))
    tokens_big = np.where(big.reshape(-1, 1), obj_vec, bg_vec) + 0.05 * rng.standard_normal((G * G, DIM))
    assert (patch_pca_rgb(tokens_big, (G, G))[1] == big).all()
    rgb, fg, _ = patch_pca_rgb(tokens, (G, G), threshold=None)
    assert fg.all() and rgb[~obj].max() > 0
    with pytest.raises(ConfigError, match="do not fill a 5x5 grid"):
        patch_pca_rgb(tokens, (5, 5))


def test_overlay_and_grid_geometry():
    rgb = np.zeros((2, 2, 3))
    rgb[0, 0] = (1.0, 0.0, 0.0)
    fg = np.array([[True, False], [False, False]])
    crop = np.full((40, 40, 3), 200, np.uint8)
    out = render_overlay(crop, rgb, fg, upsample="nearest", alpha=1.0)
    assert out.shape == (40, 40, 3) and (out[:20, :20] == (1.0, 0.0, 0.0)).all()
    np.testing.assert_allclose(out[30, 30], 0.35 * 200 / 255, atol=1e-3)  # background: darkened grey
    layout = TokenLayout(grid_h=4, grid_w=4, patch_size=14, num_prefix_tokens=1, cls_source="x", input_h=60, input_w=60)
    # a 60 px input holds 4 patches of 14 px: the grid covers 56/60 of the crop box
    assert grid_box((10, 0, 130, 120), (4, 4), layout, (200, 200)) == pytest.approx((10, 0, 122, 112))
    assert grid_box((float("nan"),) * 4, (4, 4), None, (200, 100)) == (0, 0, 200, 100)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A real PNG stored under its content id in two dense tables with different planted tokens."""
    root = tmp_path_factory.mktemp("pics")
    img = root / "photo.png"
    Image.fromarray(smooth_image(120, 90, seed=3)).save(img)
    row_id = hashlib.sha256(img.read_bytes()).hexdigest()
    tables = []
    for h, seed in (("a1" * 32, 0), ("b2" * 32, 1)):
        table = Store(root / "s").register_model(_card(h, dense=True))
        tokens, _ = _planted_tokens(np.random.default_rng(seed))
        batch = feature_batch(
            table.schema, ids=[row_id], uris=[str(img)], sizes=[(120, 90)], crop_boxes=np.float32([[15, 0, 105, 90]]),
            cls=np.ones((1, DIM), np.float32), patches=[tokens], grids=[(G, G)], run_id="r",
        )
        Store.write_features(table, batch)
        tables.append(table.name)
    return root, img, tables


def test_patch_picture_is_a_png_of_the_stored_tokens(synthetic, capsys):
    root, img, (t1, t2) = synthetic
    info = _cli(capsys, "show", "patches", img, "-s", root / "s", "-m", t1, "-o", root / "p1.png")
    a = _png(root / "p1.png")
    assert a.shape == (400, 800, 3) and (info["width"], info["height"]) == (800, 400)
    assert info["grid"] == [G, G] and info["foreground"] == pytest.approx(6 / 36) and info["crop_box"] == [15, 0, 105, 90]
    # the same image with other stored tokens is another picture; the image half is the same
    _cli(capsys, "show", "patches", img, "-s", root / "s", "-m", t2, "-o", root / "p2.png")
    b = _png(root / "p2.png")
    assert np.abs(a[:, 400:] - b[:, 400:]).max() > 60
    assert np.abs(a[30:, :400] - b[30:, :400]).max() == 0  # below the title (which names the table)
    _cli(capsys, "show", "patches", img, "-s", root / "s", "-m", t1, "-o", root / "p3.png", "--upsample", "nearest", "--no-mask")
    assert np.abs(_png(root / "p3.png") - a).max() > 60


def test_patch_picture_errors(synthetic, tmp_path, capsys):
    root, img, (t1, _) = synthetic
    other = tmp_path / "other.png"
    Image.fromarray(smooth_image(50, 50, seed=9)).save(other)
    assert main(["show", "patches", str(other), "-s", str(root / "s"), "-m", t1, "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "is not in table" in err and "featurestore extract" in err and not (tmp_path / "x.png").exists()
    flat = Store(root / "s").register_model(_card("c3" * 32, dense=False)).name
    assert main(["show", "patches", str(img), "-s", str(root / "s"), "-m", flat, "-o", str(tmp_path / "x.png")]) == 2
    assert "without --dense" in capsys.readouterr().err
    assert main(["show", "patches", str(img), "-s", str(root / "s"), "-m", t1, "-o", str(tmp_path / "x.jpg")]) == 2
    assert "PNG" in capsys.readouterr().err


@pytest.fixture(scope="module")
def real(fs_tiny_dinov2, tmp_path_factory):
    """9 images extracted (dense) with the tiny DINOv2 at a 112 px crop: an 8x8 patch grid."""
    root = tmp_path_factory.mktemp("real")
    model = root / "m"
    shutil.copytree(fs_tiny_dinov2, model)
    cfg = json.loads((model / "preprocessor_config.json").read_text())
    cfg.update(size={"shortest_edge": 112}, crop_size={"height": 112, "width": 112})
    (model / "preprocessor_config.json").write_text(json.dumps(cfg))
    paths = write_images(root / "img", 9, size=(96, 72), fmt="PNG", seed=20)
    fs = FeatureStore(root / "store")
    table = fs.extract([root / "img"], backbone=f"hf:{model}", dense=True, workers=0).table
    return fs, table, paths


def test_patch_pictures_of_real_extractions_differ(real, tmp_path, capsys):
    fs, table, paths = real
    info = [_cli(capsys, "show", "patches", p, "-s", fs.path, "-m", table, "-o", tmp_path / f"{i}.png") for i, p in enumerate(paths[:2])]
    assert info[0]["grid"] == [8, 8] and info[0]["width"] == 800
    a, b = _png(tmp_path / "0.png"), _png(tmp_path / "1.png")
    assert a.shape == b.shape == (400, 800, 3) and np.abs(a - b).max() > 60


def test_search_grid_ranks_by_cosine(real, tmp_path, capsys):
    fs, table, paths = real
    rows = fs.table(table).to_arrow().to_pylist()
    by_uri = {r["uri"]: r for r in rows}
    q = by_uri[str(paths[4])]
    out = _cli(capsys, "show", "search", "-s", fs.path, "-m", table, "--image", paths[4], "-k", 5, "--cols", 3, "-o", tmp_path / "g.png")
    cls = np.array([r["cls"] for r in rows])
    sims = cls @ np.array(q["cls"]) / np.linalg.norm(cls, axis=1) / np.linalg.norm(q["cls"])
    order = [i for i in np.argsort(-sims) if rows[i]["id"] != q["id"]][:5]
    assert [h["id"] for h in out["hits"]] == [rows[i]["id"] for i in order] and out["query"]["id"] == q["id"]
    np.testing.assert_allclose([h["score"] for h in out["hits"]], sims[order], atol=1e-5)
    g = _png(tmp_path / "g.png")
    assert g.shape == (2 * 230, 3 * 200, 3) and (out["width"], out["height"]) == (600, 460)
    # another query (by id prefix) is another picture of the same size
    _cli(capsys, "show", "search", "-s", fs.path, "-m", table, "--id", by_uri[str(paths[0])]["id"][:10], "-k", 5, "--cols", 3, "-o", tmp_path / "h.png")
    assert np.abs(_png(tmp_path / "h.png") - g).max() > 60
    assert main(["show", "search", "-s", fs.path, "-m", table, "--id", "zz", "-o", str(tmp_path / "x.png")]) == 2
    assert "is not a row id" in capsys.readouterr().err


@pytest.fixture(scope="module")
def planted_map(tmp_path_factory):
    """300 rows in 3 planted clusters (ids by index), clustered with k=3."""
    root = tmp_path_factory.mktemp("map")
    table = Store(root / "s").register_model(_card("d4" * 32, dense=False))
    rng = np.random.default_rng(5)
    truth = np.repeat(np.arange(3), 100)
    x = (5.0 * rng.standard_normal((3, DIM)))[truth] + rng.standard_normal((300, DIM))
    ids = [f"{i:064x}" for i in range(300)]
    batch = feature_batch(
        table.schema, ids=ids, uris=[f"/x/{i}.jpg" for i in range(300)], sizes=[(8, 8)] * 300,
        crop_boxes=np.tile(np.float32([0, 0, 8, 8]), (300, 1)), cls=x.astype(np.float32), patches=None, grids=None, run_id="r",
    )
    Store.write_features(table, batch)
    cluster(root / "s", table.name, 3, seed=0)
    return root, table.name, ids, truth


def _colour_pixels(a: np.ndarray, rgb: tuple[float, ...]) -> int:
    want = np.array(rgb) * 255
    return int((np.abs(a - want).max(axis=2) <= 3).sum())


def test_map_coloured_by_cluster_and_by_label(planted_map, tmp_path, capsys):
    from matplotlib import colormaps

    root, table, ids, truth = planted_map
    info = _cli(capsys, "show", "map", "-s", root / "s", "-m", table, "--color-by", "cluster", "--method", "pca", "-o", tmp_path / "c.png")
    a = _png(tmp_path / "c.png")
    assert a.shape == (600, 700, 3) and info["points"] == 300 and info["method"] == "pca"
    assert sorted(info["counts"].values()) == [100, 100, 100]
    tab10 = [colormaps["tab10"](i)[:3] for i in range(4)]
    assert all(_colour_pixels(a, c) > 200 for c in tab10[:3]) and _colour_pixels(a, tab10[3]) == 0
    # labels on 2 of the 3 clusters by id: the third is drawn grey
    f = tmp_path / "l.csv"
    f.write_text("id,label\n" + "".join(f"{i},{'ab'[t]}\n" for i, t in zip(ids, truth) if t < 2))
    lab = _cli(capsys, "show", "map", "-s", root / "s", "-m", table, "--labels", f, "--method", "pca", "-o", tmp_path / "l.png")
    b = _png(tmp_path / "l.png")
    assert lab["counts"] == {"a": 100, "b": 100} and lab["color_by"] == "label"
    assert _colour_pixels(b, (0.6, 0.6, 0.6)) > 200 and _colour_pixels(b, tab10[2]) == 0
    assert np.abs(a - b).max() > 60


def test_map_pixels_follow_the_features(planted_map, tmp_path, capsys):
    root, table, ids, _ = planted_map
    _cli(capsys, "show", "map", "-s", root / "s", "-m", table, "--method", "pca", "-o", tmp_path / "a.png")
    # the same ids with other features (one cluster moved) in a second table
    moved = Store(root / "s").register_model(_card("e5" * 32, dense=False))
    old = FeatureStore(root / "s").table(table).to_arrow().sort_by("id")
    cls = np.array(old.column("cls").to_pylist(), np.float32)
    cls[:100] = -cls[:100]
    batch = feature_batch(
        moved.schema, ids=ids, uris=old.column("uri").to_pylist(), sizes=[(8, 8)] * 300,
        crop_boxes=np.tile(np.float32([0, 0, 8, 8]), (300, 1)), cls=cls, patches=None, grids=None, run_id="r",
    )
    Store.write_features(moved, batch)
    _cli(capsys, "show", "map", "-s", root / "s", "-m", moved.name, "--method", "pca", "-o", tmp_path / "b.png")
    a, b = _png(tmp_path / "a.png"), _png(tmp_path / "b.png")
    assert a.shape == b.shape and np.abs(a[40:] - b[40:]).max() > 60  # below the title
    # a sample of the rows is a different picture again, of the same size
    s = _cli(capsys, "show", "map", "-s", root / "s", "-m", table, "--method", "pca", "--max-points", 30, "-o", tmp_path / "s.png")
    assert s["points"] == 30 and _png(tmp_path / "s.png").shape == a.shape


def test_map_errors(planted_map, tmp_path, capsys):
    root, table, *_ = planted_map
    bare = Store(root / "s").register_model(_card("f6" * 32, dense=False)).name
    cases = [
        (["-m", bare, "--color-by", "cluster"], "no cluster column"),
        (["-m", table, "--color-by", "label"], "needs --labels"),
        (["-m", table, "--color-by", "cluster", "--k", "7"], "--k 3"),
        (["-m", bare], "no rows to map"),
    ]
    if importlib.util.find_spec("umap") is None:
        cases.append((["-m", table, "--method", "umap"], "pip install umap-learn"))
    for argv, needle in cases:
        assert main(["show", "map", "-s", str(root / "s"), *argv, "-o", str(tmp_path / "m.png")]) == 2, argv
        assert needle in capsys.readouterr().err, argv


def test_without_matplotlib_the_error_says_what_to_install(tmp_path):
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"  # as if it were not installed
        "from featurestore.pictures import _figure\n"
        "from featurestore.errors import MissingDependencyError\n"
        "try:\n    _figure((1, 1))\nexcept MissingDependencyError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False, cwd=Path(__file__).parent)
    assert "pip install matplotlib" in out.stdout and "featurestore[viz]" in out.stdout, out.stderr
