"""Example data for the DVC pipeline (dvc.yaml): small images and tiny random weights.

    python pipeline/example_data.py images  --out data/images  --count 24 --seed 0 --width 64 --height 48
    python pipeline/example_data.py weights --out data/weights --seed 0

Everything is generated, nothing is downloaded, and the same arguments give the same bytes
(within one torch/timm version), so two reproductions of the pipeline extract the same
features. The weights are random: the features mean nothing, but every stage runs through
the real plugins' loading code (``--weights FILE``), exactly as with trained weights.
Swapping in real backbones is described in pipeline/README.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path


def _fresh_dir(path: Path) -> Path:
    # A stage output is rewritten, never appended to: a file left from another
    # parameter set (say a larger --count) must not survive into this one.
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def write_images(out: Path, count: int, *, seed: int = 0, width: int = 64, height: int = 48) -> list[Path]:
    """Write ``count`` distinct PNGs (smooth gradients plus a few discs) into ``out``.

    PNG is lossless and Pillow writes it byte-for-byte the same each time, so the row ids
    (SHA-256 of the file bytes) are the same in every reproduction.
    """
    import numpy as np
    from PIL import Image

    _fresh_dir(out)
    paths = []
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        w = width + (i % 3) * 8  # a few aspect ratios, so crop boxes differ
        y, x = np.mgrid[0:height, 0:w].astype(np.float32)
        img = np.empty((height, w, 3), np.float32)
        for c in range(3):
            fx, fy, ph = rng.uniform(0.5, 4.0, 2).tolist() + [rng.uniform(0.0, 6.28)]
            img[..., c] = 127.5 + 127.5 * np.sin(6.28 * (fx * x / w + fy * y / height) + ph)
        for _ in range(3):  # discs of a random colour
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, height), rng.uniform(4, 12)
            img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
        path = out / f"img_{i:03d}.png"
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path, "PNG")
        paths.append(path)
    return paths


def _tiny_timm_state(name: str, seed: int) -> dict:
    """``timm.create_model(name, pretrained=False)`` with every float tensor perturbed, seeded.

    timm's init leaves parts of a fresh ResNet inert (the last BatchNorm of each block is
    zero, running statistics 0 and 1); a small seeded perturbation makes every block count.
    """
    import timm
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, t in model.state_dict().items():
        t = t.detach().clone()
        if t.is_floating_point():
            noise = torch.randn(t.shape, generator=gen, dtype=t.dtype)
            if key.endswith("running_var"):
                t = 0.5 + torch.rand(t.shape, generator=gen, dtype=t.dtype)
            elif key.endswith("running_mean"):
                t = 0.1 * noise
            else:
                t = t + 0.05 * noise
        state[key] = t.contiguous()
    return state


def write_weights(out: Path, *, seed: int = 0) -> list[Path]:
    """Write ``patchnet.safetensors`` (example_patchnet) and ``test_resnet.safetensors`` (timm:test_resnet) into ``out``."""
    from featurestore_example.make_weights import write_weights as write_patchnet
    from safetensors.torch import save_file

    _fresh_dir(out)
    patchnet = write_patchnet(out / "patchnet.safetensors", seed=seed)
    resnet = out / "test_resnet.safetensors"
    save_file(_tiny_timm_state("test_resnet", seed), str(resnet), metadata={"format": "pt"})
    return [patchnet, resnet]


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``images`` or ``weights`` (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python pipeline/example_data.py", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    im = sub.add_parser("images", help="write COUNT small PNGs into OUT (replacing what is there)")
    im.add_argument("--out", type=Path, required=True)
    im.add_argument("--count", type=int, default=24)
    im.add_argument("--seed", type=int, default=0)
    im.add_argument("--width", type=int, default=64)
    im.add_argument("--height", type=int, default=48)
    we = sub.add_parser("weights", help="write tiny random weights of the example backbones into OUT")
    we.add_argument("--out", type=Path, required=True)
    we.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.cmd == "images":
        if args.count < 1 or args.width < 8 or args.height < 8:
            p.error(f"--count {args.count} --width {args.width} --height {args.height}: need count >= 1 and sides >= 8 px")
        paths = write_images(args.out, args.count, seed=args.seed, width=args.width, height=args.height)
    else:
        paths = write_weights(args.out, seed=args.seed)
    sys.stdout.write(f"wrote {len(paths)} files to {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
