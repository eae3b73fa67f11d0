"""What every adapter of this plugin shares: parameters, input checks, state checks, blocks.

Numbers: fitting is done in float64 and the fitted tensors are rounded to float32 once,
into :meth:`FittedAdapter.state`; from then on the adapter computes only from those
float32 tensors (upcast to float64), exactly as one rebuilt by ``load_state`` does, so a
reloaded adapter gives bit-identical outputs. Transforms run in float64 and round to
float32 at the end, which also makes a row's output independent of the batch it comes in
(BLAS takes other code paths for one row than for many; in float32 those paths differ in
the last bits, in float64 the difference vanishes when the result is rounded to float32).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

import numpy as np

from featurestore.adapter import Adapter
from featurestore.errors import ConfigError
from featurestore_adapters.params import check_params

#: rows per float64 block: bounds the temporaries when the core passes every patch token
#: of a chunk (hundreds of thousands of rows) in one call
BLOCK_ROWS = 8192


def row_blocks(n: int, block: int = BLOCK_ROWS) -> Iterator[slice]:
    """Consecutive slices of ``block`` rows covering ``range(n)``."""
    for start in range(0, n, block):
        yield slice(start, min(start + block, n))


def blockwise(x: np.ndarray, width: int, dtype: str, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``fn`` over row blocks of ``x`` (each block upcast to float64), results cast to ``dtype``."""
    out = np.empty((len(x), width), dtype)
    for s in row_blocks(len(x)):
        out[s] = fn(x[s].astype(np.float64))
    return out


class FittedAdapter(Adapter):
    """Base of this plugin's adapters.

    Subclasses set :attr:`name` and :attr:`STATE` (tensor name -> number of dimensions;
    or override :meth:`_layout` when it depends on the parameters) and implement ``_fit``
    (returns the float32 state and metrics), ``_use_state`` (takes a checked state), and
    the width and transform methods.
    """

    name: str
    #: tensor name -> ndim of every tensor :meth:`state` returns
    STATE: ClassVar[dict[str, int]] = {}

    def __init__(self, **params: Any) -> None:
        """Check ``params`` and fill in defaults.

        Raises:
            ConfigError: an unknown parameter or a bad value (the message names both).
        """
        self._params = check_params(self.name, params)
        self._state: dict[str, np.ndarray] | None = None

    def params(self) -> dict[str, Any]:
        """Every parameter, sorted, defaults filled in, canonical."""
        return dict(self._params)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params.items())
        return f"{type(self).__name__}({args}{', fitted' if self._state is not None else ''})"

    # -- fitting and state -----------------------------------------------------------
    def fit(self, x: np.ndarray, labels: np.ndarray | None = None, classes: list[str] | None = None) -> dict[str, Any]:
        """Fit on ``x`` (n, D); see :class:`featurestore.adapter.Adapter`. Refitting replaces the fit.

        Raises:
            ConfigError: not a 2-D array of numbers, too few rows, NaN or inf values, or
                (for adapters trained on labels) missing or bad labels.
        """
        x = self._fit_rows(x)
        state, metrics = self._fit(x, labels, classes)
        checked = self._checked_state(state)
        self._state = None  # a failed _use_state must not leave the old fit half replaced
        self._use_state(checked)
        self._state = checked
        # measured with the float32 state in use: what applying the adapter will give
        return {**metrics, **self._fitted_metrics(x, labels)}

    def _fit(self, x: np.ndarray, labels: np.ndarray | None, classes: list[str] | None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        raise NotImplementedError

    def _fitted_metrics(self, x: np.ndarray, labels: np.ndarray | None) -> dict[str, Any]:
        """Metrics measured on the fit rows through the fitted adapter itself."""
        return {}

    def _use_state(self, state: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def state(self) -> dict[str, np.ndarray]:
        """The fitted float32 tensors (copies: changing them cannot change this adapter)."""
        return {k: v.copy() for k, v in self._require_state("state").items()}

    def load_state(self, tensors: Mapping[str, np.ndarray]) -> None:
        """Restore the fit from :meth:`state`'s tensors (e.g. read back from safetensors).

        Raises:
            ConfigError: missing or unexpected tensors, wrong ranks or dtypes, non-finite
                values, or shapes that contradict this adapter's parameters.
        """
        state = self._checked_state(tensors)
        self._use_state(state)
        self._state = state

    def _layout(self) -> dict[str, int]:
        """Tensor name -> ndim of this adapter's state."""
        return dict(self.STATE)

    def _checked_state(self, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        layout = self._layout()
        fix = f"Fix: fit the adapter again (featurestore adapt fit … -a {self.name})."
        missing = sorted(set(layout) - set(tensors))
        extra = sorted(set(tensors) - set(layout))
        if missing or extra:
            raise ConfigError(
                f"adapter {self.name!r}: the tensors {sorted(tensors)} are not a fitted {self.name} state "
                f"(missing {missing}, unexpected {extra}; it has {sorted(layout)}). {fix}"
            )
        out = {}
        for key, ndim in layout.items():
            t = np.asarray(tensors[key])
            if t.ndim != ndim or t.dtype != np.float32 or not np.isfinite(t).all():
                raise ConfigError(
                    f"adapter {self.name!r}: state tensor {key!r} is {t.dtype}{tuple(t.shape)}; "
                    f"it should be a finite {ndim}-d float32 array. {fix}"
                )
            out[key] = np.ascontiguousarray(t).copy()
        return out

    def _require_state(self, what: str) -> dict[str, np.ndarray]:
        if self._state is None:
            raise ConfigError(
                f"adapter {self.name!r} is not fitted, so it has no {what}. "
                "Fix: fit it first (adapter.fit(rows), or featurestore adapt fit), or load_state() a fitted one."
            )
        return self._state

    # -- input checks ------------------------------------------------------------------
    def _fit_rows(self, x: Any) -> np.ndarray:
        """``x`` as a 2-D float array of finite values (float32 stays float32: no copy)."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1 or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise ConfigError(
                f"adapter {self.name!r}: fit rows must be a non-empty (n, D) array of numbers, got {x.dtype}{tuple(x.shape)}. "
                "Fix: pass the feature vectors as one row each."
            )
        bad = ~np.isfinite(x)
        if bad.any():
            rows = np.flatnonzero(bad.any(axis=1))
            raise ConfigError(
                f"adapter {self.name!r}: the fit rows hold {int(bad.sum())} NaN or inf values, in {len(rows)} of {len(x)} rows "
                f"(first: row {int(rows[0])}). Fix: leave those rows out (e.g. --where) or extract them again."
            )
        return x

    def _need_rows(self, x: np.ndarray, least: int, why: str, fix: str) -> None:
        if len(x) < least:
            raise ConfigError(f"adapter {self.name!r} {why} needs at least {least} fit rows, got {len(x)}. Fix: {fix}.")

    def _input(self, x: Any, width: int, what: str = "transform") -> np.ndarray:
        """``x`` as a 2-D numeric array ``width`` wide, or a ConfigError naming both widths."""
        x = np.asarray(x)
        if x.ndim != 2 or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise ConfigError(
                f"adapter {self.name!r}: {what} takes an (n, {width}) array of numbers, got {x.dtype}{tuple(x.shape)}. "
                "Fix: pass one vector per row (x[None] for a single vector)."
            )
        if x.shape[1] != width:
            raise ConfigError(
                f"adapter {self.name!r}: {what} takes {width}-wide rows (the width it was fitted on), got {x.shape[1]}-wide rows "
                f"{tuple(x.shape)}. Fix: apply it to features of the model it was fitted on."
            )
        return x


def relative_error(x: np.ndarray, roundtrip: Callable[[np.ndarray], np.ndarray]) -> float:
    """``sum ||x - roundtrip(x)||² / sum ||x - mean(x)||²`` over the rows of ``x``, in float64.

    The denominator is the total scatter, so 0 is perfect and 1 is no better than
    replacing every row by the mean. 0.0 when the rows have no scatter at all.
    """
    mean = x.sum(axis=0, dtype=np.float64) / len(x)
    err = total = 0.0
    for s in row_blocks(len(x)):
        xb = x[s].astype(np.float64)
        err += float(np.square(xb - roundtrip(x[s]).astype(np.float64)).sum())
        total += float(np.square(xb - mean).sum())
    return err / total if total > 0 else 0.0


__all__ = ["BLOCK_ROWS", "FittedAdapter", "blockwise", "relative_error", "row_blocks"]
