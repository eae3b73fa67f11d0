"""Paths: stored uris and weights locations are found again from any directory, moved trees
are re-rooted with ``--root OLD=NEW``, missing sources are reported, and read commands
refuse a store that does not exist."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from featurestore import FeatureStore
from featurestore.cli import main
from featurestore.errors import ConfigError, InputError, SourceMissingError, StoreNotFoundError, WeightsNotFoundError
from featurestore.paths import apply_roots, find_source, local_locations, parse_roots, resolve_source, uri_key
from featurestore.readers import FeatureDataset
from featurestore.store import Store
from featurestore.testing import write_images
from featurestore.verify import verify


def _json(capsys, *argv) -> object:
    rc = main([*map(str, argv), "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return json.loads(out.out)


# -- the resolver --------------------------------------------------------------------------


def test_roots_map_whole_components_longest_first(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    roots = parse_roots(["/data=/mnt/a", "/data/photos=new", "/data/ph=/x"])
    assert roots[0] == ("/data/photos", str(tmp_path / "new"))  # NEW is taken from the current directory
    assert apply_roots("/data/photos/cats/1.jpg", roots) == str(tmp_path / "new" / "cats" / "1.jpg")
    assert apply_roots("/data/photos", roots) == str(tmp_path / "new")
    assert apply_roots("/data/photos2/1.jpg", roots) == "/mnt/a/photos2/1.jpg"  # /data/ph is no prefix of photos2
    assert apply_roots("/elsewhere/1.jpg", roots) == "/elsewhere/1.jpg"
    assert apply_roots("/data/photos/1.jpg", {"/data/photos/": "/m"}) == "/m/1.jpg"  # a trailing slash is the same root
    with pytest.raises(ConfigError, match=r"--root '/data' is not OLD=NEW"):
        parse_roots(["/data"])
    with pytest.raises(ConfigError, match="both sides"):
        parse_roots(["=/new"])


def test_resolve_source_keeps_frame_suffixes_and_reads_old_relative_uris_from_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_source("photos/a.jpg") == str(tmp_path / "photos" / "a.jpg")  # written by an older version
    assert resolve_source("/v/clip.mp4#t=1.500000", {"/v": "/w"}) == "/w/clip.mp4#t=1.500000"
    assert resolve_source("/v/take#1.mp4", {"/v": "/w"}) == "/w/take#1.mp4"  # a '#' in a file name is no suffix
    assert resolve_source("photos/a.jpg", ["photos=/m"]) == "/m/a.jpg"  # OLD matches relative uris as stored
    write_images(tmp_path / "photos", 1)
    assert find_source("photos/img_00000.jpg") == str(tmp_path / "photos" / "img_00000.jpg")
    with pytest.raises(SourceMissingError, match=r"source /gone/a.jpg is missing \(looked for /m/a.jpg\)\. Fix: check the --root"):
        find_source("/gone/a.jpg", ["/gone=/m"])
    with pytest.raises(SourceMissingError, match=r"source /gone/a.jpg is missing\. Fix: if the files moved, pass --root"):
        find_source("/gone/a.jpg")
    assert uri_key("photos/a.jpg") == str(tmp_path / "photos" / "a.jpg") and uri_key("/x/a.jpg") == "/x/a.jpg"


def test_only_local_paths_in_backbone_names_and_weights_are_recorded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m").mkdir()
    (tmp_path / "w.safetensors").write_bytes(b"x")
    (tmp_path / "ViT-B-32").mkdir()  # a directory that happens to share an architecture's name
    m = str(tmp_path / "m")
    assert local_locations("hf:./m", None, m) == (f"hf:{m}", None)
    assert local_locations("hf:m", None, m) == (f"hf:{m}", None)  # no path syntax, but the weights came from there
    assert local_locations("open_clip:local-dir:m", None, f"{m}/open_clip_model.safetensors") == (f"open_clip:local-dir:{m}", None)
    assert local_locations("open_clip:ViT-B-32", "w.safetensors", str(tmp_path / "w.safetensors")) == (None, str(tmp_path / "w.safetensors"))
    assert local_locations("open_clip:hf-hub:org/m", None, "hf-hub:org/m") == (None, None)
    assert local_locations("hf:facebook/dinov2-small", None, "facebook/dinov2-small") == (None, None)
    assert local_locations("dinov2_vits14", "openai", "x") == (None, None)  # a tag, not a file


# -- from another directory, and after a move --------------------------------------------------


@pytest.fixture
def tree(fs_tiny_dinov2, tmp_path, monkeypatch):
    """Extract with relative paths from ``work/``: images ``photos/``, model ``hf:../models/tiny``."""
    shutil.copytree(fs_tiny_dinov2, tmp_path / "models" / "tiny")
    write_images(tmp_path / "work" / "photos", 5)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    s = FeatureStore("store").extract(["photos"], backbone="hf:../models/tiny", dense=True, workers=0, batch_size=2)
    return tmp_path, s


def test_relative_extraction_is_found_again_from_another_directory(tree, monkeypatch, capsys):
    root, s = tree
    store = root / "work" / "store"
    card = Store(store).card(s.table)
    assert card.backbone == "hf:../models/tiny" and card.backbone_resolved == f"hf:{root / 'models' / 'tiny'}"
    uris = FeatureDataset(store, s.table, columns=["uri"]).to_numpy(["uri"])["uri"]
    assert sorted(uris) == [str(root / "work" / "photos" / f"img_{i:05d}.jpg") for i in range(5)]
    # labels by uri written relative to the extraction directory still match there
    (root / "work" / "l.csv").write_text("uri,label\n" + "".join(f"photos/img_{i:05d}.jpg,{i % 2}\n" for i in range(5)))
    assert len(FeatureDataset(store, s.table, labels=root / "work" / "l.csv", label_key="uri")) == 5

    monkeypatch.chdir(root / "elsewhere")
    rel = Path("..") / "work"
    rep = verify(rel / "store", s.table, sample=5)
    assert rep.ok and rep.checked == 5 and rep.missing == []
    hits = _json(capsys, "search", "-s", rel / "store", "-m", s.table, "--image", rel / "photos" / "img_00003.jpg", "-k", 2)["hits"]
    assert hits[0]["uri"] == str(root / "work" / "photos" / "img_00003.jpg") and hits[0]["score"] > 0.9999
    pic = _json(capsys, "show", "search", "-s", rel / "store", "-m", s.table, "--id", hits[0]["id"], "-k", 3, "-o", "g.png")
    assert pic["missing"] == [] and Path("g.png").is_file()


def test_a_moved_image_tree_is_reported_then_read_with_root(tree, monkeypatch, capsys):
    root, s = tree
    store = str(root / "work" / "store")
    shutil.move(root / "work" / "photos", root / "moved")
    monkeypatch.chdir(root / "elsewhere")
    rep = verify(store, s.table, sample=3)
    old = [str(root / "work" / "photos" / f"img_{i:05d}.jpg") for i in range(5)]
    assert not rep.ok and rep.checked == 0 and rep.skipped == {"source missing": 3}
    assert len(rep.missing) == 3 and set(rep.missing) <= set(old) and "--root OLD=NEW" in rep.message
    assert main(["verify", "-s", store, "-m", s.table, "--sample", "3"]) == 1
    assert f"missing: {rep.missing[0]}" in capsys.readouterr().out

    row_id = FeatureDataset(store, s.table).ids[0]
    assert main(["show", "search", "-s", store, "-m", s.table, "--id", row_id, "-k", "2", "-o", "m.png", "--json"]) == 0
    out = capsys.readouterr()
    assert len(json.loads(out.out)["missing"]) == 3 and "3 sources are missing" in out.err and old[0] in out.err + out.out

    mapping = f"{root / 'work' / 'photos'}=../moved"  # NEW relative to the current directory
    rep = verify(store, s.table, sample=5, roots=[mapping])
    assert rep.ok and rep.checked == 5 and rep.missing == []
    assert _json(capsys, "verify", "-s", store, "-m", s.table, "--root", mapping)["checked"] == 5
    pic = _json(capsys, "show", "search", "-s", store, "-m", s.table, "--id", row_id, "-k", 2, "-o", "r.png", "--root", mapping)
    assert pic["missing"] == []


def test_a_moved_model_directory_is_named_then_found_with_root(tree, monkeypatch, capsys):
    root, s = tree
    store = str(root / "work" / "store")
    shutil.move(root / "models", root / "models2")
    monkeypatch.chdir(root / "elsewhere")
    query = str(root / "work" / "photos" / "img_00001.jpg")
    assert main(["search", "-s", store, "-m", s.table, "--image", query]) == 2
    err = capsys.readouterr().err
    assert f"loaded from {root / 'models' / 'tiny'} at extraction" in err and "--root OLD=NEW" in err
    with pytest.raises(WeightsNotFoundError):
        verify(store, s.table, sample=1)
    hits = _json(capsys, "search", "-s", store, "-m", s.table, "--image", query, "--root", f"{root / 'models'}={root / 'models2'}")["hits"]
    assert hits[0]["uri"] == query
    assert verify(store, s.table, sample=2, weights=str(root / "models2" / "tiny")).ok  # --weights still wins


def test_weights_given_relative_are_recorded_absolute(fs_tiny_dinov2, tmp_path, monkeypatch):
    shutil.copytree(fs_tiny_dinov2, tmp_path / "w" / "tiny")
    write_images(tmp_path / "work" / "p", 2)
    monkeypatch.chdir(tmp_path / "work")
    s = FeatureStore("store").extract(["p"], backbone="hf:tiny-random", weights="../w/tiny", workers=0)
    card = Store("store").card(s.table)
    assert (card.weights_arg, card.weights_resolved, card.backbone_resolved) == ("../w/tiny", str(tmp_path / "w" / "tiny"), None)
    monkeypatch.chdir(tmp_path)
    assert verify("work/store", s.table, sample=2).ok


def test_one_model_reached_by_two_spellings_of_its_path_writes_one_table(fs_tiny_dinov2, tmp_path, monkeypatch):
    shutil.copytree(fs_tiny_dinov2, tmp_path / "models" / "tiny")
    write_images(tmp_path / "work" / "a", 3, seed=0)
    write_images(tmp_path / "work" / "b", 2, seed=40)
    monkeypatch.chdir(tmp_path / "work")
    first = FeatureStore(tmp_path / "store").extract(["a"], backbone="hf:../models/tiny", workers=0)
    monkeypatch.chdir(tmp_path)
    second = FeatureStore(tmp_path / "store").extract(["work/b"], backbone="hf:models/tiny", workers=0)
    assert second.model_hash == first.model_hash and second.table == first.table and second.written == 2
    st = Store(tmp_path / "store")
    assert [c.table for c in st.cards()] == [first.table] and st.models()[0]["rows"] == 5
    assert sorted(st.table_names()) == sorted(["models", first.table])


# -- missing stores and inputs ---------------------------------------------------------------------


READ_COMMANDS = [
    ["models"], ["errors"], ["clips"], ["manifest"], ["compact"], ["cleanup"], ["adapt", "list"],
    ["versions", "-m", "x"], ["tag", "v1", "-m", "x"], ["verify", "-m", "x"], ["index", "-m", "x"],
    ["export", "-m", "x", "-o", "OUT/x.parquet"], ["search", "-m", "x", "--id", "abcdef"],
    ["search", "-m", "x", "--text", "a dog"], ["classify", "-m", "x", "--labels", "cat,dog"],
    ["probe", "-m", "x", "--labels", "LABELS"], ["cluster", "-m", "x", "-k", "2"], ["aggregate", "-m", "x", "-a", "mean"],
    ["show", "search", "-m", "x", "--id", "abcdef", "-o", "OUT/x.png"], ["show", "map", "-m", "x", "-o", "OUT/x.png"],
    ["adapt", "fit", "-m", "x", "-a", "pca"], ["adapt", "apply", "-a", "x"],
]


@pytest.mark.parametrize("argv", READ_COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_read_commands_refuse_a_store_that_does_not_exist(argv, tmp_path, capsys):
    typo = tmp_path / "sotre"
    labels = tmp_path / "l.csv"
    labels.write_text("id,label\nab,1\n")
    args = [str(labels) if a == "LABELS" else a.replace("OUT", str(tmp_path / "out")) for a in argv]
    assert main([*args, "--store", str(typo)]) == 2
    err = capsys.readouterr().err
    assert f"no featurestore at {typo}: the directory does not exist" in err and "Fix: check --store" in err
    assert not typo.exists() and not (tmp_path / "out").exists()


def test_the_api_refuses_a_missing_store_and_only_extraction_creates_one(fs_tiny_dinov2, tmp_path):
    with pytest.raises(StoreNotFoundError, match="no featurestore at"):
        FeatureStore(tmp_path / "nope").models()
    with pytest.raises(StoreNotFoundError):
        FeatureDataset(tmp_path / "nope", "x")
    assert not (tmp_path / "nope").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreNotFoundError, match="is not a directory"):
        Store(tmp_path / "file").cards()
    write_images(tmp_path / "img", 1)
    FeatureStore(tmp_path / "new" / "store").extract([tmp_path / "img"], backbone=f"hf:{fs_tiny_dinov2}", workers=0)
    assert len(FeatureStore(tmp_path / "new" / "store").models()) == 1


def test_extract_of_inputs_that_all_do_not_exist_fails_before_loading_the_model(tmp_path, capsys):
    store = tmp_path / "store"
    no_model = f"hf:{tmp_path / 'no_such_model_dir'}"  # loading it first would be a weights error
    with pytest.raises(InputError, match=r"none of the inputs exists: .*gone\.jpg"):
        FeatureStore(store).extract([tmp_path / "gone.jpg", tmp_path / "nope" / "*.png"], backbone=no_model)
    (tmp_path / "list.txt").write_text("a.jpg\nb.jpg\n")
    assert main(["extract", f"@{tmp_path / 'list.txt'}", "-b", no_model, "-s", str(store)]) == 2
    err = capsys.readouterr().err
    assert f"none of the inputs exists: {tmp_path / 'a.jpg'}, {tmp_path / 'b.jpg'}" in err and "weights" not in err
    assert not store.exists()


def test_copies_of_a_dataset_in_two_places_have_one_content_digest(fs_tiny_dinov2, tmp_path):
    from featurestore.manifest import content_digest

    write_images(tmp_path / "here" / "photos", 4)
    shutil.copytree(tmp_path / "here", tmp_path / "there")
    digests = []
    for place in ("here", "there"):
        fs = FeatureStore(tmp_path / place / "store")
        s = fs.extract([tmp_path / place / "photos"], backbone=f"hf:{fs_tiny_dinov2}", workers=0, batch_size=4)
        assert FeatureDataset(fs, s.table, columns=["uri"])[0]["uri"].startswith(str(tmp_path / place))
        digests.append(content_digest(fs.table(s.table)))
    assert digests[0] == digests[1] and digests[0][1] == 4
