"""Videos through ``extract``: frame rows beside image rows, errors with timestamps, re-runs.

Videos are real files written by PyAV (``featurestore.testing.write_video``); the model is
the tiny random DINOv2 of the transformers plugin's fixtures.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from featurestore import FeatureStore
from featurestore.cli import main
from featurestore.store import Store, feature_schema
from featurestore.testing import write_audio_only, write_images, write_video
from featurestore.video import iter_frames, parse_sample


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("media")
    write_images(d, 2, fmt="PNG")
    write_video(d / "a.mp4", n_frames=30, fps=10)
    write_video(d / "b.mkv", n_frames=20, fps=5, codec="mpeg4")
    return d


def _rows(fs: FeatureStore, table: str) -> list[dict]:
    return fs.table(table).to_arrow().to_pylist()


@pytest.mark.slow  # forkserver workers
def test_frames_and_images_share_the_model_table(media, fs_tiny_dinov2, tmp_path):
    fs = FeatureStore(tmp_path / "s")
    s = fs.extract([media], backbone=f"hf:{fs_tiny_dinov2}", sample="uniform:4", workers=2, batch_size=3)
    assert (s.inputs, s.videos, s.written, s.frames_written, s.errors) == (4, 2, 10, 8, 0)
    rows = _rows(fs, s.table)
    images = [r for r in rows if r["video_id"] is None]
    frames = [r for r in rows if r["video_id"] is not None]
    assert len(images) == 2 and all(r["timestamp_s"] is None and r["frame_index"] is None for r in images)
    for name in ("a.mp4", "b.mkv"):
        path = media / name
        expected = list(iter_frames(path, parse_sample("uniform:4")))
        got = sorted((r for r in frames if r["uri"] == str(path)), key=lambda r: r["timestamp_s"])
        assert [r["timestamp_s"] for r in got] == [f.timestamp_s for f in expected]
        assert {r["video_id"] for r in got} == {hashlib.sha256(path.read_bytes()).hexdigest()}
        assert [r["frame_index"] for r in got] == [f.frame_index for f in expected]
        assert len({r["id"] for r in got}) == 4


def test_frame_features_equal_the_model_on_the_decoded_frame(media, fs_tiny_dinov2, tmp_path):
    from transformers import AutoImageProcessor, AutoModel

    fs = FeatureStore(tmp_path / "s")
    s = fs.extract([media / "a.mp4"], backbone=f"hf:{fs_tiny_dinov2}", sample="fps:2", dense=True, workers=0)
    model, proc = AutoModel.from_pretrained(fs_tiny_dinov2).eval(), AutoImageProcessor.from_pretrained(fs_tiny_dinov2)
    by_ts = {r["timestamp_s"]: r for r in _rows(fs, s.table)}
    frames = list(iter_frames(media / "a.mp4", parse_sample("fps:2")))
    assert sorted(by_ts) == [f.timestamp_s for f in frames] and len(frames) == 6
    for f in frames:
        with torch.no_grad():
            ref = model(pixel_values=proc(images=f.image, return_tensors="pt")["pixel_values"]).last_hidden_state[0]
        np.testing.assert_allclose(by_ts[f.timestamp_s]["cls"], ref[0].numpy(), atol=1e-4)
        assert np.asarray(by_ts[f.timestamp_s]["patches"]).shape == (4, 32)


def test_rerun_adds_nothing_and_another_sampling_adds_only_new_frames(media, fs_tiny_dinov2, tmp_path):
    fs = FeatureStore(tmp_path / "s")
    first = fs.extract([media / "a.mp4"], backbone=f"hf:{fs_tiny_dinov2}", sample="every:10", workers=0)
    again = fs.extract([media / "a.mp4"], backbone=f"hf:{fs_tiny_dinov2}", sample="every:10", workers=0)
    assert (first.written, again.written, again.skipped_existing) == (3, 0, 3)
    more = fs.extract([media / "a.mp4"], backbone=f"hf:{fs_tiny_dinov2}", sample="every:5", workers=0)
    assert (more.written, more.skipped_existing) == (3, 3)  # frames 0, 10, 20 were stored already
    rows = _rows(fs, first.table)
    assert len(rows) == len({r["id"] for r in rows}) == 6


@pytest.mark.slow  # a forkserver worker
def test_bad_videos_are_errors_and_good_frames_are_kept(media, fs_tiny_dinov2, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    # index first (faststart): cutting the data leaves the frames before the cut decodable
    full = write_video(bad / "long.mp4", n_frames=60, fps=10, size=(128, 96), codec="mpeg4", faststart=True)
    data = full.read_bytes()
    (bad / "cut.mp4").write_bytes(data[: int(len(data) * 0.6)])
    full.unlink()
    write_audio_only(bad / "sound.mp4")
    (bad / "empty.webm").write_bytes(b"")
    write_images(bad, 1, fmt="PNG")
    fs = FeatureStore(tmp_path / "s")
    s = fs.extract([bad], backbone=f"hf:{fs_tiny_dinov2}", sample="every:5", workers=1)
    errs = {Path(e["uri"]).name: e for e in fs.errors(s.run_id)}
    assert set(errs) == {"cut.mp4", "sound.mp4", "empty.webm"}
    assert errs["sound.mp4"]["error_type"] == "NoVideoStreamError"
    assert errs["empty.webm"]["error_type"] == "EmptyFileError"
    cut = errs["cut.mp4"]
    kept = [r for r in _rows(fs, s.table) if r["uri"].endswith("cut.mp4")]
    assert kept, "frames decoded before the fault are kept"
    assert cut["stage"] == "decode" and cut["timestamp_s"] is not None
    assert cut["timestamp_s"] >= max(r["timestamp_s"] for r in kept)
    assert s.written == len(kept) + 1  # + the PNG: the run went on


def test_old_table_gets_the_video_columns_and_keeps_its_rows(media, fs_tiny_dinov2, tmp_path):
    fs = FeatureStore(tmp_path / "s")
    s = fs.extract([media / "img_00000.png"], backbone=f"hf:{fs_tiny_dinov2}", workers=0)
    # rebuild the table the way it was before videos existed: no video columns
    store = Store(tmp_path / "s")
    old = store.db.open_table(s.table).to_arrow()
    legacy = pa.schema([f for f in feature_schema(32, False) if f.name not in ("video_id", "timestamp_s", "frame_index")])
    store.db.drop_table(s.table)
    store.db.create_table(s.table, old.select(legacy.names).cast(legacy))
    v = FeatureStore(tmp_path / "s").extract([media / "b.mkv"], backbone=f"hf:{fs_tiny_dinov2}", sample="uniform:2", workers=0)
    assert v.written == 2 and v.table == s.table
    rows = _rows(fs, s.table)
    assert len(rows) == 3
    [img] = [r for r in rows if r["video_id"] is None]
    assert img["id"] == old.column("id")[0].as_py() and img["timestamp_s"] is None


def test_cli_sample_option(media, fs_tiny_dinov2, tmp_path, capsys):
    store = str(tmp_path / "s")
    rc = main(["extract", str(media / "b.mkv"), "-b", f"hf:{fs_tiny_dinov2}", "-s", store, "--workers", "0", "--sample", "keyframes", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    keys = list(iter_frames(media / "b.mkv", parse_sample("keyframes")))
    assert out["frames_written"] == len(keys) >= 1
    assert main(["extract", str(media), "-b", f"hf:{fs_tiny_dinov2}", "-s", store, "--sample", "uniform:0"]) == 2
    assert "uniform" in capsys.readouterr().err
