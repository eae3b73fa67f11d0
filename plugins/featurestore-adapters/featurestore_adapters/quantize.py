"""``quantize``: integer codes that the core stores and decodes on read.

``method=int8`` (default): per dimension, the fit rows' range ``lo..hi`` is cut into 255
steps of ``scale = (hi - lo) / 255``::

    code = clip(round((x - lo) / scale), 0, 255) - 128      (int8, D codes)
    decode = (code + 128) * scale + lo                       (error <= scale / 2 in range)

Values outside the fit range are clipped to it (``clipped_fraction`` in the metrics counts
them on the fit rows, 0 by construction). A dimension that is constant on the fit rows gets
``scale = 1`` and always decodes to that constant.

``method=pq``: product quantization. D is cut into ``m`` sub-vectors of D/m dimensions;
each sub-space gets 256 k-means centres fitted on the fit rows (seeded k-means++, then
Lloyd), and a row is stored as the ``m`` indices (uint8) of its nearest centres. Decoding
concatenates those centres. ``m`` must divide D; ``m=0`` means D/8.
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
from featurestore_adapters.kmeans import assign, kmeans

#: pq codes are one byte: 256 centres per sub-space
PQ_CENTRES = 256
#: int8 levels per dimension: codes -128..127
INT8_STEPS = 255


def _divisors(d: int) -> list[int]:
    return [i for i in range(1, d + 1) if d % i == 0]


class Quantize(FittedAdapter):
    """Per-dimension int8 scalar quantization, or product quantization to ``m`` uint8 codes."""

    name = "quantize"
    invertible: ClassVar[bool] = True

    def _layout(self) -> dict[str, int]:
        # the tensors depend on the method: the state check follows it
        return {"centroids": 3} if self._pq else {"lo": 1, "scale": 1}

    @property
    def _pq(self) -> bool:
        return self._params["method"] == "pq"

    # -- fitting ---------------------------------------------------------------------------
    def _fit(self, x: np.ndarray, labels: np.ndarray | None, classes: list[str] | None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return self._fit_pq(x) if self._pq else self._fit_int8(x)

    def _fit_int8(self, x: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        self._need_rows(x, 2, "(method=int8) takes each dimension's range from the fit rows and", "fit on more rows")
        lo = x.min(axis=0).astype(np.float64)
        span = x.max(axis=0).astype(np.float64) - lo
        scale = np.where(span > 0, span / INT8_STEPS, 1.0)
        state = {"lo": lo.astype(np.float32), "scale": scale.astype(np.float32)}
        return state, {"n_fit": len(x), "bytes_per_vector": x.shape[1], "constant_dims": int((span == 0).sum())}

    def _resolve_m(self, d: int) -> int:
        m = self._params["m"]
        listed = ", ".join(map(str, _divisors(d)))
        if m == 0:
            if d % 8:
                raise ConfigError(
                    f"adapter 'quantize': m=0 (auto) means D/8 sub-vectors, but D={d} is not a multiple of 8. "
                    f"Fix: quantize:method=pq,m=<a divisor of {d}: {listed}>."
                )
            return d // 8
        if d % m:
            raise ConfigError(
                f"adapter 'quantize': m={m} sub-vectors do not divide D={d} evenly. Fix: quantize:method=pq,m=<a divisor of {d}: {listed}>."
            )
        return m

    def _fit_pq(self, x: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        n, d = x.shape
        m = self._resolve_m(d)
        self._need_rows(
            x, PQ_CENTRES, f"(method=pq) fits {PQ_CENTRES} centres per sub-vector and", "fit on more rows, or use quantize:method=int8"
        )
        sub = d // m
        x32 = np.ascontiguousarray(x, np.float32)
        centroids = np.empty((m, PQ_CENTRES, sub), np.float32)
        runs = []
        for j in range(m):
            # one generator per sub-space, keyed by (seed, j): sub-space j's centres do not
            # depend on how many draws the others made
            rng = np.random.default_rng([self._params["seed"], j])
            c, it = kmeans(np.ascontiguousarray(x32[:, j * sub : (j + 1) * sub]), PQ_CENTRES, self._params["iters"], rng)
            centroids[j] = c
            runs.append(it)
        metrics = {"n_fit": n, "m": m, "sub_dim": sub, "bytes_per_vector": m, "kmeans_iterations_max": max(runs)}
        return {"centroids": centroids}, metrics

    def _fitted_metrics(self, x: np.ndarray, labels: np.ndarray | None) -> dict[str, Any]:
        out: dict[str, Any] = {"relative_reconstruction_error": relative_error(x, lambda b: self.decode(self.transform(b)))}
        if not self._pq:
            # values whose code the clip changed: the ones that decode with more than scale/2 error
            clipped = 0
            for s in row_blocks(len(x)):
                t = np.rint((x[s].astype(np.float64) - self._lo) / self._scale)
                clipped += int(((t < 0) | (t > INT8_STEPS)).sum())
            out["clipped_fraction"] = clipped / x.size
        return out

    def _use_state(self, state: dict[str, np.ndarray]) -> None:
        if self._pq:
            c = state["centroids"]
            m = self._params["m"]
            if c.shape[1] != PQ_CENTRES or c.shape[0] < 1 or c.shape[2] < 1 or (m and c.shape[0] != m):
                raise ConfigError(
                    f"adapter 'quantize': pq centroids of shape {tuple(c.shape)} do not fit m={m} with {PQ_CENTRES} centres. "
                    f"Fix: load them with quantize:method=pq,m={c.shape[0]}, or fit again."
                )
            self._centroids = c.astype(np.float64)  # (m, 256, sub)
        else:
            lo, scale = state["lo"], state["scale"]
            if lo.shape != scale.shape or not (scale > 0).all():
                raise ConfigError(f"adapter 'quantize': int8 state of shapes {lo.shape}, {scale.shape} or a scale <= 0. Fix: fit again.")
            self._lo, self._scale = lo.astype(np.float64), scale.astype(np.float64)

    # -- widths ----------------------------------------------------------------------------
    def in_dim(self) -> int:
        """D, the width of the fit rows (and of :meth:`decode`'s output)."""
        st = self._require_state("in_dim")
        return int(st["centroids"].shape[0] * st["centroids"].shape[2]) if self._pq else int(st["lo"].shape[0])

    def out_dim(self) -> int:
        """Codes per vector: D for int8, m for pq."""
        st = self._require_state("out_dim")
        return int(st["centroids"].shape[0]) if self._pq else int(st["lo"].shape[0])

    def out_dtype(self) -> str:
        """``"int8"`` or ``"uint8"`` (pq), by the method."""
        return "uint8" if self._pq else "int8"

    # -- codes -----------------------------------------------------------------------------
    def transform(self, x: np.ndarray) -> np.ndarray:
        """(n, D) float → (n, out_dim) codes.

        Raises:
            ConfigError: a wrong width, or NaN / inf in ``x`` (they have no code).
        """
        self._require_state("transform")
        x = self._input(x, self.in_dim())
        bad = ~np.isfinite(x)
        if bad.any():
            row = int(np.flatnonzero(bad.any(axis=1))[0])
            raise ConfigError(f"adapter 'quantize': row {row} of the input holds NaN or inf, which has no code. Fix: leave such rows out.")
        if self._pq:
            return self._encode_pq(x)
        return blockwise(x, self.out_dim(), "int8", lambda b: np.clip(np.rint((b - self._lo) / self._scale), 0, INT8_STEPS) - 128)

    def _encode_pq(self, x: np.ndarray) -> np.ndarray:
        m, _, sub = self._centroids.shape
        codes = np.empty((len(x), m), np.uint8)
        for j in range(m):
            codes[:, j] = assign(x[:, j * sub : (j + 1) * sub], self._centroids[j])[0]
        return codes

    def decode(self, y: np.ndarray) -> np.ndarray:
        """(n, out_dim) codes → (n, D) float32.

        Raises:
            ConfigError: a wrong width, non-integer codes, or codes outside the dtype's range.
        """
        self._require_state("decode")
        y = self._input(y, self.out_dim(), "decode")
        lo, hi = (0, PQ_CENTRES - 1) if self._pq else (-128, 127)
        if not np.issubdtype(y.dtype, np.integer) or (y.size and (y.min() < lo or y.max() > hi)):
            raise ConfigError(
                f"adapter 'quantize': decode takes integer codes in {lo}..{hi} ({self.out_dtype()}), got {y.dtype} "
                f"values{'' if not y.size else f' {y.min()}..{y.max()}'}. Fix: pass the stored codes unchanged."
            )
        if self._pq:
            m = self._centroids.shape[0]
            out = np.empty((len(y), self.in_dim()), np.float32)
            for s in row_blocks(len(y)):
                out[s] = self._centroids[np.arange(m), y[s].astype(np.intp)].reshape(len(y[s]), -1)  # (B, m, sub) → (B, D)
            return out
        return blockwise(y, self.in_dim(), "float32", lambda b: (b + 128.0) * self._scale + self._lo)


__all__ = ["INT8_STEPS", "PQ_CENTRES", "Quantize"]
