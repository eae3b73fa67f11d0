"""Answers of the read-only catalog commands, kept until the store changes.

``featurestore models / errors / clips / versions / manifest`` read a few small tables, in
milliseconds; importing LanceDB to read them takes over a second. So each answer is kept in a
small JSON file per store, together with the store's *fingerprint*, and served from there,
without importing LanceDB, pyarrow or pydantic, while the fingerprint is unchanged. LanceDB
stays the source of truth: the file is a cache that any change to the store invalidates,
whoever makes it (this library, another version of it, LanceDB itself).

The fingerprint is what Lance's own commit protocol guarantees to change on every commit:
for each ``*.lance`` table directory, its version manifests (``_versions/*``: a commit, a
compaction, a restore or a deletion adds one; cleaning up old versions removes some) and its
tag files (``_refs/tags``), each by name, size and mtime, so a store deleted and written again
with as many commits differs too. A new or dropped table changes the set of directories. The fingerprint is taken *before* the answer is
computed, so a commit that lands in between makes the stored pair stale, never wrong.

The files live outside the stores, in ``$FEATURESTORE_CACHE_DIR`` (default
``$XDG_CACHE_HOME/featurestore/catalog``, i.e. ``~/.cache/featurestore/catalog``), one per
store directory (named by a hash of its absolute path): a read-only command never writes into
a store, which may be read-only or a DVC-tracked output. Only local stores are cached (a URI
such as ``s3://…`` is always read through LanceDB), only stores that exist, and nothing fails
when the file cannot be written. ``FEATURESTORE_CATALOG_CACHE=0`` turns the cache off.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable

ENV_DIR = "FEATURESTORE_CACHE_DIR"
ENV_DISABLE = "FEATURESTORE_CATALOG_CACHE"
FORMAT = 2  # bump when the fingerprint or the file's layout changes

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def enabled() -> bool:
    return os.environ.get(ENV_DISABLE, "").strip().lower() not in ("0", "false", "no", "off")


def cache_root() -> Path:
    """Where the answers are kept (``FEATURESTORE_CACHE_DIR``, else the user's cache directory)."""
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "featurestore" / "catalog"


def cache_file(store_dir: Path) -> Path:
    """The file holding the answers for the store in ``store_dir``."""
    key = hashlib.sha256(str(store_dir.resolve()).encode()).hexdigest()[:32]
    return cache_root() / f"{key}.json"


def _local_dir(store: str) -> Path | None:
    """The store's directory, when it is a local one that exists."""
    if _URI.match(store) and not store.startswith("file://"):
        return None
    path = Path(store.removeprefix("file://")).expanduser()
    return path if path.is_dir() else None


def _listing(directory: Path, *, stat: bool = False) -> list[Any]:
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []
    if not stat:
        return [e.name for e in entries]
    out = []
    for e in entries:
        st = e.stat()
        out.append([e.name, st.st_size, st.st_mtime_ns])
    return out


def fingerprint(store_dir: Path) -> str:
    """SHA-256 over every table's version manifests and tag files: names, sizes, mtimes (see the module docstring)."""
    from featurestore import __version__

    tables = []
    for entry in sorted(os.scandir(store_dir), key=lambda e: e.name):
        if entry.is_dir() and entry.name.endswith(".lance"):
            table = Path(entry.path)
            # size and mtime too: a store deleted and written again (a DVC stage does that) has
            # the same table and manifest names when it has the same number of commits
            tables.append([entry.name, _listing(table / "_versions", stat=True), _listing(table / "_refs" / "tags", stat=True)])
    blob = json.dumps([FORMAT, __version__, tables], separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _plain(value: Any) -> Any:
    """The value as JSON gives it back (datetimes as ``str()``, tuples as lists): what the CLI
    prints is the same whether an answer was computed now or read from the file."""
    return json.loads(json.dumps(value, default=str))


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("format") == FORMAT else {}


def _write(path: Path, data: dict[str, Any]) -> None:
    """Atomically (a temporary file, then rename): readers see the old file or the new one."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, separators=(",", ":"))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError:  # no writable cache directory, a full disk: answers are computed each time instead
        pass


def cached(store: str, key: str, compute: Callable[[], Any]) -> Any:
    """``compute()``'s answer for ``key`` on ``store``, from the cache while the store is unchanged.

    The answer comes back as JSON would give it (see :func:`_plain`). Errors ``compute``
    raises are not cached.
    """
    store_dir = _local_dir(str(store)) if enabled() else None
    if store_dir is None:
        return _plain(compute())
    path = cache_file(store_dir)
    before = fingerprint(store_dir)
    data = _read(path)
    if data.get("store") != str(store_dir.resolve()):  # another store whose path hashed alike
        data = {}
    entries = data.get("entries") if data.get("fingerprint") == before else None
    if isinstance(entries, dict) and key in entries:
        return entries[key]
    value = _plain(compute())
    fresh = _read(path)  # another process may have added answers for this same fingerprint
    same = fresh.get("fingerprint") == before and fresh.get("store") == str(store_dir.resolve())
    kept = fresh["entries"] if same and isinstance(fresh.get("entries"), dict) else {}
    _write(path, {"format": FORMAT, "store": str(store_dir.resolve()), "fingerprint": before, "entries": {**kept, key: value}})
    return value


def warm(store: str, answers: dict[str, Callable[[], Any]]) -> None:
    """Fill the cache for a local store right after a write (``{key: compute}``), while LanceDB
    is loaded anyway. Never raises: the write it follows has succeeded, and a missing answer is
    only computed later."""
    if not enabled() or _local_dir(str(store)) is None:
        return
    for key, compute in answers.items():
        try:
            cached(store, key, compute)
        except Exception:  # noqa: BLE001 - see the docstring
            return


__all__ = ["ENV_DIR", "ENV_DISABLE", "cache_file", "cache_root", "cached", "enabled", "fingerprint", "warm"]
