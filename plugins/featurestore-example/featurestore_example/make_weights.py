"""Write a PatchNet weights file with random (seeded) weights.

    python -m featurestore_example.make_weights patchnet.safetensors [--seed N]

Real use would train PatchNet; random weights are enough to run the whole pipeline and
to test it, and the same seed gives the same file (within one torch version).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import torch

from featurestore_example.model import PatchNet, PatchNetConfig


def random_state_dict(seed: int = 0, config: PatchNetConfig | None = None) -> dict[str, torch.Tensor]:
    """PatchNet's state dict with torch's default init, seeded; CLS and position embeddings ~ N(0, 0.02²)."""
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG as it was
        torch.manual_seed(seed)
        model = PatchNet(config)
        with torch.no_grad():
            # zeros (the constructor's value) would make every position and the CLS token alike
            model.cls_token.normal_(std=0.02)
            model.pos_embed.normal_(std=0.02)
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def write_weights(path: str | Path, *, seed: int = 0, config: PatchNetConfig | None = None) -> Path:
    """Save :func:`random_state_dict` to ``path`` as safetensors; returns the path."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(random_state_dict(seed, config), str(path), metadata={"format": "pt", "architecture": "PatchNet"})
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``OUT [--seed N]``."""
    p = argparse.ArgumentParser(prog="python -m featurestore_example.make_weights", description=__doc__.splitlines()[0])
    p.add_argument("out", metavar="OUT", help="file to write, e.g. patchnet.safetensors")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = p.parse_args(argv)
    if Path(args.out).is_dir():
        p.error(f"{args.out!r} is a directory. Fix: name a file inside it, e.g. {Path(args.out) / 'patchnet.safetensors'}")
    path = write_weights(args.out, seed=args.seed)
    sys.stdout.write(f"wrote {path} (seed {args.seed}); use it with: featurestore extract IMAGES --backbone example_patchnet --weights {path} --store STORE\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
