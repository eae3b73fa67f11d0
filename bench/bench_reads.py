"""Benchmark: peak memory and time of the reads that go over a whole table.

A store is pre-filled (once, reused) with a synthetic feature table of ``--rows`` rows
(384-d float32 ``cls``, ids = SHA-256 hex of a counter) that are frames of ``--rows /
--frames-per-video`` videos (``video_id``, ``timestamp_s``), written as one streamed
``add`` of a RecordBatchReader and then ``optimize``d (``id`` / ``video_id`` indices
current), and with an ``errors`` table of ``--errors`` rows in 20 commits. A second store
holds the same error rows committed by two runs out of time order (the listing must sort
them). Each operation then runs in a fresh process, against the code in ``--code`` (a
directory put first on ``PYTHONPATH``: this worktree, or a checkout of the code before a
change), and reports its wall time and peak RSS (``VmHWM``, and ``ru_maxrss`` as
``getrusage`` gives it; the driver stays small, so the two agree):

- ``scan_floor``: a streamed scan of the digest's columns in batches of 4,096 rows that keeps
  nothing — what LanceDB's scanner itself holds (its read-ahead), the floor of any streamed read;
- ``manifest_digest``: :func:`featurestore.manifest.content_digest` of the feature table;
- ``models``: ``Store.models()`` (the ``featurestore models`` answer);
- ``errors_cli`` / ``errors_cli_interleaved``: ``featurestore errors --json`` (catalog cache
  off, output to /dev/null) on the two stores;
- ``errors_list``: ``Store.errors()`` (the API's list);
- ``clips_few``: ``aggregate_videos`` of 5 videos by id; ``clips_all``: of every video;
- ``verify_sample``: drawing verify's 32-row sample (before: a ``FeatureDataset`` of the
  table and ``__getitems__``; after: streamed row ids and one take).

Usage:
    python bench/bench_reads.py --dir /tmp/fs_bench_reads --rows 1000000 --code . --label after --out bench/out/reads_after.json
    python bench/bench_reads.py --dir /tmp/fs_bench_reads --rows 1000000 --code /tmp/fs_before --label before --out bench/out/reads_before.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

DIM = 384
OPS = ["scan_floor", "manifest_digest", "models", "errors_cli", "errors_cli_interleaved", "errors_list", "clips_few", "clips_all", "verify_sample"]
T0 = datetime(2024, 5, 1, tzinfo=timezone.utc)


def log(msg: str) -> None:
    sys.stderr.write(f"[load {os.getloadavg()[0]:4.2f}] {msg}\n")


def card() -> Any:
    from featurestore.config import ModelCard
    from featurestore.store import table_name_for

    h = hashlib.sha256(b"bench-reads").hexdigest()
    return ModelCard(
        model_hash=h, weights_sha256="0" * 64, backbone="bench", table=table_name_for("bench", h), plugin="bench",
        plugin_version="0", weights_source="random", architecture="none", dim=DIM, dense=False, preprocessing={},
        output_spec={}, decode_policy={}, library_versions={}, created_at=T0,
    )


def vm_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


# -- pre-fill (a child process, so the driver stays small) -----------------------------------


def error_rows(lo: int, hi: int, run: str, ts: datetime) -> Any:
    import pyarrow as pa

    from featurestore.store import ERRORS_SCHEMA

    n = hi - lo
    return pa.table(
        {
            "id": pa.array([hashlib.sha256(b"e" + i.to_bytes(8, "little")).hexdigest() for i in range(lo, hi)]),
            "uri": pa.array([f"/data/broken/{i:08d}.jpg" for i in range(lo, hi)]),
            "stage": pa.array(["decode"] * n),
            "error_type": pa.array(["UnidentifiedImageError"] * n),
            "message": pa.array([f"cannot identify image file '/data/broken/{i:08d}.jpg': the bytes are not an image" for i in range(lo, hi)]),
            "timestamp_s": pa.nulls(n, pa.float64()),
            "run_id": pa.array([run] * n),
            "model_hash": pa.array([card().model_hash] * n),
            "backbone": pa.array(["bench"] * n),
            "created_at": pa.array([ts] * n, pa.timestamp("us", tz="UTC")),
        },
        schema=ERRORS_SCHEMA,
    )


def prefill(root: Path, rows: int, per_video: int, errors: int) -> None:
    import numpy as np
    import pyarrow as pa

    from featurestore.commit import optimize
    from featurestore.store import ERRORS_SCHEMA, ERRORS_TABLE, Store, feature_batch

    path = root / f"store-{rows}"
    st = Store(path)
    table = st.register_model(card())
    rng = np.random.default_rng(0)
    step = 50_000
    t = time.perf_counter()

    def batches():
        for lo in range(0, rows, step):
            hi = min(rows, lo + step)
            idx = np.arange(lo, hi)
            yield feature_batch(
                table.schema, ids=[hashlib.sha256(int(i).to_bytes(8, "little")).hexdigest() for i in idx],
                uris=[f"/data/v{i // per_video:06d}.mp4" for i in idx], sizes=[(640, 480)] * (hi - lo),
                crop_boxes=np.tile(np.float32([0, 0, 640, 480]), (hi - lo, 1)), cls=rng.standard_normal((hi - lo, DIM), dtype=np.float32),
                patches=None, grids=None, run_id="bench", video_ids=[f"video{i // per_video:06d}" for i in idx],
                timestamps=[float(i % per_video) * 0.5 for i in idx], frame_indices=[int(i % per_video) for i in idx],
            ).to_batches()[0]

    table.add(pa.RecordBatchReader.from_batches(table.schema, batches()))
    optimize(table)  # the id and video_id indices cover every row, as in a maintained table
    log(f"feature table: {rows} rows in {time.perf_counter() - t:.0f} s")
    et = st._open_or_create(ERRORS_TABLE, ERRORS_SCHEMA)
    per = max(1, errors // 20)
    for c, lo in enumerate(range(0, errors, per)):
        et.add(error_rows(lo, min(errors, lo + per), "run-a", T0 + timedelta(seconds=c)))
    # the same rows committed by two runs at once: their commits land out of time order
    st2 = Store(root / f"errors-interleaved-{errors}")
    st2.create()
    et2 = st2._open_or_create(ERRORS_TABLE, ERRORS_SCHEMA)
    for c, lo in enumerate(range(0, errors, per)):
        late = c % 2 == 0
        et2.add(error_rows(lo, min(errors, lo + per), "run-a" if late else "run-b", T0 + timedelta(seconds=c + (5 if late else 0))))
    log(f"errors: {errors} rows, twice")
    (path / "PREFILLED").write_text(str(rows))


# -- one operation (a child process) ------------------------------------------------------------


def run_op(op: str, root: Path, rows: int, errors: int) -> dict[str, Any]:
    from featurestore.store import Store

    path = root / f"store-{rows}"
    st = Store(path)
    name = card().table
    out: dict[str, Any] = {}
    checks: list[Any] = []
    if op.startswith("clips"):  # each aggregation starts from no clip table: it computes and writes every clip
        for t in st.table_names():
            if t == "clips" or t.startswith(name + "-"):
                st.db.drop_table(t)
    st.table_names()  # LanceDB imported and the store opened before the clock starts
    if op == "verify_sample":
        import featurestore.readers  # noqa: F401 - torch: verify has loaded it (and the model) before it samples
    rss0 = vm_kib("VmRSS")
    t = time.perf_counter()
    if op == "scan_floor":  # what streaming the digest's columns costs, with nothing kept: LanceDB's own read-ahead
        from featurestore.manifest import LOCATION, VOLATILE

        table = st.db.open_table(name)
        cols = [f.name for f in table.schema if f.name not in VOLATILE | LOCATION]
        out["rows"] = sum(rb.num_rows for rb in table.search().select(cols).limit(None).to_batches(4096))
    elif op == "manifest_digest":
        from featurestore.manifest import content_digest

        out["digest"], out["rows"] = content_digest(st.db.open_table(name))
    elif op == "models":
        out["rows"] = [m["rows"] for m in st.models()]
    elif op in ("errors_cli", "errors_cli_interleaved"):
        from featurestore.cli import main

        os.environ["FEATURESTORE_CATALOG_CACHE"] = "0"
        target = path if op == "errors_cli" else root / f"errors-interleaved-{errors}"
        sink = _HashingSink()
        real, sys.stdout = sys.stdout, sink
        try:
            assert main(["errors", "-s", str(target), "--json"]) == 0
        finally:
            sys.stdout = real
        out["stdout_sha256"], out["stdout_bytes"] = sink.h.hexdigest(), sink.n
    elif op == "errors_list":
        got = st.errors()
        out["rows"] = len(got)

        def rows_sha() -> dict[str, str]:
            h = hashlib.sha256()
            for r in got:
                h.update(json.dumps(r, default=str).encode())
            return {"rows_sha256": h.hexdigest()}

        checks.append(rows_sha)
    elif op in ("clips_few", "clips_all"):
        import numpy as np

        from featurestore.aggregator import Aggregator
        from featurestore.clips import aggregate_videos

        class Mean(Aggregator):
            name = "mean"

            def params(self) -> dict[str, Any]:
                return {}

            def cls_dim(self, dim: int) -> int:
                return dim

            def aggregate(self, cls: np.ndarray) -> np.ndarray:
                return cls.mean(0)

        per_video = int((root / "PER_VIDEO").read_text())
        videos = None if op == "clips_all" else [f"video{v:06d}" for v in range(0, rows // per_video, max(1, rows // per_video // 5))][:5]
        res = aggregate_videos(st, st.card(name), Mean(), video_ids=videos, window=10.0)
        out.update(videos=res.videos, clips=res.clips, written=res.written)
        checks.append(lambda: {"clip_digest": __import__("featurestore.manifest").manifest.content_digest(st.db.open_table(res.table))[0]})
    elif op == "verify_sample":
        from featurestore import verify

        table = st.open_table(name)
        if hasattr(verify, "_sampled_rows"):
            items = verify._sampled_rows(table, table.count_rows(), 32, 0, dense=False)
        else:  # before: what verify did
            import numpy as np

            from featurestore.readers import FeatureDataset

            ds = FeatureDataset(path, name, columns=["cls", "uri", "video_id"])
            pick = np.sort(np.random.default_rng(0).choice(len(ds), 32, replace=False))
            items = ds.__getitems__(list(pick))
        out["ids"] = [i["id"][:12] for i in items][:3]
    else:
        raise SystemExit(f"unknown op {op}")
    out["seconds"] = time.perf_counter() - t
    out["rss_before_op_mib"] = rss0 / 1024
    out["peak_rss_mib"] = vm_kib("VmHWM") / 1024
    out["ru_maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for check in checks:  # after the figures: what the answer was, to compare before and after
        out.update(check())
    return out


class _HashingSink:
    """A stdout that keeps only the SHA-256 and the length of what is printed."""

    def __init__(self) -> None:
        self.h, self.n = hashlib.sha256(), 0

    def write(self, text: str) -> int:
        data = text.encode()
        self.h.update(data)
        self.n += len(data)
        return len(text)

    def flush(self) -> None:
        pass


def child(code: str, *args: str) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([code, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, __file__, *args], check=True, stdout=subprocess.PIPE, text=True, env=env).stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, required=True, help="where the pre-filled stores live (reused)")
    ap.add_argument("--rows", type=int, default=1_000_000, help="feature rows (frames) in the table")
    ap.add_argument("--frames-per-video", type=int, default=1000)
    ap.add_argument("--errors", type=int, default=200_000, help="rows of the errors table")
    ap.add_argument("--code", default=".", help="directory put first on PYTHONPATH for the measured processes")
    ap.add_argument("--label", default="")
    ap.add_argument("--ops", default=",".join(OPS))
    ap.add_argument("--out", type=Path)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--prefill", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    root = args.dir / f"r{args.rows}-v{args.frames_per_video}-e{args.errors}"
    if args.prefill:
        prefill(root, args.rows, args.frames_per_video, args.errors)
        (root / "PER_VIDEO").write_text(str(args.frames_per_video))
        return
    if args.child:
        print(json.dumps(run_op(args.child, root, args.rows, args.errors)))
        return
    code = str(Path(args.code).resolve())
    if not (root / f"store-{args.rows}" / "PREFILLED").exists():
        root.mkdir(parents=True, exist_ok=True)
        # the pre-fill uses this worktree's code (the layout is the same before and after)
        child(str(Path(__file__).resolve().parents[1]), "--prefill", "--dir", str(args.dir), "--rows", str(args.rows),
              "--frames-per-video", str(args.frames_per_video), "--errors", str(args.errors))
    results: dict[str, Any] = {"label": args.label, "code": code, "rows": args.rows, "errors": args.errors,
                               "frames_per_video": args.frames_per_video, "ops": {}}
    for op in args.ops.split(","):
        load = os.getloadavg()[0]
        res = json.loads(child(code, "--child", op, "--dir", str(args.dir), "--rows", str(args.rows),
                               "--frames-per-video", str(args.frames_per_video), "--errors", str(args.errors)))
        res["load"] = load
        results["ops"][op] = res
        log(f"{args.label} {op}: {res['seconds']:.2f} s, peak RSS {res['peak_rss_mib']:.0f} MiB (before the op {res['rss_before_op_mib']:.0f})")
    text = json.dumps(results, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
