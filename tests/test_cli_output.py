"""The command line's parsing and output: documented option forms, literal data, quiet libraries,
one JSON shape, clear errors, ``python -m featurestore``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from featurestore import FeatureStore
from featurestore.cli import main
from featurestore.testing import write_images

FEATURESTORE = str(Path(sys.executable).with_name("featurestore"))  # the console script, as installed
QUIET_VARS = ("LANCEDB_LOG", "LANCE_LOG", "RUST_LOG", "PYTHONWARNINGS")


def _run(argv: list[str], **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in (*QUIET_VARS, "FEATURESTORE_PLUGINS", "FEATURESTORE_DISABLE_PLUGINS")}
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, env=clean | env)


def _cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


# -- --layers -4,-3,-2,-1 ------------------------------------------------------------------


def test_layers_take_the_documented_negative_form(fs_tiny_dinov2, tmp_path, capsys):
    write_images(tmp_path / "img", 3)
    store = tmp_path / "s"
    base = ["extract", tmp_path / "img", "-b", f"hf:{fs_tiny_dinov2}", "-s", store, "--workers", "0", "--json"]
    tables = set()
    for layers in (["--layers", "-2,-1"], ["--layers=-2,-1"], ["--layers", "last2"], ["--layers", "0,1"]):
        rc, out, err = _cli(capsys, *base, *layers)
        assert rc == 0, err
        tables.add(json.loads(out)["table"])
    assert len(tables) == 1  # one model: the same blocks, however they were named
    assert FeatureStore(store).card(tables.pop()).layers == [0, 1]
    # the form --help shows reaches the layer check (the tiny model has 2 blocks), not argparse's "expected one argument"
    with pytest.raises(SystemExit):
        main(["extract", "--help"])
    shown = re.search(r"e\.g\.\s+(-\d+(?:,-\d+)+)", capsys.readouterr().out).group(1)
    assert shown == "-4,-3,-2,-1"
    rc, _, err = _cli(capsys, *base, "--layers", shown)
    assert rc == 2 and "block -4 does not exist" in err and "which has 2 blocks" in err
    # a forgotten value is still argparse's error, not taken for a layer list
    with pytest.raises(SystemExit):
        main([str(a) for a in base] + ["--layers", "--dense"])
    assert "--layers: expected one argument" in capsys.readouterr().err


# -- rich markup: ours renders, data stays literal --------------------------------------------


def test_error_lines_render_our_style_and_print_data_verbatim(fs_tiny_dinov2, tmp_path, capsys):
    d = tmp_path / "mixed"
    write_images(d, 1)
    bad = d / "[b]broken.jpg"
    bad.write_bytes(b"garbage")
    rc, out, _ = _cli(capsys, "extract", d, "-b", f"hf:{fs_tiny_dinov2}", "-s", tmp_path / "s", "--workers", "0")
    assert rc == 0
    assert "[red]" not in out and "[/]" not in out
    line = next(ln for ln in out.splitlines() if "broken.jpg" in ln)
    assert line.startswith("  error decode UnsupportedFormatError: ") and f"{bad}: not a supported image" in line


# -- library noise: hidden unless -v -------------------------------------------------------------


@pytest.mark.slow  # subprocesses
def test_library_warnings_are_hidden_unless_verbose(fs_tiny_dinov2, tmp_path):
    write_images(tmp_path / "img", 4)
    store = tmp_path / "s"
    table = FeatureStore(store).extract([tmp_path / "img"], backbone=f"hf:{fs_tiny_dinov2}", workers=0).table
    # cluster creates its centroids table: LanceDB's Rust side logs a WARN line for that
    quiet = _run([FEATURESTORE, "cluster", "-s", str(store), "-m", table, "-k", "2"])
    assert quiet.returncode == 0, quiet.stderr
    assert "WARN" not in quiet.stderr and quiet.stderr.strip() == ""
    loud = _run([FEATURESTORE, "-v", "cluster", "-s", str(store), "-m", table, "-k", "3"])
    assert loud.returncode == 0 and "WARN" in loud.stderr and "centroids-k3" in loud.stderr
    user_set = _run([FEATURESTORE, "cluster", "-s", str(store), "-m", table, "-k", "4"], LANCEDB_LOG="warn")
    assert "WARN" in user_set.stderr  # the user's own setting wins
    # cleanup --older-than 0: LanceDB's UserWarning about concurrent readers
    quiet = _run([FEATURESTORE, "cleanup", "-s", str(store), "--older-than", "0"])
    assert quiet.returncode == 0 and "UserWarning" not in quiet.stderr and quiet.stderr.strip() == ""
    loud = _run([FEATURESTORE, "--verbose", "cleanup", "-s", str(store), "--older-than", "0"])
    assert "UserWarning" in loud.stderr
    # our own errors are never hidden
    err = _run([FEATURESTORE, "cluster", "-s", str(store), "-m", "no_such_model", "-k", "2"])
    assert err.returncode == 2 and "featurestore: error:" in err.stderr and "no_such_model" in err.stderr


def test_main_in_process_leaves_the_environment_as_it_was(capsys, monkeypatch):
    for var in QUIET_VARS:
        monkeypatch.delenv(var, raising=False)
    assert main(["aggregators", "--json"]) == 0
    capsys.readouterr()
    assert not any(var in os.environ for var in QUIET_VARS)


# -- python -m featurestore ----------------------------------------------------------------------


@pytest.mark.slow  # a subprocess
def test_python_dash_m_featurestore():
    from featurestore import __version__

    p = _run([sys.executable, "-m", "featurestore", "--version"])
    assert p.returncode == 0 and p.stdout.strip() == f"featurestore {__version__}"
    p = _run([sys.executable, "-m", "featurestore", "backbones", "dinov2_vits14", "--json"])
    assert p.returncode == 0, p.stderr
    assert [b["name"] for b in json.loads(p.stdout)] == ["dinov2_vits14"]


# -- verify over nothing -------------------------------------------------------------------------


def test_verify_that_checked_nothing_fails_and_reports_no_figures(fs_tiny_dinov2, tmp_path, capsys):
    paths = write_images(tmp_path / "img", 3)
    store = tmp_path / "s"
    table = FeatureStore(store).extract([tmp_path / "img"], backbone=f"hf:{fs_tiny_dinov2}", workers=0).table
    for p in paths:
        p.unlink()
    rc, out, _ = _cli(capsys, "verify", "-s", store, "-m", table, "--json")
    rep = json.loads(out)
    assert rc == 1 and (rep["ok"], rep["checked"], rep["max_abs_cls"], rep["min_cos_cls"]) == (False, 0, None, None)
    assert rep["skipped"] == {"source missing": 3}
    assert "nothing checked" in rep["message"] and "3 source missing" in rep["message"]
    rc, out, _ = _cli(capsys, "verify", "-s", store, "-m", table)
    assert rc == 1 and "FAILED" in out and "nothing checked" in out
    # a table without rows (every input failed) checks nothing either
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jpg").write_bytes(b"garbage")
    empty = FeatureStore(tmp_path / "e").extract([tmp_path / "bad"], backbone=f"hf:{fs_tiny_dinov2}", workers=0)
    assert empty.written == 0
    rc, out, _ = _cli(capsys, "verify", "-s", tmp_path / "e", "-m", empty.table, "--json")
    rep = json.loads(out)
    assert rc == 1 and rep["max_abs_cls"] is None and "has no rows" in rep["message"]


# -- export --labels joins as probe does -----------------------------------------------------------


def test_export_labels_pick_the_join_key_as_probe_does(fs_tiny_dinov2, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from featurestore.probe import read_label_file
    from featurestore.readers import FeatureDataset

    write_images(tmp_path / "img", 4)
    store = tmp_path / "s"
    table = FeatureStore(store).extract([tmp_path / "img"], backbone=f"hf:{fs_tiny_dinov2}", workers=0).table
    rows = FeatureDataset(store, table, columns=["uri"]).to_numpy(["uri"])
    ids, uris = list(rows["id"]), list(rows["uri"])
    names = ["007", "b", "007", "b"]  # a label that looks like a number stays text in a CSV
    by_uri = tmp_path / "by_uri.csv"
    by_uri.write_text("uri,label\n" + "".join(f"{u},{n}\n" for u, n in zip(reversed(uris), reversed(names))))
    by_id = tmp_path / "by_id.parquet"
    pq.write_table(pa.table({"id": ids, "label": names, "uri": ["elsewhere"] * 4}), by_id)  # both keys: id wins
    for labels, key in ((by_uri, "uri"), (by_id, "id")):
        assert read_label_file(labels)[1] == key  # what probe joins on
        out = tmp_path / f"{key}.parquet"
        rc, _, err = _cli(capsys, "export", "-s", store, "-m", table, "-o", out, "--labels", labels, "--columns", "cls,uri", "--json")
        assert rc == 0, err
        got = pq.read_table(out)
        assert got.column("id").to_pylist() == ids and got.column("label").to_pylist() == names
    rc, _, err = _cli(capsys, "export", "-s", store, "-m", table, "-o", tmp_path / "x.parquet", "--labels", by_uri, "--label-key", "id")
    assert rc == 2 and "has no 'id' column" in err


# -- --tag reads a tag; `featurestore tag` writes one -------------------------------------------------


def test_versions_tag_shows_a_tagged_version_and_never_writes_one(fs_tiny_dinov2, tmp_path, capsys):
    write_images(tmp_path / "a", 2)
    write_images(tmp_path / "b", 2, seed=40)
    store = tmp_path / "s"
    fs = FeatureStore(store)
    first = fs.extract([tmp_path / "a"], backbone=f"hf:{fs_tiny_dinov2}", workers=0, tag="first")
    fs.extract([tmp_path / "b"], backbone=f"hf:{fs_tiny_dinov2}", workers=0, tag_run=False)
    rc, out, _ = _cli(capsys, "versions", "-s", store, "-m", first.table, "--tag", "first", "--json")
    info = json.loads(out)
    assert rc == 0 and info["selected"] == {"version": first.version, "tag": "first"}
    assert [(v["version"], v["rows"]) for v in info["versions"]] == [(first.version, 2)]
    rc, out, _ = _cli(capsys, "versions", "-s", store, "-m", first.table, "--version", str(first.version), "--json")
    assert rc == 0 and json.loads(out)["selected"] == {"version": first.version, "tag": None}
    # the old write form: no tag is created, and the message names the command that does it
    rc, _, err = _cli(capsys, "versions", "-s", store, "-m", first.table, "--tag", "paper-v1")
    assert rc == 2 and "no tag 'paper-v1'" in err and f"featurestore tag paper-v1 -s {store} -m {first.table}" in err
    rc, _, err = _cli(capsys, "versions", "-s", store, "-m", first.table, "--tag", "paper-v1", "--at", "2")
    assert rc == 2 and f"featurestore tag NAME -s {store} -m {first.table} --version 2" in err
    rc, out, _ = _cli(capsys, "versions", "-s", store, "-m", first.table, "--json")
    assert json.loads(out)["tags"] == {"first": first.version}
    # the way to write one
    assert _cli(capsys, "tag", "paper-v1", "-s", store, "-m", first.table, "--version", first.version)[0] == 0
    rc, out, _ = _cli(capsys, "versions", "-s", store, "-m", first.table, "--tag", "paper-v1")
    assert rc == 0 and "first, paper-v1" in out


# -- --id prefixes --------------------------------------------------------------------------------


def test_id_prefix_below_the_minimum_says_so(fs_tiny_dinov2, tmp_path, capsys):
    write_images(tmp_path / "img", 3)
    store = tmp_path / "s"
    table = FeatureStore(store).extract([tmp_path / "img"], backbone=f"hf:{fs_tiny_dinov2}", workers=0).table
    from featurestore.readers import FeatureDataset

    row = FeatureDataset(store, table).ids[0]
    for argv in (["search", "-s", store, "-m", table], ["show", "search", "-s", store, "-m", table, "-o", tmp_path / "g.png"]):
        rc, _, err = _cli(capsys, *argv, "--id", row[:5])
        assert rc == 2 and f"id prefix {row[:5]!r} is too short" in err and "at least 6" in err
    rc, out, err = _cli(capsys, "search", "-s", store, "-m", table, "--id", row[:6], "-k", "1", "--json")
    assert rc == 0 and json.loads(out)["hits"][0]["id"] == row  # 6 hex digits are enough


# -- FEATURESTORE_PLUGINS typos -------------------------------------------------------------------


@pytest.mark.slow  # subprocesses
def test_plugin_env_names_matching_no_installed_plugin_are_reported():
    typo = "FEATURESTORE_PLUGINS names 'featurestore-transfomers', which matches no installed plugin; installed: "
    env = {"FEATURESTORE_PLUGINS": "transformers,featurestore-transfomers", "FEATURESTORE_DISABLE_PLUGINS": ""}
    p = _run([sys.executable, "-m", "featurestore", "backbones", "dinov2_vits14", "--json"], **env)
    assert p.returncode == 0 and [b["name"] for b in json.loads(p.stdout)] == ["dinov2_vits14"]
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("featurestore: warning: " + typo)
    assert "transformers (featurestore-transformers)" in lines[0] and "Did you mean 'featurestore-transformers'?" in lines[0]
    p = _run([sys.executable, "-m", "featurestore", "plugins", "--json"], **env)
    assert p.returncode == 0 and p.stderr.strip() == ""  # `plugins` shows it in its output instead
    (warning,) = json.loads(p.stdout)["warnings"]
    assert warning.startswith(typo)
    p = _run([sys.executable, "-m", "featurestore", "plugins", "--json"], FEATURESTORE_DISABLE_PLUGINS="timn")
    assert json.loads(p.stdout)["warnings"][0].startswith("FEATURESTORE_DISABLE_PLUGINS names 'timn'")
    p = _run([sys.executable, "-m", "featurestore", "aggregators", "--json"], FEATURESTORE_PLUGINS="temporal,featurestore-adapters")
    assert p.returncode == 0 and p.stderr.strip() == ""  # entry point and distribution names both match
