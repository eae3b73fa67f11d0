"""``featurestore search`` / ``classify``: read stored image features, encode only the text.

Expected rankings and probabilities are computed here from the rows in the table and
open_clip's own ``encode_text`` (its own loading and tokenizer), independently of the
plugin's and the core's code paths.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from featurestore import FeatureStore
from featurestore.cli import main
from featurestore.testing import write_images


@pytest.fixture()
def extracted(tmp_path, fs_tiny_openclip, fs_tiny_siglip):
    """A store with both tiny models' features of 6 images; the images are deleted afterwards."""
    imgs = tmp_path / "imgs"
    write_images(imgs, 6, size=(48, 40), fmt="PNG", seed=50)
    fs = FeatureStore(tmp_path / "s")
    tables = {}
    for kind, d in (("clip", fs_tiny_openclip), ("siglip", fs_tiny_siglip)):
        tables[kind] = fs.extract([imgs], backbone=f"open_clip:local-dir:{d}", workers=0).table
    shutil.rmtree(imgs)  # search and classify must not need the images: nothing is re-extracted
    return fs, tables, {"clip": fs_tiny_openclip, "siglip": fs_tiny_siglip}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _ref_text(model_dir: Path, texts: list[str]) -> np.ndarray:
    import open_clip

    model = open_clip.create_model(f"local-dir:{model_dir}").eval()
    tok = open_clip.get_tokenizer(f"local-dir:{model_dir}")
    with torch.no_grad():
        return model.encode_text(tok(texts)).numpy().astype(np.float64)


def _stored(fs: FeatureStore, table: str) -> tuple[list[str], np.ndarray]:
    rows = fs.table(table).to_arrow().to_pylist()
    return [r["uri"] for r in rows], np.asarray([r["cls"] for r in rows], np.float64)


def test_search_ranks_by_cosine_and_reads_only_the_store(extracted, capsys):
    fs, tables, dirs = extracted
    table = fs.table(tables["clip"])
    version, rows = table.version, table.count_rows()
    rc = main(["search", "--store", fs.path, "--model", tables["clip"], "--text", "a photo of a dog", "-k", "4", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["query"] == {"kind": "text", "text": "a photo of a dog"} and out["table"] == tables["clip"]
    hits = out["hits"]
    uris, cls = _stored(fs, tables["clip"])
    q = _unit(_ref_text(dirs["clip"], ["a photo of a dog"])[0])
    sims = _unit(cls) @ q
    order = np.argsort(-sims)[:4]
    assert [h["uri"] for h in hits] == [uris[i] for i in order]
    np.testing.assert_allclose([h["score"] for h in hits], sims[order], atol=1e-5)
    assert [h["rank"] for h in hits] == [1, 2, 3, 4]
    table = fs.table(tables["clip"])
    assert (table.version, table.count_rows()) == (version, rows)  # nothing written


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_classify_probabilities_match_the_model_head(kind, extracted, capsys):
    fs, tables, dirs = extracted
    labels = ["cat", "dog", "car"]
    templates = ["a photo of a {}.", "a drawing of a {}."]
    argv = ["classify", "-s", fs.path, "-m", tables[kind], "--labels", ",".join(labels), "--json"]
    for t in templates:
        argv += ["--template", t]
    assert main(argv) == 0
    out = {r["uri"]: r for r in json.loads(capsys.readouterr().out)}
    uris, cls = _stored(fs, tables[kind])
    emb = _ref_text(dirs[kind], [t.format(lab) for lab in labels for t in templates]).reshape(3, 2, -1)
    label_emb = _unit(_unit(emb).mean(axis=1))
    import open_clip

    model = open_clip.create_model(f"local-dir:{dirs[kind]}")
    scale = float(model.logit_scale.detach().exp())
    logits = scale * (_unit(cls) @ label_emb.T)
    if kind == "siglip":
        probs = 1 / (1 + np.exp(-(logits + float(model.logit_bias.detach()))))
    else:
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
    assert len(out) == len(uris) == 6
    for i, uri in enumerate(uris):
        got = out[uri]
        np.testing.assert_allclose([got["scores"][lab] for lab in labels], probs[i], atol=1e-5)
        assert got["label"] == labels[int(probs[i].argmax())]
    if kind == "clip":
        assert all(abs(sum(r["scores"].values()) - 1) < 1e-6 for r in out.values())


def test_classify_plain_output_counts_labels(extracted, capsys):
    fs, tables, _ = extracted
    assert main(["classify", "-s", fs.path, "-m", tables["clip"], "-l", "cat,dog"]) == 0
    out = capsys.readouterr().out
    assert "6 images:" in out


def test_labels_from_file(extracted, tmp_path):
    fs, tables, _ = extracted
    f = tmp_path / "labels.txt"
    f.write_text("cat\n\ndog\n", encoding="utf-8")
    rows = list(fs.classify(tables["clip"], f"@{f}"))
    assert len(rows) == 6 and set(rows[0]["scores"]) == {"cat", "dog"}


def test_other_weights_are_refused(extracted, fs_tiny_openclip_factory, capsys):
    """Text from a different model would not be comparable: the weight digest is checked first."""
    fs, tables, _ = extracted
    other = fs_tiny_openclip_factory("clip", seed=99)
    rc = main(["search", "-s", fs.path, "-m", tables["clip"], "-t", "a dog", "--weights", str(other / "open_clip_model.safetensors")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "not the ones that produced" in err and tables["clip"] in err


def test_layers_table_has_no_text_space(tmp_path, fs_tiny_openclip, capsys):
    imgs = tmp_path / "imgs"
    write_images(imgs, 2, fmt="PNG")
    fs = FeatureStore(tmp_path / "s")
    s = fs.extract([imgs], backbone=f"open_clip:local-dir:{fs_tiny_openclip}", layers="last2", workers=0)
    assert fs.card(s.table).text_dim is None
    assert main(["search", "-s", fs.path, "-m", s.table, "-t", "a dog"]) == 2
    assert "--layers" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--labels", " , "], "no labels given"),
        (["--labels", "cat,cat"], "more than once"),
        (["--labels", "cat", "--template", "a photo"], "exactly once"),
        (["--labels", "@/no/such/file.txt"], "cannot read labels file"),
    ],
)
def test_bad_classify_input(extracted, extra, needle, capsys):
    fs, tables, _ = extracted
    assert main(["classify", "-s", fs.path, "-m", tables["clip"], *extra]) == 2
    assert needle in capsys.readouterr().err


def test_bad_search_input(extracted, capsys):
    fs, tables, _ = extracted
    assert main(["search", "-s", fs.path, "-m", tables["clip"], "-t", "  "]) == 2
    assert "--text is empty" in capsys.readouterr().err
    assert main(["search", "-s", fs.path, "-m", tables["clip"], "-t", "dog", "-k", "0"]) == 2
    assert "-k must be at least 1" in capsys.readouterr().err
    assert main(["search", "-s", fs.path, "-m", "nope", "-t", "dog"]) == 2
    assert "no model 'nope'" in capsys.readouterr().err
