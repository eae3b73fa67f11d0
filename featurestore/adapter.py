"""The contract between the core and domain adapter plugins.

A plugin's ``register_adapters(register)`` hook calls ``register(name, factory, summary=…,
params=…, labels=…)``; ``factory(name, **params)`` returns an unfitted :class:`Adapter`.
The core reads stored features (numpy, float32), calls :meth:`Adapter.fit` once, saves
:meth:`Adapter.state` as a safetensors artifact inside the store and hashes it together
with the base model hash and :meth:`Adapter.spec`. To apply a fitted adapter the core builds
a fresh one from the same name and params, calls :meth:`Adapter.load_state`, then
:meth:`Adapter.transform` on batches of vectors.

Adapters are deterministic functions of their fit rows and params (seed any randomness
from a ``seed`` param): fitting twice on the same rows gives the same tensors, so the same
adapter hash.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import numpy as np

#: dtypes an adapter may output; integer outputs are codes that :meth:`Adapter.decode` reverses
OUT_DTYPES = ("float32", "int8", "uint8")


class Adapter(abc.ABC):
    """A fitted transform from D-wide feature vectors to :meth:`out_dim`-wide ones.

    The factory must set :attr:`name`. Bad parameters or inputs raise
    :class:`featurestore.errors.ConfigError` (the CLI turns it into exit code 2).
    """

    #: registered name, e.g. ``"pca-whiten"``
    name: str
    #: hashed into the adapter hash: bump it when the arithmetic changes
    version: ClassVar[int] = 1
    #: whether :meth:`fit` needs class labels (``--labels FILE``)
    needs_labels: ClassVar[bool] = False

    @abc.abstractmethod
    def params(self) -> dict[str, Any]:
        """JSON-able parameters with their defaults filled in (e.g. ``{"dim": 128}``)."""

    def spec(self) -> dict[str, Any]:
        """Name, parameters and version: hashed with the fitted tensors and the base model."""
        return {"name": self.name, "params": self.params(), "version": self.version}

    @abc.abstractmethod
    def fit(self, x: np.ndarray, labels: np.ndarray | None = None, classes: list[str] | None = None) -> dict[str, Any]:
        """Fit on ``x`` (n, D) float32 rows.

        Args:
            x: the fit rows (n, D), float32.
            labels: (n,) int64 class indices into ``classes`` when :attr:`needs_labels`; else None.
            classes: class names, index order.

        Returns:
            JSON-able fit metrics for the adapter card (e.g. explained variance, train
            accuracy, mean reconstruction error).
        """

    @abc.abstractmethod
    def state(self) -> dict[str, np.ndarray]:
        """The fitted tensors (C-contiguous numpy arrays), saved as safetensors and hashed."""

    @abc.abstractmethod
    def load_state(self, tensors: dict[str, np.ndarray]) -> None:
        """Restore a fitted adapter from :meth:`state`'s tensors."""

    @abc.abstractmethod
    def in_dim(self) -> int:
        """Width D of the vectors this fitted adapter takes."""

    @abc.abstractmethod
    def out_dim(self) -> int:
        """Width of :meth:`transform`'s output (codes per vector for integer outputs)."""

    def out_dtype(self) -> str:
        """One of :data:`OUT_DTYPES`; integer outputs are codes, read back through :meth:`decode`."""
        return "float32"

    @abc.abstractmethod
    def transform(self, x: np.ndarray) -> np.ndarray:
        """(n, D) float32 → (n, out_dim()) of :meth:`out_dtype`."""

    def decode(self, y: np.ndarray) -> np.ndarray:
        """Approximate inverse: (n, out_dim()) → (n, D) float32. Raise NotImplementedError
        when the adapter has none (and set :attr:`invertible` accordingly)."""
        raise NotImplementedError(f"adapter {self.name!r} has no inverse")

    #: whether :meth:`decode` is implemented
    invertible: ClassVar[bool] = False

    def classes(self) -> list[str] | None:
        """Class names of the output dimensions when the output is class logits; else None."""
        return None


__all__ = ["Adapter", "OUT_DTYPES"]
