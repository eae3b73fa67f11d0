"""Answers of the read-only catalog commands, kept next to the store until it changes.

``featurestore models / errors / clips / versions / manifest`` read a few small tables, in
milliseconds; importing LanceDB to read them takes over a second. So each answer is kept in
``<store>/.featurestore-catalog.json`` together with the store's *fingerprint*, and served
from there, without importing LanceDB, pyarrow or pydantic, while the fingerprint is
unchanged. LanceDB stays the source of truth: the file is a cache that any change to the
store invalidates, whoever makes it (this library, another version of it, LanceDB itself).

The fingerprint is what Lance's own commit protocol guarantees to change on every commit:
for each ``*.lance`` table directory, the names of its version manifests
(``_versions/*.manifest``: a commit, a compaction, a restore or a deletion adds one; cleaning
up old versions removes some) and its tag files (``_refs/tags``: name, size, mtime). A new or
dropped table changes the set of directories. The fingerprint is taken *before* the answer is
computed, so a commit that lands in between makes the stored pair stale, never wrong.

Only local stores are cached (a URI such as ``s3://…`` is always read through LanceDB), only
stores that already existed, and never when writing the file fails (a read-only store).
``FEATURESTORE_CATALOG_CACHE=0`` turns the cache off.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable

CACHE_FILE = ".featurestore-catalog.json"
ENV_DISABLE = "FEATURESTORE_CATALOG_CACHE"
FORMAT = 1  # bump when the fingerprint or the file's layout changes

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def enabled() -> bool:
    return os.environ.get(ENV_DISABLE, "").strip().lower() not in ("0", "false", "no", "off")


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
    """SHA-256 over every table's version manifests and tag files (see the module docstring)."""
    from featurestore import __version__

    tables = []
    for entry in sorted(os.scandir(store_dir), key=lambda e: e.name):
        if entry.is_dir() and entry.name.endswith(".lance"):
            table = Path(entry.path)
            tables.append([entry.name, _listing(table / "_versions"), _listing(table / "_refs" / "tags", stat=True)])
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
        fd, tmp = tempfile.mkstemp(prefix=CACHE_FILE + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, separators=(",", ":"))
            os.chmod(tmp, 0o644)  # mkstemp makes it private; the store's other readers may use it too
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError:  # a read-only store, a full disk: answers are computed each time instead
        pass


def cached(store: str, key: str, compute: Callable[[], Any]) -> Any:
    """``compute()``'s answer for ``key`` on ``store``, from the cache while the store is unchanged.

    The answer comes back as JSON would give it (see :func:`_plain`). Errors ``compute``
    raises are not cached.
    """
    store_dir = _local_dir(str(store)) if enabled() else None
    if store_dir is None:
        return _plain(compute())
    path = store_dir / CACHE_FILE
    before = fingerprint(store_dir)
    data = _read(path)
    entries = data.get("entries") if data.get("fingerprint") == before else None
    if isinstance(entries, dict) and key in entries:
        return entries[key]
    value = _plain(compute())
    fresh = _read(path)  # another process may have added answers for this same fingerprint
    kept = fresh.get("entries") if fresh.get("fingerprint") == before and isinstance(fresh.get("entries"), dict) else {}
    _write(path, {"format": FORMAT, "fingerprint": before, "entries": {**kept, key: value}})
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


__all__ = ["CACHE_FILE", "ENV_DISABLE", "cached", "enabled", "fingerprint", "warm"]
