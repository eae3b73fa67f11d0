"""Many writers, one table: no duplicate id, nothing missing, one catalog row.

Real processes (spawned, so each has its own LanceDB runtime) write overlapping ids into
one store at the same time, with the table existing or not; then real ``featurestore
extract`` runs over overlapping image sets do the same end to end.
"""

import json
import multiprocessing
import subprocess
import sys
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import lancedb
import numpy as np
import pytest

from featurestore.config import ModelCard
from featurestore.store import Store, feature_batch
from featurestore.testing import write_images

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
