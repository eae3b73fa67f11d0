"""Reads over a whole table hold a bounded part of it: the manifest's content digest, the
``errors`` listing and clip aggregation are read in batches and, where an order is needed,
sorted on disk past a bound — with the results of the whole-table reads they replace.

The bounds are module constants; the tests shrink them so that a table of a few hundred
rows crosses them many times, and compare with the answer read the old way (whole table in
memory) on the same real LanceDB table.
"""

from __future__ import annotations

import hashlib
import json
import random
import struct
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from featurestore import clips, cli, extsort, manifest, store as store_mod
from featurestore.aggregator import Aggregator
from featurestore.catalog_cache import cache_file
from featurestore.config import ModelCard
from featurestore.extsort import external_sorted
from featurestore.store import ERRORS_SCHEMA, ERRORS_TABLE, Store, feature_batch, feature_schema, table_name_for

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


@pytest.fixture
def spills(monkeypatch, tmp_path) -> list[Path]:
    """The sorted runs :func:`external_sorted` writes to disk (in a temporary directory of this test)."""
    written: list[Path] = []
    real = extsort._write_run

    def counting(path: Path, items: Any) -> Path:
        written.append(path)
        return real(path, items)

    monkeypatch.setattr(extsort, "_write_run", counting)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    return written


# -- external sort ------------------------------------------------------------------------


def test_external_sort_is_sorted_and_stable_and_cleans_up(spills, tmp_path):
    rng = random.Random(0)
    items = [(rng.randrange(20), i) for i in range(1000)]  # many equal keys: input order must stay
    got = list(external_sorted(items, key=lambda t: t[0], run=37, fan_in=3))
    assert got == sorted(items, key=lambda t: t[0])
    assert len(spills) > 1000 // 37  # runs, then merged runs (fan_in 3 < 28 runs)
    assert list((tmp_path / "tmp").iterdir()) == []  # the runs are gone


def test_external_sort_of_what_fits_writes_nothing(spills):
    assert list(external_sorted([3, 1, 2], run=3)) == [1, 2, 3]
    assert list(external_sorted(range(5, 0, -1), run=10)) == [1, 2, 3, 4, 5]
    assert list(external_sorted([])) == [] and spills == []
    with pytest.raises(ValueError, match="fan_in"):
        list(external_sorted([1], fan_in=1))


# -- manifest digest ----------------------------------------------------------------------


def _feature_table(path: Path, n: int, dense: bool) -> tuple[Any, Any]:
    """A feature table of ``n`` rows in 3 commits, not in id order, with values that depend
    only on the row (so the digest below is fixed), and a centroid-like table keyed by an int."""
    st = Store(path)
    st.create()
    schema = feature_schema(8, dense, 4)
    table = st._open_or_create("t", schema, key="id")
    order = [(i * 37) % n for i in range(n)]
    for a in range(3):
        part = order[a * n // 3 : (a + 1) * n // 3]
        cls = np.array([[i * 0.001 + j for j in range(8)] for i in part], np.float32)
        patches = [np.full((4, 4), i % 7, np.float16) + np.arange(4, dtype=np.float16) for i in part] if dense else None
        table.add(
            feature_batch(
                schema, ids=[hashlib.sha256(i.to_bytes(8, "little")).hexdigest() for i in part],
                uris=[f"/d/{i}.jpg" for i in part], sizes=[(i, i + 1) for i in part], crop_boxes=np.zeros((len(part), 4)),
                cls=cls, patches=patches, grids=[(2, 2)] * len(part) if dense else None, run_id="r",
            )
        )
    cent = pa.table({"cluster": pa.array([(i * 7) % 30 for i in range(30)], pa.int32()), "size": pa.array(range(30), pa.int64())})
    return table, st.db.create_table("cent", cent)


def _whole_table_digest(table: Any) -> tuple[str, int]:
    """The digest as it was computed before: every row's hash in one list, sorted."""
    cols = [f.name for f in table.schema if f.name not in manifest.VOLATILE | manifest.LOCATION]
    key = "id" if "id" in cols else cols[0]
    t = table.to_arrow().select(cols)
    parts = [manifest._cell_bytes(t.column(c).combine_chunks(), c) for c in cols]
    row_hashes = []
    for i, k in enumerate(t.column(key).to_pylist()):
        h = hashlib.sha256()
        for p in parts:
            h.update(struct.pack("<Q", len(p[i])))
            h.update(p[i])
        row_hashes.append((repr(k), h.digest()))
    row_hashes.sort()
    h = hashlib.sha256(manifest.MANIFEST_FORMAT.encode())
    h.update(",".join(cols).encode())
    for _, rh in row_hashes:
        h.update(rh)
    return h.hexdigest(), len(row_hashes)


# digests of these tables by the whole-table code (featurestore before the streamed digest)
GOLDEN = {
    ("cls", "t"): "2a0d5f4f1d0f941cd2a5f09c47ed9b8e46a22e5aaee812a8398a4384d8801ba2",
    ("cls", "cent"): "b27667da9f60fdebd37da911edf8d8a8ad006e0360a0ceabbd9e4a1fe56fa5c0",
    ("dense", "t"): "b5d38536d9f20d1e8dbe54e98d45c4ad7cbf9483e3bcaa593d4c101a62e2cd81",
}


@pytest.mark.parametrize("dense", [False, True], ids=["cls", "dense"])
def test_content_digest_streams_and_sorts_on_disk_with_the_same_digest(dense, spills, monkeypatch, tmp_path):
    n = 90 if dense else 300
    table, cent = _feature_table(tmp_path / "s", n, dense)
    unbounded = manifest.content_digest(table)  # one run: sorted in memory, nothing on disk
    assert unbounded == _whole_table_digest(table) == (GOLDEN[("dense" if dense else "cls", "t")], n)
    assert spills == []
    monkeypatch.setattr(manifest, "_CHUNK", 7)  # batches of 7 rows
    monkeypatch.setattr(manifest, "_SORT_RUN", 16)  # 16 (key, hash) pairs in memory at once
    monkeypatch.setattr(extsort, "FAN_IN", 3)  # … merged 3 runs at a time
    assert manifest._batch_rows(table, ["id", "cls"]) == 7
    assert manifest.content_digest(table) == unbounded
    assert len(spills) > n // 16
    if not dense:  # keyed by an int: ordered by repr ("10" < "2"), as before
        assert manifest.content_digest(cent) == _whole_table_digest(cent) == (GOLDEN[("cls", "cent")], 30)


def test_wide_rows_are_read_in_fewer_rows_per_batch(tmp_path, monkeypatch):
    table, _ = _feature_table(tmp_path / "s", 30, dense=True)
    monkeypatch.setattr(manifest, "_BATCH_BYTES", 1000)
    narrow, wide = manifest._batch_rows(table, ["id"]), manifest._batch_rows(table, ["id", "cls", "patches"])
    assert 1 <= wide < narrow <= manifest._CHUNK


# -- errors -------------------------------------------------------------------------------


def _errors_store(path: Path, commits: list[tuple[str, datetime | None, int]]) -> Store:
    """A store whose ``errors`` table got one commit of ``n`` rows per (run, created_at, n)."""
    st = Store(path)
    st.create()
    table = st._open_or_create(ERRORS_TABLE, ERRORS_SCHEMA)
    for c, (run, ts, n) in enumerate(commits):
        rows = [
            dict(id=f"{run}-{c}-{k}", uri=f"/e/{c}/{k}.jpg", stage="decode", error_type="E", message=f"m{c}.{k}",
                 timestamp_s=None, run_id=run, model_hash="h", backbone="b", created_at=ts)
            for k in range(n)
        ]
        table.add(pa.Table.from_pylist(rows, schema=ERRORS_SCHEMA))
    return st


def _whole_table_errors(st: Store, run_id: str | None = None) -> list[dict[str, Any]]:
    """The listing as it was read before: the whole (filtered) table, sorted by created_at."""
    q = st.db.open_table(ERRORS_TABLE).search()
    if run_id is not None:
        q = q.where(f"run_id = '{run_id}'")
    return q.limit(None).to_arrow().sort_by("created_at").to_pylist()


def test_errors_in_commit_order_stream_without_sorting(spills, monkeypatch, tmp_path):
    monkeypatch.setattr(store_mod, "ERRORS_BATCH", 4)
    monkeypatch.setattr(store_mod, "ERRORS_SORT_RUN", 5)
    st = _errors_store(tmp_path / "s", [("a", T0, 10), ("a", T0, 3), ("b", T0 + timedelta(seconds=1), 12)])
    assert st.errors() == list(st.iter_errors()) == _whole_table_errors(st) and len(st.errors()) == 25
    assert st.errors("b") == _whole_table_errors(st, "b") and st.count_errors("b") == 12
    assert spills == []  # already in time order: yielded as read


def test_interleaved_errors_come_out_in_time_order_sorted_on_disk(spills, monkeypatch, tmp_path):
    monkeypatch.setattr(store_mod, "ERRORS_BATCH", 4)
    monkeypatch.setattr(store_mod, "ERRORS_SORT_RUN", 5)
    s = timedelta(seconds=1)
    # two runs committing at once: their commits land out of created_at order; equal times
    # in different commits keep the table's order; a row without a time goes last
    commits = [("a", T0 + 2 * s, 6), ("b", T0, 4), ("a", T0 + 3 * s, 5), ("b", T0 + 2 * s, 7), ("a", None, 1), ("b", T0 + s, 3)]
    st = _errors_store(tmp_path / "s", commits)
    assert st.errors() == _whole_table_errors(st) and len(st.errors()) == 26
    assert [r["id"] for r in st.iter_errors()] == [r["id"] for r in _whole_table_errors(st)]
    assert st.errors("a") == _whole_table_errors(st, "a") and st.count_errors() == 26
    assert spills  # more rows than ERRORS_SORT_RUN: sorted runs went to disk


def test_a_store_without_errors_lists_none(tmp_path):
    (tmp_path / "s").mkdir()
    st = Store(tmp_path / "s")
    assert st.errors() == [] and list(st.iter_errors("x")) == [] and st.count_errors() == 0


def test_cli_streams_a_long_errors_listing_and_caches_only_short_ones(monkeypatch, capsys, tmp_path):
    st = _errors_store(tmp_path / "s", [("a", T0 + timedelta(seconds=1), 6), ("b", T0, 3)])
    expected = json.dumps(_whole_table_errors(st), indent=2, default=str) + "\n"  # what --json printed before
    monkeypatch.setattr(cli, "ERRORS_CACHED", 3)
    monkeypatch.setattr(cli, "_TABLE_ROWS", 4)
    for _ in range(2):  # computed, then answered by the cache's marker
        capsys.readouterr()
        assert cli.main(["errors", "-s", str(st.path), "--json"]) == 0
        assert capsys.readouterr().out == expected
    entries = json.loads(cache_file(Path(st.path)).read_text())["entries"]
    assert entries["errors:None"] == {"streamed": 9}  # the rows themselves are not in the cache
    assert cli.main(["errors", "-s", str(st.path)]) == 0
    out = capsys.readouterr().out
    assert all(f"/e/{c}/{k}.jpg" in out for c, n in ((0, 6), (1, 3)) for k in range(n))  # 3 tables of ≤ 4 rows
    # a short listing is cached as before
    assert cli.main(["errors", "-s", str(st.path), "--run", "b", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(_whole_table_errors(st, "b"), default=str))
    assert len(json.loads(cache_file(Path(st.path)).read_text())["entries"]["errors:b"]) == 3
    capsys.readouterr()
    assert cli.main(["errors", "-s", str(st.path), "--run", "nope", "--json"]) == 0
    assert capsys.readouterr().out == "[]\n"


# -- clip aggregation ---------------------------------------------------------------------


class _MeanAgg(Aggregator):
    """Mean over frames of cls and of each patch position (an aggregator as a plugin writes one)."""

    name = "mean"

    def params(self) -> dict[str, Any]:
        return {}

    def cls_dim(self, dim: int) -> int:
        return dim

    def aggregate(self, cls: np.ndarray) -> np.ndarray:
        return cls.mean(0)

    def patch_dim(self, dim: int) -> int:
        return dim

    def aggregate_patches(self, patches: np.ndarray) -> np.ndarray:
        return patches.mean(0)


def _frames_store(path: Path, frames: dict[str, int]) -> tuple[Store, ModelCard]:
    """A dense table of frame rows: ``frames[video]`` frames per video, committed in shuffled order."""
    h = hashlib.sha256(b"frames").hexdigest()
    card = ModelCard(
        model_hash=h, weights_sha256="0" * 64, backbone="toy", table=table_name_for("toy", h), plugin="t", plugin_version="0",
        weights_source="none", architecture="none", dim=6, dense=True, preprocessing={}, output_spec={}, decode_policy={},
        library_versions={}, created_at=T0,
    )
    st = Store(path)
    table = st.register_model(card)
    rows = [(v, t) for v, n in frames.items() for t in range(n)]
    random.Random(1).shuffle(rows)
    for lo in range(0, len(rows), 17):
        part = rows[lo : lo + 17]
        table.add(
            feature_batch(
                table.schema, ids=[content_id(v, t) for v, t in part], uris=[f"/v/{v}.mp4" for v, _ in part],
                sizes=[(8, 8)] * len(part), crop_boxes=np.zeros((len(part), 4)),
                cls=np.array([[(ord(v[-1]) * 31 + t * 7 + j) % 97 / 7 for j in range(6)] for v, t in part], np.float32),
                patches=[np.full((4, 6), t % 5, np.float16) + (ord(v[-1]) % 3) for v, t in part], grids=[(2, 2)] * len(part),
                run_id="r", video_ids=[v for v, _ in part], timestamps=[t * 0.5 for _, t in part], frame_indices=[t for _, t in part],
            )
        )
    return st, card


def content_id(v: str, t: int) -> str:
    return hashlib.sha256(f"{v}|{t}".encode()).hexdigest()


def test_clip_aggregation_reads_a_bounded_group_of_videos_at_a_time(monkeypatch, tmp_path):
    frames = {f"video{i}": n for i, n in enumerate([5, 30, 2, 9, 1, 12, 7])}
    seen: list[list[str]] = []
    real = clips._frames

    def recording(table: Any, video_ids: Any, with_patches: bool) -> Any:
        seen.append(list(video_ids))
        return real(table, video_ids, with_patches)

    results = {}
    for limit in (10**6, 10):  # everything in one read; then groups of at most 10 frames
        st, card = _frames_store(tmp_path / f"s{limit}", frames)
        monkeypatch.setattr(clips, "FRAMES_PER_READ", limit)
        monkeypatch.setattr(clips, "_frames", recording)
        seen.clear()
        res = clips.aggregate_videos(st, card, _MeanAgg(), window=2.0, stride=1.0)
        table = st.db.open_table(res.table).to_arrow().sort_by("id")
        results[limit] = (res.videos, res.written, res.clips, table.drop_columns(["created_at"]).to_pylist())
        groups = list(seen)
        if limit == 10:
            assert len(groups) > 1 and sorted(v for g in groups for v in g) == sorted(frames)
            for g in groups:  # a group holds ≤ 10 frames, or one longer video alone
                assert sum(frames[v] for v in g) <= 10 or len(g) == 1
        else:
            assert len(groups) == 1
    assert results[10] == results[10**6] and results[10][0] == len(frames)
    # the frames handed to the aggregator are each video's, in time order
    got = {r["video_id"]: r for r in results[10][3] if r["start_s"] == 0.0}
    for v, n in frames.items():
        assert got[v]["frame_ids"] == [content_id(v, t) for t in range(min(n, 4))]


def test_clip_aggregation_of_given_videos_reads_only_them(monkeypatch, tmp_path):
    st, card = _frames_store(tmp_path / "s", {"a": 4, "b": 6, "c": 3})
    monkeypatch.setattr(clips, "FRAMES_PER_READ", 5)
    res = clips.aggregate_videos(st, card, _MeanAgg(), video_ids=["c", "a", "c", "missing"])
    rows = st.db.open_table(res.table).to_arrow().to_pylist()
    assert res.videos == 2 and sorted(r["video_id"] for r in rows) == ["a", "c"]
    by = {r["video_id"]: r for r in rows}
    assert by["a"]["n_frames"] == 4 and by["c"]["frame_ids"] == [content_id("c", t) for t in range(3)]


# -- verify's sample ----------------------------------------------------------------------


def test_verify_samples_the_rows_a_dataset_would_without_holding_the_ids(monkeypatch, tmp_path):
    from featurestore import verify

    table, _ = _feature_table(tmp_path / "s", 300, dense=False)
    table.delete("width < 20")  # gaps in the row ids
    rows = table.count_rows()
    # FeatureDataset (which verify sampled from before) orders the rows by row id
    scan = table.search().select(["id"]).with_row_id(True).limit(None).to_arrow()
    order = np.argsort(scan.column("_rowid").to_numpy())
    every, ids = scan.column("_rowid").to_numpy()[order], np.array(scan.column("id").to_pylist())[order]
    monkeypatch.setattr(verify, "_SCAN", 7)  # batches of 7 row ids
    for seed, sample in ((0, 32), (1, 5), (2, 1000)):
        pick = np.sort(np.random.default_rng(seed).choice(rows, min(sample, rows), replace=False))  # as verify draws them
        assert verify._sample_rowids(table, rows, sample, seed).tolist() == every[pick].tolist()
    pick = np.sort(np.random.default_rng(3).choice(rows, 5, replace=False))
    items = verify._sampled_rows(table, rows, 5, 3, dense=False)
    assert [i["id"] for i in items] == ids[pick].tolist()
    by_id = {r["id"]: r for r in table.to_arrow().to_pylist()}
    for i in items:
        np.testing.assert_array_equal(i["cls"], np.asarray(by_id[i["id"]]["cls"], np.float32))
        assert i["uri"] == by_id[i["id"]]["uri"] and i["video_id"] is None
    assert verify._sample_rowids(table, 0, 5, 0).tolist() == []


@pytest.mark.parametrize("rows", [[], [{"a": 1}], [{"a": T0, "b": [1, 2], "c": {"d": "x\ny"}}, {"a": None}]])
def test_streamed_json_is_what_the_whole_list_printed(rows, capsys):
    """``featurestore errors --json`` and ``classify --json`` print a row at a time: the text is
    the one ``_print_json(list(rows))`` prints."""
    cli._print_json(rows)
    whole = capsys.readouterr().out
    cli._print_json_rows(iter(rows))
    assert capsys.readouterr().out == whole
