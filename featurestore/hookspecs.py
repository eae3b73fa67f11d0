"""Every hook a featurestore plugin can implement.

A plugin is a module named by an entry point in the group ``featurestore``::

    [project.entry-points.featurestore]
    my_plugin = "my_package.plugin"

and implements any of the hooks below with :data:`featurestore.hookimpl`. Each hook
receives a ``register`` callback; calling it adds one named factory to a registry.
Registering a name that another plugin (or the same one) already registered makes
that name unusable until one of the two plugins is disabled: the error names both.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import pluggy

PROJECT = "featurestore"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class RegisterFn(Protocol):
    """The ``register`` callback handed to every ``register_*`` hook."""

    def __call__(self, name: str, factory: Callable[..., Any], **metadata: Any) -> None:
        """Register ``factory`` under ``name``.

        :param name: unique name; a name ending in ``:`` (e.g. ``"hf:"``) registers a
            family that answers every ``"hf:<anything>"``.
        :param factory: called as ``factory(name, **options)`` to build the object.
        :param metadata: JSON-able facts shown by ``featurestore backbones`` and
            ``featurestore plugins`` (``summary``, ``dim``, ``patch_size``, ``source`` …).
        """


@hookspec
def register_backbones(register: RegisterFn) -> None:
    """Register image backbones.

    The factory is called as ``factory(name, weights=None)`` and must return a
    :class:`featurestore.backbone.Backbone` (CLS ``(B, D)`` and patch tokens
    ``(B, N, D)`` with their token layout).

    Metadata ``worker_preload`` (a list of module names) is read by extraction: the worker
    processes' forkserver imports them while the factory loads the model, so list the
    modules the backbone's preprocessor needs to unpickle (its own module and the model
    library's image-processing module). A stale list only costs time: workers import what
    is missing.

    :param register: callback, see :class:`RegisterFn`.
    """


@hookspec
def register_aggregators(register: RegisterFn) -> None:
    """Register temporal aggregators that turn per-frame features of a video into
    clip-level features (mean pooling, attention pooling …).

    :param register: callback, see :class:`RegisterFn`.
    """


@hookspec
def register_adapters(register: RegisterFn) -> None:
    """Register domain adapters: fitted, versioned transforms applied to frozen
    features (PCA-whitening, linear maps …).

    :param register: callback, see :class:`RegisterFn`.
    """
