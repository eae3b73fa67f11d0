"""End-to-end extraction into a real LanceDB store with a tiny random DINOv2."""

import hashlib
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featurestore import FeatureStore
from featurestore.testing import write_images


def _extract(fs_store_path, paths, model_dir, **kw):
    kw.setdefault("workers", 0)
    kw.setdefault("batch_size", 4)
    return FeatureStore(fs_store_path).extract(paths, backbone=f"hf:{model_dir}", **kw)


def _bomb_png(path: Path, width: int = 40000, height: int = 40000) -> None:
    """A tiny PNG whose header claims width x height pixels."""
    buf = bytearray()
    Image.new("L", (1, 1)).save(path, "PNG")
    data = bytearray(path.read_bytes())
    # IHDR data starts at byte 16: width, height (big-endian u32), then the CRC after 13 bytes
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data) + bytes(buf))


def test_extract_writes_one_row_per_image_with_card(fs_tiny_dinov2, fs_image_dir, fs_store_path):
    s = _extract(fs_store_path, [fs_image_dir], fs_tiny_dinov2, dense=True)
    assert (s.inputs, s.written, s.errors, s.ok) == (8, 8, 0, True)
    fs = FeatureStore(fs_store_path)
    [m] = fs.models()
    assert (m["model_hash"], m["table"], m["rows"], m["dim"]) == (s.model_hash, s.table, 8, 32)
    rows = fs.table(s.table).to_arrow().to_pylist()
    for r in rows:
        data = Path(r["uri"]).read_bytes()
        assert r["id"] == hashlib.sha256(data).hexdigest()
        assert (r["width"], r["height"]) == Image.open(r["uri"]).size
        assert len(r["cls"]) == 32 and len(r["patches"]) == 4 and len(r["patches"][0]) == 32
        assert r["run_id"] == s.run_id
    card = fs.card(s.model_hash)
    assert card.plugin == "featurestore-transformers" and card.dense and card.patch_dtype == "float16"
    assert card.token_layout.grid_h == 2 and card.library_versions["transformers"]


def test_rerun_adds_nothing_and_same_content_is_one_row(fs_tiny_dinov2, fs_image_dir, fs_store_path, tmp_path):
    first = _extract(fs_store_path, [fs_image_dir], fs_tiny_dinov2)
    copy = tmp_path / "copy_of_first.jpg"
    shutil.copy(sorted(fs_image_dir.glob("*.jpg"))[0], copy)
    again = _extract(fs_store_path, [fs_image_dir, copy, copy], fs_tiny_dinov2)
    assert first.written == 8
    # the copy has the same bytes: already stored; naming it twice is one input
    assert (again.written, again.skipped_existing, again.inputs) == (0, 9, 9)
    assert FeatureStore(fs_store_path).models()[0]["rows"] == 8


def test_duplicate_content_within_one_run(fs_tiny_dinov2, fs_image_dir, fs_store_path, tmp_path):
    d = tmp_path / "dups"
    d.mkdir()
    src = sorted(fs_image_dir.glob("*.jpg"))[0]
    for i in range(5):
        shutil.copy(src, d / f"same_{i}.jpg")
    s = _extract(fs_store_path, [d], fs_tiny_dinov2, batch_size=2)
    assert (s.written, s.skipped_duplicate) == (1, 4)
    assert FeatureStore(fs_store_path).models()[0]["rows"] == 1


def test_bad_inputs_are_recorded_and_the_run_goes_on(fs_tiny_dinov2, fs_store_path, tmp_path):
    d = tmp_path / "mixed"
    good = write_images(d, 3)
    (d / "empty.jpg").write_bytes(b"")
    full = good[0].read_bytes()
    (d / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    (d / "notes.jpg").write_text("this is not an image")
    _bomb_png(d / "bomb.png")
    missing = tmp_path / "missing.jpg"
    s = _extract(fs_store_path, [d, missing], fs_tiny_dinov2, batch_size=3)
    assert (s.inputs, s.written, s.errors, s.ok) == (9, 3, 6, True)
    errors = {Path(e["uri"]).name: e for e in FeatureStore(fs_store_path).errors(s.run_id)}
    assert errors["empty.jpg"]["error_type"] == "EmptyFileError"
    assert errors["truncated.jpg"]["error_type"] == "TruncatedImageError"
    assert errors["notes.jpg"]["error_type"] == "UnsupportedFormatError"
    assert errors["bomb.png"]["error_type"] == "DecompressionBombError"
    assert errors["corrupt.png"]["stage"] == "decode"
    assert errors["missing.jpg"]["stage"] == "read" and errors["missing.jpg"]["id"] is None
    assert all(e["model_hash"] == s.model_hash for e in errors.values())
    assert Image.MAX_IMAGE_PIXELS is not None  # no global flag flipped


def test_max_error_rate_fails_the_run(fs_tiny_dinov2, fs_store_path, tmp_path):
    d = tmp_path / "bad"
    write_images(d, 1)
    for i in range(3):
        (d / f"bad_{i}.jpg").write_bytes(b"nope")
    s = _extract(fs_store_path, [d], fs_tiny_dinov2, max_error_rate=0.5, batch_size=1)
    assert not s.ok and s.error_rate > 0.5
    ok = _extract(fs_store_path, [d], fs_tiny_dinov2, max_error_rate=0.9, batch_size=1)
    assert ok.ok


def test_nothing_succeeded_is_not_ok(fs_tiny_dinov2, fs_store_path, tmp_path):
    d = tmp_path / "allbad"
    d.mkdir()
    (d / "a.jpg").write_bytes(b"")
    s = _extract(fs_store_path, [d], fs_tiny_dinov2)
    assert not s.ok and s.written == 0 and s.errors == 1


def test_image_modes_are_converted(fs_tiny_dinov2, fs_store_path, tmp_path):
    d = tmp_path / "modes"
    d.mkdir()
    rgb = Image.new("RGB", (40, 30), (200, 30, 30))
    rgb.convert("CMYK").save(d / "cmyk.jpg")
    rgb.convert("P").save(d / "palette.png")
    Image.new("RGBA", (40, 30), (0, 0, 255, 128)).save(d / "rgba.png")
    Image.new("LA", (40, 30), (90, 255)).save(d / "la.png")
    Image.fromarray(np.full((30, 40), 40000, np.uint16)).save(d / "gray16.png")
    frames = [Image.new("RGB", (40, 30), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(d / "anim.gif", save_all=True, append_images=frames[1:])
    s = _extract(fs_store_path, [d], fs_tiny_dinov2)
    assert (s.written, s.errors) == (6, 0), s.error_samples


@pytest.mark.slow  # forkserver workers
def test_forkserver_workers_match_in_process(fs_tiny_dinov2, fs_image_dir, tmp_path):
    a = _extract(tmp_path / "a", [fs_image_dir], fs_tiny_dinov2, workers=0)
    b = _extract(tmp_path / "b", [fs_image_dir], fs_tiny_dinov2, workers=2)
    ta = FeatureStore(tmp_path / "a").table(a.table).to_arrow().sort_by("id")
    tb = FeatureStore(tmp_path / "b").table(b.table).to_arrow().sort_by("id")
    assert a.model_hash == b.model_hash
    assert ta.column("id").to_pylist() == tb.column("id").to_pylist()
    np.testing.assert_allclose(
        np.array(ta.column("cls").to_pylist()), np.array(tb.column("cls").to_pylist()), atol=1e-5
    )


def test_progress_bar_reports_images_per_second(fs_tiny_dinov2, fs_image_dir, fs_store_path, capsys):
    _extract(fs_store_path, [fs_image_dir], fs_tiny_dinov2, progress=True)
    err = capsys.readouterr().err
    assert "img/s" in err and "8/8" in err
