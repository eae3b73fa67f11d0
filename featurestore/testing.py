"""pytest plugin (entry point ``pytest11``): fixtures for featurestore and its plugins' tests.

Images are real files written by Pillow; stores are real LanceDB directories.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
from pathlib import Path

import numpy as np
import pytest

HUB = ("huggingface.co", 443)


def hub_unreachable_reason(timeout: float = 3.0, host: tuple[str, int] = HUB) -> str | None:
    """None when a TLS connection to the model hub opens within ``timeout`` s, else why not.

    For tests that need real hub downloads: ``pytest.skip`` with this reason. The connect
    runs in a daemon thread so a slow DNS lookup (which the socket timeout does not cover)
    cannot hang the test run.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    result: dict[str, str | None] = {}

    def probe() -> None:
        try:
            with socket.create_connection(host, timeout=timeout) as sock:
                # a TLS handshake too: some sandboxes accept any TCP connection
                with ssl.create_default_context().wrap_socket(sock, server_hostname=host[0]):
                    result["reason"] = None
        except OSError as exc:  # ssl.SSLError is an OSError
            result["reason"] = f"cannot connect to {host[0]}:{host[1]}: {exc}"

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return result.get("reason", f"no connection to {host[0]}:{host[1]} within {timeout:.0f} s")


def smooth_image(width: int, height: int, seed: int) -> np.ndarray:
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
