"""Benchmark: start-up costs of the CLI. Catalog commands, fixed overhead of a small extraction,
time to fail offline.

Everything runs as a user runs it: a fresh ``python`` process per command, so imports count.

  catalog   ``models``, ``errors``, ``clips``, ``versions``, ``manifest``, ``backbones``,
            ``plugins``, ``--help`` on a store of N images made with a tiny random DINOv2:
            median wall time and CPU time (user + sys) of ``--runs`` runs, with the catalog
            cache (second and later reads) and without it (``FEATURESTORE_CATALOG_CACHE=0``).
  imports   ``python -X importtime`` of ``featurestore models`` without the cache: the
            packages that cost most (cumulative, top level).
  extract   ``featurestore extract DIR --backbone hf:<tiny> --store <fresh>`` on N images,
            ``--workers 2`` (the default) and ``--workers 0``: median wall and CPU, and one
            run split into phases (timestamps around the pipeline's own functions).
  offline   ``featurestore extract`` of a named backbone with an empty hub cache, on a machine
            that cannot reach the hub (or ``--endpoint http://127.0.0.1:9``, a closed port):
            seconds until it exits with the error.

``--code DIR`` measures another checkout (e.g. ``git worktree add /tmp/old <commit>``) with
this script: its directory (and its plugins) go first on the subprocesses' PYTHONPATH.

Usage:
    python bench/bench_startup.py --runs 5 --out bench/out/startup.json
    python bench/bench_startup.py --runs 5 --code /tmp/old --out bench/out/startup_before.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ("featurestore-transformers", "featurestore-openclip", "featurestore-timm", "featurestore-example", "featurestore-temporal", "featurestore-adapters")
OFFLINE = ("dinov2_vits14", "clip_vitb32_openai", "resnet50", "timm:resnet18")

# One extraction, in-process, with a timestamp around each stage of the pipeline. Stages that
# an older checkout does not have are left out. Printed as JSON on the last line.
PHASES = r"""
import json, sys, time
T0 = time.perf_counter()
marks = []
def mark(name):
    marks.append((name, time.perf_counter() - T0))
import featurestore.cli as cli
mark("import featurestore.cli")
import featurestore.api as api
mark("import featurestore.api")
import featurestore.extract as ex
mark("import torch + featurestore.extract")
from featurestore.plugins import get_host
get_host()
mark("plugin host")

def wrap(owner, attr, label):
    import inspect
    fn = getattr(owner, attr, None)
    if fn is None:
        return
    def inner(*a, **k):
        mark(label + " (start)")
        out = fn(*a, **k)
        mark(label)
        return out
    static = isinstance(inspect.getattr_static(owner, attr), staticmethod)
    setattr(owner, attr, staticmethod(inner) if static else inner)

wrap(api, "create_backbone", "model library + weights")
wrap(ex, "start_worker_server", "forkserver started (not waited for)")
wrap(ex, "build_card", "model hash")
wrap(ex.Store, "register_model", "store: import lancedb, open/create tables")
wrap(ex.Store, "existing_ids", "ids already stored")
make_loader = ex.make_loader
class Timed:
    def __init__(self, loader): self.loader = loader
    def __iter__(self):
        mark("loop (start)")
        first = True
        for b in self.loader:
            if first:
                mark("first batch (worker start, decode)")
                first = False
            yield b
        mark("remaining batches + worker shutdown")
ex.make_loader = lambda *a, **k: Timed(make_loader(*a, **k))
rc = cli.main(sys.argv[1:])
mark("tag, summary, printed")
print("\n" + json.dumps({"rc": rc, "marks": marks}))
"""


def log(msg: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.2f}] {msg}\n")


def env_for(code: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(code), *(str(code / "plugins" / p) for p in PLUGINS)])
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "FEATURESTORE_CATALOG_CACHE"):
        env.pop(k, None)
    return env


def run(args: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, subprocess.CompletedProcess]:
    """Wall and CPU seconds (user + sys of the process and its children) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, p


def cli(*args: str) -> list[str]:
    """What the ``featurestore`` console script runs (``console_main`` where the code has one)."""
    code = "import sys, featurestore.cli as c; f = getattr(c, 'console_main', None); f() if f else sys.exit(c.main())"
    return [sys.executable, "-c", code, *args]


def median_of(runs: int, args: list[str], env: dict[str, str], cwd: Path, *, ok: int = 0) -> dict[str, Any]:
    walls, cpus = [], []
    for _ in range(runs):
        wall, cpu, p = run(args, env, cwd)
        if p.returncode != ok:
            raise SystemExit(f"{args} exited {p.returncode}:\n{p.stderr[-3000:]}")
        walls.append(wall)
        cpus.append(cpu)
    return {"wall_s": round(statistics.median(walls), 3), "cpu_s": round(statistics.median(cpus), 3), "walls": [round(w, 3) for w in walls]}


def setup(work: Path, images: int) -> tuple[Path, Path]:
    from featurestore.testing import write_images
    from featurestore_transformers.testing import make_tiny_model

    model = make_tiny_model(work / "tiny_dinov2", "dinov2")
    write_images(work / "images", images)
    return model, work / "images"


def importtime(env: dict[str, str], cwd: Path, store: Path, top: int = 12) -> list[dict[str, Any]]:
    e = dict(env, FEATURESTORE_CATALOG_CACHE="0")
    code = "import sys; from featurestore.cli import main; main(['models', '-s', sys.argv[1], '--json'])"
    p = subprocess.run([sys.executable, "-X", "importtime", "-c", code, str(store)], env=e, cwd=cwd, capture_output=True, text=True, timeout=600)
    rows = []
    for line in p.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m and len(m.group(3)) == 1:  # top-level imports of the command
            rows.append({"module": m.group(4), "cumulative_s": int(m.group(2)) / 1e6})
    rows.sort(key=lambda r: -r["cumulative_s"])
    return [{**r, "cumulative_s": round(r["cumulative_s"], 3)} for r in rows[:top]]


def phases(env: dict[str, str], cwd: Path, model: Path, images: Path, store: Path, workers: int) -> dict[str, Any]:
    args = ["extract", str(images), "--backbone", f"hf:{model}", "--store", str(store), "--workers", str(workers), "--json"]
    wall, cpu, p = run([sys.executable, "-c", PHASES, *args], env, cwd)
    data = json.loads(p.stdout.strip().splitlines()[-1])
    steps, prev = [], 0.0
    for name, t in data["marks"]:
        if not name.endswith("(start)"):
            steps.append({"phase": name, "seconds": round(t - prev, 3)})
        prev = t
    inside = data["marks"][-1][1]
    steps.append({"phase": "interpreter start + exit (workers, forkserver, torch teardown)", "seconds": round(wall - inside, 3)})
    return {"workers": workers, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "steps": steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--images", type=int, default=30)
    ap.add_argument("--code", type=Path, default=ROOT, help="checkout whose featurestore is measured (default: this one)")
    ap.add_argument("--offline-runs", type=int, default=1, help="runs per backbone of the offline failure (0: skip)")
    ap.add_argument("--endpoint", help="HF_ENDPOINT for the offline runs (default: the real hub, run where it cannot be reached)")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: catalog,imports,extract,offline")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "startup.json")
    a = ap.parse_args()
    skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    code = a.code.resolve()
    env = env_for(code)
    res: dict[str, Any] = {
        "code": str(code),
        "commit": subprocess.run(["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip() or None,
        "runs": a.runs,
        "images": a.images,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "load_start": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory(prefix="bench_startup_") as tmp:
        work = Path(tmp)
        model, images = setup(work, a.images)
        store = work / "store.lance"
        wall, cpu, p = run(cli("extract", str(images), "--backbone", f"hf:{model}", "--store", str(store), "--workers", "0", "--json"), env, work)
        if p.returncode != 0:
            raise SystemExit(p.stderr[-3000:])
        table = json.loads(p.stdout)["table"]
        if "catalog" not in skip:
            commands = {
                "models": ["models", "-s", str(store)],
                "errors": ["errors", "-s", str(store)],
                "clips": ["clips", "-s", str(store)],
                "versions": ["versions", "-s", str(store), "-m", table],
                "manifest": ["manifest", "-s", str(store)],
                "backbones": ["backbones"],
                "plugins": ["plugins"],
                "--help": ["--help"],
            }
            res["catalog"] = {}
            for name, args in commands.items():
                log(f"catalog {name}")
                row = {"no_cache": median_of(a.runs, cli(*args), dict(env, FEATURESTORE_CATALOG_CACHE="0"), work)}
                if "-s" in args:
                    run(cli(*args), env, work)  # fills the cache (where the code has one)
                    row["cached"] = median_of(a.runs, cli(*args), env, work)
                res["catalog"][name] = row
        if "imports" not in skip:
            log("importtime")
            res["importtime_models"] = importtime(env, work, store)
        if "extract" not in skip:
            res["extract"] = {}
            for workers in (2, 0):
                log(f"extract --workers {workers}")
                walls, cpus = [], []
                for i in range(a.runs):
                    args = cli("extract", str(images), "--backbone", f"hf:{model}", "--store", str(work / f"x{workers}_{i}"), "--workers", str(workers), "--json")
                    wall, cpu, p = run(args, env, work)
                    if p.returncode != 0:
                        raise SystemExit(p.stderr[-3000:])
                    walls.append(wall)
                    cpus.append(cpu)
                res["extract"][f"workers_{workers}"] = {
                    "wall_s": round(statistics.median(walls), 3),
                    "cpu_s": round(statistics.median(cpus), 3),
                    "walls": [round(w, 3) for w in walls],
                    "phases": phases(env, work, model, images, work / f"phases{workers}", workers),
                }
        if "offline" not in skip and a.offline_runs:
            res["offline"] = {}
            off = dict(env, HF_HUB_CACHE=str(work / "empty-hub-cache"), HF_HOME=str(work / "hf-home"))
            if a.endpoint:
                off["HF_ENDPOINT"] = a.endpoint
            for name in OFFLINE:
                log(f"offline {name}")
                res["offline"][name] = median_of(a.offline_runs, cli("extract", str(images), "--backbone", name, "--store", str(work / "off")), off, work, ok=2)
    res["load_end"] = os.getloadavg()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
