"""pytest plugin (entry point ``pytest11``): fixtures for featurestore and its plugins' tests.

Images are real files written by Pillow; stores are real LanceDB directories.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def smooth_image(width: int, height: int, seed: int) -> "np.ndarray":
    """A smooth random RGB image (gradients + blobs), so JPEG keeps it recognisable."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.empty((height, width, 3), np.float32)
    for c in range(3):
        fx, fy, ph = rng.uniform(0.5, 4), rng.uniform(0.5, 4), rng.uniform(0, 6.28)
        out[..., c] = 127.5 + 127.5 * np.sin(fx * x / width * 6.28 + fy * y / height * 6.28 + ph)
    return out.clip(0, 255).astype(np.uint8)


def write_images(directory: Path, n: int, *, size: tuple[int, int] = (64, 48), fmt: str = "JPEG", seed: int = 0) -> list[Path]:
    """Write ``n`` distinct images of ``size`` (w, h) into ``directory``; returns their paths."""
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    ext = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}[fmt]
    paths = []
    for i in range(n):
        w, h = size
        # vary the aspect ratio a little so crop boxes differ
        w = w + (i % 3) * 8
        p = directory / f"img_{i:05d}.{ext}"
        Image.fromarray(smooth_image(w, h, seed + i)).save(p, fmt, **({"quality": 92} if fmt == "JPEG" else {}))
        paths.append(p)
    return paths


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    """A directory of 7 distinct JPEGs (and 1 PNG in a subdirectory)."""
    d = tmp_path / "images"
    write_images(d, 7)
    write_images(d / "sub", 1, fmt="PNG", seed=100)
    return d


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    """Path for a fresh LanceDB store directory."""
    return tmp_path / "store.lance"
