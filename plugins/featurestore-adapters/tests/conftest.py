"""Shared data for the featurestore-adapters tests, and a clear error when the plugin is not installed.

The data are small on purpose (the suite runs on two shared cores) but shaped to make each
check meaningful: well separated variances, so principal axes are unique up to sign;
clusters, so product quantization has structure to find; Gaussian blobs, so a linear
classifier can separate the classes.
"""

from __future__ import annotations

import numpy as np
import pytest

try:
    import featurestore_adapters.plugin  # noqa: F401
except ModuleNotFoundError as exc:  # say how to fix it, instead of a bare import error per test module
    raise ImportError(
        "the featurestore-adapters plugin is not installed, so its tests cannot run. "
        "Fix: pip install --no-deps -e plugins/featurestore-adapters"
    ) from exc


def correlated_rows(n: int, d: int, seed: int = 0) -> np.ndarray:
    """(n, d) float32 rows with distinct variances along a random orthonormal basis, off-centre."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((d, d)))
    scales = np.linspace(4.0, 1.0, d)  # eigenvalues 16 .. 1: well separated, well conditioned
    return (rng.standard_normal((n, d)) * scales @ basis.T + 3.0).astype(np.float32)


def clustered_rows(n: int, d: int, clusters: int = 40, seed: int = 0) -> np.ndarray:
    """(n, d) float32 rows around ``clusters`` random centres."""
    rng = np.random.default_rng(seed)
    centres = 3.0 * rng.standard_normal((clusters, d))
    return (centres[rng.integers(clusters, size=n)] + 0.5 * rng.standard_normal((n, d))).astype(np.float32)


def blobs(n: int, d: int = 64, classes: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, d) float32 Gaussian blobs with unit noise and (n,) int64 labels; centres fixed by class."""
    centres = 0.6 * np.random.default_rng(1234).standard_normal((classes, d))
    rng = np.random.default_rng(seed)
    y = rng.integers(classes, size=n)
    return (centres[y] + rng.standard_normal((n, d))).astype(np.float32), y.astype(np.int64)


@pytest.fixture(scope="session")
def rows16() -> np.ndarray:
    return correlated_rows(400, 16)


@pytest.fixture(scope="session")
def clustered() -> np.ndarray:
    return clustered_rows(1024, 96)


@pytest.fixture(scope="session")
def rows96() -> np.ndarray:
    return correlated_rows(600, 96, seed=1)


@pytest.fixture(scope="session")
def blob_data() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``((x_train, y_train), (x_test, y_test))``: 5 classes in 64-d, 600 training and 600 held-out rows."""
    return blobs(600, seed=0), blobs(600, seed=1)
