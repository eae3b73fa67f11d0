"""Inter-process writer locks: one lock file per table inside the store directory.

Every commit that must see the table as it is (insert only unseen ids, create a table,
add a catalog row, add columns, compact) runs while holding the table's lock, so two
processes on one machine never decide "this id is new" against the same version.

The lock is ``fcntl.flock`` on ``<store>/_featurestore_locks/<table>.lock``. LanceDB lists
only ``*.lance`` directories as tables, so the lock directory is never taken for one. The
kernel drops the lock when its holder dies (a killed run leaves no stale lock). flock is
local to one machine: on NFS it is emulated by the server or not at all, and an object
store (``s3://``, ``gs://`` …) has no lock file, so there the lock only orders the threads
of one process. ``docs/guarantees.md`` says what holds where.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

try:  # POSIX; Windows falls back to the in-process lock only
    import fcntl
except ImportError:  # pragma: no cover - not on the platforms we test
    fcntl = None  # type: ignore[assignment]

LOCK_DIR = "_featurestore_locks"

_local = threading.local()  # per-thread re-entry counts: flock on a second fd would self-deadlock
_thread_locks: dict[str, threading.RLock] = {}
_registry_lock = threading.Lock()


def is_local(store_path: str) -> bool:
    """Whether ``store_path`` is a directory on this machine (not an object-store URI)."""
    return "://" not in store_path or store_path.startswith("file://")


def lock_path(store_path: str, name: str) -> Path | None:
    """The lock file of table ``name``; None for an object-store URI (no file to lock)."""
    if not is_local(store_path):
        return None
    root = store_path[len("file://") :] if store_path.startswith("file://") else store_path
    return Path(root) / LOCK_DIR / f"{name}.lock"


def _thread_lock(key: str) -> threading.RLock:
    with _registry_lock:
        lock = _thread_locks.get(key)
        if lock is None:
            lock = _thread_locks[key] = threading.RLock()
        return lock


@contextmanager
def table_lock(store_path: str, name: str) -> Iterator[None]:
    """Hold the writer lock of table ``name`` of the store at ``store_path``.

    Re-entrant within one thread; blocks until other threads and processes release it.
    Hold it for one commit (a few milliseconds to seconds), never across a forward pass.
    """
    path = lock_path(store_path, name)
    key = str(path) if path is not None else f"{store_path}\0{name}"
    counts: dict[str, int] = _local.__dict__.setdefault("counts", {})
    tlock = _thread_lock(key)
    with tlock:  # threads of this process first: flock alone is per open file
        if counts.get(key, 0):
            counts[key] += 1
            try:
                yield
            finally:
                counts[key] -= 1
            return
        fd = None
        if path is not None and fcntl is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            fcntl.flock(fd, fcntl.LOCK_EX)
        counts[key] = 1
        try:
            yield
        finally:
            counts[key] = 0
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)


@contextmanager
def try_lock(store_path: str, name: str) -> Iterator[bool]:
    """Take lock ``name`` only if it is free right now; yields whether it was taken.

    For work that one process is enough to do (compacting a table): a second one skips it.
    """
    path = lock_path(store_path, name)
    key = str(path) if path is not None else f"{store_path}\0{name}"
    tlock = _thread_lock(key)
    if not tlock.acquire(blocking=False):
        yield False
        return
    fd = None
    try:
        if path is not None and fcntl is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                fd = None
                yield False
                return
        yield True
    finally:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        tlock.release()


__all__ = ["LOCK_DIR", "is_local", "lock_path", "table_lock", "try_lock"]
