"""Clip rows from temporal aggregators, checked against numpy on the stored frame rows.

Aggregators come from the first-party ``featurestore-temporal`` plugin through its real
entry point; frames are real PyAV-written videos run through the tiny DINOv2.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from featurestore import FeatureStore
from featurestore.cli import main
from featurestore.testing import write_video


@pytest.fixture(scope="module")
def extracted(tmp_path_factory: pytest.TempPathFactory, fs_tiny_dinov2):
    d = tmp_path_factory.mktemp("agg_videos")
    write_video(d / "a.mp4", n_frames=40, fps=10)
    write_video(d / "b.mkv", n_frames=25, fps=5, codec="mpeg4")
    store = tmp_path_factory.mktemp("agg_store") / "s"
    s = FeatureStore(store).extract([d], backbone=f"hf:{fs_tiny_dinov2}", sample="fps:2", dense=True, workers=0)
    assert s.errors == 0 and s.frames_written > 0
    return store, s


def _frames(fs: FeatureStore, table: str) -> dict[str, dict]:
    rows = [r for r in fs.table(table).to_arrow().to_pylist() if r["video_id"]]
    out: dict[str, dict] = {}
    for r in sorted(rows, key=lambda r: r["timestamp_s"]):
        v = out.setdefault(r["video_id"], {"ids": [], "ts": [], "cls": [], "patches": []})
        v["ids"].append(r["id"])
        v["ts"].append(r["timestamp_s"])
        v["cls"].append(r["cls"])
        v["patches"].append(np.asarray(r["patches"], np.float32))
    return {k: {**v, "cls": np.asarray(v["cls"], np.float64), "patches": np.stack(v["patches"]).astype(np.float64)} for k, v in out.items()}


def _trim_mean(x: np.ndarray, p: float) -> np.ndarray:
    k = int(p * len(x))
    s = np.sort(x, axis=0)
    return s[k : len(x) - k].mean(axis=0)


REFERENCE = {
    "mean": lambda x: x.mean(0),
    "max": lambda x: x.max(0),
    "meanmax": lambda x: np.concatenate([x.mean(0), x.max(0)], axis=-1),
    "trimmed-mean:proportion=0.2": lambda x: _trim_mean(x, 0.2),
    "motion": lambda x: np.concatenate(
        [np.abs(np.diff(x, axis=0)).mean(0) if len(x) > 1 else np.zeros_like(x[0]), x.mean(0)], axis=-1
    ),
}


@pytest.mark.parametrize("spec", sorted(REFERENCE))
def test_one_clip_per_video_matches_numpy(spec, extracted):
    store, s = extracted
    fs = FeatureStore(store)
    res = fs.aggregate(s.table, spec)
    frames = _frames(fs, s.table)
    clips = {r["video_id"]: r for r in fs.table(res.table).to_arrow().to_pylist()}
    assert res.videos == len(frames) == len(clips) == 2
    for vid, f in frames.items():
        c = clips[vid]
        assert c["frame_ids"] == f["ids"] and c["n_frames"] == len(f["ids"])
        assert (c["start_s"], c["end_s"], c["window_s"]) == (f["ts"][0], f["ts"][-1], None)
        np.testing.assert_allclose(c["cls"], REFERENCE[spec](f["cls"]), rtol=1e-5, atol=1e-5)
        # patches: per position over time, from the stored float16 tokens
        np.testing.assert_allclose(np.asarray(c["patches"], np.float32), REFERENCE[spec](f["patches"]), atol=2e-3, rtol=1e-3)


def test_windows_trace_back_to_their_frames(extracted):
    store, s = extracted
    fs = FeatureStore(store)
    res = fs.aggregate(s.table, "mean", window=2.0, stride=1.0)
    frames = _frames(fs, s.table)
    # the table also holds the whole-video clips of the same aggregator (window_s null)
    clips = [c for c in fs.table(res.table).to_arrow().to_pylist() if c["window_s"] == 2.0 and c["stride_s"] == 1.0]
    for vid, f in frames.items():
        ts = np.asarray(f["ts"])
        mine = sorted((c for c in clips if c["video_id"] == vid), key=lambda c: c["start_s"])
        starts = [ts[0] + k * 1.0 for k in range(int((ts[-1] - ts[0]) // 1.0) + 1)]
        assert [c["start_s"] for c in mine] == pytest.approx(starts)
        for c in mine:
            sel = (ts >= c["start_s"]) & (ts < c["start_s"] + 2.0)
            assert c["frame_ids"] == [f["ids"][i] for i in np.nonzero(sel)[0]]
            assert (c["window_s"], c["stride_s"], c["end_s"]) == (2.0, 1.0, pytest.approx(c["start_s"] + 2.0))
            np.testing.assert_allclose(c["cls"], f["cls"][sel].mean(0), rtol=1e-5, atol=1e-5)


def test_aggregating_twice_adds_nothing_and_params_make_another_table(extracted):
    store, s = extracted
    fs = FeatureStore(store)
    a = fs.aggregate(s.table, "trimmed-mean:proportion=0.1")
    b = fs.aggregate(s.table, "trimmed-mean:proportion=0.1")
    c = fs.aggregate(s.table, "trimmed-mean:proportion=0.25")
    assert a.table == b.table != c.table
    assert b.written == 0 and b.clips == a.clips
    listed = {t["table"]: t for t in fs.clips()}
    assert listed[a.table]["spec"]["params"] == {"proportion": 0.1} and listed[a.table]["model_table"] == s.table


def test_extract_with_aggregate_and_the_cli(extracted, fs_tiny_dinov2, tmp_path, capsys):
    store, s = extracted
    videos = Path(fs_uri := FeatureStore(store).table(s.table).to_arrow().column("uri")[0].as_py()).parent
    out = tmp_path / "s2"
    rc = main(["extract", str(videos), "-b", f"hf:{fs_tiny_dinov2}", "-s", str(out), "--workers", "0",
               "--sample", "fps:2", "--aggregate", "mean,meanmax", "--json"])
    assert rc == 0, fs_uri
    summary = json.loads(capsys.readouterr().out)
    assert len(summary["clip_tables"]) == 2 and summary["clips_written"] == 4
    assert main(["aggregate", "-s", str(out), "-m", summary["table"], "-a", "mean", "--json"]) == 0
    [res] = json.loads(capsys.readouterr().out)
    assert res["table"] in summary["clip_tables"] and res["written"] == 0  # already there from --aggregate
    assert main(["aggregate", "-s", str(out), "-m", summary["table"], "-a", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["aggregate", "-s", str(out), "-m", summary["table"], "-a", "mean", "--stride", "1"]) == 2
    assert "--stride needs --window" in capsys.readouterr().err


def test_aggregators_are_listed_from_the_plugin(capsys):
    assert main(["aggregators", "--json"]) == 0
    items = {a["name"]: a for a in json.loads(capsys.readouterr().out)}
    assert {"mean", "max", "meanmax", "trimmed-mean", "motion"} <= set(items)
    assert items["trimmed-mean"]["plugin"] == "featurestore-temporal"
    assert main(["aggregators"]) == 0
    assert "trimmed-mean" in capsys.readouterr().out


def test_clips_of_part_of_a_video_are_replaced_once_more_frames_are_stored(extracted, tmp_path):
    """A video aggregated while its frames were still being committed (``aggregate`` beside
    ``extract``): once the rest is stored, aggregating again replaces those clips with the
    clips of every frame, and clips made from fewer frames never overwrite them."""
    from featurestore.clips import commit_clips
    from featurestore.store import Store

    store, s = extracted
    frames = FeatureStore(store).table(s.table).to_arrow().sort_by("timestamp_s")
    card = Store(store).card(s.table)  # the same model in new stores: the same clip ids
    table = Store(tmp_path / "s").register_model(card)
    Store.write_features(Store(tmp_path / "all").register_model(card), frames)
    full = FeatureStore(tmp_path / "all")
    early = np.zeros(frames.num_rows, bool)
    for vid in set(frames.column("video_id").to_pylist()):  # the first half of each video's frames
        pos = [i for i, v in enumerate(frames.column("video_id").to_pylist()) if v == vid]
        early[pos[: len(pos) // 2]] = True
    Store.write_features(table, frames.filter(pa.array(early)))
    fs = FeatureStore(tmp_path / "s")
    for window in (None, 1.0):
        fs.aggregate(s.table, "mean", window=window)
    res = fs.aggregate(s.table, "mean")
    partial = fs.table(res.table).to_arrow()
    Store.write_features(table, frames.filter(pa.array(~early)))
    whole, windowed = fs.aggregate(s.table, "mean"), fs.aggregate(s.table, "mean", window=1.0)
    assert whole.replaced == 2 and windowed.replaced > 0  # the 2 whole-video clips, and windows that gained frames
    # the same clips as aggregating the complete videos
    assert {full.aggregate(s.table, "mean").table, full.aggregate(s.table, "mean", window=1.0).table} == {res.table}

    def clips(fs_: FeatureStore) -> dict[str, tuple]:
        return {
            r["id"]: (r["video_id"], r["window_s"], r["frame_ids"], r["n_frames"])
            for r in fs_.table(res.table).to_arrow().to_pylist()
        }

    got = clips(fs)
    assert got == clips(full) and len(got) == fs.table(res.table).count_rows()
    # a run that read the videos before the rest of their frames came commits nothing
    assert commit_clips(fs.table(res.table), partial) == (0, 0)
    assert clips(fs) == got


def test_aggregations_compact_the_clip_table_as_it_grows(tmp_path, monkeypatch):
    """Each aggregation that writes makes a fragment; past the policy's limit the clip table
    is compacted (as feature tables are by their writers)."""
    from datetime import datetime, timezone

    from featurestore import clips
    from featurestore.commit import MaintainPolicy
    from featurestore.config import ModelCard
    from featurestore.store import Store, feature_batch

    monkeypatch.setattr(clips, "MAINTAIN", MaintainPolicy(max_small_fragments=3))
    card = ModelCard(
        model_hash="77" * 32, weights_sha256="0" * 64, backbone="toy", table="toy-777777777777", plugin="test", plugin_version="0",
        weights_source="memory", architecture="Toy", dim=4, dense=False, preprocessing={}, output_spec={}, decode_policy={},
        library_versions={}, created_at=datetime.now(timezone.utc),
    )
    table = Store(tmp_path / "s").register_model(card)
    fs = FeatureStore(tmp_path / "s")
    for v in range(8):  # one more video per aggregation: one commit each
        ids = [f"{v:032x}{i:032x}" for i in range(3)]
        Store.write_features(table, feature_batch(
            table.schema, ids=ids, uris=[f"/v/{v}.mp4"] * 3, sizes=[(8, 8)] * 3, crop_boxes=np.zeros((3, 4)),
            cls=np.ones((3, 4), np.float32), patches=None, grids=None, run_id="r", video_ids=[f"video{v}"] * 3,
            timestamps=[0.0, 0.5, 1.0], frame_indices=[0, 1, 2],
        ))
        res = fs.aggregate(card.table, "mean")
        assert res.written == 1
    stats = fs.table(res.table).stats()["fragment_stats"]
    assert stats["num_small_fragments"] <= 4 and fs.table(res.table).count_rows() == 8
