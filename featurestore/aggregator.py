"""The contract between the core and temporal aggregator plugins.

A plugin's ``register_aggregators(register)`` hook calls ``register(name, factory, summary=…)``;
``factory(name, **params)`` returns an :class:`Aggregator`. The core reads a video's frame
rows (ordered by timestamp), hands their features to the aggregator, and writes one clip
row per video (or per window) to a table keyed by the model hash and :meth:`Aggregator.spec`.

Aggregators are pure functions of the frame features: numpy in, numpy out, deterministic.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import numpy as np


class Aggregator(abc.ABC):
    """Turns the features of T frames into one clip-level feature.

    The factory must set :attr:`name`. Bad parameters or inputs raise
    :class:`featurestore.errors.ConfigError` (the CLI turns it into exit code 2). Register
    with metadata ``summary``, ``params`` (the defaults) and ``patches`` (whether
    :meth:`patch_dim` is not None); ``featurestore aggregators`` shows them.
    """

    #: registered name, e.g. ``"mean"``
    name: str
    #: hashed into the clip table's key: bump it when the arithmetic changes
    version: ClassVar[int] = 1

    @abc.abstractmethod
    def params(self) -> dict[str, Any]:
        """JSON-able parameters (e.g. ``{"proportion": 0.1}``); hashed with the name."""

    def spec(self) -> dict[str, Any]:
        """What is hashed into the clip table's key: name, parameters, and a version the
        plugin bumps when its arithmetic changes."""
        return {"name": self.name, "params": self.params(), "version": self.version}

    @abc.abstractmethod
    def cls_dim(self, dim: int) -> int:
        """Width of the aggregated ``cls`` for frame features of width ``dim``."""

    @abc.abstractmethod
    def aggregate(self, cls: np.ndarray) -> np.ndarray:
        """(T, D) float32 frame features, in time order, T >= 1 → (cls_dim(D),) float32."""

    def patch_dim(self, dim: int) -> int | None:
        """Width of aggregated patch tokens, or None when this aggregator does not do patches."""
        return None

    def aggregate_patches(self, patches: np.ndarray) -> np.ndarray:
        """(T, N, P) patch tokens, in time order → (N, patch_dim(P)): per-position over time."""
        raise NotImplementedError(f"aggregator {self.name!r} does not aggregate patch tokens")


__all__ = ["Aggregator"]
