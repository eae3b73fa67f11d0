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
import os
import pickle
import pickletools
import signal
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


def _server_pid() -> int | None:
    # multiprocessing keeps the forkserver's pid on a private attribute (3.8 to 3.13 at least);
    # without it, nothing here can stop the server, and nothing breaks
    from multiprocessing import forkserver

    pid = getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None)
    return pid if isinstance(pid, int) else None


def start_worker_server(preprocessor: Any = None, *, preload: Sequence[str] = ()) -> bool:
    """Start the forkserver now, without waiting for its imports: those of ``preload`` and of
    ``preprocessor``'s pickle. A no-op when this process already has one.

    Returns:
        Whether a new forkserver process was started (see :func:`stop_worker_server`).
    """
    mods = [*preload, *(m for m in pickled_modules(preprocessor) if m not in preload)] if preprocessor is not None else list(preload)
    ctx = worker_context(mods)
    if ctx.get_start_method() != "forkserver":
        return False
    from multiprocessing import forkserver

    before = _server_pid()
    forkserver.ensure_running()
    after = _server_pid()
    return after is not None and after != before


def stop_worker_server() -> None:
    """Stop this process's forkserver at once, e.g. when the model failed to load after
    :func:`start_worker_server`: the server may go on importing for seconds, and it holds this
    process's stdout and stderr, so a caller reading them through a pipe would wait for it.
    The next :func:`start_worker_server` starts a new one."""
    from multiprocessing import forkserver

    pid = _server_pid()
    stop = getattr(getattr(forkserver, "_forkserver", None), "_stop", None)  # private, as above
    if pid is None or stop is None:
        return
    try:
        os.kill(pid, signal.SIGTERM)  # it may be busy importing: closing its pipe would not stop it
    except ProcessLookupError:
        pass
    stop()  # reaps it and forgets it


__all__ = ["BASE_PRELOAD", "pickled_modules", "start_worker_server", "stop_worker_server", "worker_context"]
