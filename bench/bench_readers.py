"""Benchmark: featurestore.readers.FeatureDataset against a numpy memmap of the same features.

Data (written once into ``--dir``, reused when it is already there):

- a dense feature table of ``--rows`` rows (default 4096): ``cls`` (384,) float32 and
  ``patches`` 256 x 384 float16 (16 x 16 grid), random values, written through the store's own
  write path (``Store.register_model`` + ``feature_batch`` + ``Store.write_features``, one
  commit per 256 rows, as extraction commits);
- the very same patch tokens in one ``.npy`` (n, 256, 384) float16, read through ``np.load(mmap_mode="r")``;
- a CLS-only table of ``--cls-rows`` rows (default 262,144: 384 MiB of float32) and the same
  matrix as ``.npy``, for the sequential scan.

Measured (every figure is the best of ``--repeat`` runs; both sides read from the page cache,
which the run warms first: this compares software paths, not disks):

1. Random batches of 64 over patch tokens: ``DataLoader(dataset, batch_size=64, shuffle=True)``
   with 0 and 2 workers, items as float32 tensors (64, 256, 384). The FeatureDataset side is
   ``FeatureDataset(columns=["patches"])`` (one ``take_row_ids`` per batch via
   ``__getitems__``, forkserver workers via ``.loader()``). The memmap side is a Dataset whose
   ``__getitems__`` does ``mm[np.sort(idx)]`` then the same float16 → float32 conversion (the
   strongest simple baseline), plus a per-item memmap Dataset (``mm[i]`` per item) for information.
   samples/s counts ``--batches`` batches after 2 warm-up batches (worker start excluded).
2. Sequential CLS: ``FeatureDataset(columns=["cls"]).to_numpy()`` over the whole table, in
   GB/s of float32 CLS bytes delivered, against ``np.load`` of the same ``.npy`` (a full read).

The machine may be shared: each timing records ``busy_cpu_s``, the CPU seconds the whole
machine spent (``/proc/stat``) during it, and ``os.getloadavg()`` is logged.

Usage:
    python bench/bench_readers.py --dir /tmp/fs_bench_readers --out bench/out/readers.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

T0 = time.perf_counter()
DIM, GRID = 384, 16
TOKENS = GRID * GRID


def log(msg: str) -> None:
    sys.stderr.write(f"[{time.perf_counter() - T0:7.1f}s load {os.getloadavg()[0]:4.2f}] {msg}\n")


def busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores, /proc/stat)."""
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    idle = vals[3] + vals[4]  # idle + iowait
    return (sum(vals[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def card(model_hash: str, dense: bool) -> Any:
    from featurestore.config import ModelCard, TokenLayout
    from featurestore.store import table_name_for

    return ModelCard(
        model_hash=model_hash, weights_sha256="0" * 64, backbone="bench", table=table_name_for("bench", model_hash),
        plugin="bench", plugin_version="0", weights_source="random", architecture="none", dim=DIM, dense=dense,
        token_layout=TokenLayout(grid_h=GRID, grid_w=GRID, patch_size=14, num_prefix_tokens=1, cls_source="random", input_h=224, input_w=224),
        preprocessing={}, output_spec={}, decode_policy={}, library_versions={}, created_at=datetime.now(timezone.utc),
        patch_dtype="float16" if dense else None,
    )


def build(root: Path, rows: int, cls_rows: int) -> dict[str, Any]:
    """Write (or reuse) the dense table + patches .npy and the CLS-only table + CLS .npy."""
    from featurestore.store import Store, feature_batch

    store = Store(root / "store")
    facts = {"dense_hash": "d" * 64, "cls_hash": "c" * 64}
    npy = root / "patches.npy"
    if not npy.exists() or np.load(npy, mmap_mode="r").shape[0] != rows:
        table = store.register_model(card(facts["dense_hash"], True))
        mm = np.lib.format.open_memmap(root / "patches.tmp.npy", mode="w+", dtype=np.float16, shape=(rows, TOKENS, DIM))
        rng = np.random.default_rng(0)
        for s in range(0, rows, 256):
            n = min(256, rows - s)
            patches = rng.standard_normal((n, TOKENS, DIM), dtype=np.float32).astype(np.float16)
            ids = [f"{i:064x}" for i in range(s, s + n)]
            batch = feature_batch(
                table.schema, ids=ids, uris=[f"/bench/{i}.jpg" for i in range(s, s + n)], sizes=[(224, 224)] * n,
                crop_boxes=np.tile(np.float32([0, 0, 224, 224]), (n, 1)), cls=rng.standard_normal((n, DIM), dtype=np.float32),
                patches=list(patches), grids=[(GRID, GRID)] * n, run_id="bench",
            )
            Store.write_features(table, batch)
            mm[s : s + n] = patches  # row i of the .npy has id i
            log(f"dense rows {s + n}/{rows}")
        mm.flush()
        del mm
        os.replace(root / "patches.tmp.npy", npy)
    cls_npy = root / "cls.npy"
    if not cls_npy.exists() or np.load(cls_npy, mmap_mode="r").shape[0] != cls_rows:
        table = store.register_model(card(facts["cls_hash"], False))
        rng = np.random.default_rng(1)
        mats = []
        for s in range(0, cls_rows, 16384):
            n = min(16384, cls_rows - s)
            cls = rng.standard_normal((n, DIM), dtype=np.float32)
            batch = feature_batch(
                table.schema, ids=[f"{i:064x}" for i in range(s, s + n)], uris=[f"/bench/{i}.jpg" for i in range(s, s + n)],
                sizes=[(224, 224)] * n, crop_boxes=np.zeros((n, 4), np.float32), cls=cls, patches=None, grids=None, run_id="bench",
            )
            Store.write_features(table, batch)
            mats.append(cls)
        np.save(root / "cls.tmp.npy", np.concatenate(mats))
        os.replace(root / "cls.tmp.npy", cls_npy)
        log(f"cls-only rows {cls_rows}")
    facts["lance_bytes"] = sum(f.stat().st_size for f in (root / "store").rglob("*") if f.is_file())
    return facts


class MemmapBatches(Dataset):
    """The baseline: patch tokens from a memmap, one fancy-indexed read per batch."""

    def __init__(self, path: Path, per_item: bool = False):
        self.path, self.per_item, self._mm = str(path), per_item, None
        self.n = int(np.load(path, mmap_mode="r").shape[0])

    def _arr(self) -> np.ndarray:
        if self._mm is None:
            self._mm = np.load(self.path, mmap_mode="r")
        return self._mm

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_mm": None}

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"patches": torch.from_numpy(np.array(self._arr()[i])).float()}

    def __getitems__(self, idx: list[int]) -> list[dict[str, torch.Tensor]]:
        if self.per_item:
            return [self[i] for i in idx]
        order = np.argsort(idx)
        block = torch.from_numpy(self._arr()[np.asarray(idx)[order]]).float()  # (B, N, P): sorted reads, one conversion
        out: list[Any] = [None] * len(idx)
        for j, k in enumerate(order):
            out[k] = {"patches": block[j]}
        return out


def loader_rate(make: Callable[[int], DataLoader], workers: int, batches: int, repeat: int) -> dict[str, Any]:
    """Best samples/s over ``repeat`` runs of ``batches`` batches after 2 warm-up batches."""
    runs = []
    for r in range(repeat):
        it = iter(make(r))
        for _ in range(2):
            next(it)
        cpu0, t0 = busy_cpu_s(), time.perf_counter()
        n = 0
        for _ in range(batches):
            b = next(it)
            n += b["patches"].shape[0]
        dt = time.perf_counter() - t0
        runs.append({"samples_per_s": n / dt, "seconds": dt, "busy_cpu_s": busy_cpu_s() - cpu0, "samples": n})
        del it
    best = max(runs, key=lambda x: x["samples_per_s"])
    log(f"  workers={workers}: {best['samples_per_s']:.0f} samples/s (busy cpu {best['busy_cpu_s']:.1f} s in {best['seconds']:.2f} s)")
    return {"best": best, "runs": runs}


def timed(fn: Callable[[], Any], repeat: int) -> dict[str, Any]:
    runs = []
    for _ in range(repeat):
        cpu0, t0 = busy_cpu_s(), time.perf_counter()
        fn()
        runs.append({"seconds": time.perf_counter() - t0, "busy_cpu_s": busy_cpu_s() - cpu0})
    return {"best": min(runs, key=lambda x: x["seconds"]), "runs": runs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default="/tmp/fs_bench_readers", help="where the store and .npy files go (reused)")
    p.add_argument("--rows", type=int, default=4096)
    p.add_argument("--cls-rows", type=int, default=262144)
    p.add_argument("--batches", type=int, default=64, help="timed batches of 64 per run (64: one epoch of 4096)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", default="bench/out/readers.json")
    args = p.parse_args()

    from featurestore.loader import worker_context
    from featurestore.readers import FeatureDataset

    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    facts = build(root, args.rows, args.cls_rows)
    store = root / "store"
    res: dict[str, Any] = {
        "command": " ".join(["python", *sys.argv]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__},
        "rows": args.rows, "cls_rows": args.cls_rows, "lance_bytes": facts["lance_bytes"], "load_start": os.getloadavg(),
    }
    import lancedb

    res["machine"]["lancedb"] = lancedb.__version__
    ctx = worker_context(["featurestore.readers"])

    t0 = time.perf_counter()
    ds = FeatureDataset(store, facts["dense_hash"], columns=["patches"])
    res["open_dense_s"] = time.perf_counter() - t0
    mm = np.load(root / "patches.npy", mmap_mode="r")
    for item in ds.__getitems__([5, args.rows - 1]):  # same values on both sides (ids are row numbers)
        assert torch.equal(item["patches"], torch.from_numpy(np.array(mm[int(item["id"], 16)])).float())
    for arr in (mm,):  # warm the page cache of both sides once
        np.asarray(arr[:]).sum(dtype=np.float32)
    ds.to_arrow(["patches"])

    def sampler(data: Dataset, seed: int) -> RandomSampler:
        # enough indices for warm-up + timed batches even when they span several epochs
        return RandomSampler(data, num_samples=(args.batches + 2) * 64, generator=torch.Generator().manual_seed(seed))

    def memmap_loader(per_item: bool, w: int, r: int) -> DataLoader:
        data = MemmapBatches(root / "patches.npy", per_item=per_item)
        return DataLoader(data, batch_size=64, sampler=sampler(data, r), num_workers=w, multiprocessing_context=ctx if w else None)

    sides: dict[str, Callable[[int, int], DataLoader]] = {
        "featurestore": lambda w, r: ds.loader(64, num_workers=w, sampler=sampler(ds, r)),
        "memmap_batched": lambda w, r: memmap_loader(False, w, r),
        "memmap_per_item": lambda w, r: memmap_loader(True, w, r),
    }
    res["random_batches"] = {}
    for w in (0, 2):
        for name, make in sides.items():
            log(f"random batches of 64, {name}")
            res["random_batches"].setdefault(name, {})[f"workers_{w}"] = loader_rate(lambda r, m=make, w=w: m(w, r), w, args.batches, args.repeat)
    for w in (0, 2):
        k = f"workers_{w}"
        fs_rate = res["random_batches"]["featurestore"][k]["best"]["samples_per_s"]
        res["random_batches"].setdefault("ratio_vs_memmap_batched", {})[k] = fs_rate / res["random_batches"]["memmap_batched"][k]["best"]["samples_per_s"]
        res["random_batches"].setdefault("ratio_vs_memmap_per_item", {})[k] = fs_rate / res["random_batches"]["memmap_per_item"][k]["best"]["samples_per_s"]

    res["cls_scan"] = {}
    for label, h, n, npy in (("dense_table", facts["dense_hash"], args.rows, None), ("cls_table", facts["cls_hash"], args.cls_rows, root / "cls.npy")):
        t0 = time.perf_counter()
        cds = FeatureDataset(store, h, columns=["cls"])
        opened = time.perf_counter() - t0
        gb = n * DIM * 4 / 1e9
        fs = timed(lambda d=cds: d.to_numpy(["cls"]), args.repeat)
        entry = {"rows": n, "gb": gb, "open_s": opened, "featurestore": fs, "featurestore_gb_s": gb / fs["best"]["seconds"]}
        if npy is not None:
            # merge_insert need not keep a batch's row order: compare by id (= row number)
            want = np.load(npy)[[int(i, 16) for i in cds.ids]]
            np.testing.assert_array_equal(cds.to_numpy(["cls"])["cls"], want)
            base = timed(lambda f=npy: np.load(f), args.repeat)
            entry |= {"np_load": base, "np_load_gb_s": gb / base["best"]["seconds"]}
        res["cls_scan"][label] = entry
        log(f"cls scan {label}: {entry['featurestore_gb_s']:.2f} GB/s (open {opened:.2f} s)" + (f", np.load {entry['np_load_gb_s']:.2f} GB/s" if npy else ""))
    res["load_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2, default=str))
    rb = res["random_batches"]
    print("| random batches of 64, patches 256x384 → float32 | 0 workers | 2 workers |\n|---|---|---|")
    for name in sides:
        print(f"| {name} (samples/s) | " + " | ".join(f"{rb[name][f'workers_{w}']['best']['samples_per_s']:.0f}" for w in (0, 2)) + " |")
    print("| featurestore / memmap_batched | " + " | ".join(f"{rb['ratio_vs_memmap_batched'][f'workers_{w}']:.2f}x" for w in (0, 2)) + " |")
    print("| featurestore / memmap_per_item | " + " | ".join(f"{rb['ratio_vs_memmap_per_item'][f'workers_{w}']:.2f}x" for w in (0, 2)) + " |")
    for label, e in res["cls_scan"].items():
        extra = f", np.load {e['np_load_gb_s']:.2f} GB/s" if "np_load_gb_s" in e else ""
        print(f"CLS scan {label}: {e['rows']} rows, {e['gb'] * 1000:.1f} MB, {e['featurestore_gb_s']:.2f} GB/s{extra}; open {e['open_s']:.2f} s")
    print(f"load average start {res['load_start']}, end {res['load_end']}")


if __name__ == "__main__":
    main()
