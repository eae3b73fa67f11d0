"""The stat cache: which content id a file had when it was last read, so re-runs skip it.

A row's id is the SHA-256 of its source's bytes, so knowing whether an image is stored
means reading it. Re-running ``extract`` over a million stored files would re-read a
million files. Like git's index and DVC's state database, the store keeps what each file
hashed to under a key of what ``stat`` says about it — path, size, mtime (ns) and inode —
and a re-run reads only the files whose key it does not find: new ones and changed ones
(any write changes the mtime, a replaced file its inode).

- **Where.** A LanceDB table ``stat_cache`` in ``<store>/_featurestore_state/``, a database
  of its own beside the store's tables: it is a cache of the file system, not content, so it
  is not one of the store's tables (not in ``models``, the manifest, ``compact``…). Deleting
  the directory loses nothing but the next run's speed.
- **Keys are appended, never updated.** A changed file gets a new key; the old one stays
  behind and is never found again (a cache of N file versions holds N small rows).
- **Racy files are not cached** (git's "racily clean" problem): a file whose mtime is less
  than :data:`RACY_SECONDS` before it was read, or whose ``stat`` changed while it was read,
  may be written again within one mtime tick without a visible change, so it is hashed
  again next time.
- **What it trusts.** The key, not the bytes: a tool that rewrites a file and then restores
  its size, mtime and inode (``touch -d``, some sync tools) defeats it, as it defeats git and
  make. ``extract --rehash`` ignores the cache for one run and reads every file.
"""

from __future__ import annotations

import hashlib
import os
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Sequence

import pyarrow as pa

#: the stat cache's own LanceDB database, inside the store's directory
STATE_DIR = "_featurestore_state"
STAT_TABLE = "stat_cache"
#: a file modified less than this before it was read is not cached (mtime ticks are coarse)
RACY_SECONDS = 2.0
#: versions of the cache table older than this are pruned when it is compacted (nobody pins them)
PRUNE_AFTER = timedelta(hours=1)

STAT_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),  # stat_key(path, stat)
        pa.field("path", pa.string()),
        pa.field("size", pa.int64()),
        pa.field("mtime_ns", pa.int64()),
        pa.field("inode", pa.int64()),
        pa.field("content_id", pa.string()),  # SHA-256 of the bytes the file held
        pa.field("created_at", pa.timestamp("us", tz="UTC")),
    ]
)

#: (key, path, size, mtime_ns, inode, content_id): one row to record
StatRecord = tuple[str, str, int, int, int, str]


def state_path(store_path: str) -> str:
    """The directory (or URI) of the store's own state database."""
    return store_path.rstrip("/") + "/" + STATE_DIR


def stat_key(path: str, st: os.stat_result) -> str:
    """The cache key of ``path`` as ``st`` describes it."""
    raw = f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}".encode("utf-8", "surrogateescape")
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


def record_for(path: str, before: os.stat_result, cid: str, now_ns: int | None = None) -> StatRecord | None:
    """The row recording that ``path`` (``before``: its stat when read) held ``cid``, or None
    when it must not be cached: written less than :data:`RACY_SECONDS` ago, or changed while
    it was read (its stat now differs)."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    if now_ns - before.st_mtime_ns < RACY_SECONDS * 1e9:
        return None
    try:
        after = os.stat(path)
    except OSError:
        return None
    if (after.st_size, after.st_mtime_ns, after.st_ino) != (before.st_size, before.st_mtime_ns, before.st_ino):
        return None
    return (stat_key(path, before), path, before.st_size, before.st_mtime_ns, before.st_ino, cid)


def stat_rows(records: Sequence[StatRecord]) -> pa.Table:
    """Rows of the cache table for ``records``."""
    cols = list(zip(*records)) if records else [()] * 6
    now = datetime.now(timezone.utc)
    return pa.table(
        [*(pa.array(c, f.type) for c, f in zip(cols, STAT_SCHEMA)), pa.array([now] * len(records), STAT_SCHEMA.field("created_at").type)],
        schema=STAT_SCHEMA,
    )


class StatCache:
    """Asks the cache which content ids files had; picklable for the loader workers.

    Like :class:`featurestore.commit.StoredIds` it carries only the store path and opens
    the table in the process that asks (never creating anything). ``enabled=False`` (``extract
    --rehash``) finds nothing, so every file is read and hashed, and recorded again.
    """

    def __init__(self, store_path: str, enabled: bool = True):
        self.store_path = store_path
        self.enabled = enabled
        self._table: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"store_path": self.store_path, "enabled": self.enabled, "_table": None}

    def _open(self) -> Any:
        """The cache table at its latest version, or None while there is none."""
        if self._table is None:
            path = state_path(self.store_path)
            if "://" not in path and not os.path.isdir(os.path.join(path, STAT_TABLE + ".lance")):
                return None  # connect() would create the directory: a read creates nothing
            import lancedb

            try:
                self._table = lancedb.connect(path).open_table(STAT_TABLE)
            except (ValueError, FileNotFoundError, OSError):  # not created yet (an object store says so here)
                return None
        self._table.checkout_latest()
        return self._table

    def lookup(self, paths: Sequence[str]) -> tuple[dict[str, str], dict[str, os.stat_result]]:
        """(content id of each path the cache knows in its current state, the stat of every
        path that could be stat'ed). One indexed ``key IN (…)`` query per call."""
        from featurestore.commit import stored_pairs

        stats: dict[str, os.stat_result] = {}
        for p in paths:
            try:
                stats[p] = os.stat(p)
            except OSError:  # reading it will say why, as an error row
                pass
        if not self.enabled or not stats:
            return {}, stats
        table = self._open()
        if table is None:
            return {}, stats
        keys = {stat_key(p, st): p for p, st in stats.items()}
        found = stored_pairs(table, list(keys), "key", "content_id")
        return {keys[k]: cid for k, cid in found.items()}, stats


def open_stat_table(store_path: str) -> Any:
    """The cache table for writing, created (with a BTREE index on ``key``) when missing."""
    import lancedb

    from featurestore.commit import ensure_indices
    from featurestore.locks import table_lock

    path = state_path(store_path)
    db = lancedb.connect(path)
    with table_lock(path, STAT_TABLE):
        try:
            table = db.open_table(STAT_TABLE)
        except ValueError:  # "was not found"
            table = db.create_table(STAT_TABLE, schema=STAT_SCHEMA)
        ensure_indices(table, ["key"])
    return table


__all__ = [
    "PRUNE_AFTER",
    "RACY_SECONDS",
    "STATE_DIR",
    "STAT_SCHEMA",
    "STAT_TABLE",
    "StatCache",
    "StatRecord",
    "open_stat_table",
    "record_for",
    "stat_key",
    "stat_rows",
    "state_path",
]
