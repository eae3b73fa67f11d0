"""Benchmark: the shipped write path into tables that already hold 0 … 10M rows.

For each size S (``--sizes``), a feature table is pre-filled with S synthetic rows — fast:
large ``add()`` batches, then one ``optimize`` (compacted, ``id`` index current), the state a
maintained table is in — and then, in a fresh process (so its peak RSS is the write path's),
rows go through exactly what ``featurestore extract`` uses:

- **sustained**: ``--rows`` rows handed to a :class:`featurestore.writer.TableWriter` (the
  background writer, default grouping: 2 s or 50,000 rows) in forward-batch-sized pieces
  (``--batch``, 32) built by ``feature_batch``, each with ``absent_at`` = the version the
  workers would have checked at; rows/s from the first ``put`` to the end of ``close``
  (every row committed), the number of commits and of compactions the writer ran;
- **lookup**: the same with ``absent_at=None`` (every commit looks its ids up by index, as
  when another process committed in between) — ``--lookup-rows`` rows;
- **per commit**: ``Committer.commit`` of one forward batch (32 rows) with the indexed lookup
  (what the old one-merge_insert-per-batch path cost), and of a 2 s group without it;
- **worker check**: ``StoredIds.check`` of 32 ids (what each loader worker asks per chunk);
- **reads** after the run, before any manual compaction: a full ``cls`` scan and a random take
  of 1,000 rows; bytes on disk per row against the raw vector bytes, after the run and after
  ``featurestore compact`` (which drops old versions' files).

With pylance (``lance``) importable the write path takes its fast path (delta index segments,
compaction of small fragments only, pruning of replaced versions when the writers close);
``--no-pylance`` measures the LanceDB-only path in the same environment (``lance`` made
unimportable in every process of the benchmark).

Ids are SHA-256 hex of a counter, like content ids. Vectors are random. The machine may be
shared: ``os.getloadavg()`` is recorded around every phase.

Usage:
    python bench/bench_scale.py --dir /tmp/fs_bench_scale --sizes 0,100000,1000000 --out bench/out/scale.json
    python bench/bench_scale.py --dir /tmp/fs_bench_scale --dense --sizes 0,20000 --rows 4000 --out bench/out/scale_dense.json
    python bench/bench_scale.py --dir /tmp/fs_bench_scale --sizes 0,1000000 --no-pylance --out bench/out/scale_nolance.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import resource
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

DIM, TOKENS = 384, 256
T0 = time.perf_counter()


class _NoPylance:
    """A finder that makes ``import lance`` fail, as when pylance is not installed."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "lance" or name.startswith("lance."):
            raise ModuleNotFoundError(f"No module named {name!r} (--no-pylance)")


def log(msg: str) -> None:
    sys.stderr.write(f"[{time.perf_counter() - T0:7.1f}s load {os.getloadavg()[0]:4.2f}] {msg}\n")


def ids(lo: int, hi: int) -> list[str]:
    return [hashlib.sha256(i.to_bytes(8, "little")).hexdigest() for i in range(lo, hi)]


def card(dense: bool) -> Any:
    from featurestore.config import ModelCard
    from featurestore.store import table_name_for

    h = hashlib.sha256(f"bench-scale-{dense}".encode()).hexdigest()
    return ModelCard(
        model_hash=h, weights_sha256="0" * 64, backbone="bench", table=table_name_for("bench", h), plugin="bench",
        plugin_version="0", weights_source="random", architecture="none", dim=DIM, dense=dense, preprocessing={},
        output_spec={}, decode_policy={}, library_versions={}, created_at=datetime.now(timezone.utc),
    )


def batch(schema: pa.Schema, lo: int, hi: int, dense: bool, rng: np.random.Generator, pool: dict | None = None) -> pa.Table:
    """Rows ``lo..hi`` as ``feature_batch`` builds them; ``pool`` reuses random vectors
    (so building a batch costs about what handing over a forward pass's output does)."""
    from featurestore.store import feature_batch

    n = hi - lo
    if pool is not None:
        if n not in pool:
            pool[n] = (
                rng.standard_normal((n, DIM), dtype=np.float32),
                list(rng.standard_normal((n, TOKENS, DIM), dtype=np.float32).astype(np.float16)) if dense else None,
            )
        cls, patches = pool[n]
    else:
        cls = rng.standard_normal((n, DIM), dtype=np.float32)
        patches = list(rng.standard_normal((n, TOKENS, DIM), dtype=np.float32).astype(np.float16)) if dense else None
    return feature_batch(
        schema, ids=ids(lo, hi), uris=[f"/data/{i}.jpg" for i in range(lo, hi)], sizes=[(640, 480)] * n,
        crop_boxes=np.tile(np.float32([0, 0, 640, 480]), (n, 1)), cls=cls, patches=patches,
        grids=[(16, 16)] * n if dense else None, run_id="bench",
    )


def cpu_s() -> float:
    """CPU seconds this process has used (every thread: the writer's, the maintenance's): less
    sensitive than wall time to what else runs on a shared machine."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def vm_kib(field: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process in KiB (ru_maxrss would carry the parent's peak over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def raw_bytes(rows: int, dense: bool) -> int:
    return rows * (DIM * 4 + (TOKENS * DIM * 2 if dense else 0))


# -- pre-fill (parent) -----------------------------------------------------------------


def prefill(root: Path, size: int, dense: bool) -> Path:
    """A store whose table holds ``size`` rows, compacted and indexed; reused when there."""
    from featurestore.commit import optimize
    from featurestore.store import Store

    path = root / f"{'dense' if dense else 'cls'}-{size}"
    done = path / "PREFILLED"
    if done.exists():
        return path
    shutil.rmtree(path, ignore_errors=True)
    store = Store(path)
    table = store.register_model(card(dense))
    rng = np.random.default_rng(size)
    step = 1_000 if dense else 50_000
    t = time.perf_counter()
    if size:
        # one streamed add: LanceDB cuts it into files of ~1M rows (no compaction needed), then
        # optimize builds the id index over them
        gen = (batch(table.schema, lo, min(size, lo + step), dense, rng).to_batches()[0] for lo in range(0, size, step))
        table.add(pa.RecordBatchReader.from_batches(table.schema, gen))
        optimize(table)
    log(f"pre-filled {path.name}: {size} rows in {time.perf_counter() - t:.0f} s")
    done.write_text(str(size))
    return path


# -- measurement (child process) ---------------------------------------------------------


def measure(path: Path, size: int, rows: int, lookup_rows: int, bsz: int, dense: bool) -> dict[str, Any]:
    from featurestore.commit import Committer, StoredIds
    from featurestore.store import Store
    from featurestore.writer import TableWriter

    store = Store(path)
    name = card(dense).table
    table = store.db.open_table(name)
    schema = table.schema
    rng = np.random.default_rng(12345)
    out: dict[str, Any] = {"size": size, "dense": dense, "load_before": os.getloadavg()}
    rss0 = vm_kib("VmRSS")
    pool: dict = {}

    # pieces are made as they are handed over, from pooled vectors: the producer stands in
    # for the forward pass and is timed on its own below
    def pieces(lo: int, n: int):
        for i in range(lo, lo + n, bsz):
            yield batch(schema, i, min(lo + n, i + bsz), dense, rng, pool)

    base = 10**9 + size  # ids the pre-fill never used
    t, cpu0 = time.perf_counter(), cpu_s()
    for _ in pieces(base, min(rows, 20_000)):
        pass
    produce_s = (time.perf_counter() - t) * rows / min(rows, 20_000)
    produce_cpu = (cpu_s() - cpu0) * rows / min(rows, 20_000)
    from featurestore.maintenance import pylance

    lance = pylance()
    out["pylance"] = getattr(lance, "__version__", None)
    ages = [time.time() - v["timestamp"].timestamp() for v in table.list_versions()]
    out["prefill_versions"] = len(ages)
    out["prefill_newest_age_s"] = min(ages)  # with pylance, versions replaced > 15 min ago are pruned on close
    w = TableWriter(store.db.open_table(name), label=name)
    v0 = int(table.version)
    t, cpu0 = time.perf_counter(), cpu_s()
    for p in pieces(base, rows):
        w.put(p, absent_at=v0)
    w.close()
    dt, cpu = time.perf_counter() - t, cpu_s() - cpu0
    c = w.committer
    out["sustained"] = {"rows": rows, "seconds": dt, "rows_per_s": rows / dt, "cpu_s": cpu, "producer_only_s": produce_s, "producer_cpu_s": produce_cpu, "commits": w.commits,
                        "maintenance_runs": c.optimizations, "compactions": c.compactions, "pruned_versions": c.pruned_versions,
                        "pruned_mib": c.pruned_bytes / 2**20, "inserted": w.inserted, "load": os.getloadavg()}
    out["sustained"]["peak_rss_mib"] = vm_kib("VmHWM") / 1024
    out["sustained"]["rss_mib"] = vm_kib("VmRSS") / 1024
    log(f"size {size}: sustained {rows / dt:,.0f} rows/s, {cpu:.0f} CPU s ({w.commits} commits, {c.optimizations} maintenance runs, "
        f"{c.compactions} compactions, {c.pruned_versions} versions pruned; producer alone {produce_s:.1f} s of {dt:.1f} s)")

    if lookup_rows:
        w = TableWriter(store.db.open_table(name), label=name)
        t, cpu0 = time.perf_counter(), cpu_s()
        for p in pieces(base + rows, lookup_rows):
            w.put(p)  # absent_at unknown: every commit looks its ids up by index
        w.close()
        dt, cpu = time.perf_counter() - t, cpu_s() - cpu0
        out["lookup_path"] = {"rows": lookup_rows, "seconds": dt, "rows_per_s": lookup_rows / dt, "cpu_s": cpu, "commits": w.commits, "load": os.getloadavg(),
                              "peak_rss_mib": vm_kib("VmHWM") / 1024}
        log(f"size {size}: with lookups {lookup_rows / dt:,.0f} rows/s")

    c = Committer(store.db.open_table(name))
    nxt = base + rows + lookup_rows
    small, big = [], []
    for _ in range(20):  # one forward batch per commit, ids looked up: the old write pattern
        p = next(pieces(nxt, bsz))
        nxt += bsz
        t = time.perf_counter()
        c.commit(p)
        small.append(time.perf_counter() - t)
    group = 400 if dense else 20_000
    for _ in range(3):  # a grouped commit whose ids the workers checked: a plain append
        p = pa.concat_tables(list(pieces(nxt, group)))
        nxt += group
        t = time.perf_counter()
        c.commit(p, absent_at=int(c.table.version))
        big.append(time.perf_counter() - t)
    out["commit_ms"] = {
        "batch_with_lookup": {"rows": bsz, "median": 1e3 * statistics.median(small), "max": 1e3 * max(small)},
        "group_append": {"rows": group, "median": 1e3 * statistics.median(big), "max": 1e3 * max(big)},
    }
    check = StoredIds(str(path), name)
    lat = []
    for k in range(20):
        probe = ids(k * bsz, k * bsz + bsz // 2) + ids(nxt + k * bsz, nxt + k * bsz + bsz // 2)  # half stored
        t = time.perf_counter()
        check.check(probe)
        lat.append(time.perf_counter() - t)
    out["worker_check_ms"] = {"ids": bsz, "median": 1e3 * statistics.median(lat), "max": 1e3 * max(lat)}
    out["commit_ms"]["peak_rss_mib"] = vm_kib("VmHWM") / 1024  # after the per-commit and check phases
    out["peak_rss_mib"] = vm_kib("VmHWM") / 1024  # high-water mark of this process (reset by exec)
    out["rss_start_mib"] = rss0 / 1024

    table.checkout_latest()
    n = table.count_rows()
    out["rows_after"] = n
    out["fragments_after"] = table.stats()["fragment_stats"]["num_fragments"]
    t = time.perf_counter()
    scanned = table.search().select(["cls"]).limit(None).to_arrow().num_rows
    out["scan_cls_s"] = time.perf_counter() - t
    assert scanned == n
    offsets = np.random.default_rng(0).choice(n, size=min(1000, n), replace=False).tolist()
    t = time.perf_counter()
    table.take_offsets(offsets).select(["cls"] + (["patches"] if dense else [])).to_arrow()
    out["take_1000_s"] = time.perf_counter() - t
    out["disk_bytes_per_row"] = du(path / f"{name}.lance") / n
    out["versions_after"] = len(table.list_versions())
    out["raw_bytes_per_row"] = raw_bytes(1, dense)
    out["load_after"] = os.getloadavg()
    return out


def compacted_bytes_per_row(path: Path, dense: bool) -> float:
    from featurestore.maintenance import compact
    from featurestore.store import Store

    name = card(dense).table
    compact(Store(path), name)
    table = Store(path).db.open_table(name)
    return du(path / f"{name}.lance") / table.count_rows()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, help="where the pre-filled stores live (reused; required)")
    ap.add_argument("--sizes", default="0,100000,1000000", help="rows stored before measuring, comma-separated")
    ap.add_argument("--rows", type=int, default=200_000, help="rows written through the writer per size")
    ap.add_argument("--lookup-rows", type=int, default=50_000, help="rows written with a lookup per commit (0: skip)")
    ap.add_argument("--batch", type=int, default=32, help="rows per put (a forward batch)")
    ap.add_argument("--dense", action="store_true", help="256x384 float16 patch tokens per row too")
    ap.add_argument("--in-place-from", type=int, default=5_000_000, help="measure tables this big in place, not on a copy")
    ap.add_argument("--no-pylance", action="store_true", help="make `import lance` fail: the LanceDB-only write path")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.no_pylance:
        sys.meta_path.insert(0, _NoPylance())
    if args.child:
        path, size = args.child.rsplit(":", 1)
        res = measure(Path(path), int(size), args.rows, args.lookup_rows, args.batch, args.dense)
        print(json.dumps(res))
        return
    if args.dir is None:
        ap.error("--dir is required")
    args.dir.mkdir(parents=True, exist_ok=True)
    results = []
    for size in [int(s) for s in args.sizes.split(",")]:
        path = prefill(args.dir, size, args.dense)
        if size >= args.in_place_from:
            work = path  # too big to copy: measured in place, pre-filled again next time
            (path / "PREFILLED").unlink()
        else:
            work = args.dir / f"run-{path.name}"  # measure on a copy: the pre-fill stays reusable
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(path, work)
        cmd = [sys.executable, __file__, "--child", f"{work}:{size}", "--rows", str(args.rows), "--lookup-rows",
               str(args.lookup_rows), "--batch", str(args.batch)] + (["--dense"] if args.dense else []) + (
                   ["--no-pylance"] if args.no_pylance else [])
        res = json.loads(subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout)
        res["disk_bytes_per_row_compacted"] = compacted_bytes_per_row(work, args.dense)
        shutil.rmtree(work)
        results.append(res)
        log(json.dumps(res))
    doc = {
        "when": datetime.now(timezone.utc).isoformat(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "args": {k: str(v) for k, v in vars(args).items()},
        "results": results,
    }
    text = json.dumps(doc, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
