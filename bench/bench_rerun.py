"""Benchmark: re-running ``featurestore extract`` over files that are all stored already.

N image files (``--files``, default 100,000; distinct random JPEGs of ``--px`` pixels a side,
1,000 a directory, dated an hour back like files that were not just written) are stored:
one file is extracted with a tiny random DINOv2 (built from a config, nothing downloaded),
which registers the model; every other file gets its row (real content id, synthetic
vector) through the shipped writer. A first re-run finds nothing in the stat cache: it
reads and hashes every file and fills the cache. Then the same command runs again —
every file stored, nothing to compute — in two ways:

- **stat cache** (the default): files whose path, size, mtime and inode the store's stat
  cache knows, and whose content the table holds, are skipped without being read;
- **rehash** (``--rehash``, what every re-run did before the cache): every file is read and
  SHA-256 hashed, then the table is asked which ids it holds.

Each is timed as the user runs it (the ``featurestore`` CLI in a subprocess: wall time
including start-up, and the run's own ``seconds`` from its summary), with the page cache
warm and — where this process may drop it (``/proc/sys/vm/drop_caches``, root) — cold, as
after a reboot or on files larger than RAM. Then the two alternate in one process
(``FeatureStore.extract``, model loaded once), ``--repeat`` times each: the fairest ratio on
a shared machine.

Usage:
    python bench/bench_rerun.py --dir /tmp/fs_bench_rerun --files 100000 --out bench/out/rerun.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

T0 = time.perf_counter()


def log(msg: str) -> None:
    sys.stderr.write(f"[{time.perf_counter() - T0:7.1f}s load {os.getloadavg()[0]:4.2f}] {msg}\n")


def write_files(root: Path, n: int, px: int) -> int:
    """``n`` distinct random JPEGs, 1,000 a directory; returns their total bytes."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    total = 0
    for i in range(n):
        d = root / f"{i // 1000:04d}"
        if i % 1000 == 0:
            d.mkdir(parents=True, exist_ok=True)
        p = d / f"{i:07d}.jpg"
        Image.fromarray(rng.integers(0, 256, (px, px, 3), dtype=np.uint8)).save(p, quality=90)
        total += p.stat().st_size
        if i and i % 20000 == 0:
            log(f"wrote {i} files")
    old = time.time_ns() - 3600 * 10**9
    for d in root.iterdir():
        for p in d.iterdir():
            os.utime(p, ns=(old, old))
    return total


def prefill(store: Path, files: Path) -> None:
    """Store a row for every file (its real content id, a synthetic vector) through the
    shipped write path, as a first extraction would have: running the model over 100k files
    on two shared cores would take most of an hour and measure nothing this bench is about."""
    import hashlib

    import numpy as np

    from featurestore.store import Store, feature_batch
    from featurestore.writer import TableWriter

    st = Store(str(store))
    card = st.cards()[0]
    table = st.db.open_table(card.table)
    paths = sorted(str(p.resolve()) for d in sorted(files.iterdir()) for p in d.iterdir())
    with TableWriter(st.db.open_table(card.table)) as w:
        for i in range(0, len(paths), 4096):
            chunk = paths[i : i + 4096]
            ids = [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in chunk]
            w.put(feature_batch(
                table.schema, ids=ids, uris=chunk, sizes=[(1, 1)] * len(chunk), crop_boxes=np.zeros((len(chunk), 4), np.float32),
                cls=np.zeros((len(chunk), card.dim), np.float32), patches=None, grids=None, run_id="prefill",
            ))
    log(f"stored {w.inserted} rows")


def drop_page_cache() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def run_cli(args: list[str]) -> dict[str, Any]:
    """One ``featurestore extract`` run: its summary, wall time and disk reads."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "featurestore", "extract", *args, "--json"], capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"extract failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout)
    return {
        "wall_s": wall,
        "run_s": summary["seconds"],
        "written": summary["written"],
        "skipped_existing": summary["skipped_existing"],
        "errors": summary["errors"],
        "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "load": os.getloadavg()[0],
    }


_IN_PROCESS = """
import json, os, sys
from featurestore import FeatureStore
if __name__ == "__main__":
    store, files, model, workers, repeat = sys.argv[1:]
    fs, out = FeatureStore(store), []
    for _ in range(int(repeat)):
        for rehash in (False, True):
            load = os.getloadavg()[0]
            s = fs.extract([files], backbone="hf:" + model, workers=int(workers), tag_run=False, rehash=rehash)
            assert s.written == 0, s
            out.append({"mode": "rehash" if rehash else "stat cache", "run_s": s.seconds, "skipped_existing": s.skipped_existing, "load": load})
    print(json.dumps(out))
"""


def in_process(store: Path, files: Path, model: Path, workers: int, repeat: int) -> list[dict[str, Any]]:
    """Cache and rehash re-runs alternating in one process (the model loaded once)."""
    script = store.parent / "in_process.py"
    script.write_text(_IN_PROCESS)
    proc = subprocess.run([sys.executable, str(script), str(store), str(files), str(model), str(workers), str(repeat)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    log(f"in process: {res}")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--px", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("bench/out/rerun.json"))
    ap.add_argument("--reuse", action="store_true", help="keep --dir's files and store from an earlier run; only the in-process pass runs")
    a = ap.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "featurestore-transformers"))
    from featurestore_transformers.testing import make_tiny_model

    files, store = a.dir / "files", a.dir / "store"
    if a.reuse:
        out = {"files": a.files, "in_process": in_process(store, files, a.dir / "model", a.workers, a.repeat)}
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(out, indent=2))
        print(json.dumps(out, indent=2))
        return
    shutil.rmtree(a.dir, ignore_errors=True)
    model = make_tiny_model(a.dir / "model", "dinov2")
    log(f"writing {a.files} files")
    nbytes = write_files(files, a.files, a.px)
    common = [str(files), "--store", str(store), "--backbone", f"hf:{model}", "--workers", str(a.workers), "--no-tag"]
    log("registering the model (one file), then storing every file's row")
    one = next(next(files.iterdir()).iterdir())
    run_cli([str(one), *common[1:]])
    prefill(store, files)
    log("first re-run: nothing cached yet (reads and hashes every file, fills the cache)")
    first = run_cli(common)
    log(f"first re-run: {first}")
    assert first["written"] == 0 and first["skipped_existing"] == a.files, first
    results: dict[str, list[dict[str, Any]]] = {}
    can_drop = drop_page_cache()
    for cold in ([False, True] if can_drop else [False]):
        for mode, extra in (("stat cache", []), ("rehash", ["--rehash"])):
            key = f"{mode}, {'cold' if cold else 'warm'} page cache"
            for _ in range(a.repeat):
                if cold:
                    drop_page_cache()
                else:
                    run_cli(common + extra)  # warms the page cache (and the catalog cache) for this mode
                r = run_cli(common + extra)
                assert r["written"] == 0 and r["skipped_existing"] == a.files, r
                results.setdefault(key, []).append(r)
                log(f"{key}: {r}")
    results_api = in_process(store, files, model, a.workers, a.repeat)
    out = {
        "in_process": results_api,
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "files": a.files,
        "file_bytes": nbytes,
        "px": a.px,
        "workers": a.workers,
        "first_run": first,
        "reruns": results,
        "cold_measured": can_drop,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2))
    table = {k: {"wall_s": min(r["wall_s"] for r in v), "run_s": min(r["run_s"] for r in v)} for k, v in results.items()}
    print(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
