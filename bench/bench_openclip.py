"""Benchmark: featurestore with an open_clip model vs its bare forward vs a hand-written loop.

One run, the same N JPEGs (640x480, smooth random content) and the same open_clip
architecture with random weights (built from open_clip's own config, saved as a
``local-dir``; nothing downloaded; speed does not depend on the weight values):

  (a) bare forward  -- images decoded and preprocessed beforehand; only
                       ``model.encode_image(batch)`` under ``torch.inference_mode`` is timed:
                       the practical limit.
  (b) featurestore  -- ``FeatureStore(fresh).extract([dir], backbone="open_clip:local-dir:…")``,
                       wall time of the whole call (model load, hashing, workers, decode,
                       preprocess, forward, LanceDB writes), CLS only and with ``dense``.
  (c) open_clip loop-- what a user writes from open_clip's README: a torch DataLoader with
                       the same worker count over ``preprocess(Image.open(p).convert("RGB"))``,
                       ``encode_image``, features kept in memory and saved with ``np.save``
                       (model load included, as in (b)).
  search / classify -- ``fs.search`` / ``fs.classify`` end to end (reload + weight check +
                       text encoding + scan) and the scan alone vs numpy brute force.

Usage:
    python bench/bench_openclip.py --images 256 --model ViT-B-32 --out bench/out/openclip.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

T0 = time.perf_counter()


def log(msg: str) -> None:
    sys.stderr.write(f"[{time.perf_counter() - T0:7.1f}s load {os.getloadavg()[0]:4.2f}] {msg}\n")


def make_model(directory: Path, arch: str) -> Path:
    """Random-weight ``arch`` with open_clip's config and OpenAI preprocessing, as a local-dir."""
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.create_model(arch, load_weights=False)
    cfg = {"model_cfg": open_clip.get_model_config(arch), "preprocess_cfg": dict(open_clip.get_model_preprocess_cfg(model))}
    cfg["preprocess_cfg"] = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg["preprocess_cfg"].items()}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "open_clip_config.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "open_clip_model.safetensors"))
    return directory


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t, out


def bare_forward(model_dir: Path, files: list[Path], batch: int, device: torch.device) -> float:
    import open_clip
    from PIL import Image

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
    model = model.eval().to(device)
    px = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in files])  # (N, C, H, W), untimed
    with torch.inference_mode():
        model.encode_image(px[:batch].to(device))  # warm-up (cuDNN / allocator), untimed

        def run() -> None:
            for i in range(0, len(px), batch):
                model.encode_image(px[i : i + batch].to(device, non_blocking=True)).cpu()

        return timed(run)[0]


class _Files(torch.utils.data.Dataset):
    def __init__(self, files: list[Path], preprocess: Any):
        self.files, self.preprocess = files, preprocess

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        return self.preprocess(Image.open(self.files[i]).convert("RGB"))


def open_clip_loop(model_dir: Path, files: list[Path], batch: int, workers: int, device: torch.device, out: Path) -> float:
    import open_clip

    def run() -> None:
        model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
        model = model.eval().to(device)
        loader = torch.utils.data.DataLoader(_Files(files, preprocess), batch_size=batch, num_workers=workers)
        feats = []
        with torch.inference_mode():
            for px in loader:
                feats.append(model.encode_image(px.to(device, non_blocking=True)).float().cpu().numpy())
        np.save(out, np.concatenate(feats))

    return timed(run)[0]


def featurestore_extract(model_dir: Path, img_dir: Path, store: Path, batch: int, workers: int, dense: bool) -> tuple[float, Any]:
    from featurestore import FeatureStore

    fs = FeatureStore(store)
    return timed(lambda: fs.extract([img_dir], backbone=f"open_clip:local-dir:{model_dir}", dense=dense, batch_size=batch, workers=workers))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--model", default="ViT-B-32", help="open_clip architecture (random weights)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2, help="repetitions of (a), (b), (c); the median is reported")
    ap.add_argument("--out", type=Path, default=Path("bench/out/openclip.json"))
    args = ap.parse_args()

    from featurestore.testing import write_images

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    work = Path(tempfile.mkdtemp(prefix="fs_bench_oc_"))
    img_dir = work / "imgs"
    files = write_images(img_dir, args.images, size=(640, 480), fmt="JPEG")
    model_dir = make_model(work / "model", args.model)
    log(f"{args.images} images, {args.model} (random weights), device {device}, batch {args.batch}, workers {args.workers}")

    res: dict[str, list[float]] = {"bare": [], "featurestore": [], "featurestore_dense": [], "open_clip_loop": []}
    run = 0
    summary = None
    for r in range(args.repeat):
        res["bare"].append(bare_forward(model_dir, files, args.batch, device))
        log(f"bare {res['bare'][-1]:.2f}s")
        for key, dense in (("featurestore", False), ("featurestore_dense", True)):
            run += 1
            t, summary = featurestore_extract(model_dir, img_dir, work / f"store{run}", args.batch, args.workers, dense)
            if summary.written != args.images:
                raise SystemExit(f"featurestore wrote {summary.written} of {args.images}: {summary.error_samples}")
            res[key].append(t)
            log(f"{key} {t:.2f}s")
        res["open_clip_loop"].append(open_clip_loop(model_dir, files, args.batch, args.workers, device, work / f"loop{r}.npy"))
        log(f"open_clip loop {res['open_clip_loop'][-1]:.2f}s")

    med = {k: statistics.median(v) for k, v in res.items()}
    # downstream: search / classify on the last CLS-only store
    from featurestore import FeatureStore

    fs = FeatureStore(work / "store1")
    table_name = fs.models()[0]["table"]
    t_search, hits = timed(lambda: fs.search(table_name, "a photo of a dog", k=10, device=str(device)))
    t_classify, rows = timed(lambda: list(fs.classify(table_name, "cat,dog,car,tree,house", device=str(device))))
    from featurestore.zeroshot import search, text_embeddings

    _card, bb = fs.text_backbone(table_name, device=str(device))
    q = text_embeddings(bb, ["a photo of a dog"])[0]
    table = fs.table(table_name)
    t_scan, _ = timed(lambda: search(table, q, 10))
    cls = np.asarray(table.search().select(["cls"]).limit(None).to_arrow().column("cls").to_pylist(), np.float32)

    def brute() -> np.ndarray:
        c = cls / np.linalg.norm(cls, axis=1, keepdims=True)
        return np.argsort(-(c @ q))[:10]

    t_brute, _ = timed(brute)
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "device": str(device),
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "torch": torch.__version__},
        "config": vars(args) | {"out": str(args.out)},
        "seconds": res,
        "median_seconds": med,
        "ratios": {
            "featurestore / bare": med["featurestore"] / med["bare"],
            "featurestore_dense / bare": med["featurestore_dense"] / med["bare"],
            "open_clip_loop / bare": med["open_clip_loop"] / med["bare"],
            "featurestore / open_clip_loop": med["featurestore"] / med["open_clip_loop"],
        },
        "images_per_second": {k: args.images / v for k, v in med.items()},
        "search": {"end_to_end_s": t_search, "scan_s": t_scan, "numpy_brute_force_s": t_brute, "hits": len(hits)},
        "classify": {"end_to_end_s": t_classify, "rows": len(rows), "labels": 5},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("median_seconds", "ratios", "images_per_second", "search", "classify")}, indent=2))


if __name__ == "__main__":
    main()
