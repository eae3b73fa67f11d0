"""Import LanceDB without the REST namespace client it never uses on a local store.

``import lancedb`` (0.40) imports ``lance_namespace``, which imports the package
``lance_namespace_urllib3_client``: an OpenAPI-generated REST client whose ``__init__``
imports every API module, each with hundreds of ``pydantic.validate_call`` methods whose
schemas are built at import time. That is about 60 % of ``import lancedb`` (1.2-3 s of
2-5 s on a 2-core machine) and is only used to talk to a LanceDB/Lance REST namespace
server; a store in a local directory never does.

:func:`import_lancedb` defers that package's ``__init__``: the package module is created
from its real spec (so ``lance_namespace_urllib3_client.models`` and every other submodule
import normally, from the real files), and its ``__init__`` runs, in the same module
object, the first time anything reads a name from the package itself. Nothing is replaced
or patched; a program that does use the REST client gets the full package on first use.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from types import ModuleType
from typing import Any

#: the package whose ``__init__`` is deferred
REST_CLIENT = "lance_namespace_urllib3_client"

_LOCK = threading.RLock()


def _defer_init(name: str) -> ModuleType | None:
    """Put package ``name`` in ``sys.modules`` with its ``__init__`` not yet run.

    Returns the module, or None when it is already imported or not installed.
    """
    if name in sys.modules:
        return None
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return None
    module = importlib.util.module_from_spec(spec)  # __path__, __spec__, __file__ set; body not run

    def __getattr__(attr: str) -> Any:  # only called for names the module does not have yet
        with _LOCK:
            if module.__dict__.get("__getattr__") is __getattr__:
                del module.__dict__["__getattr__"]
                spec.loader.exec_module(module)  # the real __init__, in this module object
        try:
            return module.__dict__[attr]
        except KeyError:
            raise AttributeError(f"module {name!r} has no attribute {attr!r}") from None

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    sys.modules[name] = module
    return module


def import_lancedb() -> ModuleType:
    """``import lancedb``, with the REST namespace client's package ``__init__`` deferred.

    Raises:
        ImportError: lancedb is not installed.
    """
    if "lancedb" not in sys.modules:
        with _LOCK:
            _defer_init(REST_CLIENT)
    import lancedb

    return lancedb


__all__ = ["REST_CLIENT", "import_lancedb"]
