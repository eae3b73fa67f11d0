"""Benchmark: storage against quality for each domain adapter.

Data: ``--per-class`` images of each of 6 generated classes (sine gratings at 3 orientations
x 2 periods, with random phase, colours, ±10° and ±10% jitter and pixel noise), written as
PNG by Pillow. Backbone: timm ``resnet18`` with seeded random
weights saved to a safetensors file and loaded through the timm plugin (``timm:resnet18
--weights FILE``): 512-d pooled features. Nothing is downloaded.

For the raw table and for each adapter table (fitted on every stored row without labels,
except ``linear-head`` which is fitted on the labels of a seeded half and scored on the other
half):

- linear and k-NN probe accuracy (``featurestore.probe.probe``, 5 stratified folds);
- recall@10 of cosine neighbours against the raw features' neighbours (how much of the
  retrieval result an adapter keeps), exact, every row a query;
- bytes per image of the stored vector column (``cls`` float32 or ``codes``);
- fit and apply seconds.

Usage:
    python bench/bench_adapters.py --out bench/out/adapters.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from featurestore import FeatureStore
from featurestore.probe import probe
from featurestore.readers import FeatureDataset

# oriented gratings: 3 orientations x 2 periods (random phase, colours, contrast and noise),
# which even a randomly initialised CNN separates well above chance
CLASSES = [f"deg{a}_p{p}" for a in (0, 60, 120) for p in (6, 14)]
ADAPTERS = [
    "pca-whiten:dim=64",
    "pca-whiten",
    "project:dim=64",
    "project:dim=16",
    "quantize:method=int8",
    "quantize:method=pq,m=64",
    "quantize:method=pq,m=16",
]


def draw(kind: str, rng: np.random.Generator, size: int = 96) -> Image.Image:
    angle, period = (int(v) for v in kind.removeprefix("deg").split("_p"))
    t = np.deg2rad(angle + rng.uniform(-10, 10))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    wave = np.sin(2 * np.pi * (xx * np.cos(t) + yy * np.sin(t)) / (period * rng.uniform(0.9, 1.1)) + rng.uniform(0, 2 * np.pi))
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)  # the two colours the grating runs between
    px = a + (b - a) * (0.5 + 0.5 * wave[..., None]) + rng.normal(0, 25, (size, size, 3))
    return Image.fromarray(np.clip(px, 0, 255).astype(np.uint8))


def make_images(root: Path, per_class: int, seed: int) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    out = []
    for c in CLASSES:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            p = root / c / f"{i:04d}.png"
            draw(c, rng).save(p)
            out.append((str(p), c))
    return out


def make_weights(path: Path, seed: int) -> None:
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = timm.create_model("resnet18", pretrained=False, num_classes=0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def vectors(store: Path, table: str) -> tuple[list[str], np.ndarray]:
    got = FeatureDataset(store, table, columns=["cls"]).to_numpy(["cls"])
    return list(got["id"]), got["cls"].astype(np.float32)


def neighbours(x: np.ndarray, k: int) -> np.ndarray:
    u = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    s = u @ u.T
    np.fill_diagonal(s, -np.inf)  # a row is not its own neighbour
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


def recall_vs(raw_nn: np.ndarray, x: np.ndarray, k: int) -> float:
    nn = neighbours(x, k)
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(raw_nn, nn)]))


def bytes_per_image(fs: FeatureStore, table: str) -> int:
    schema = fs.table(table).schema
    col = "cls" if "cls" in schema.names else "codes"
    t = schema.field(col).type
    return t.list_size * t.value_type.bit_width // 8


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-class", type=int, default=150)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--dir", help="working directory (default: a temporary one)")
    p.add_argument("--out", default="bench/out/adapters.json")
    args = p.parse_args()
    t_all = time.perf_counter()
    work = Path(args.dir or tempfile.mkdtemp(prefix="fs_bench_adapters_"))
    items = make_images(work / "images", args.per_class, args.seed)
    make_weights(work / "resnet18.safetensors", args.seed)
    fs = FeatureStore(work / "store")
    t0 = time.perf_counter()
    s = fs.extract([work / "images"], backbone="timm:resnet18", weights=str(work / "resnet18.safetensors"), workers=args.workers)
    extract_s = time.perf_counter() - t0
    assert s.written == len(items) and s.errors == 0, s
    labels = work / "labels.csv"
    labels.write_text("uri,label\n" + "".join(f"{u},{c}\n" for u, c in items))
    rng = np.random.default_rng(args.seed)
    train = set(rng.choice(len(items), len(items) // 2, replace=False).tolist())
    train_labels = work / "train.csv"
    train_labels.write_text("uri,label\n" + "".join(f"{u},{c}\n" for i, (u, c) in enumerate(items) if i in train))
    label_of = {u: c for u, c in items}
    test_uris = {u for i, (u, _) in enumerate(items) if i not in train}

    ids, raw = vectors(work / "store", s.table)
    raw_nn = neighbours(raw, 10)
    rows: list[dict[str, Any]] = []

    def score(name: str, table: str, fit_s: float | None, apply_s: float | None, metrics: dict[str, Any] | None) -> None:
        got_ids, x = vectors(work / "store", table)
        where = {i: n for n, i in enumerate(got_ids)}
        assert sorted(where) == sorted(ids), "an adapted table holds exactly the raw table's rows"
        x = x[[where[i] for i in ids]]  # raw row order (merge_insert does not keep write order)
        pr = probe(work / "store", table, labels, folds=5, seed=args.seed)
        rows.append(
            {
                "adapter": name,
                "table": table,
                "dim": int(x.shape[1]),
                "bytes_per_image": bytes_per_image(fs, table),
                "linear_probe": pr.linear["accuracy_mean"],
                "knn_probe": pr.knn["accuracy_mean"],
                "recall@10_vs_raw": recall_vs(raw_nn, x, 10),
                "fit_s": fit_s,
                "apply_s": apply_s,
                "fit_metrics": {k: v for k, v in (metrics or {}).items() if k != "classes"},
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr)

    score("raw", s.table, None, None, None)
    for spec in ADAPTERS:
        t0 = time.perf_counter()
        card = fs.fit_adapter(s.table, spec)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        fs.apply_adapter(card.adapter_hash)
        score(spec, card.table, fit_s, time.perf_counter() - t0, card.metrics)

    # the trained head: fitted on half the labels, scored on the other half
    t0 = time.perf_counter()
    head = fs.fit_adapter(s.table, "linear-head", labels=train_labels)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    fs.apply_adapter(head.adapter_hash)
    apply_s = time.perf_counter() - t0
    got = FeatureDataset(work / "store", head.table, columns=["cls", "uri"]).to_numpy(["cls", "uri"])
    pred = [head.classes[int(i)] for i in np.argmax(got["cls"], axis=1)]
    held = [p == label_of[u] for p, u in zip(pred, got["uri"]) if u in test_uris]
    rows.append(
        {
            "adapter": "linear-head (fit on half the labels)",
            "table": head.table,
            "dim": head.out_dim,
            "bytes_per_image": bytes_per_image(fs, head.table),
            "held_out_accuracy": float(np.mean(held)),
            "held_out_rows": len(held),
            "fit_s": fit_s,
            "apply_s": apply_s,
            "fit_metrics": {k: v for k, v in head.metrics.items() if k != "classes"},
        }
    )
    print(json.dumps(rows[-1]), file=sys.stderr)

    result = {
        "when": datetime.now(timezone.utc).isoformat(),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "args": vars(args),
        "images": len(items),
        "classes": CLASSES,
        "backbone": "timm:resnet18 (seeded random weights)",
        "extract_s": extract_s,
        "rows": rows,
        "seconds": time.perf_counter() - t_all,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    md = [
        "| adapter | dim | bytes / image | linear probe | k-NN probe | recall@10 vs raw | fit s | apply s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "held_out_accuracy" in r:
            md.append(
                f"| {r['adapter']} | {r['dim']} | {r['bytes_per_image']} | held-out accuracy {r['held_out_accuracy']:.3f} "
                f"({r['held_out_rows']} rows) | | | {r['fit_s']:.2f} | {r['apply_s']:.2f} |"
            )
        else:
            fit = f"{r['fit_s']:.2f}" if r["fit_s"] is not None else ""
            app = f"{r['apply_s']:.2f}" if r["apply_s"] is not None else ""
            md.append(
                f"| {r['adapter']} | {r['dim']} | {r['bytes_per_image']} | {r['linear_probe']:.3f} | {r['knn_probe']:.3f} | "
                f"{r['recall@10_vs_raw']:.3f} | {fit} | {app} |"
            )
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
