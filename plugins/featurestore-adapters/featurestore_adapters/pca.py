"""``pca-whiten`` and ``project``: principal axes of the fit rows, with and without whitening.

Both eigendecompose the sample covariance (float64, ``n - 1`` in the denominator) and keep
the ``dim`` axes of largest variance. An eigenvector's sign is arbitrary, so each kept axis
is flipped to make its largest-magnitude entry positive: the same rows give the same
tensors, hence the same adapter hash, whatever sign LAPACK returned.

    project:     y = (x - mean) V            decode: y Vᵀ + mean
    pca-whiten:  y = (x - mean) V / s        decode: (y * s) Vᵀ + mean,   s = sqrt(λ + eps·λmax)
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from featurestore.errors import ConfigError
from featurestore_adapters.base import (
    FittedAdapter,
    blockwise,
    relative_error,
    row_blocks,
)


def principal_axes(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, eigenvalues (descending) and eigenvectors (columns) of the covariance of ``x``.

    Args:
        x: (n, D) rows, n >= 2; any float dtype (accumulated in float64 block by block, so
            float32 rows are never copied whole into float64).

    Returns:
        ``mean`` (D,), ``eigenvalues`` (D,) >= 0 (round-off level ones set to 0), ``vectors`` (D, D) float64, each column
        signed so that its largest-|value| entry is positive.
    """
    n, d = x.shape
    mean = x.sum(axis=0, dtype=np.float64) / n  # (D,)
    scatter = np.zeros((d, d))
    for s in row_blocks(n):
        xc = x[s].astype(np.float64) - mean  # (B, D)
        scatter += xc.T @ xc
    values, vectors = np.linalg.eigh(scatter / (n - 1))  # ascending
    values, vectors = values[::-1], vectors[:, ::-1]
    # the null space comes out as round-off (either sign) of the largest eigenvalue's scale:
    # call it zero, as numpy.linalg.matrix_rank does, so that eps=0 can tell it apart
    values = np.where(values > values[0] * d * np.finfo(np.float64).eps, values, 0.0)
    top = np.abs(vectors).argmax(axis=0)  # (D,) row of each column's largest entry
    signs = np.where(vectors[top, np.arange(d)] < 0, -1.0, 1.0)
    return mean, values, np.ascontiguousarray(vectors * signs)


class _Pca(FittedAdapter):
    """Shared fit, widths and decode of :class:`PcaWhiten` and :class:`Project`."""

    invertible: ClassVar[bool] = True
    whiten: ClassVar[bool]
    STATE: ClassVar[dict[str, int]] = {"mean": 1, "components": 2, "eigenvalues": 1, "scale": 1}

    def _fit(self, x: np.ndarray, labels: np.ndarray | None, classes: list[str] | None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        n, d = x.shape
        k = d if self._params["dim"] is None else self._params["dim"]
        if k > d:
            raise ConfigError(
                f"adapter {self.name!r}: dim={k} is more than the width of the fit rows, D={d}. "
                f"Fix: {self.name}:dim=<1..{d}>."
            )
        # n rows span at most n - 1 directions around their mean: k axes need k + 1 rows
        self._need_rows(x, k + 1, f"keeping dim={k} principal axes", f"fit on more rows, or {self.name}:dim={max(1, min(k, n - 1))}")
        mean, values, vectors = principal_axes(x)
        if values[0] <= 0:
            raise ConfigError(
                f"adapter {self.name!r}: all {n} fit rows are the same vector, so they have no principal axes. "
                "Fix: fit on rows that differ."
            )
        lam = values[:k]
        scale = np.sqrt(lam + self._params["eps"] * values[0]) if self.whiten else np.ones(k)
        if not (scale > 0).all():
            rank = int((values > 0).sum())
            raise ConfigError(
                f"adapter {self.name!r}: {k - int((lam > 0).sum())} of the {k} kept axes have zero variance "
                f"(the fit rows span {rank} dimensions) and eps=0 leaves nothing to divide by. "
                f"Fix: {self.name}:eps=1e-6, or dim={rank}."
            )
        state = {
            "mean": mean.astype(np.float32),
            "components": np.ascontiguousarray(vectors[:, :k], np.float32),  # (D, k)
            "eigenvalues": lam.astype(np.float32),
            "scale": scale.astype(np.float32),  # ones for project: one state layout for both
        }
        metrics = {"n_fit": n, "dim": k, "explained_variance_ratio": float(lam.sum() / values.sum())}
        return state, metrics

    def _fitted_metrics(self, x: np.ndarray, labels: np.ndarray | None) -> dict[str, Any]:
        return {"relative_reconstruction_error": relative_error(x, lambda b: self.decode(self.transform(b)))}

    def _use_state(self, state: dict[str, np.ndarray]) -> None:
        d, k = state["components"].shape
        if state["mean"].shape != (d,) or state["eigenvalues"].shape != (k,) or state["scale"].shape != (k,):
            shapes = {key: tuple(v.shape) for key, v in state.items()}
            raise ConfigError(f"adapter {self.name!r}: state tensors of inconsistent shapes {shapes}. Fix: fit the adapter again.")
        if self._params["dim"] is not None and k != self._params["dim"]:
            raise ConfigError(
                f"adapter {self.name!r}: the state keeps {k} axes but dim={self._params['dim']}. "
                f"Fix: load it with {self.name}:dim={k}, or fit again."
            )
        if not self.whiten and not (state["scale"] == 1).all():
            raise ConfigError(f"adapter {self.name!r}: the state is a whitening one (pca-whiten's). Fix: load it as pca-whiten.")
        if not (state["scale"] > 0).all():
            raise ConfigError(f"adapter {self.name!r}: the state has a zero or negative scale. Fix: fit the adapter again.")
        # float64 copies of the float32 state: what both a fitted and a reloaded adapter use
        self._mean = state["mean"].astype(np.float64)
        self._encode = state["components"].astype(np.float64) / state["scale"].astype(np.float64)  # (D, k)
        self._decode = (state["components"].astype(np.float64) * state["scale"].astype(np.float64)).T  # (k, D)

    def in_dim(self) -> int:
        """D, the width of the fit rows."""
        return int(self._require_state("in_dim")["components"].shape[0])

    def out_dim(self) -> int:
        """The number of kept axes (``dim``, or D when ``dim`` is null)."""
        return int(self._require_state("out_dim")["components"].shape[1])

    def transform(self, x: np.ndarray) -> np.ndarray:
        """(n, D) → (n, dim) float32. NaN or inf in a row propagates to that row's output."""
        self._require_state("transform")
        x = self._input(x, self.in_dim())
        return blockwise(x, self.out_dim(), "float32", lambda b: (b - self._mean) @ self._encode)

    def decode(self, y: np.ndarray) -> np.ndarray:
        """(n, dim) → (n, D) float32: the rows' projection onto the kept axes (exact when dim == D)."""
        self._require_state("decode")
        y = self._input(y, self.out_dim(), "decode")
        return blockwise(y, self.in_dim(), "float32", lambda b: b @ self._decode + self._mean)


class PcaWhiten(_Pca):
    """PCA whitening: the fit rows come out with (near) identity covariance.

    Params: ``dim`` (axes kept, null for all D) and ``eps`` (times the largest eigenvalue,
    added to each eigenvalue before the square root, so near-zero-variance axes are not
    blown up into noise).
    """

    name = "pca-whiten"
    whiten = True


class Project(_Pca):
    """Projection onto the top ``dim`` principal axes, variances kept (not whitened)."""

    name = "project"
    whiten = False


__all__ = ["PcaWhiten", "Project", "principal_axes"]
