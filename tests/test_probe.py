"""``featurestore probe``: cross-validated linear and k-NN probes over stored features.

Synthetic tables are written through the store's own write path (``register_model`` +
``feature_batch`` + ``write_features``); a real store comes from extracting Pillow images
with the tiny random DINOv2 of the transformers plugin.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from featurestore import FeatureStore
from featurestore.cli import main
from featurestore.config import ModelCard, TokenLayout
from featurestore.errors import ConfigError
from featurestore.probe import fit_logreg, knn_predict, probe, stratified_folds
from featurestore.store import Store, feature_batch, table_name_for
from featurestore.testing import write_images

DIM = 16


def _card(model_hash: str, dense: bool = False) -> ModelCard:
    layout = TokenLayout(grid_h=2, grid_w=2, patch_size=14, num_prefix_tokens=1, cls_source="x", input_h=28, input_w=28)
    return ModelCard(
        model_hash=model_hash, weights_sha256="0" * 64, backbone="toy", table=table_name_for("toy", model_hash),
        plugin="test", plugin_version="0", weights_source="memory", architecture="Toy", dim=DIM, dense=dense,
        token_layout=layout if dense else None, preprocessing={}, output_spec={}, decode_policy={},
        library_versions={}, created_at=datetime.now(timezone.utc),
    )


def _write(store, model_hash: str, cls: np.ndarray, patches: np.ndarray | None = None) -> tuple[str, list[str]]:
    table = Store(store).register_model(_card(model_hash, dense=patches is not None))
    n = len(cls)
    ids = [f"{i:064x}" for i in range(n)]
    batch = feature_batch(
        table.schema, ids=ids, uris=[f"/x/{i}.jpg" for i in range(n)], sizes=[(28, 28)] * n,
        crop_boxes=np.tile(np.float32([0, 0, 28, 28]), (n, 1)), cls=cls.astype(np.float32),
        patches=list(patches) if patches is not None else None, grids=[(2, 2)] * n if patches is not None else None, run_id="r",
    )
    Store.write_features(table, batch)
    return table.name, ids


def _labels_csv(path, key: str, keys, labels) -> str:
    lines = [f"{key},label"] + [f"{k},{v}" for k, v in zip(keys, labels)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def separable(tmp_path_factory):
    """160 rows in 4 well-separated clusters; the label is the cluster."""
    root = tmp_path_factory.mktemp("probe")
    rng = np.random.default_rng(0)
    centres = 4.0 * rng.standard_normal((4, DIM))
    y = np.repeat(np.arange(4), 40)
    x = centres[y] + 0.5 * rng.standard_normal((160, DIM))
    table, ids = _write(root / "store", "ab" * 32, x)
    return root, table, ids, y


def _run(capsys, *argv) -> dict:
    rc = main([*map(str, argv), "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return json.loads(out.out)


def test_separable_classes_are_found_and_shuffled_labels_are_chance(separable, capsys):
    root, table, ids, y = separable
    names = np.array(["cat", "dog", "car", "boat"])
    good = _labels_csv(root / "good.csv", "id", ids, names[y])
    res = _run(capsys, "probe", "-s", root / "store", "-m", table, "--labels", good, "--folds", 4)
    assert (res["matched"], res["labelled"], res["key"], res["folds"]) == (160, 160, "id", 4)
    assert res["classes"] == sorted(names) and res["class_counts"] == [40] * 4 and res["chance"] == 0.25
    assert res["linear"]["accuracy_mean"] >= 0.99 and res["knn"]["accuracy_mean"] >= 0.99
    conf = np.array(res["linear"]["confusion"])
    assert conf.sum() == 160 and conf.sum(1).tolist() == [40] * 4 and np.trace(conf) >= 158
    assert min(res["knn"]["per_class"].values()) >= 0.95 and len(res["linear"]["l2"]) == 4
    # the same features with the labels shuffled carry no signal: both probes fall to chance
    shuffled = _labels_csv(root / "shuffled.csv", "id", ids, names[np.random.default_rng(1).permutation(y)])
    bad = _run(capsys, "probe", "-s", root / "store", "-m", table, "--labels", shuffled, "--folds", 4)
    assert bad["linear"]["accuracy_mean"] < 0.45 and bad["knn"]["accuracy_mean"] < 0.45


def test_seeded_runs_repeat_and_the_table_output(separable, capsys):
    root, table, ids, y = separable
    labels = _labels_csv(root / "noisy.csv", "id", ids, np.where(np.arange(160) % 7 == 0, (y + 1) % 4, y))
    a = probe(root / "store", table, labels, folds=3, seed=5)
    b = probe(root / "store", table, labels, folds=3, seed=5)
    assert a.as_dict() == b.as_dict()
    assert main(["probe", "-s", str(root / "store"), "-m", table, "--labels", labels, "--folds", "3"]) == 0
    out = capsys.readouterr().out
    assert "linear" in out and "k-NN" in out and "confusion" in out and "160 rows matched" in out


def test_labels_by_uri_in_parquet_and_partial_matches(separable, tmp_path):
    root, table, _, y = separable
    uris = [f"/x/{i}.jpg" for i in range(160)] + ["/elsewhere/unknown.jpg"] * 1
    labs = [int(v) for v in y] + [3]
    pq.write_table(pa.table({"uri": uris, "label": labs, "extra": list(range(161))}), tmp_path / "l.parquet")
    res = probe(root / "store", table, tmp_path / "l.parquet", folds=2, l2=0.01)
    assert (res.key, res.labelled, res.matched) == ("uri", 161, 160)
    assert res.classes == ["0", "1", "2", "3"] and res.linear["l2"] == [0.01, 0.01]


def test_mean_patch_features_add_what_cls_lacks(tmp_path, capsys):
    """Classes live only in the patch tokens: cls alone is at chance, cls+meanpatch finds them."""
    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(3), 30)
    cls = rng.standard_normal((90, DIM))
    centres = 3.0 * rng.standard_normal((3, DIM))
    patches = centres[y][:, None, :] + 0.5 * rng.standard_normal((90, 4, DIM))  # (n, 4 tokens, D)
    table, ids = _write(tmp_path / "s", "cd" * 32, cls, patches)
    labels = _labels_csv(tmp_path / "l.csv", "id", ids, y)
    only_cls = _run(capsys, "probe", "-s", tmp_path / "s", "-m", table, "--labels", labels)
    both = _run(capsys, "probe", "-s", tmp_path / "s", "-m", table, "--labels", labels, "--features", "cls+meanpatch")
    assert only_cls["linear"]["accuracy_mean"] < 0.6 and only_cls["feature_dim"] == DIM
    assert both["linear"]["accuracy_mean"] >= 0.95 and both["feature_dim"] == 2 * DIM and both["features"] == "cls+meanpatch"


@pytest.mark.parametrize(
    "content, extra, needle",
    [
        ("id,class\n{id0},a\n", [], "lacks the column(s) label"),
        ("name,label\nx,a\n", [], "lacks the column(s) id or uri"),
        ("id,label\n" + "f" * 64 + ",a\n", [], "none of the 1 labelled ids"),
        ("id,label\n{id0},a\n{id1},a\n{id2},a\n", [], "at least 2 classes"),
        ("id,label\n{id0},a\n{id1},a\n{id2},b\n{id3},b\n{id4},b\n", [], "'a' (2)"),
        ("id,label\n{id0},a\n{id1},b\n", ["--features", "cls+meanpatch"], "without --dense"),
        ("id,label\n{id0},a\n{id1},b\n", ["--folds", "1"], "at least 2 folds"),
    ],
)
def test_errors_name_the_problem(separable, tmp_path, capsys, content, extra, needle):
    root, table, ids, _ = separable
    f = tmp_path / "labels.csv"
    f.write_text(content.format(**{f"id{i}": ids[i] for i in range(5)}))
    assert main(["probe", "-s", str(root / "store"), "-m", table, "--labels", str(f), "--folds", "3", *extra]) == 2
    assert needle in capsys.readouterr().err
    with pytest.raises(ConfigError, match="does not exist"):
        probe(root / "store", table, tmp_path / "missing.csv")


def test_class_too_small_names_the_fix(separable, tmp_path):
    root, table, ids, _ = separable
    f = _labels_csv(tmp_path / "l.csv", "id", ids[:7], ["a", "a", "b", "b", "b", "b", "b"])
    with pytest.raises(ConfigError, match=r"7 of 7 labelled rows matched.*--folds 2 or fewer"):
        probe(root / "store", table, f, folds=3)


def test_logistic_regression_reaches_the_penalised_optimum():
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.standard_normal((200, 8)))
    y = torch.from_numpy(rng.integers(0, 3, 200))
    w, b = fit_logreg(x, y, 3, l2=0.1)
    w, b = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(x @ w + b, y) + 0.05 * (w * w).sum()
    gw, gb = torch.autograd.grad(loss, [w, b])
    assert float(gw.abs().max()) < 1e-4 and float(gb.abs().max()) < 1e-4  # a stationary point of a convex loss
    assert float(w.detach().norm()) > 0.01  # and not the trivial zero start


def test_knn_matches_a_numpy_reference():
    rng = np.random.default_rng(4)
    xtr, ytr = rng.standard_normal((50, 6)).astype(np.float32), rng.integers(0, 3, 50)
    xte = rng.standard_normal((20, 6)).astype(np.float32)
    got = knn_predict(xtr, ytr, xte, 3, k=7, chunk_rows=6)
    a = xtr / np.linalg.norm(xtr, axis=1, keepdims=True)
    q = xte / np.linalg.norm(xte, axis=1, keepdims=True)
    want = []
    for s in q @ a.T:
        top = np.argsort(-s)[:7]
        votes = np.zeros(3)
        np.add.at(votes, ytr[top], np.exp(s[top] / 0.07))
        want.append(votes.argmax())
    assert got.tolist() == want
    assert knn_predict(xtr[:3], ytr[:3], xte, 3, k=20).shape == (20,)  # k capped at the training size


def test_stratified_folds_spread_every_class():
    y = np.array([0] * 10 + [1] * 7 + [2] * 5)
    f = stratified_folds(y, 5, seed=0)
    for c in range(3):
        counts = np.bincount(f[y == c], minlength=5)
        assert counts.max() - counts.min() <= 1
    sizes = np.bincount(f, minlength=5)
    assert sizes.max() - sizes.min() <= 1 and (f == stratified_folds(y, 5, seed=0)).all()
    assert not (f == stratified_folds(y, 5, seed=1)).all()


def test_probe_on_a_real_extraction(fs_tiny_dinov2, tmp_path, capsys):
    d = tmp_path / "img"
    paths = write_images(d, 6, seed=0) + write_images(d / "b", 6, seed=50)
    fs = FeatureStore(tmp_path / "store")
    table = fs.extract([d], backbone=f"hf:{fs_tiny_dinov2}", dense=True, workers=0).table
    labels = _labels_csv(tmp_path / "l.csv", "uri", [str(p) for p in paths], ["a"] * 6 + ["b"] * 6)
    res = _run(capsys, "probe", "-s", fs.path, "-m", table, "--labels", labels, "--folds", 3, "--features", "cls+meanpatch")
    assert (res["matched"], res["key"], res["feature_dim"], res["version"]) == (12, "uri", 64, fs.table(table).version)
    assert np.array(res["knn"]["confusion"]).sum() == 12 and 0.0 <= res["linear"]["accuracy_mean"] <= 1.0
