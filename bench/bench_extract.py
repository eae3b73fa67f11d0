"""Benchmark: featurestore extraction vs the bare model forward vs transformers' pipeline.

One run measures, on the same N JPEGs (640x480, smooth random content) and the same
ViT-S/14-sized DINOv2 with random weights (built from a config, nothing downloaded):

  (a) bare forward  -- images decoded and preprocessed beforehand; only
                       ``model(pixel_values=batch)`` under ``torch.inference_mode`` is timed.
                       The practical limit for any extractor on this machine.
  (b) featurestore  -- ``FeatureStore(fresh).extract([dir], backbone="hf:<dir>", ...)``,
                       wall time of the whole call (model load, hashing, worker start,
                       read/hash/decode/preprocess, forward, LanceDB writes), with and
                       without ``dense``, for each worker count; plus the CLI
                       ``featurestore extract ... --json`` as a subprocess (process start +
                       imports + model load included).
  (c) transformers  -- ``pipeline("image-feature-extraction", model=<dir>, device="cpu")``
                       on the same file paths, at its default batch size and at several
                       others.
  RSS               -- peak memory of ``featurestore extract`` (CLI subprocess) on N and
                       scale*N distinct images: psutil sum of RSS over the process tree,
                       polled every 0.1 s, and the kernel's ru_maxrss of the main process.

Usage:
    python bench/bench_extract.py --images 256 --out bench/out/results.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402

T_START = time.perf_counter()

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
# architecture of facebook/dinov2-small (ViT-S/14)
DINOV2_SMALL = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536, patch_size=14, image_size=518)


def log(msg: str) -> None:
    la = os.getloadavg()[0]
    sys.stderr.write(f"[{time.perf_counter() - T_START:7.1f}s load {la:4.2f}] {msg}\n")
    sys.stderr.flush()


class ForeignCPU:
    """Background sampler (1 s): CPU seconds used by processes outside this benchmark's tree.

    Other people's test runs on a shared box show up here, per phase, so a result taken
    while the cores were shared can be told apart. Processes that live less than a
    sampling interval are missed.
    """

    def __init__(self, interval: float = 1.0):
        import threading

        self.interval = interval
        self.phase = "setup"
        self.by_phase: dict[str, float] = {}
        self.peak_cores: dict[str, float] = {}
        self.top: dict[str, dict[str, float]] = {}
        self.total = 0.0  # CPU seconds of other processes since start
        self.recent: list[float] = []  # cores used by other processes, last samples
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "ForeignCPU":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _snapshot(self) -> dict[int, tuple[float, float, str]]:
        snap = {}
        for p in psutil.process_iter(["create_time", "cpu_times", "name"]):
            ct = p.info["cpu_times"]
            if ct is not None:
                snap[p.pid] = (p.info["create_time"], ct.user + ct.system, p.info["name"] or "?")
        return snap

    def _run(self) -> None:
        me = psutil.Process()
        prev = self._snapshot()
        last = time.time()
        while not self._stop.wait(self.interval):
            try:
                own = {me.pid} | {c.pid for c in me.children(recursive=True)}
            except psutil.Error:
                continue
            cur = self._snapshot()
            now = time.time()
            used = 0.0
            for pid, (created, cpu, name) in cur.items():
                if pid in own:
                    continue
                old = prev.get(pid)
                if old is not None and old[0] == created:
                    d = cpu - old[1]
                elif created >= last - 0.01:  # started since the last sample
                    d = cpu
                else:
                    d = 0.0
                if d > 0:
                    used += d
                    t = self.top.setdefault(self.phase, {})
                    t[name] = t.get(name, 0.0) + d
            self.by_phase[self.phase] = self.by_phase.get(self.phase, 0.0) + used
            rate = used / max(now - last, 1e-6)
            self.peak_cores[self.phase] = max(self.peak_cores.get(self.phase, 0.0), rate)
            self.total += used
            self.recent = (self.recent + [rate])[-10:]
            prev, last = cur, now

    def report(self) -> dict[str, Any]:
        return {
            "cpu_seconds_by_phase": {k: round(v, 2) for k, v in self.by_phase.items()},
            "peak_cores_by_phase": {k: round(v, 2) for k, v in self.peak_cores.items()},
            "top_processes_by_phase": {k: {n: round(c, 2) for n, c in sorted(v.items(), key=lambda x: -x[1])[:5]} for k, v in self.top.items()},
            "interval_seconds": self.interval,
        }


FOREIGN: ForeignCPU | None = None


def set_phase(name: str) -> None:
    if FOREIGN is not None:
        FOREIGN.phase = name


# A timed repetition during which other processes used more than THRESHOLD cores on
# average is thrown away and run again (after waiting for the machine to be quiet).
GUARD: dict[str, Any] = {"threshold_cores": 0.1, "max_attempts": 4, "quiet_wait_max_seconds": 300.0, "waits": [], "discarded": []}


def wait_quiet(label: str) -> None:
    """Wait (up to quiet_wait_max_seconds) until other processes used < threshold for 3 samples."""
    if FOREIGN is None:
        return
    t0 = time.perf_counter()
    logged = False
    while time.perf_counter() - t0 < GUARD["quiet_wait_max_seconds"]:
        rec = FOREIGN.recent[-3:]
        if len(rec) == 3 and max(rec) < GUARD["threshold_cores"]:
            break
        if not logged and rec:
            log(f"other processes are using {rec[-1]:.2f} cores; waiting before {label}")
            logged = True
        time.sleep(FOREIGN.interval)
    waited = time.perf_counter() - t0
    if waited > 2.5 * FOREIGN.interval:
        GUARD["waits"].append({"before": label, "seconds": round(waited, 1)})


def guarded(label: str, fn: Any, attempts: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Run ``fn()``; if other processes used the CPU meanwhile, discard and run it again."""
    if FOREIGN is None:
        return fn(), {"foreign_cpu_seconds": None, "attempts": 1}
    foreign_seen: list[float] = []
    clean = False
    out = None
    for _ in range(attempts or GUARD["max_attempts"]):
        wait_quiet(label)
        c0, t0 = FOREIGN.total, time.perf_counter()
        out = fn()
        time.sleep(FOREIGN.interval + 0.1)  # let the sampler see the end of it
        foreign = FOREIGN.total - c0
        foreign_seen.append(round(foreign, 2))
        clean = foreign / (time.perf_counter() - t0) < GUARD["threshold_cores"]
        if clean:
            break
        GUARD["discarded"].append({"what": label, "foreign_cpu_seconds": round(foreign, 2)})
        log(f"{label}: other processes used {foreign:.1f} CPU s meanwhile; result discarded")
    return out, {"foreign_cpu_seconds": foreign_seen[-1], "attempts": len(foreign_seen), "clean": clean}


# -- setup ---------------------------------------------------------------------


def make_model(directory: Path, seed: int = 0) -> Path:
    """A ViT-S/14 DINOv2 with random weights + facebook/dinov2-small's image processor."""
    import transformers as tf

    torch.manual_seed(seed)
    model = tf.Dinov2Model(tf.Dinov2Config(**DINOV2_SMALL))
    proc = tf.BitImageProcessor(
        do_resize=True,
        size={"shortest_edge": 256},
        resample=3,  # bicubic
        do_center_crop=True,
        crop_size={"height": 224, "width": 224},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=MEAN,
        image_std=STD,
        do_convert_rgb=True,
    )
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    proc.save_pretrained(directory)
    return directory


def image_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*.jpg"))


# -- (a) bare forward ----------------------------------------------------------


def bench_bare(model_dir: Path, paths: list[Path], batch_size: int, repeat: int, extra_batch_sizes: list[int]) -> dict[str, Any]:
    import transformers as tf

    from featurestore.media import decode_image

    model = tf.AutoModel.from_pretrained(model_dir).eval()
    proc = tf.AutoImageProcessor.from_pretrained(model_dir)
    t0 = time.perf_counter()
    images = [decode_image(p.read_bytes(), str(p)) for p in paths]
    t_decode = time.perf_counter() - t0
    t0 = time.perf_counter()
    pixel_values = torch.cat(
        [proc(images=images[i : i + batch_size], return_tensors="pt")["pixel_values"] for i in range(0, len(images), batch_size)]
    )  # (N, 3, 224, 224)
    t_pre = time.perf_counter() - t0
    del images
    batches = list(pixel_values.split(batch_size))
    runs = []
    cls0 = None
    with torch.inference_mode():
        model(pixel_values=batches[0])  # warm-up, not timed
        def one() -> dict[str, Any]:
            nonlocal cls0
            per_batch = []
            t0 = time.perf_counter()
            for b in batches:
                tb = time.perf_counter()
                out = model(pixel_values=b).last_hidden_state
                per_batch.append(time.perf_counter() - tb)
                if cls0 is None:
                    cls0 = out[0, 0].clone()
            return {"seconds": time.perf_counter() - t0, "per_batch_seconds": per_batch}

        for r in range(repeat):
            run, g = guarded(f"(a) bare forward rep {r}", one)
            runs.append({**run, **g})
            log(f"(a) bare forward rep {r}: {runs[-1]['seconds']:.2f}s")
        # informational: the same forward at other batch sizes (CPU may prefer small batches)
        extra = {}
        for eb in extra_batch_sizes:
            if eb == batch_size:
                continue
            ebatches = list(pixel_values.split(eb))
            model(pixel_values=ebatches[0])  # warm-up
            eruns = []
            def one_extra() -> float:
                t0 = time.perf_counter()
                for b in ebatches:  # noqa: B023
                    model(pixel_values=b)
                return time.perf_counter() - t0

            for r in range(repeat):
                secs, _g = guarded(f"(a) bare forward batch_size={eb} rep {r}", one_extra)
                eruns.append(secs)
                log(f"(a) bare forward batch_size={eb} rep {r}: {eruns[-1]:.2f}s")
            extra[str(eb)] = {"runs_seconds": eruns, "seconds": min(eruns), "images_per_second": len(paths) / min(eruns)}
    best = min(r["seconds"] for r in runs)
    return {
        "batch_size": batch_size,
        "other_batch_sizes": extra,
        "processor_class": type(proc).__name__,
        "model_dtype": str(model.dtype),
        "input_shape": list(pixel_values.shape),
        "untimed_decode_seconds": t_decode,
        "untimed_preprocess_seconds": t_pre,
        "runs": runs,
        "seconds": best,
        "images_per_second": len(paths) / best,
        "_cls0": cls0,
    }


# -- (b) featurestore ----------------------------------------------------------


class _Probe:
    """Times featurestore's forward (+ row building) and its LanceDB writes from outside.

    Wraps ``featurestore.extract._forward_rows`` and ``Committer.commit`` for the
    duration of one in-process run (two perf_counter calls per batch or commit; the code run
    is unchanged). Commits run on the writer's background thread, overlapping the loop:
    whatever the loop spends outside the forward is waiting for the DataLoader (or, when the
    writer falls behind, for room in its queue).
    """

    def __init__(self) -> None:
        import featurestore.extract as ex
        from featurestore.commit import Committer

        self._ex, self._store_cls = ex, Committer
        self._orig_fwd, self._orig_write = ex._forward_rows, Committer.__dict__["commit"]
        self.forward: list[float] = []
        self.write: list[float] = []
        self.first_forward_at: float | None = None
        self.t0 = 0.0

    def __enter__(self) -> "_Probe":
        orig_fwd, orig_write = self._orig_fwd, self._orig_write

        def fwd(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            if self.first_forward_at is None:
                self.first_forward_at = t - self.t0
            out = orig_fwd(*a, **k)
            self.forward.append(time.perf_counter() - t)
            return out

        def write(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            out = orig_write(*a, **k)
            self.write.append(time.perf_counter() - t)
            return out

        self._ex._forward_rows = fwd
        self._store_cls.commit = write
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._ex._forward_rows = self._orig_fwd
        self._store_cls.commit = self._orig_write


def bench_api(work: Path, image_dir: Path, model_dir: Path, n: int, batch_size: int, workers: int, dense: bool, repeat: int) -> dict[str, Any]:
    from featurestore import FeatureStore

    runs = []
    cls0 = None
    def one() -> tuple[Any, Any, Any, float, Path]:
        store = work / f"store-api-{uuid.uuid4().hex[:8]}.lance"
        with _Probe() as probe:
            t0 = probe.t0
            fs = FeatureStore(store)
            s = fs.extract([str(image_dir)], backbone=f"hf:{model_dir}", batch_size=batch_size, workers=workers, device="cpu", dense=dense)
            wall = time.perf_counter() - t0
        return fs, s, probe, wall, store

    for r in range(repeat):
        (fs, s, probe, wall, store), g = guarded(f"(b) api workers={workers} dense={dense} batch={batch_size} rep {r}", one)
        if s.written != n or s.errors:
            raise SystemExit(f"featurestore wrote {s.written}/{n} rows with {s.errors} errors: {s.error_samples[:3]}")
        if cls0 is None:
            tbl = fs.table(s.model_hash).search().select(["uri", "cls"]).limit(None).to_arrow().to_pylist()
            first = min(tbl, key=lambda row: row["uri"])
            cls0 = torch.tensor(first["cls"], dtype=torch.float32)
        fwd, wr = sum(probe.forward), sum(probe.write)
        runs.append({
            "wall_seconds": wall,
            "loop_seconds": s.seconds,
            "setup_seconds": wall - s.seconds,  # store, model load, weight hashing, ids, loader object
            "written": s.written,
            "forward_seconds": fwd,  # backbone forward + to numpy + Arrow rows, all batches
            "forward_per_batch_seconds": probe.forward,
            "write_seconds": wr,  # LanceDB commits, on the writer thread (overlapping the loop)
            "first_forward_after_seconds": probe.first_forward_at,  # from the call's start: setup + worker start + first batch
            "waiting_for_loader_seconds": s.seconds - fwd,
            **g,
        })
        log(f"(b) api workers={workers} dense={dense} rep {r}: wall {wall:.2f}s (loop {s.seconds:.2f}s)")
        del fs
        shutil.rmtree(store, ignore_errors=True)
    best = min(runs, key=lambda x: x["wall_seconds"])
    return {
        "workers": workers,
        "dense": dense,
        "batch_size": batch_size,
        "runs": runs,
        "seconds": best["wall_seconds"],
        "loop_seconds": min(x["loop_seconds"] for x in runs),
        "first_run_wall_seconds": runs[0]["wall_seconds"],
        "breakdown_of_best": {k: best[k] for k in ("setup_seconds", "forward_seconds", "write_seconds", "first_forward_after_seconds", "waiting_for_loader_seconds")},
        "images_per_second": n / best["wall_seconds"],
        "_cls0": cls0,
    }


def featurestore_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "featurestore"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "featurestore.cli"]


def _role(q: psutil.Process, main_pid: int) -> str:
    """What a descendant of the CLI is: forkserver, resource tracker or a DataLoader worker."""
    cmd = " ".join(q.cmdline())
    if "resource_tracker" in cmd:
        return "resource_tracker"
    if "forkserver" in cmd:
        # workers are forked by the forkserver and keep its command line
        return "forkserver" if q.ppid() == main_pid else "worker"
    return "other"


# A tiny launcher between this benchmark and the CLI. On Linux the ru_maxrss of an exec'd
# child starts at the RSS high-water mark of the process it was forked (or vforked) from,
# so a CLI started straight from this benchmark -- which holds a model, the pipeline and
# all pixel tensors -- would report this process's size, not its own. The launcher is a
# bare interpreter (~10 MiB), so RUSAGE_CHILDREN in it is the CLI's own peak; it also
# times the CLI from its start to its exit.
LAUNCHER = """
import json, resource, subprocess, sys, time
out, cmd = sys.argv[1], sys.argv[2:]
t0 = time.perf_counter()
rc = subprocess.call(cmd)
wall = time.perf_counter() - t0
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(out, "w") as f:
    json.dump({"rc": rc, "wall_seconds": wall, "ru_maxrss_children_kib": ru.ru_maxrss}, f)
"""


def run_cli(sources: list[Path], model_dir: Path, batch_size: int, workers: int, log_dir: Path, *, poll: float | None) -> dict[str, Any]:
    """Run ``featurestore extract --json`` under the launcher; with ``poll``, sample the RSS of
    the CLI's process tree (the CLI, its forkserver, resource tracker and workers) every ``poll`` s.
    Each call writes into a fresh store, removed afterwards."""
    store = log_dir / f"store-cli-{uuid.uuid4().hex[:8]}.lance"
    cmd = featurestore_cmd() + ["extract", *map(str, sources), "--backbone", f"hf:{model_dir}", "--store", str(store),
                                "--batch-size", str(batch_size), "--workers", str(workers), "--device", "cpu", "--json"]
    tag = uuid.uuid4().hex[:8]
    out_path, err_path, ru_path = log_dir / f"cli-{tag}.out", log_dir / f"cli-{tag}.err", log_dir / f"cli-{tag}.rusage.json"
    peak_tree = peak_main = 0
    peak_nproc = samples = 0
    peak_parts: list[dict[str, Any]] = []
    timeline: list[tuple[float, float, float]] = []  # (s, tree MiB, main MiB), about one a second
    with open(out_path, "wb") as fout, open(err_path, "wb") as ferr:
        p = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(ru_path), *cmd], stdout=fout, stderr=ferr)
        launcher = psutil.Process(p.pid)
        t0 = time.perf_counter()
        while p.poll() is None:
            if poll is None:
                time.sleep(0.01)
                continue
            try:
                kids = launcher.children(recursive=True)
            except psutil.NoSuchProcess:
                kids = []
            main_pid = next((k.pid for k in kids if k.ppid() == p.pid), None) if kids else None
            total = main_rss = alive = 0
            parts = []
            for q in kids:
                try:
                    rss = q.memory_info().rss
                    role = "main" if q.pid == main_pid else _role(q, main_pid or -1)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                total += rss
                alive += 1
                parts.append({"pid": q.pid, "role": role, "rss_mib": rss / 2**20})
                if q.pid == main_pid:
                    main_rss = rss
            peak_main = max(peak_main, main_rss)
            if total > peak_tree:
                peak_tree, peak_nproc, peak_parts = total, alive, parts
            if samples % max(1, round(1 / poll)) == 0:
                timeline.append((round(time.perf_counter() - t0, 2), round(total / 2**20, 1), round(main_rss / 2**20, 1)))
            samples += 1
            time.sleep(poll)
    shutil.rmtree(store, ignore_errors=True)
    launched = json.loads(ru_path.read_text()) if ru_path.exists() else {"rc": p.returncode}
    text = out_path.read_text()
    if p.returncode != 0 or launched["rc"] != 0:
        raise SystemExit(f"CLI failed ({launched['rc']}): {' '.join(cmd)}\n{text}\n{err_path.read_text()[-3000:]}")
    summary = json.loads(text)
    wall = launched["wall_seconds"]
    res = {
        "command": cmd,
        "wall_seconds": wall,
        "loop_seconds": summary["seconds"],
        "startup_and_load_seconds": wall - summary["seconds"],
        "written": summary["written"],
        "skipped_duplicate": summary["skipped_duplicate"],
        "errors": summary["errors"],
        # getrusage(RUSAGE_CHILDREN).ru_maxrss in the launcher, whose only child is the CLI:
        # the largest single process of the tree that was waited for (Linux: KiB)
        "ru_maxrss_main_mib": launched["ru_maxrss_children_kib"] / 1024,
    }
    if poll is not None:
        res.update(
            peak_rss_tree_mib=peak_tree / 2**20,
            peak_rss_main_psutil_mib=peak_main / 2**20,
            processes_at_peak=peak_nproc,
            processes_at_peak_detail=peak_parts,
            samples=samples,
            poll_seconds=poll,
            timeline_s_tree_main_mib=timeline,
        )
    return res


def bench_cli(work: Path, image_dir: Path, model_dir: Path, n: int, batch_size: int, workers: int, repeat: int) -> dict[str, Any]:
    runs = []
    for r in range(repeat):
        res, g = guarded(f"(b) cli rep {r}", lambda: run_cli([image_dir], model_dir, batch_size, workers, work, poll=None))
        res.update(g)
        if res["written"] != n or res["errors"]:
            raise SystemExit(f"CLI wrote {res['written']}/{n} rows with {res['errors']} errors")
        runs.append(res)
        log(f"(b) cli workers={workers} rep {r}: wall {res['wall_seconds']:.2f}s (loop {res['loop_seconds']:.2f}s)")
    best = min(runs, key=lambda x: x["wall_seconds"])
    return {
        "workers": workers,
        "dense": False,
        "batch_size": batch_size,
        "command": best["command"],
        "runs": runs,
        "seconds": best["wall_seconds"],
        "loop_seconds": min(x["loop_seconds"] for x in runs),
        "images_per_second": n / best["wall_seconds"],
    }


WORKER_PROBE = """
import pickle, sys, time
import torch, featurestore.loader  # what the forkserver preloads
t0 = time.perf_counter()
with open(sys.argv[1], "rb") as f:
    pre = pickle.load(f)  # a DataLoader worker unpickles the dataset, and so the preprocessor, first
t1 = time.perf_counter()
print(t1 - t0)
"""


def bench_worker_unpickle(work: Path, model_dir: Path, repeat: int) -> dict[str, Any]:
    """Time a DataLoader worker's first step: unpickling the backbone's preprocessor in a
    process that has only the forkserver's preloads (torch, featurestore.loader)."""
    import pickle

    from featurestore.api import create_backbone

    pre = create_backbone(f"hf:{model_dir}").preprocessor()
    path = work / "preprocessor.pkl"
    path.write_bytes(pickle.dumps(pre))
    runs = []
    for r in range(repeat):
        out, _g = guarded(f"worker unpickle probe rep {r}",
                          lambda: subprocess.run([sys.executable, "-c", WORKER_PROBE, str(path)], capture_output=True, text=True, check=True))
        runs.append(float(out.stdout.strip().splitlines()[-1]))
    log(f"worker unpickle of the preprocessor: {min(runs):.2f}s")
    return {"preprocessor_class": type(pre).__name__, "pickle_bytes": path.stat().st_size, "runs_seconds": runs, "seconds": min(runs)}


# -- (c) transformers pipeline -------------------------------------------------


def bench_pipeline(model_dir: Path, paths: list[Path], batch_sizes: list[int], repeat: int) -> dict[str, Any]:
    import transformers as tf
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    t0 = time.perf_counter()
    pipe = tf.pipeline("image-feature-extraction", model=str(model_dir), device="cpu")
    load = time.perf_counter() - t0
    files = [str(p) for p in paths]
    n = len(files)
    configs: list[tuple[str, dict[str, Any]]] = [("default", {})]
    configs += [(f"batch_size={b}", {"batch_size": b, "return_tensors": True}) for b in batch_sizes]
    results: dict[str, Any] = {}
    shape = None
    cls0 = None
    for label, kw in configs:
        runs = []
        def one() -> tuple[Any, float]:
            t0 = time.perf_counter()
            out = pipe(files, **kw)  # noqa: B023
            return out, time.perf_counter() - t0

        for r in range(repeat):
            (out, dt), _g = guarded(f"(c) pipeline {label} rep {r}", one)
            assert len(out) == n
            first = torch.as_tensor(out[0], dtype=torch.float32)  # (1, T, D)
            shape = list(first.shape)
            if cls0 is None or label != "default":
                cls0 = first[0, 0]
            runs.append(dt)
            log(f"(c) pipeline {label} rep {r}: {dt:.2f}s")
            del out
        results[label] = {"kwargs": kw, "runs_seconds": runs, "seconds": min(runs), "images_per_second": n / min(runs)}
    bs_only = {k: v for k, v in results.items() if k != "default"}
    best_label = max(bs_only, key=lambda k: bs_only[k]["images_per_second"])
    return {
        "load_seconds": load,
        "processor_class": type(pipe.image_processor).__name__,
        "model_class": type(pipe.model).__name__,
        "model_dtype": str(pipe.model.dtype),
        "default_batch_size": 1,
        "output_per_image_shape": shape,
        "configs": results,
        "default": results["default"],
        "best": {"label": best_label, **results[best_label]},
        "_cls0": cls0,
    }


# -- RSS -----------------------------------------------------------------------


def bench_rss(work: Path, dirs_n: list[Path], dirs_big: list[Path], n: int, n_big: int, model_dir: Path, batch_size: int, workers: int, poll: float) -> dict[str, Any]:
    out = {}
    for label, dirs, count in (("1x", dirs_n, n), ("big", dirs_big, n_big)):
        # memory hardly depends on other processes: one attempt for the long run
        res, g = guarded(f"RSS run {label}", lambda: run_cli(dirs, model_dir, batch_size, workers, work, poll=poll),  # noqa: B023
                         attempts=2 if label == "1x" else 1)
        res.update(g)
        if res["written"] != count or res["errors"] or res["skipped_duplicate"]:
            raise SystemExit(f"RSS run {label}: wrote {res['written']}/{count}, dup {res['skipped_duplicate']}, errors {res['errors']}")
        res["images"] = count
        res["images_per_second_wall"] = count / res["wall_seconds"]
        out[label] = res
        log(
            f"RSS {label} ({count} images): tree peak {res['peak_rss_tree_mib']:.0f} MiB, "
            f"main ru_maxrss {res['ru_maxrss_main_mib']:.0f} MiB, wall {res['wall_seconds']:.1f}s"
        )
    out["ratio_tree"] = out["big"]["peak_rss_tree_mib"] / out["1x"]["peak_rss_tree_mib"]
    out["ratio_main_ru_maxrss"] = out["big"]["ru_maxrss_main_mib"] / out["1x"]["ru_maxrss_main_mib"]
    out["scale"] = n_big / n
    return out


# -- report --------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    def ver(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    cpu_model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model,
        "memory_gib": psutil.virtual_memory().total / 2**30,
        "cuda_available": torch.cuda.is_available(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {d: ver(d) for d in ("featurestore", "featurestore-transformers", "torch", "torchvision", "transformers", "lancedb", "pyarrow", "pillow", "numpy", "psutil")},
    }


def strip_private(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: strip_private(v) for k, v in obj.items() if not k.startswith("_")}
    if isinstance(obj, list):
        return [strip_private(v) for v in obj]
    return obj


def markdown(res: dict[str, Any]) -> str:
    n = res["params"]["images"]
    a = res["bare_forward"]["seconds"]
    lines = [
        f"N = {n} JPEGs 640x480, batch size {res['params']['batch_size']}, best of {res['params']['repeat']} run(s); "
        f"ratio = time / bare-forward time (target <= 1.05).",
        "",
        "| what | wall s | images/s | time ratio vs (a) | notes |",
        "|---|---:|---:|---:|---|",
        f"| (a) bare `model(pixel_values=...)` batch {res['params']['batch_size']} | {a:.2f} | {n / a:.1f} | 1.00 | pre-decoded + pre-processed, forward only |",
    ]
    for eb, r in res["bare_forward"]["other_batch_sizes"].items():
        lines.append(f"| (a') bare forward batch {eb} (for information) | {r['seconds']:.2f} | {r['images_per_second']:.1f} | {r['seconds'] / a:.3f} | same tensors, other batch size |")
    for r in res["featurestore_api"]:
        lines.append(
            f"| (b) `FeatureStore.extract` workers={r['workers']} dense={r['dense']} | {r['seconds']:.2f} | {r['images_per_second']:.1f} | "
            f"{r['seconds'] / a:.3f} | loop only {r['loop_seconds']:.2f} s (ratio {r['loop_seconds'] / a:.3f}); first run {r['first_run_wall_seconds']:.2f} s |"
        )
    for r in res.get("featurestore_api_other_batch_sizes", []):
        eb = str(r["batch_size"])
        same = res["bare_forward"]["other_batch_sizes"].get(eb)
        vs = f"; vs bare forward at batch {eb}: {r['seconds'] / same['seconds']:.3f}" if same else ""
        lines.append(
            f"| (b') `FeatureStore.extract` batch {eb} workers={r['workers']} dense={r['dense']} (for information) | {r['seconds']:.2f} | "
            f"{r['images_per_second']:.1f} | {r['seconds'] / a:.3f} | loop only {r['loop_seconds']:.2f} s{vs} |"
        )
    c = res["featurestore_cli"]
    lines.append(
        f"| (b) CLI `featurestore extract --json` workers={c['workers']} | {c['seconds']:.2f} | {c['images_per_second']:.1f} | "
        f"{c['seconds'] / a:.3f} | incl. process start + imports + model load; loop {c['loop_seconds']:.2f} s |"
    )
    p = res["pipeline"]
    for label, r in p["configs"].items():
        mark = " (default)" if label == "default" else (" (best)" if label == p["best"]["label"] else "")
        kw = "batch_size=1, lists out" if label == "default" else f"{label}, return_tensors=True"
        lines.append(f"| (c) `pipeline(...)` {kw}{mark} | {r['seconds']:.2f} | {r['images_per_second']:.1f} | {r['seconds'] / a:.3f} | model already loaded |")
    s = res["summary"]
    lines += ["", "Where the time of (b) goes (best run of each; forward = backbone forward + rows, measured by wrapping featurestore's functions):", "",
              "| (b) config | setup s | first forward starts at s | forward s | LanceDB writes s | waiting for loader s |", "|---|---:|---:|---:|---:|---:|"]
    for r in res["featurestore_api"] + res.get("featurestore_api_other_batch_sizes", []):
        b = r["breakdown_of_best"]
        lines.append(f"| batch {r['batch_size']} workers={r['workers']} dense={r['dense']} | {b['setup_seconds']:.2f} | {b['first_forward_after_seconds']:.2f} | "
                     f"{b['forward_seconds']:.2f} | {b['write_seconds']:.2f} | {b['waiting_for_loader_seconds']:.2f} |")
    lines += [
        "",
        f"Throughput (b) primary / (c) default: {s['throughput_ratio_b_vs_c_default']:.2f}x; "
        f"(b) primary / (c) best ({p['best']['label']}): {s['throughput_ratio_b_vs_c_best']:.2f}x.",
    ]
    if res.get("rss"):
        r = res["rss"]
        lines += [
            "",
            "| peak memory of `featurestore extract` | images | tree RSS sum MiB (psutil, 0.1 s) | main ru_maxrss MiB | processes at peak | wall s |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for label in ("1x", "big"):
            x = r[label]
            name = "1x" if label == "1x" else f"{r['scale']:g}x"
            lines.append(
                f"| {name} | {x['images']} | {x['peak_rss_tree_mib']:.0f} | {x['ru_maxrss_main_mib']:.0f} | "
                f"{x['processes_at_peak']} | {x['wall_seconds']:.1f} |"
            )
        lines.append(f"| ratio | {r['scale']:g} | {r['ratio_tree']:.3f} | {r['ratio_main_ru_maxrss']:.3f} | | |")
    wu = res.get("worker_unpickle_preprocessor")
    if wu:
        lines += ["", f"A worker's first step, unpickling the preprocessor ({wu['preprocessor_class']}) in a process with only the forkserver's "
                  f"preloads (torch, featurestore.loader): {wu['seconds']:.2f} s (imports transformers' image processing + torchvision)."]
    fc = res.get("foreign_cpu", {}).get("cpu_seconds_by_phase", {})
    if fc:
        lines += ["", "CPU seconds used by other processes (outside this benchmark) per phase: "
                  + ", ".join(f"{k} {v:.1f}" for k, v in fc.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=256, help="N images for the timing runs (default 256)")
    ap.add_argument("--batch-size", type=int, default=32, help="batch size of (a) and (b) (default 32)")
    ap.add_argument("--workers", default="1,2", help="comma list of featurestore worker counts; the first is the primary figure (default 1,2)")
    ap.add_argument("--bare-extra-batch-sizes", default="1,8", help="also time the bare forward at these batch sizes, for information (default 1,8; empty: none)")
    ap.add_argument("--api-extra-batch-sizes", default="8", help="also time FeatureStore.extract (first worker count, not dense) at these batch sizes, for information (default 8; empty: none)")
    ap.add_argument("--pipeline-batch-sizes", default="1,8,32,64", help="pipeline batch sizes to try besides its default (default 1,8,32,64)")
    ap.add_argument("--repeat", type=int, default=2, help="runs per timed configuration; the best is reported (default 2)")
    ap.add_argument("--rss-scale", type=int, default=10, help="the big RSS run uses scale*N images (default 10; 0 skips RSS)")
    ap.add_argument("--rss-images", type=int, default=None, help="image count of the big RSS run instead of scale*N")
    ap.add_argument("--poll", type=float, default=0.1, help="RSS polling interval in seconds (default 0.1)")
    ap.add_argument("--workdir", type=Path, default=None, help="where images, model and stores go (default: a temp dir, removed)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    ap.add_argument("--out", type=Path, default=Path("bench/out/results.json"))
    args = ap.parse_args(argv)

    n, bsz = args.images, args.batch_size
    workers = [int(w) for w in args.workers.split(",")]
    pipe_bs = [int(b) for b in args.pipeline_batch_sizes.split(",")]
    bare_extra = [int(b) for b in args.bare_extra_batch_sizes.split(",") if b.strip()]
    api_extra = [int(b) for b in args.api_extra_batch_sizes.split(",") if b.strip() and int(b) != bsz]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="fsbench-"))
    work.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {
        "params": {"images": n, "image_size": [640, 480], "batch_size": bsz, "workers": workers, "pipeline_batch_sizes": pipe_bs,
                   "repeat": args.repeat, "rss_scale": args.rss_scale, "poll_seconds": args.poll, "argv": sys.argv},
        "machine": machine_info(),
        "load_average": {"start": os.getloadavg()},
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    global FOREIGN
    FOREIGN = ForeignCPU().start()
    try:
        from featurestore.testing import write_images

        t0 = time.perf_counter()
        model_dir = make_model(work / "dinov2-vits14-random")
        img_n = work / "images" / "n"
        paths = write_images(img_n, n, size=(640, 480), seed=0)
        res["setup_seconds"] = time.perf_counter() - t0
        log(f"setup: model + {n} images in {work} ({res['setup_seconds']:.1f}s)")

        set_phase("a_bare_forward")
        res["bare_forward"] = bench_bare(model_dir, paths, bsz, args.repeat, bare_extra)
        res["load_average"]["after_a"] = os.getloadavg()

        res["featurestore_api"] = []
        for w in workers:
            for dense in (False, True):
                set_phase(f"b_api_workers{w}_dense{dense}")
                res["featurestore_api"].append(bench_api(work, img_n, model_dir, n, bsz, w, dense, args.repeat))
        res["featurestore_api_other_batch_sizes"] = []
        for eb in api_extra:
            set_phase(f"b_api_workers{workers[0]}_batch{eb}")
            res["featurestore_api_other_batch_sizes"].append(bench_api(work, img_n, model_dir, n, eb, workers[0], False, args.repeat))
        set_phase("b_cli")
        res["featurestore_cli"] = bench_cli(work, img_n, model_dir, n, bsz, workers[0], args.repeat)
        res["load_average"]["after_b"] = os.getloadavg()

        set_phase("b_worker_probe")
        res["worker_unpickle_preprocessor"] = bench_worker_unpickle(work, model_dir, args.repeat)
        set_phase("c_pipeline")
        res["pipeline"] = bench_pipeline(model_dir, paths, pipe_bs, args.repeat)
        res["load_average"]["after_c"] = os.getloadavg()

        # same model + preprocessing: CLS of the first image from (a), (b) and (c)
        a_cls = res["bare_forward"]["_cls0"]
        res["equivalence"] = {
            "max_abs_diff_cls_img0_featurestore_vs_bare": float((res["featurestore_api"][0]["_cls0"] - a_cls).abs().max()),
            "max_abs_diff_cls_img0_pipeline_vs_bare": float((res["pipeline"]["_cls0"] - a_cls).abs().max()),
            "cls_abs_max": float(a_cls.abs().max()),
            "pipeline_tokens_per_image": res["pipeline"]["output_per_image_shape"],
        }

        if args.rss_scale or args.rss_images:
            n_big = args.rss_images or args.rss_scale * n
            img_rest = work / "images" / "rest"
            t0 = time.perf_counter()
            set_phase("rss_setup")
            write_images(img_rest, n_big - n, size=(640, 480), seed=n)  # seeds n.. : content differs from images/n
            log(f"RSS: wrote {n_big - n} more images ({time.perf_counter() - t0:.1f}s)")
            primary = workers[0]
            set_phase("rss")
            res["rss"] = bench_rss(work, [img_n], [img_n, img_rest], n, n_big, model_dir, bsz, primary, args.poll)
            res["rss"]["workers"] = primary
            res["load_average"]["after_rss"] = os.getloadavg()

        a = res["bare_forward"]["seconds"]
        prim = res["featurestore_api"][0]
        res["summary"] = {
            "a_images_per_second": n / a,
            "b_primary": {"workers": prim["workers"], "dense": prim["dense"], "images_per_second": prim["images_per_second"]},
            "ratios_b_over_a": {
                f"api_workers{r['workers']}_dense{r['dense']}": {"wall": r["seconds"] / a, "loop": r["loop_seconds"] / a} for r in res["featurestore_api"]
            }
            | {f"cli_workers{res['featurestore_cli']['workers']}": {"wall": res["featurestore_cli"]["seconds"] / a,
                                                                     "loop": res["featurestore_cli"]["loop_seconds"] / a}},
            "throughput_ratio_b_vs_c_default": prim["images_per_second"] / res["pipeline"]["default"]["images_per_second"],
            "throughput_ratio_b_vs_c_best": prim["images_per_second"] / res["pipeline"]["best"]["images_per_second"],
            "target_b_over_a": 1.05,
        }
        res["total_seconds"] = time.perf_counter() - T_START
        res["load_average"]["end"] = os.getloadavg()
    finally:
        FOREIGN.stop()
        res["foreign_cpu"] = FOREIGN.report()
        res["contamination_guard"] = GUARD
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(strip_private(res), indent=2, default=str) + "\n")
    md = markdown(res)
    args.out.with_suffix(".md").write_text(md + "\n")
    print(md)
    log(f"done in {res['total_seconds']:.0f}s; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
