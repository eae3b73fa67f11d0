"""Seeded k-means (k-means++ initialisation, then Lloyd iterations) in numpy, for ``quantize:method=pq``.

Distances are computed as ``||c||² - 2 x·c`` (``||x||²`` does not change which centre is
nearest) with one matrix product per block of rows, so a 20 000 × 384 fit with 256 centres
per sub-vector takes seconds. Everything is a deterministic function of the rows and the
numpy generator handed in: ties go to the lowest index and an emptied cluster is refilled
with the row farthest from its centre.
"""

from __future__ import annotations

import numpy as np

from featurestore_adapters.base import BLOCK_ROWS, row_blocks

#: rows k-means++ draws its centres from: its cost is k passes over them, so it runs on a
#: seeded sample; Lloyd's iterations then use every row
INIT_SAMPLE = 16_384


def kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ centres for ``x``: each next centre drawn with probability ∝ squared distance.

    Args:
        x: (n, s) rows, n >= k.
        k: the number of centres.
        rng: the seeded generator (the only source of randomness).

    Returns:
        (k, s) float64 centres, each one of the rows of ``x``.
    """
    n = len(x)
    if n > INIT_SAMPLE:
        x = x[np.sort(rng.choice(n, INIT_SAMPLE, replace=False))]
        n = INIT_SAMPLE
    x = x.astype(np.float64)
    xx = np.einsum("ij,ij->i", x, x)  # (n,)
    centres = np.empty((k, x.shape[1]))
    first = int(rng.integers(n))
    centres[0] = x[first]
    d2 = np.maximum(xx - 2.0 * (x @ centres[0]) + xx[first], 0.0)  # (n,) to the nearest centre so far
    for i in range(1, k):
        cum = np.cumsum(d2)
        if cum[-1] > 0:
            pick = int(min(np.searchsorted(cum, rng.random() * cum[-1], side="right"), n - 1))
        else:  # every row sits on a centre already: fewer distinct rows than centres
            pick = int(rng.integers(n))
        centres[i] = x[pick]
        d2 = np.minimum(d2, np.maximum(xx - 2.0 * (x @ centres[i]) + xx[pick], 0.0))
    return centres


def assign(x: np.ndarray, centres: np.ndarray, distances: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Index of the nearest centre of each row, and (when asked) its squared distance.

    Computed in the dtype of ``centres`` (float32 while fitting, for speed; float64 when
    encoding, so that a row's code does not depend on the rows batched with it).

    Returns:
        ``labels`` (n,) int64, and ``d2`` (n,) squared distances (>= 0) or None.
    """
    k, s = centres.shape
    # one product per block gives ||c||² - 2 x·c: rows get a trailing 1, centres their ||c||²
    aug = np.empty((s + 1, k), centres.dtype)
    aug[:s] = -2.0 * centres.T
    aug[s] = np.einsum("ij,ij->i", centres, centres)
    labels = np.empty(len(x), np.int64)
    d2 = np.empty(len(x), centres.dtype) if distances else None
    xb1 = np.ones((min(len(x), BLOCK_ROWS), s + 1), centres.dtype)
    for sl in row_blocks(len(x)):
        b = xb1[: sl.stop - sl.start]
        b[:, :s] = x[sl]
        scores = b @ aug  # (B, k): ||x - c||² - ||x||²
        labels[sl] = scores.argmin(axis=1)
        if d2 is not None:
            xx = np.einsum("ij,ij->i", b[:, :s], b[:, :s])
            d2[sl] = np.maximum(scores[np.arange(len(b)), labels[sl]] + xx, 0)
    return labels, d2


def lloyd(x: np.ndarray, centres: np.ndarray, iters: int) -> tuple[np.ndarray, int]:
    """At most ``iters`` Lloyd iterations from ``centres``; stops early when no row moves.

    Args:
        x: (n, s) float32 rows.
        centres: (k, s) initial centres.
        iters: the most iterations to run.

    Returns:
        The (k, s) float64 centres and the number of iterations run.
    """
    k, s = centres.shape
    centres = centres.astype(np.float64)
    previous = None
    for it in range(1, iters + 1):
        c32 = centres.astype(np.float32)
        labels, _ = assign(x, c32)
        if previous is not None and np.array_equal(labels, previous):
            return centres, it - 1  # converged: the update would reproduce the same centres
        previous = labels
        counts = np.bincount(labels, minlength=k)
        sums = np.stack([np.bincount(labels, weights=x[:, j], minlength=k) for j in range(s)], axis=1)  # (k, s) float64
        full = counts > 0
        centres[full] = sums[full] / counts[full, None]
        empty = np.flatnonzero(~full)
        if empty.size:  # refill from the worst-served rows rather than leave a centre unused
            d2 = assign(x, c32, distances=True)[1]
            far = np.argsort(-d2, kind="stable")[: empty.size]
            centres[empty] = x[far]
    return centres, iters


def kmeans(x: np.ndarray, k: int, iters: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """k-means++ then Lloyd on ``x`` (n, s), n >= k: (k, s) float64 centres and iterations run."""
    return lloyd(x, kmeans_pp(x, k, rng), iters)


__all__ = ["INIT_SAMPLE", "assign", "kmeans", "kmeans_pp", "lloyd"]
