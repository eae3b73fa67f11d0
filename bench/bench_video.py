"""Benchmark: featurestore.video.iter_frames vs a naive decode-everything loop.

One run, one 60 s 1280x720 30 fps H.264 video (libx264 ultrafast, x264's default key-frame
interval; a panning smooth gradient with per-frame noise, about 3 Mbit/s), written once
with PyAV and cached:

  (a) naive loop       -- ``for f in container.decode(video=0): f.to_image()``: every frame
                          decoded and converted to an RGB PIL image, as a user would write it
                          (PyAV's default codec threading; (a') the same with
                          ``thread_type = "AUTO"``).
  (a2) naive, selected -- every frame decoded, only the frames fps:1 picks converted: the best
                          a loop that never seeks can do.
  (b) iter_frames(uniform:8)   (c) iter_frames(fps:1)   (d) iter_frames(every:1)

Each timing is the best of ``--repeat`` runs in a fresh child process, once with glibc's
malloc defaults and once with fixed mmap/trim thresholds (see ALLOCATORS); ratios are
(a) / (x). ``foreign_cpu_s`` is
the CPU time other processes used during each run: timings are only comparable when it
is near 0 (the machine may be shared). The frames (c) returns
are checked pixel-identical to the naive loop's frames at the same timestamps.

Then the peak RSS of a child process running ``iter_frames(fps:1)`` to the end (psutil,
polled every 20 ms) over the 60 s video and over a 10-minute video (low-complexity content:
the same pan without noise, ultrafast), against a child that only imports and opens the
file. A streaming reader stays flat: the 10-minute peak should match the 60 s one.

Usage:
    python bench/bench_video.py --out bench/out/video.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

T0 = time.perf_counter()


def log(msg: str) -> None:
    sys.stderr.write(f"[{time.perf_counter() - T0:7.1f}s load {os.getloadavg()[0]:4.2f}] {msg}\n")


def make_video(path: Path, *, seconds: int, size: tuple[int, int], noise: bool, fps: int = 30) -> dict[str, Any]:
    """Write (or reuse) a libx264 ultrafast video of a panning gradient; returns its facts."""
    import av

    from featurestore.testing import smooth_image

    params = {"seconds": seconds, "size": list(size), "noise": noise, "fps": fps, "version": 1}
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists() and json.loads(meta_path.read_text()).get("params") == params:
        return json.loads(meta_path.read_text())
    w, h = size
    base = smooth_image(2 * w, 2 * h, 7)
    rng = np.random.default_rng(0)
    noises = [rng.integers(-9, 10, (h, w, 3), dtype=np.int16) for _ in range(4)] if noise else []
    t = time.perf_counter()
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.options = {"preset": "ultrafast", "crf": "23"}  # keyint: x264 default
        for i in range(seconds * fps):
            x, y = int(w / 2 + w / 2 * np.sin(i / 90)), int(h / 2 + h / 2 * np.sin(i / 130))
            a = base[y : y + h, x : x + w]
            if noise:
                a = np.clip(a + noises[i % 4], 0, 255).astype(np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(a), format="rgb24")))
        out.mux(stream.encode())
    encode_s = time.perf_counter() - t
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        keyframes = sum(1 for e in s.index_entries if e.is_keyframe)
        frames = len(s.index_entries)
    meta = {
        "params": params,
        "frames": frames,
        "keyframes": keyframes,
        "bytes": path.stat().st_size,
        "mbit_per_s": round(path.stat().st_size * 8 / seconds / 1e6, 2),
        "encode_s": round(encode_s, 1),
    }
    meta_path.write_text(json.dumps(meta))
    return meta


def naive(path: Path, threads: str | None = None) -> int:
    import av

    n = 0
    with av.open(str(path)) as c:
        if threads:
            c.streams.video[0].thread_type = threads
        for frame in c.decode(video=0):
            frame.to_image()
            n += 1
    return n


def naive_selected(path: Path, want: dict[int, str]) -> int:
    """Decode all, convert only the frames at ``want``'s pts; check they equal iter_frames'."""
    import av

    n = 0
    with av.open(str(path)) as c:
        for frame in c.decode(video=0):
            if frame.pts in want:
                digest = hashlib.sha256(frame.to_image().tobytes()).hexdigest()
                if digest != want[frame.pts]:
                    raise SystemExit(f"iter_frames frame at pts {frame.pts} differs from the naive loop's")
                n += 1
    return n


def sampled(path: Path, sample: str) -> int:
    from featurestore.video import iter_frames, parse_sample

    return sum(1 for _ in iter_frames(path, parse_sample(sample)))


def busy_cpu_s() -> tuple[float, float]:
    """(CPU seconds used by the whole machine, by this process) so far."""
    import psutil

    m, me = psutil.cpu_times(), psutil.Process().cpu_times()
    return m.user + m.nice + m.system + m.irq + m.softirq, me.user + me.system


def best(fn: Callable[[], int], repeat: int, label: str) -> dict[str, Any]:
    """Best of ``repeat`` runs, and the CPU other processes used during each (contention)."""
    times, foreign, n = [], [], 0
    for _ in range(repeat):
        machine0, me0 = busy_cpu_s()
        t = time.perf_counter()
        n = fn()
        times.append(time.perf_counter() - t)
        machine1, me1 = busy_cpu_s()
        foreign.append(round(max(0.0, (machine1 - machine0) - (me1 - me0)), 2))
        log(f"{label}: {times[-1]:.2f} s, {n} frames, other processes {foreign[-1]:.2f} CPU-s")
    return {"seconds": min(times), "runs": times, "frames": n, "foreign_cpu_s": foreign}


CHILD = """
import sys
from featurestore.video import iter_frames, parse_sample
import av, PIL.Image
if sys.argv[2] == "none":
    av.open(sys.argv[1]).close()
else:
    n = sum(1 for _ in iter_frames(sys.argv[1], parse_sample(sys.argv[2])))
    print(n)
"""


def peak_rss(path: Path, sample: str) -> dict[str, Any]:
    """Peak RSS (MiB) of a child process sampling ``path``, polled every 20 ms."""
    import psutil

    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path), sample], stdout=subprocess.PIPE)
    ps = psutil.Process(proc.pid)
    peak, timeline = 0, []
    while proc.poll() is None:
        try:
            rss = ps.memory_info().rss
        except psutil.Error:
            break
        peak = max(peak, rss)
        timeline.append((round(time.perf_counter() - t, 2), round(rss / 2**20, 1)))
        time.sleep(0.02)
    out = proc.communicate()[0].decode().strip()
    if proc.returncode:
        raise SystemExit(f"child failed on {path} {sample}")
    step = max(1, len(timeline) // 20)  # keep ~20 points of the timeline in the JSON
    return {
        "peak_mib": round(peak / 2**20, 1),
        "frames": int(out) if out else 0,
        "wall_s": round(time.perf_counter() - t, 1),
        "timeline_s_mib": timeline[::step],
    }


def machine_info() -> dict[str, Any]:
    import av
    import PIL

    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "av": av.__version__,
        "ffmpeg": str(getattr(av, "ffmpeg_version_info", "")),
        "pillow": PIL.__version__,
        "numpy": np.__version__,
    }


# glibc returns freed buffers above its mmap threshold to the kernel, so converting
# 720p frames (2.7 MB each) can cost a page fault per 4 KiB on every frame, or not,
# depending on the heap's history: the same loop took 4 s or 8 s here. Timings run in
# fresh child processes, once with glibc's defaults and once with fixed thresholds.
ALLOCATORS = {
    "glibc_default": {},
    "glibc_fixed_thresholds": {"MALLOC_MMAP_THRESHOLD_": str(64 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(256 * 2**20)},
}


def timings(clip: Path, repeat: int) -> dict[str, Any]:
    """Phase run in a child process: every loop on the clip, best of ``repeat``."""
    from featurestore.video import iter_frames, parse_sample

    want = {f.pts: hashlib.sha256(f.image.tobytes()).hexdigest() for f in iter_frames(clip, parse_sample("fps:1"))}
    t: dict[str, Any] = {}
    t["a_naive"] = best(lambda: naive(clip), repeat, "(a) naive")
    t["a_naive_threads_auto"] = best(lambda: naive(clip, "AUTO"), repeat, "(a') naive, AUTO threads")
    t["a2_naive_convert_selected"] = best(lambda: naive_selected(clip, want), repeat, "(a2) naive, convert selected")
    for key, sample in [("b_uniform8", "uniform:8"), ("c_fps1", "fps:1"), ("d_every1", "every:1")]:
        t[key] = best(lambda s=sample: sampled(clip, s), repeat, f"iter_frames({sample})")
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench/out/video.json"))
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "featurestore-bench-video")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--long-minutes", type=int, default=10)
    ap.add_argument("--long-size", default="1280x720", help="WxH of the long video (memory test)")
    ap.add_argument("--timings-of", type=Path, help=argparse.SUPPRESS)  # the child phase
    args = ap.parse_args()
    if args.timings_of:
        print(json.dumps(timings(args.timings_of, args.repeat)))
        return
    args.cache.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"machine": machine_info(), "load_average": {"start": os.getloadavg()}}

    clip = args.cache / "clip_60s_720p.mp4"
    log("writing / reusing the 60 s clip")
    res["clip"] = make_video(clip, seconds=60, size=(1280, 720), noise=True)
    w, h = (int(v) for v in args.long_size.split("x"))
    long = args.cache / f"long_{args.long_minutes}min_{w}x{h}.mp4"
    log(f"writing / reusing the {args.long_minutes}-minute video")
    res["long"] = make_video(long, seconds=60 * args.long_minutes, size=(w, h), noise=False)

    res["timings"], res["ratios_naive_over"] = {}, {}
    for name, env in ALLOCATORS.items():
        log(f"timings, allocator: {name}")
        cmd = [sys.executable, __file__, "--timings-of", str(clip), "--repeat", str(args.repeat)]
        out = subprocess.run(cmd, env={**os.environ, **env}, check=True, stdout=subprocess.PIPE).stdout
        t = res["timings"][name] = json.loads(out)
        res["ratios_naive_over"][name] = {k: round(t["a_naive"]["seconds"] / v["seconds"], 1) for k, v in t.items()}
    res["allocator_env"] = ALLOCATORS
    res["load_average"]["after_timings"] = os.getloadavg()

    log("peak RSS")
    res["rss"] = {
        "imports_and_open_60s": peak_rss(clip, "none"),
        "fps1_60s": peak_rss(clip, "fps:1"),
        "fps1_long": peak_rss(long, "fps:1"),
    }
    res["load_average"]["end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))

    print(f"60 s 1280x720 30 fps clip: {res['clip']['frames']} frames, {res['clip']['keyframes']} key frames, "
          f"{res['clip']['mbit_per_s']} Mbit/s")
    names = list(ALLOCATORS)
    print("| loop | frames out | " + " | ".join(f"{n}: best of {args.repeat} (s), naive / this" for n in names) + " |")
    print("|---|---:|" + "---:|" * len(names))
    for k, v in res["timings"][names[0]].items():
        cells = [f"{res['timings'][n][k]['seconds']:.2f} s, {res['ratios_naive_over'][n][k]}x" for n in names]
        print(f"| {k} | {v['frames']} | " + " | ".join(cells) + " |")
    for k, v in res["rss"].items():
        print(f"peak RSS {k}: {v['peak_mib']} MiB ({v['frames']} frames, {v['wall_s']} s)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
