"""The forkserver that extraction's DataLoader workers start from.

Workers never fork the main process: by the time they start it runs LanceDB's async
runtime (and maybe CUDA), and a forked child can deadlock on a lock one of those threads
held. They fork from a forkserver instead, a fresh interpreter that imports torch, the
loader and the preprocessor's modules (a model library's image processing: seconds) once,
before any worker starts. This module imports no torch, so :meth:`FeatureStore.extract
<featurestore.api.FeatureStore.extract>` can start that server *before* loading the model:
its imports then run beside the model library's in this process, instead of after them.
"""

from __future__ import annotations

import multiprocessing
import pickle
import pickletools
import sys
from typing import Any, Sequence

BASE_PRELOAD = ("torch", "featurestore.loader")


def pickled_modules(obj: Any) -> list[str]:
    """Modules a worker must import to unpickle ``obj`` (e.g. a plugin's preprocessor).

    Read off the pickle's GLOBAL opcodes (protocol 2 spells them ``module name``).
    """
    try:
        data = pickle.dumps(obj, protocol=2, fix_imports=False)
    except Exception:  # not picklable: the DataLoader will say so, with its own message
        return []
    mods = []
    for op, arg, _pos in pickletools.genops(data):
        if op.name == "GLOBAL" and isinstance(arg, str):
            mod = arg.split(" ", 1)[0]
            if mod not in mods and mod not in ("builtins", "copyreg", "__main__"):
                mods.append(mod)
    return mods


def worker_context(preload: Sequence[str] = ()) -> Any:
    """Workers start from a clean forkserver, never by forking this process.

    The forkserver imports torch, :mod:`featurestore.loader` and ``preload`` (the
    preprocessor's modules) once, so each worker starts in well under a second instead of
    importing a model library itself. Preloading applies to the first forkserver of a
    process; later runs reuse it.
    """
    if sys.platform == "win32" or "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([*BASE_PRELOAD, *(m for m in preload if m not in BASE_PRELOAD)])
    return ctx


def start_worker_server(preprocessor: Any = None, *, preload: Sequence[str] = ()) -> None:
    """Start the forkserver now, without waiting for its imports: those of ``preload`` and of
    ``preprocessor``'s pickle. A no-op when this process already has one."""
    mods = [*preload, *(m for m in pickled_modules(preprocessor) if m not in preload)] if preprocessor is not None else list(preload)
    ctx = worker_context(mods)
    if ctx.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


__all__ = ["BASE_PRELOAD", "pickled_modules", "start_worker_server", "worker_context"]
