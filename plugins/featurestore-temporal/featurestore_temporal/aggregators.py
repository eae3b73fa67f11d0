"""The temporal aggregators: reductions over the time axis of a video's frame features.

Every aggregator here reduces axis 0 (time) of its input and nothing else, so the same
arithmetic serves the frame ``cls`` vectors, ``(T, D) → (k·D,)``, and the patch tokens,
``(T, N, P) → (N, k·P)``, where each of the N token positions is reduced over time on
its own and ``k`` is the number of statistics concatenated (1 or 2).

Numbers: the input is converted to a C-contiguous float64 array first, every statistic
is computed in float64 and only the result is cast to float32. So the output does not
depend on the input's dtype (float16/32/64 or integers holding the same values) or its
memory layout, and is bit-for-bit the same on every call. NaN and inf are not checked:
they propagate as numpy's ``mean`` / ``max`` propagate them (``trimmed-mean`` sorts NaN
last, as :func:`numpy.sort` and :func:`scipy.stats.trim_mean` do, so a cut may drop it).
"""

from __future__ import annotations

import abc
import operator
from typing import Any, ClassVar

import numpy as np

from featurestore.aggregator import Aggregator
from featurestore.errors import ConfigError
from featurestore_temporal.spec import PARAMS, NumberParam, check_params


class TemporalAggregator(Aggregator):
    """Base of this plugin's aggregators: parameters, shape checks, float64 → float32.

    Subclasses set :attr:`name` and :attr:`parts` and implement :meth:`_reduce`.
    Parameters are declared in :data:`featurestore_temporal.spec.PARAMS` under the
    aggregator's name, so the registered defaults and the checked ones are the same.
    """

    name: str
    #: bumped when the arithmetic changes; hashed into the clip table's key by ``spec()``
    version: ClassVar[int] = 1
    #: how many statistics are concatenated: the output is ``parts`` times the input width
    parts: ClassVar[int] = 1

    def __init__(self, **params: Any) -> None:
        """Check ``params`` and fill in defaults.

        Raises:
            ConfigError: a parameter this aggregator does not take, or a bad value.
        """
        self._params = check_params(self.name, params, self.declared())

    @classmethod
    def declared(cls) -> dict[str, NumberParam]:
        """The parameters this aggregator accepts."""
        return PARAMS[cls.name]

    def params(self) -> dict[str, Any]:
        """Every parameter, defaults filled in, canonical (``{"proportion": 0.1}`` or ``{}``)."""
        return dict(self._params)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params.items())
        return f"{type(self).__name__}({args})"

    # -- widths -------------------------------------------------------------------
    def cls_dim(self, dim: int) -> int:
        """``parts * dim``: the width of :meth:`aggregate`'s output for ``dim``-wide frames."""
        return self.parts * self._width(dim, "dim")

    def patch_dim(self, dim: int) -> int:
        """``parts * dim``: every aggregator here also aggregates patch tokens."""
        return self.parts * self._width(dim, "patch dim")

    def _width(self, dim: int, what: str) -> int:
        try:
            if isinstance(dim, bool):  # an int to Python, never a width
                raise TypeError
            d = operator.index(dim)
        except TypeError:
            raise ConfigError(f"aggregator {self.name!r}: {what} {dim!r} is not an integer. Fix: pass the feature width, e.g. 384.") from None
        if d < 1:
            raise ConfigError(f"aggregator {self.name!r}: {what} {d} must be at least 1. Fix: pass the feature width, e.g. 384.")
        return d

    # -- aggregation ----------------------------------------------------------------
    def aggregate(self, cls: np.ndarray) -> np.ndarray:
        """Aggregate frame features over time.

        Args:
            cls: ``(T, D)`` frame features in time order, ``T >= 1``.

        Returns:
            ``(cls_dim(D),)`` float32.

        Raises:
            ConfigError: ``cls`` is not a 2-D array of real numbers with ``T, D >= 1``.
        """
        x = self._frames(cls, ("T frames", "D dims"))  # (T, D)
        return self._finish(x)

    def aggregate_patches(self, patches: np.ndarray) -> np.ndarray:
        """Aggregate patch tokens over time, each token position on its own.

        Args:
            patches: ``(T, N, P)`` patch tokens of T frames in time order, ``T >= 1``.

        Returns:
            ``(N, patch_dim(P))`` float32; the statistics are concatenated on the last axis.

        Raises:
            ConfigError: ``patches`` is not a 3-D array of real numbers with ``T, N, P >= 1``.
        """
        x = self._frames(patches, ("T frames", "N positions", "P dims"))  # (T, N, P)
        return self._finish(x)

    def _finish(self, x: np.ndarray) -> np.ndarray:
        stats = self._reduce(x)  # each (…,) = x.shape[1:], float64
        out = stats[0] if len(stats) == 1 else np.concatenate(stats, axis=-1)  # (…, parts·width)
        return np.ascontiguousarray(out, dtype=np.float32)

    def _frames(self, data: Any, axes: tuple[str, ...]) -> np.ndarray:
        """``data`` as a C-contiguous float64 array with the named axes, or a clear error."""
        want = "(" + ", ".join(axes) + ")"
        arr = np.asarray(data)
        if arr.dtype.kind not in "iuf":  # bool, complex, strings, objects: not features
            raise ConfigError(
                f"aggregator {self.name!r}: features must be real numbers, got dtype {arr.dtype}. "
                f"Fix: pass a float array of shape {want}."
            )
        if arr.ndim != len(axes):
            hint = " A single frame is (1, …), not (…,)." if arr.ndim == len(axes) - 1 else ""
            raise ConfigError(
                f"aggregator {self.name!r}: expected a {len(axes)}-D array {want}, got shape {arr.shape}.{hint} "
                f"Fix: stack the frames in time order along the first axis."
            )
        if arr.shape[0] < 1:
            raise ConfigError(
                f"aggregator {self.name!r}: got 0 frames (shape {arr.shape}); a clip needs at least one frame. "
                "Fix: leave empty clips out before aggregating."
            )
        empty = [name for name, n in zip(axes[1:], arr.shape[1:]) if n < 1]
        if empty:
            raise ConfigError(f"aggregator {self.name!r}: shape {arr.shape} has no {empty[0].split()[1]}. Fix: pass non-empty features {want}.")
        # float64 before any arithmetic: output bits independent of input dtype and layout
        return np.ascontiguousarray(arr, dtype=np.float64)

    @abc.abstractmethod
    def _reduce(self, x: np.ndarray) -> list[np.ndarray]:
        """The statistics of ``x`` (T, …) over axis 0, each of shape ``x.shape[1:]``, float64."""


def _mean(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=0)  # (…,)


def _abs_step_mean(x: np.ndarray) -> np.ndarray:
    if x.shape[0] == 1:  # no step to measure: a still clip
        return np.zeros(x.shape[1:], np.float64)
    return np.abs(np.diff(x, axis=0)).mean(axis=0)  # (…,)


def trimmed_mean(x: np.ndarray, proportion: float) -> np.ndarray:
    """Mean over axis 0 after cutting ``int(proportion * T)`` values from each end.

    Cuts exactly what :func:`scipy.stats.trim_mean` cuts, ``int(proportion * T)`` of the
    sorted values at each end of every column, truncated (not rounded) as scipy does,
    e.g. T = 9 and proportion 0.1 cut nothing, T = 10 cuts one each side. With
    ``0 <= proportion < 0.5`` at least one value always remains.

    Args:
        x: ``(T, …)`` float64.
        proportion: fraction cut from each end, ``0 <= proportion < 0.5``.

    Returns:
        ``x.shape[1:]`` float64.
    """
    t = x.shape[0]
    k = int(proportion * t)
    if k == 0:  # nothing cut: the plain mean, bit for bit (same code path as "mean")
        return _mean(x)
    return np.sort(x, axis=0)[k : t - k].mean(axis=0)  # (…,)


class Mean(TemporalAggregator):
    """``mean``: the temporal mean, ``(1/T) Σ_t x_t``. Output width D (patches: P)."""

    name = "mean"

    def _reduce(self, x: np.ndarray) -> list[np.ndarray]:
        return [_mean(x)]


class Max(TemporalAggregator):
    """``max``: the element-wise maximum over time, ``max_t x_t[d]``. Output width D (patches: P)."""

    name = "max"

    def _reduce(self, x: np.ndarray) -> list[np.ndarray]:
        return [x.max(axis=0)]


class MeanMax(TemporalAggregator):
    """``meanmax``: ``[mean, max]`` concatenated, the mean first. Output width 2D (patches: 2P)."""

    name = "meanmax"
    parts = 2

    def _reduce(self, x: np.ndarray) -> list[np.ndarray]:
        return [_mean(x), x.max(axis=0)]


class TrimmedMean(TemporalAggregator):
    """``trimmed-mean``: per element, the mean after cutting the lowest and highest values.

    ``int(proportion * T)`` values are cut from each end of every dimension's T values
    (see :func:`trimmed_mean`; the same cut as :func:`scipy.stats.trim_mean`). Parameter
    ``proportion``: ``0 <= proportion < 0.5``, default 0.1. A short clip may cut nothing
    (T < 10 at the default), and then the result is the plain mean. Output width D
    (patches: P).
    """

    name = "trimmed-mean"

    def _reduce(self, x: np.ndarray) -> list[np.ndarray]:
        return [trimmed_mean(x, self._params["proportion"])]


class Motion(TemporalAggregator):
    """``motion``: ``[mean |x_{t+1} - x_t|, mean x_t]`` concatenated, the motion part first.

    The motion part is the mean over the T - 1 steps of the absolute frame-to-frame
    difference, per dimension: ``(1/(T-1)) Σ_{t=1}^{T-1} |x_{t+1} - x_t|``. (The mean of the
    *signed* differences would telescope to ``(x_T - x_1)/(T-1)`` and ignore every frame
    in between.) For T = 1 there is no step and the motion part is all zeros. It is per
    sampled step, not per second: the aggregator sees no timestamps, so its scale
    depends on the sampling rate. The second part is the temporal mean, as ``mean``.
    Output width 2D (patches: 2P, per token position).
    """

    name = "motion"
    parts = 2

    def _reduce(self, x: np.ndarray) -> list[np.ndarray]:
        return [_abs_step_mean(x), _mean(x)]


#: registered name -> class
AGGREGATORS: dict[str, type[TemporalAggregator]] = {c.name: c for c in (Mean, Max, MeanMax, TrimmedMean, Motion)}


def create_aggregator(name: str, **params: Any) -> TemporalAggregator:
    """The factory registered for every name: ``create_aggregator("trimmed-mean", proportion=0.2)``.

    Raises:
        ConfigError: ``name`` is not one of this plugin's aggregators, or bad ``params``.
    """
    cls = AGGREGATORS.get(name)
    if cls is None:
        raise ConfigError(f"featurestore-temporal has no aggregator {name!r}; it provides {', '.join(sorted(AGGREGATORS))}.")
    return cls(**params)


__all__ = ["AGGREGATORS", "Max", "Mean", "MeanMax", "Motion", "TemporalAggregator", "TrimmedMean", "create_aggregator", "trimmed_mean"]
