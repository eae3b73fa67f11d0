"""Entry point module (``[project.entry-points.featurestore] adapters = ...``).

Loaded every time the core builds its plugin host, so it imports nothing heavy: the
parameter defaults come from the numpy-free :mod:`featurestore_adapters.params`; numpy
(and torch, for ``linear-head``) come in with the factory, when an adapter is built.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from featurestore import hookimpl
from featurestore.errors import ConfigError
from featurestore_adapters.params import defaults, required

if TYPE_CHECKING:
    from featurestore.hookspecs import RegisterFn
    from featurestore_adapters.base import FittedAdapter

#: name -> (module, class): imported by the factory only
ADAPTERS: dict[str, tuple[str, str]] = {
    "pca-whiten": ("featurestore_adapters.pca", "PcaWhiten"),
    "project": ("featurestore_adapters.pca", "Project"),
    "quantize": ("featurestore_adapters.quantize", "Quantize"),
    "linear-head": ("featurestore_adapters.linear", "LinearHead"),
}

#: name -> what ``featurestore adapters`` shows. No square brackets: the core prints these
#: through rich, which would take them for markup.
SUMMARIES: dict[str, str] = {
    "pca-whiten": "PCA whitening (x - mean) V / sqrt(eigenvalue + eps * largest eigenvalue) onto dim axes, null: all D; float32, invertible",
    "project": "projection onto the top dim principal axes, not whitened; float32, invertible",
    "quantize": "int8 codes per dimension (D bytes), or method=pq: m uint8 codes of 256 k-means centres each; decoded on read",
    "linear-head": "linear classifier trained on labels (L-BFGS, L2): class logits, or with dim=K a K-wide linear bottleneck; float32",
}

#: whether each adapter has a decode (``quantize`` always: codes are decoded on read)
INVERTIBLE: dict[str, bool] = {"pca-whiten": True, "project": True, "quantize": True, "linear-head": False}


def create(name: str, **params: Any) -> FittedAdapter:
    """Factory the core calls as ``factory(name, **params)`` (``NAME:key=value`` parsed).

    Raises:
        ConfigError: ``name`` is not one of this plugin's adapters, or bad ``params``.
    """
    if name not in ADAPTERS:
        raise ConfigError(f"featurestore-adapters has no adapter {name!r}; it provides {', '.join(sorted(ADAPTERS))}.")
    module, cls = ADAPTERS[name]
    return getattr(importlib.import_module(module), cls)(**params)


@hookimpl
def register_adapters(register: RegisterFn) -> None:
    """Register ``pca-whiten``, ``project``, ``quantize`` and ``linear-head``.

    ``params`` holds the defaults the factory fills in (``None`` for a parameter listed in
    ``required``, which has none); ``labels`` says whether fitting needs class labels.
    """
    for name in ADAPTERS:
        register(
            name,
            create,
            summary=SUMMARIES[name],
            params=defaults(name),
            required=required(name),
            labels=name == "linear-head",
            invertible=INVERTIBLE[name],
        )
