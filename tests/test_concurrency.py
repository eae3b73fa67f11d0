"""Many writers, one table: no duplicate id, nothing missing, one catalog row.

Real processes (spawned, so each has its own LanceDB runtime) write overlapping ids into
one store at the same time, with the table existing or not; then real ``featurestore
extract`` runs over overlapping image sets do the same end to end. The derived writers
follow: ``aggregate`` (clip tables and their catalog), ``extract --aggregate`` beside
``aggregate``, ``cluster``, and ``adapt apply`` beside ``extract --adapter``.
"""

import json
import multiprocessing
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import lancedb
import numpy as np
import pyarrow.compute as pc
import pytest

from featurestore.config import ModelCard
from featurestore.store import Store, feature_batch
from featurestore.testing import write_images, write_video

EXE = [sys.executable, "-m", "featurestore.cli"]
N_PROC = 4


def _card() -> ModelCard:
    return ModelCard(
        model_hash="ab" * 32, weights_sha256="cd" * 32, backbone="race", table="race-abababababab",
        plugin="test", plugin_version="0", weights_source="none", architecture="none", dim=4, dense=False,
        preprocessing={}, output_spec={}, decode_policy={}, library_versions={}, created_at=datetime.now(timezone.utc),
    )


def _writer(store_path: str, phases: list[list[str]], group: int, barrier, out) -> None:
    """One process: per phase, wait for the others, register the model (maybe creating
    every table) and commit its ids in groups; report how many rows it inserted."""
    try:
        for phase, ids in enumerate(phases):
            barrier.wait(120)
            store = Store(store_path)
            table = store.register_model(_card())
            written = 0
            for i in range(0, len(ids), group):
                chunk = ids[i : i + group]
                batch = feature_batch(
                    table.schema, ids=chunk, uris=chunk, sizes=[(1, 1)] * len(chunk), crop_boxes=np.zeros((len(chunk), 4)),
                    cls=np.ones((len(chunk), 4), np.float32), patches=None, grids=None, run_id=str(i),
                )
                written += Store.write_features(table, batch)
            out.put((phase, written))
    except BaseException as exc:  # the parent asserts on what comes back
        out.put((-1, repr(exc)))


def _ids(lo: int, hi: int) -> list[str]:
    return [f"{i:064x}" for i in range(lo, hi)]


def _rows(store_path: Path, table: str) -> list[str]:
    return lancedb.connect(str(store_path)).open_table(table).to_arrow().column("id").to_pylist()


@pytest.mark.parametrize("round_", range(3))
def test_concurrent_writers_never_duplicate(tmp_path, round_):
    ctx = multiprocessing.get_context("spawn")
    store_path = tmp_path / "s"
    # phase 0: the store is empty (tables and catalog are created by racing processes);
    # phase 1: the table exists. Overlapping ranges in different orders and group sizes:
    # every id is wanted by 2-3 writers at once.
    phases = [[_ids(p * 1000 + 30 * k, p * 1000 + 30 * k + 90) for k in range(N_PROC)] for p in range(2)]
    per_proc = [[phases[p][k] if k % 2 else phases[p][k][::-1] for p in range(2)] for k in range(N_PROC)]
    barrier, out = ctx.Barrier(N_PROC), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(str(store_path), per_proc[k], 5 + 3 * k, barrier, out)) for k in range(N_PROC)]
    for p in procs:
        p.start()
    results = [out.get(timeout=600) for _ in range(2 * N_PROC)]
    for p in procs:
        p.join(60)
    assert all(phase >= 0 for phase, _ in results), results
    ids = _rows(store_path, _card().table)
    assert [i for i, n in Counter(ids).items() if n > 1] == []
    wanted = [set().union(*map(set, phases[p])) for p in range(2)]
    assert set(ids) == wanted[0] | wanted[1]
    # each row was counted by exactly the writer that inserted it
    for p in range(2):
        assert sum(w for phase, w in results if phase == p) == len(wanted[p] - (wanted[0] if p else set()))
    assert len(Store(store_path).cards()) == 1  # one `models` row, although 4 processes registered at once


@pytest.mark.slow
def test_concurrent_extract_runs(tiny_dinov2, tmp_path):
    """Four ``featurestore extract`` processes over overlapping image sets, twice."""
    images = write_images(tmp_path / "all", 32, size=(32, 32))
    store_path = tmp_path / "store"
    expected: set[str] = set()
    before = 0
    for lo in (0, 8):  # the table does not exist yet, then it does
        lists = []
        for k in range(N_PROC):
            chosen = images[lo + 4 * k : lo + 4 * k + 8]
            lst = tmp_path / f"list{lo}-{k}.txt"
            lst.write_text("\n".join(map(str, chosen)) + "\n")
            lists.append(lst)
            expected |= set(map(str, chosen))
        procs = [
            subprocess.Popen(
                [*EXE, "extract", f"@{lst}", "--backbone", f"hf:{tiny_dinov2}", "--store", str(store_path),
                 "--workers", "0", "--batch-size", "2", "--commit-every-seconds", "0", "--json", "--no-tag"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            for lst in lists
        ]
        outs = [p.communicate(timeout=600) for p in procs]
        for p, (out, err) in zip(procs, outs):
            assert p.returncode == 0, err
        summaries = [json.loads(out) for out, _ in outs]
        rows = _rows(store_path, summaries[0]["table"])
        assert [i for i, n in Counter(rows).items() if n > 1] == []
        assert len(rows) == len(expected)
        # every input is written by one run and found stored by the others
        for s in summaries:
            assert s["written"] + s["skipped_existing"] == s["inputs"] == 8
        assert sum(s["written"] for s in summaries) == len(rows) - before
        before = len(rows)
    assert len(Store(store_path).cards()) == 1


def _apply(store_path: str, adapter: str, barrier, out) -> None:
    try:
        from featurestore import FeatureStore

        barrier.wait(120)
        out.put(FeatureStore(store_path).apply_adapter(adapter).written)
    except BaseException as exc:  # the parent asserts on what comes back
        out.put(repr(exc))


def test_concurrent_adapter_applies_write_each_row_once(tmp_path):
    from featurestore import FeatureStore

    store_path = tmp_path / "s"
    table = Store(store_path).register_model(_card())
    rng = np.random.default_rng(0)
    ids = _ids(0, 600)
    for i in range(0, 600, 200):
        chunk = ids[i : i + 200]
        Store.write_features(table, feature_batch(
            table.schema, ids=chunk, uris=chunk, sizes=[(1, 1)] * 200, crop_boxes=np.zeros((200, 4)),
            cls=rng.standard_normal((200, 4)).astype(np.float32), patches=None, grids=None, run_id="r",
        ))
    card = FeatureStore(store_path).fit_adapter(_card().table, "project:dim=2")
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=_apply, args=(str(store_path), card.adapter_hash, barrier, out)) for _ in range(3)]
    for p in procs:
        p.start()
    written = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(60)
    assert all(isinstance(w, int) for w in written), written
    rows = _rows(store_path, card.table)
    assert [i for i, n in Counter(rows).items() if n > 1] == [] and set(rows) == set(ids)
    assert sum(written) == 600


# -- derived tables: clips, clusters, adapted rows ----------------------------------------


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([*EXE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(procs: list[subprocess.Popen]) -> list:
    """The JSON each process printed; every one must have exited 0."""
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err
    return [json.loads(out) for out, _ in outs]


def _no_duplicates(store_path: Path, table: str) -> list[dict]:
    rows = lancedb.connect(str(store_path)).open_table(table).to_arrow().to_pylist()
    assert [i for i, n in Counter(r["id"] for r in rows).items() if n > 1] == []
    return rows


def _frames_by_video(store_path: Path, table: str) -> dict[str, list[str]]:
    """Frame ids of each video, in time order."""
    t = lancedb.connect(str(store_path)).open_table(table).to_arrow().filter(pc.is_valid(pc.field("video_id")))
    out: dict[str, list[str]] = {}
    for r in t.sort_by("timestamp_s").select(["id", "video_id"]).to_pylist():
        out.setdefault(r["video_id"], []).append(r["id"])
    return out


def _catalog_rows(store_path: Path) -> Counter:
    return Counter(lancedb.connect(str(store_path)).open_table("clips").to_arrow().column("table").to_pylist())


def _videos(directory: Path, n: int, frames: int = 20) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    return [write_video(directory / f"v{i}.mp4", n_frames=frames + 3 * i, fps=10) for i in range(n)]


@pytest.mark.slow
def test_concurrent_aggregate_runs_write_each_clip_once(tiny_dinov2, tmp_path):
    """Three ``featurestore aggregate`` processes over the same videos: the clip table does
    not exist yet (they create it and its catalog row at once), then it does (windows)."""
    from featurestore import FeatureStore

    _videos(tmp_path / "v", 3)
    store_path = tmp_path / "s"
    s = FeatureStore(store_path).extract([tmp_path / "v"], backbone=f"hf:{tiny_dinov2}", sample="fps:4", workers=0)
    frames = _frames_by_video(store_path, s.table)
    assert len(frames) == 3
    before = 0
    for window in ([], ["--window", "1"]):  # the clip table is absent, then present
        procs = [_start("aggregate", "-s", str(store_path), "-m", s.table, "-a", "mean", *window, "--json") for _ in range(3)]
        results = [r for rs in _finish(procs) for r in rs]
        [table] = {r["table"] for r in results}
        rows = _no_duplicates(store_path, table)
        assert sum(r["written"] for r in results) == len(rows) - before  # each clip written by one run
        assert all(r["clips"] == results[0]["clips"] for r in results)
        mine = [r for r in rows if (r["window_s"] is None) == (not window)]
        assert len(mine) == len(rows) - before == results[0]["clips"]
        before = len(rows)
    for vid, ids in frames.items():
        [whole] = [r for r in rows if r["video_id"] == vid and r["window_s"] is None]
        assert whole["frame_ids"] == ids
    assert _catalog_rows(store_path) == Counter({table: 1})


def _aggregate_until(store_path: str, model: str, stop, out) -> None:
    """Aggregate the frames of every video of ``model`` again and again until ``stop``
    (before the extraction has registered the model, there is nothing to aggregate)."""
    try:
        from featurestore import FeatureStore
        from featurestore.errors import StoreNotFoundError, UnknownModelError

        runs = []
        out.put("started")
        while not stop.is_set():
            try:
                r = FeatureStore(store_path).aggregate(model, "mean")
            except (StoreNotFoundError, UnknownModelError):
                time.sleep(0.05)
                continue
            runs.append((r.written, r.clips))
            time.sleep(0.1)  # leave the extraction most of the CPU
        out.put(runs)
    except BaseException as exc:  # the parent asserts on what comes back
        out.put(repr(exc))


@pytest.mark.slow
def test_extract_with_aggregate_beside_aggregate_runs(tiny_dinov2, tmp_path):
    """``extract --aggregate`` commits frames (in small groups) while another process
    aggregates the same store again and again: whichever reads part of a video, each video
    ends with one whole-video clip made from all its frames, and one catalog row."""
    videos = _videos(tmp_path / "v", 3, frames=30)
    store_path = tmp_path / "s"
    ctx = multiprocessing.get_context("spawn")
    stop, out = ctx.Event(), ctx.Queue()
    looper = ctx.Process(target=_aggregate_until, args=(str(store_path), "hf:" + str(tiny_dinov2), stop, out))
    looper.start()
    assert out.get(timeout=300) == "started"
    extract = _start(
        "extract", *map(str, videos), "--backbone", f"hf:{tiny_dinov2}", "--store", str(store_path), "--sample", "fps:5",
        "--aggregate", "mean", "--workers", "0", "--batch-size", "2", "--commit-every-seconds", "0", "--json", "--no-tag",
    )
    try:
        [summary] = _finish([extract])
    finally:
        stop.set()
        runs = out.get(timeout=300)
        looper.join(60)
    assert isinstance(runs, list) and runs, runs
    assert summary["errors"] == 0 and len(summary["clip_tables"]) == 1
    table = summary["clip_tables"][0]
    rows = _no_duplicates(store_path, table)
    frames = _frames_by_video(store_path, summary["table"])
    assert len(frames) == 3
    assert sorted(r["video_id"] for r in rows) == sorted(frames)  # one clip per video: none made of part of one is left
    for r in rows:
        assert r["frame_ids"] == frames[r["video_id"]] and r["n_frames"] == len(frames[r["video_id"]])
    assert _catalog_rows(store_path) == Counter({table: 1})


def _planted_store(store_path: Path, n: int = 300, k: int = 3) -> str:
    table = Store(store_path).register_model(_card())
    rng = np.random.default_rng(5)
    x = rng.standard_normal((k, 4))[rng.integers(0, k, n)] + 0.1 * rng.standard_normal((n, 4))
    ids = _ids(0, n)
    Store.write_features(table, feature_batch(
        table.schema, ids=ids, uris=ids, sizes=[(1, 1)] * n, crop_boxes=np.zeros((n, 4)), cls=x.astype(np.float32),
        patches=None, grids=None, run_id="r",
    ))
    return table.name


def _cluster_times(store_path: str, model: str, times: int, barrier, out) -> None:
    """Cluster once (the first runs create the columns and the centroid table at once), wait
    for the others, then cluster ``times`` more times; report whether each run wrote."""
    try:
        from featurestore.cluster import cluster

        written = [cluster(store_path, model, 3, seed=0).written]
        barrier.wait(120)
        written += [cluster(store_path, model, 3, seed=0).written for _ in range(times)]
        out.put(written)
    except BaseException as exc:  # the parent asserts on what comes back
        out.put(repr(exc))


@pytest.mark.slow
def test_concurrent_cluster_runs_leave_one_consistent_fit(tmp_path):
    """Three processes run the same clustering (k=3, seed 0) three times each, at once: all
    succeed (the centroid table is never overwritten by two at once: LanceDB answers that
    with a commit conflict or a panic), and the columns and the centroid table hold one fit,
    the last run's: each row's cluster is its nearest stored centroid."""
    from featurestore.cluster import kmeans, load_centroids

    store_path = tmp_path / "s"
    name = _planted_store(store_path)
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=_cluster_times, args=(str(store_path), name, 2, barrier, out)) for _ in range(3)]
    for p in procs:
        p.start()
    written = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(60)
    # they read the same rows, so no fit is stale: each run writes (the same fit)
    assert written == [[True] * 3] * 3, written
    rows = _no_duplicates(store_path, name)
    assert len(rows) == 300 and all(r["cluster_k3"] is not None for r in rows)
    cls = np.array([r["cls"] for r in rows], np.float32)
    assert [r["cluster_k3"] for r in rows] == kmeans(cls, 3, seed=0).labels.tolist()
    cent = load_centroids(store_path, name, 3)
    unit = cls / np.linalg.norm(cls, axis=1, keepdims=True)
    assert cent.shape == (3, 4) and (unit @ cent.T).argmax(1).tolist() == [r["cluster_k3"] for r in rows]
    # the centroids were written with the last columns: they name the table's latest version
    db = lancedb.connect(str(store_path))
    stored = db.open_table(f"{name}-centroids-k3").to_arrow()
    assert stored.num_rows == 3 and set(stored.column("table_version").to_pylist()) == {db.open_table(name).version}


@pytest.mark.slow
def test_adapt_apply_beside_extract_with_the_same_adapter(tiny_dinov2, tmp_path):
    """``extract --adapter A`` (adapting each batch as it commits) and ``adapt apply A`` at
    once: every base row adapted exactly once, with the adapter's values."""
    from featurestore import FeatureStore
    from featurestore.adapters import load_fitted

    images = write_images(tmp_path / "img", 24, size=(32, 32))
    fs = FeatureStore(tmp_path / "s")
    first = fs.extract(images[:8], backbone=f"hf:{tiny_dinov2}", workers=0)
    card = fs.fit_adapter(first.table, "project:dim=3")
    lst = tmp_path / "all.txt"
    lst.write_text("\n".join(map(str, images)) + "\n")
    procs = [
        _start("extract", f"@{lst}", "--backbone", f"hf:{tiny_dinov2}", "--store", str(fs.store.path), "--adapter",
               card.adapter_hash[:12], "--workers", "0", "--batch-size", "2", "--commit-every-seconds", "0", "--json", "--no-tag"),
        _start("adapt", "apply", "-s", str(fs.store.path), "-a", card.adapter_hash[:12], "--json"),
    ]
    summary, applied = _finish(procs)
    assert summary["written"] == 16 and summary["errors"] == 0
    base = {r["id"]: r["cls"] for r in _no_duplicates(tmp_path / "s", first.table)}
    got = {r["id"]: r["cls"] for r in _no_duplicates(tmp_path / "s", card.table)}
    assert set(got) == set(base) and len(got) == 24
    adapter = load_fitted(fs.store, card)
    ids = sorted(base)
    np.testing.assert_array_equal(np.array([got[i] for i in ids], np.float32), adapter.transform(np.array([base[i] for i in ids], np.float32)))
    # every adapted row was counted by the one process that wrote it
    assert summary["adapted_tables"][card.table] + applied["written"] == 24
