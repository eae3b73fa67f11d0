"""The console script, run as a user runs it."""

import json
import signal
import subprocess
import sys
import time

import lancedb
import pytest

from featurestore.testing import write_images

pytestmark = pytest.mark.slow  # the console script in subprocesses

EXE = [sys.executable, "-m", "featurestore.cli"]


def run(*args, check=True, **kw):
    p = subprocess.run([*EXE, *map(str, args)], capture_output=True, text=True, timeout=300, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}")
    return p


def test_extract_json_then_models_json(fs_tiny_dinov2, fs_image_dir, fs_store_path):
    out = json.loads(run("extract", fs_image_dir, "--backbone", f"hf:{fs_tiny_dinov2}", "--store", fs_store_path,
                         "--dense", "--workers", "0", "--batch-size", "3", "--json").stdout)
    assert (out["written"], out["errors"], out["ok"]) == (8, 0, True)
    models = json.loads(run("models", "--store", fs_store_path, "--json").stdout)
    assert len(models) == 1
    m = models[0]
    assert {"model_hash", "backbone", "table", "rows", "dim"} <= set(m)
    assert (m["model_hash"], m["table"], m["rows"], m["dim"]) == (out["model_hash"], out["table"], 8, 32)
    human = run("models", "--store", fs_store_path).stdout
    assert out["model_hash"][:12] in human


def test_exit_codes(fs_tiny_dinov2, fs_store_path, tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "x.jpg").write_bytes(b"")
    p = run("extract", d, "--backbone", f"hf:{fs_tiny_dinov2}", "--store", fs_store_path, "--workers", "0", "--json", check=False)
    assert p.returncode == 1 and json.loads(p.stdout)["errors"] == 1  # nothing succeeded
    p = run("extract", d / "x.jpg", tmp_path / "nowhere.jpg", "--backbone", f"hf:{fs_tiny_dinov2}", "--store", fs_store_path, "--json", check=False)
    assert p.returncode == 1 and json.loads(p.stdout)["error_samples"][1]["stage"] == "read"  # one missing file: a row, not a crash
    p = run("extract", tmp_path / "nowhere.jpg", "--backbone", f"hf:{fs_tiny_dinov2}", "--store", tmp_path / "s2", check=False)
    assert p.returncode == 2 and "none of the inputs exists" in p.stderr and not (tmp_path / "s2").exists()  # nothing to do
    (tmp_path / "empty_dir").mkdir()
    p = run("extract", tmp_path / "empty_dir", "--backbone", f"hf:{fs_tiny_dinov2}", "--store", fs_store_path, check=False)
    assert p.returncode == 2 and "no image or video files found" in p.stderr
    p = run("extract", d, "--backbone", "no_such_net", "--store", fs_store_path, check=False)
    assert p.returncode == 2
    assert "unknown backbone 'no_such_net'" in p.stderr and "dinov2_vits14" in p.stderr


def test_text_summary_names_errors(fs_tiny_dinov2, fs_store_path, tmp_path):
    d = tmp_path / "mixed"
    write_images(d, 2)
    (d / "broken.jpg").write_bytes(b"garbage")
    p = run("extract", d, "--backbone", f"hf:{fs_tiny_dinov2}", "--store", fs_store_path, "--workers", "0")
    assert "written 2" in p.stdout and "errors 1" in p.stdout and "broken.jpg" in p.stdout
    errors = json.loads(run("errors", "--store", fs_store_path, "--json").stdout)
    assert [(e["error_type"], e["uri"]) for e in errors] == [("UnsupportedFormatError", str(d / "broken.jpg"))]
    assert json.loads(run("errors", "--store", fs_store_path, "--run", "nope", "--json").stdout) == []


def test_killed_run_loses_at_most_its_open_batch(fs_tiny_dinov2, fs_store_path, tmp_path):
    d = tmp_path / "many"
    n = 150
    write_images(d, n, size=(32, 32))
    args = [*EXE, "extract", str(d), "--backbone", f"hf:{fs_tiny_dinov2}", "--store", str(fs_store_path),
            "--workers", "0", "--batch-size", "1"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = 0
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            try:
                db = lancedb.connect(fs_store_path)
                names = [t for t in db.list_tables().tables if t.startswith("hf_")]
                rows = db.open_table(names[0]).count_rows() if names else 0
            except Exception:
                rows = 0
            if rows >= 5:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    if rows >= n:
        pytest.skip("the run finished before it could be killed")
    db = lancedb.connect(fs_store_path)
    name = [t for t in db.list_tables().tables if t.startswith("hf_")][0]
    survived = db.open_table(name).count_rows()
    assert 5 <= survived < n
    out = json.loads(run("extract", d, "--backbone", f"hf:{fs_tiny_dinov2}", "--store", fs_store_path,
                         "--workers", "0", "--json").stdout)
    assert out["skipped_existing"] == survived and out["written"] == n - survived
    ids = db.open_table(name).to_arrow().column("id").to_pylist()
    assert len(ids) == len(set(ids)) == n


def test_console_script_delivers_all_output_and_the_exit_code(fs_tiny_dinov2, tmp_path, fs_store_path):
    """The console script ends the process without interpreter teardown (cli.console_main): what
    it printed (here more than a pipe holds) and its exit code still arrive whole."""
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(300):
        (bad / f"broken_{i:03d}.jpg").write_bytes(b"not an image %d" % i)
    p = run("extract", bad, "--backbone", f"hf:{fs_tiny_dinov2}", "--store", fs_store_path, "--workers", "0", "--json", check=False)
    assert p.returncode == 1 and json.loads(p.stdout)["errors"] == 300  # nothing succeeded: exit 1
    out = run("errors", "--store", fs_store_path, "--json").stdout
    assert len(out) > 65536 and len(json.loads(out)) == 300
