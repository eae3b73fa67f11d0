"""Does the batch size change the features, and what would batch invariance cost?

Runs the same preprocessed images through a backbone (loaded through featurestore's own
``create_backbone``, the path ``extract`` uses) at several batch sizes and thread counts,
and reports, against batch size 1:

- how many rows differ in any bit, and the largest absolute difference in ``cls``;
- the forward time per image of each batch size, so the cost of the one way to be batch
  invariant on every BLAS (one image per forward) reads as a ratio to batch 32.

The model is a ViT-S/14-sized DINOv2 with random weights (nothing is downloaded), as in
``bench_extract.py``.

    python bench/bench_batch_invariance.py --images 64 --out bench/out/batch_invariance.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_extract import make_model  # noqa: E402


def forward_all(backbone, pixels: torch.Tensor, batch_size: int) -> tuple[np.ndarray, float]:
    """``cls`` of every image at this batch size, and the forward seconds (best of 2)."""
    best = float("inf")
    out = None
    for _ in range(2):
        parts = []
        t0 = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, len(pixels), batch_size):
                parts.append(backbone.forward(pixels[i : i + batch_size], dense=False).cls.float().numpy())
        best = min(best, time.perf_counter() - t0)
        out = np.concatenate(parts)
    return out, best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch-sizes", default="1,2,4,8,32,64")
    ap.add_argument("--out", type=Path, default=Path("bench/out/batch_invariance.json"))
    args = ap.parse_args(argv)

    from featurestore.api import create_backbone
    from featurestore.media import decode_image
    from featurestore.testing import write_images

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_model(Path(tmp) / "model")
        paths = write_images(Path(tmp) / "img", args.images, size=(320, 240), seed=3)
        backbone = create_backbone(f"hf:{model_dir}")
        pre = backbone.preprocessor()
        pixels = torch.stack([pre(decode_image(p.read_bytes(), str(p))).pixel_values for p in paths])  # (N, C, H, W)

    sizes = [int(s) for s in args.batch_sizes.split(",")]
    results = {"images": args.images, "machine": platform.platform(), "torch": torch.__version__, "runs": []}
    for threads in sorted({1, torch.get_num_threads()}):
        torch.set_num_threads(threads)
        ref, ref_s = forward_all(backbone, pixels, 1)
        for bs in sizes:
            cls, secs = (ref, ref_s) if bs == 1 else forward_all(backbone, pixels, bs)
            diff = np.abs(cls - ref)
            row = {
                "threads": threads,
                "batch_size": bs,
                "rows_differing": int((diff.max(axis=1) > 0).sum()),
                "max_abs_diff": float(diff.max()),
                "ms_per_image": 1000 * secs / len(pixels),
            }
            results["runs"].append(row)
            print(json.dumps(row))
    # thread count against thread count, same batch size
    if len({r["threads"] for r in results["runs"]}) > 1:
        torch.set_num_threads(1)
        a, _ = forward_all(backbone, pixels, 32)
        torch.set_num_threads(max(r["threads"] for r in results["runs"]))
        b, _ = forward_all(backbone, pixels, 32)
        results["threads_1_vs_max_at_32"] = {"rows_differing": int((np.abs(a - b).max(axis=1) > 0).sum()), "max_abs_diff": float(np.abs(a - b).max())}
        print(json.dumps(results["threads_1_vs_max_at_32"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
