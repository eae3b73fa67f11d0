"""The one commit path for keyed rows: lock, look up, append only what is new, maintain.

Every write of feature, adapted and catalog rows goes through :class:`Committer` (clip rows
through :func:`featurestore.clips.commit_clips`, under the same lock, which also replaces
clips made from part of a video):

1. take the table's inter-process lock (:func:`featurestore.locks.table_lock`);
2. refresh the table to its latest version (another process may have committed);
3. drop rows whose key repeats within the group, and rows whose key is already stored:
   found with an indexed ``key IN (…)`` lookup (a BTREE scalar index on ``id``);
4. ``add()`` the rest: an append, whose cost does not grow with the table;
5. every few commits, when small fragments or rows the index does not cover pile up,
   compact and bring the indices up to date on a background thread. That adds no key, so
   it needs no writer lock (appends go on beside it); a second lock file keeps it to one
   process at a time. With pylance importable (:func:`featurestore.maintenance.pylance`) the
   index gets a small delta segment instead of merging every stored key, only small
   fragments are compacted, and untagged versions replaced more than :data:`PRUNE_GRACE`
   ago are pruned (also when the writer closes); without it LanceDB's ``optimize`` does
   both steps and no version is pruned.

Step 3's lookup is skipped when it cannot find anything: a caller that checked its ids
against version ``V`` of the table (``absent_at=V``, e.g. the extraction workers) needs no
second lookup when every commit after ``V`` that grew the table was made by this
committer, whose own recent keys it remembers (8 bytes a row). Any other commit since ``V``
that added rows (another process) sends the group through the lookup; compactions and
index updates add none and do not. So the common case — one
extraction run per table — is pure appends, and concurrent runs stay exact.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import warnings
from collections import deque
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa

from featurestore.locks import table_lock, try_lock

#: keys per ``IN (…)`` query: random keys, so a few thousand already touch most pages of a
#: large index, read again by every query through the bounded cache below (docs/benchmarks.md)
LOOKUP_CHUNK = 65536
#: LanceDB prunes versions older than 7 days inside ``optimize`` unless told otherwise, and
#: refuses to when that reaches a tagged version: without pylance, writes never prune
#: (``featurestore cleanup`` does)
NO_PRUNE = timedelta(days=365 * 100)
#: with pylance, an untagged version stays at least this long after a newer one replaced it:
#: a reader that opened it while it was the latest can finish (docs/guarantees.md)
PRUNE_GRACE = timedelta(minutes=15)
#: with pylance, the background maintenance prunes at most this often (and the writer on close)
PRUNE_EVERY_S = 60.0
#: index pages and metadata each connection the commit path opens itself may cache: lookups of
#: random keys touch every index page, and LanceDB's default cache (gigabytes) ends up holding
#: the whole index in each process (+600 MiB at 10M keys; docs/benchmarks.md)
INDEX_CACHE_BYTES = 16 << 20
METADATA_CACHE_BYTES = 64 << 20
#: the lock file (``<table>.maintain.lock``) held by the one process compacting a table
MAINTAIN_SUFFIX = ".maintain"
#: own commits whose keys are remembered (for skipping lookups), and at most this many keys
_RECENT_COMMITS = 256
_RECENT_KEYS = 4_000_000  # 32 MB of uint64


@dataclass
class MaintainPolicy:
    """When a committer compacts fragments and updates indices (inside its lock).

    Attributes:
        check_every: commits between two looks at the table's fragment and index stats.
        max_small_fragments: compact when more fragments than this are below LanceDB's
            target size (each append makes one).
        max_unindexed_rows: update the indices when more rows than this are not in the
            ``id`` index (a lookup scans those rows' ids).
        prune_older_than: without pylance, versions older than this go inside LanceDB's
            ``optimize`` (None: never).
        prune_grace: with pylance, untagged versions replaced more than this long ago go
            (None: never).
    """

    check_every: int = 4
    max_small_fragments: int = 64
    max_unindexed_rows: int = 250_000
    enabled: bool = True
    background: bool = True  # False: maintain inside commit() (deterministic, for tests and tools)
    # without pylance: versions older than this are pruned inside LanceDB's optimize (None:
    # never; it fails on a tagged version, so only tables nobody tags use it)
    prune_older_than: timedelta | None = None
    # with pylance: prune untagged versions replaced more than this long ago (None: never)
    prune_grace: timedelta | None = PRUNE_GRACE


@dataclass
class CommitResult:
    """What one commit did."""

    inserted: int  # rows appended
    version: int  # the table's version after the commit (and any maintenance)
    rows: pa.Table | None = None  # the rows appended (None when none)
    duplicates: int = 0  # rows dropped: key repeated in the group or already stored
    looked_up: int = 0  # keys checked against the table with the index
    optimized: bool = False  # a compaction was started in the background after this commit


@dataclass
class _Recent:
    version: int
    keys: np.ndarray  # uint64 prefixes of the keys committed at `version`, sorted


def key_prefixes(ids: Sequence[str]) -> np.ndarray:
    """8-byte prefixes of ``ids`` as uint64 (hex ids parse; other strings are hashed)."""
    out = np.empty(len(ids), np.uint64)
    for i, s in enumerate(ids):
        try:
            out[i] = int(s[:16], 16) if len(s) >= 16 else int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "big")
        except ValueError:
            out[i] = int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "big")
    return out


def table_store_path(table: Any) -> str:
    """The store (database) directory or URI a LanceDB table handle belongs to."""
    conn = getattr(table, "_conn", None)
    uri = getattr(conn, "uri", None)
    if isinstance(uri, str):
        return uri
    return os.path.dirname(str(table.uri).rstrip("/"))


def sql_strings(values: Iterable[str]) -> str:
    """``'a', 'b'`` — SQL string literals for an ``IN (…)`` list."""
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


def stored_keys(table: Any, keys: Sequence[str], column: str = "id") -> set[str]:
    """The subset of ``keys`` stored in ``column`` of ``table`` (at the version it has checked out).

    One ``column IN (…)`` query per :data:`LOOKUP_CHUNK` keys: with a BTREE index on
    ``column`` it touches the index pages of those keys and scans only rows the index does
    not cover yet, never the whole table.
    """
    return set(stored_pairs(table, keys, column, None))


def stored_pairs(table: Any, keys: Sequence[str], column: str, value: str | None) -> dict[str, Any]:
    """``{key: value column}`` for the ``keys`` stored in ``column`` (``value=None``: None
    values), looked up as :func:`stored_keys` does."""
    found: dict[str, Any] = {}
    uniq = list(dict.fromkeys(keys))
    cols = [column] if value is None else [column, value]
    for i in range(0, len(uniq), LOOKUP_CHUNK):
        chunk = uniq[i : i + LOOKUP_CHUNK]
        res = table.search().where(f"{column} IN ({sql_strings(chunk)})").select(cols).limit(None).to_arrow()
        vals = res.column(value).to_pylist() if value is not None else [None] * res.num_rows
        found.update(zip(res.column(column).to_pylist(), vals))
    return found


def index_columns(schema: pa.Schema, key: str | None) -> list[str]:
    """Columns that get a BTREE index: the key and, where present, ``video_id``."""
    cols = [key] if key else []
    if "video_id" in schema.names and "video_id" != key:
        cols.append("video_id")
    return cols


def ensure_indices(table: Any, columns: Sequence[str]) -> list[str]:
    """Create the BTREE scalar indices of ``columns`` that ``table`` lacks; returns those created.

    LanceDB 0.40 builds a BTREE on an empty table too; rows appended later are
    "unindexed" (scanned by lookups) until ``optimize`` folds them in.
    """
    from lancedb.index import BTree

    have = {tuple(i.columns) for i in table.list_indices()}
    made = []
    for col in columns:
        if (col,) not in have:
            table.create_index(col, config=BTree(), replace=False)
            made.append(col)
    return made


def optimize(table: Any, prune_older_than: timedelta | None = None) -> None:
    """Compact small fragments and update every index, pruning no version (unless told to)."""
    table.optimize(cleanup_older_than=prune_older_than or NO_PRUNE)


def connect(store_path: str) -> Any:
    """A LanceDB connection whose caches are bounded (:data:`INDEX_CACHE_BYTES`), for the
    handles the commit path opens itself (version probes, worker lookups, maintenance)."""
    import lancedb

    try:
        session = lancedb.Session(index_cache_size_bytes=INDEX_CACHE_BYTES, metadata_cache_size_bytes=METADATA_CACHE_BYTES)
    except (AttributeError, TypeError):  # pragma: no cover - a LanceDB without sessions
        return lancedb.connect(store_path)
    return lancedb.connect(store_path, session=session)


def _bounded_handle(table: Any, store_path: str, name: str) -> Any:
    """``table`` opened again through :func:`connect` when the store is a local directory."""
    from featurestore.locks import is_local

    if not is_local(store_path):
        return table
    try:
        return connect(store_path).open_table(name)
    except Exception:  # noqa: BLE001 - e.g. a table this store path does not list: keep the caller's
        return table


class Committer:
    """Commits groups of rows to one table, inserting only keys not stored yet.

    Thread-safe (one commit at a time per process and, through the lock file, per
    machine). ``key=None`` makes it a plain appender (the ``errors`` log); ``index=False``
    leaves the key without a BTREE index (catalog tables of a few rows).
    """

    def __init__(self, table: Any, *, key: str | None = "id", policy: MaintainPolicy | None = None, index: bool = True):
        self.table = table  # a handle of its own: this committer moves it to the latest version
        self.name = str(table.name)
        self.store_path = table_store_path(table)
        self._lookup: Any = None  # the handle lookups go through (bounded caches), opened on the first
        self.key = key
        self.policy = policy or MaintainPolicy()
        self._mutex = threading.Lock()
        self._last_version: int | None = None  # the version after this committer's last commit
        self._foreign_max = -1  # commits up to this version may be someone else's
        self._recent: deque[_Recent] = deque()
        self._recent_keys = 0
        self._evicted_max = -1  # own commits up to this version are no longer remembered
        self._since_check = 0
        self._indexed = not index  # catalogs (a few rows) need no index
        self._probe: Any = None  # a second handle, for reading the row count of other versions
        self._maint_thread: threading.Thread | None = None
        self._uri: str | None | bool = False  # the Lance dataset for the pylance path (False: not looked up)
        self._kept_fragments = 0  # pylance: fragments the last compaction left alone
        self._pruned_at = time.monotonic()  # the first prune is due PRUNE_EVERY_S after start (or on close)
        self.optimizations = 0  # maintenance runs that compacted or updated an index
        self.compactions = 0  # of those, the ones that rewrote fragments
        self.pruned_versions = 0  # versions this committer's maintenance deleted (pylance)
        self.pruned_bytes = 0
        self.maintenance_error: BaseException | None = None

    def commit(self, parts: Sequence[tuple[pa.Table, int | None]] | pa.Table, absent_at: int | None = None) -> CommitResult:
        """Append the rows of ``parts`` whose key is not stored yet, as one commit.

        Args:
            parts: ``(rows, absent_at)`` pairs, or one table (with ``absent_at``). ``absent_at``
                is a table version at which none of the part's keys was stored (checked by the
                caller), or None when unknown.
            absent_at: for a single table.
        """
        if isinstance(parts, pa.Table):
            parts = [(parts, absent_at)]
        parts = [(t, v) for t, v in parts if t.num_rows]
        with self._mutex, table_lock(self.store_path, self.name):
            table = self.table
            table.checkout_latest()
            latest = int(table.version)
            if latest != self._last_version and self._may_have_added(self._last_version, latest):
                self._foreign_max = max(self._foreign_max, latest)  # someone else appended
            if self.key and not self._indexed:
                ensure_indices(table, index_columns(table.schema, self.key))
                self._indexed = True
                latest = int(table.version)
            if not parts:
                self._last_version = latest
                return CommitResult(0, latest)
            rows, looked_up, dups = self._new_rows(table, parts) if self.key else (_concat(parts, table.schema), 0, 0)
            if rows.num_rows == 0:
                self._last_version = latest
                return CommitResult(0, latest, None, dups, looked_up)
            res = table.add(rows)
            version = int(getattr(res, "version", None) or table.version)
            # commits between our read and our append (a compaction running beside us, or a
            # writer that ignores the lock): ours was rebased on top of them
            if version != latest + 1 and self._may_have_added(latest, version - 1):
                self._foreign_max = max(self._foreign_max, version - 1)
            if self.key:
                self._remember(version, rows.column(self.key).to_pylist())
            self._last_version = version
            started = self._maintain(table)
            return CommitResult(rows.num_rows, version, rows, dups, looked_up, started)

    def wait(self) -> None:
        """Wait for a compaction this committer started in the background."""
        t = self._maint_thread
        if t is not None:
            t.join()

    def close(self) -> None:
        """Wait for the background maintenance, then (with pylance) prune the untagged versions
        replaced more than ``policy.prune_grace`` ago: a run leaves no old files behind but
        those a reader may still need. Failures only warn (the rows are committed)."""
        self.wait()
        if self.policy.enabled and self.policy.prune_grace is not None and self._dataset_uri(self.table) is not None:
            self._run_maintenance(prune_only=True)

    def _may_have_added(self, since: int | None, upto: int) -> bool:
        """Whether the commits ``since+1 .. upto`` may have added rows.

        A commit that does not grow the table (a compaction, an index update, a column
        update, a deletion) adds no key, so groups checked before it need no lookup. Each
        version's row count is read from its manifest; many versions, or one that is gone
        (cleaned up), count as "may have".
        """
        if since is None or upto - since > 16:
            return True
        try:
            if self._probe is None:
                self._probe = connect(self.store_path).open_table(self.name)
            probe = self._probe
            probe.checkout(since)
            prev = probe.count_rows()
            for v in range(since + 1, upto + 1):
                probe.checkout(v)
                n = probe.count_rows()
                if n > prev:
                    return True
                prev = n
            return False
        except Exception:  # noqa: BLE001 - a version we cannot read: assume the worst
            return True

    # -- internals ---------------------------------------------------------------
    def _new_rows(self, table: Any, parts: Sequence[tuple[pa.Table, int | None]]) -> tuple[pa.Table, int, int]:
        key = self.key
        assert key is not None
        tables, need = [], []  # keys whose absence is not known for this version
        seen: dict[str, None] = {}
        total = 0
        for rows, absent_at in parts:
            ids = rows.column(key).to_pylist()
            total += len(ids)
            keep = []
            for i, k in enumerate(ids):
                if k not in seen:
                    seen[k] = None
                    keep.append(i)
            if len(keep) != len(ids):
                rows = rows.take(pa.array(keep, pa.int64()))
                ids = [ids[i] for i in keep]
            if absent_at is None or absent_at < self._foreign_max or absent_at < self._evicted_max:
                need.extend(ids)  # a commit we did not make (or no longer remember) may hold them
            else:
                need.extend(self._maybe_own(ids, absent_at))
            tables.append(rows)
        combined = _concat([(t, None) for t in tables], table.schema)
        found = stored_keys(self._lookup_handle(table), need, key) if need else set()
        if found:
            mask = pa.array([k not in found for k in combined.column(key).to_pylist()])
            combined = combined.filter(mask)
        return combined, len(need), total - combined.num_rows

    def _lookup_handle(self, table: Any) -> Any:
        """A handle at ``table``'s version whose index cache is bounded (:func:`connect`); the
        caller's handle where the store is not a local directory."""
        if self._lookup is None:
            self._lookup = _bounded_handle(table, self.store_path, self.name)
        if self._lookup is not table:
            self._lookup.checkout_latest()  # under the writer lock: the version `table` is at, or a
            # compaction after it (which adds no key)
        return self._lookup

    def _maybe_own(self, ids: list[str], absent_at: int) -> list[str]:
        """Keys that may equal one this committer stored after ``absent_at`` (prefix match)."""
        later = [r.keys for r in self._recent if r.version > absent_at]
        if not later:
            return []
        pref = key_prefixes(ids)
        hit = np.zeros(len(ids), bool)
        for keys in later:
            pos = np.searchsorted(keys, pref)
            pos[pos == len(keys)] = 0
            hit |= keys[pos] == pref
        return [k for k, h in zip(ids, hit) if h]

    def _remember(self, version: int, ids: list[str]) -> None:
        keys = np.sort(key_prefixes(ids))
        self._recent.append(_Recent(version, keys))
        self._recent_keys += len(keys)
        while len(self._recent) > _RECENT_COMMITS or self._recent_keys > _RECENT_KEYS:
            old = self._recent.popleft()
            self._recent_keys -= len(old.keys)
            self._evicted_max = max(self._evicted_max, old.version)

    def _maintain(self, table: Any) -> bool:
        """Every ``check_every`` commits, start the maintenance in the background if it is due.

        Compaction and index updates add no key, so they need not hold the writer lock:
        appends go on beside them (Lance rebases an append over a compaction). A second
        lock file makes sure one process at a time maintains a table; others skip. With
        pylance the background thread decides itself what is due (reading the manifest is
        cheap) and prunes at most every :data:`PRUNE_EVERY_S`.
        """
        p = self.policy
        if not p.enabled:
            return False
        self._since_check += 1
        if self._since_check < p.check_every or (self._maint_thread is not None and self._maint_thread.is_alive()):
            return False
        self._since_check = 0
        if self._dataset_uri(table) is None:
            if not needs_optimize(table, self.key, p):
                return False
        elif not (p.prune_grace is not None and time.monotonic() - self._pruned_at >= PRUNE_EVERY_S) and not needs_optimize(
            table, self.key, p, kept_fragments=self._kept_fragments
        ):
            return False
        if not p.background:
            self._run_maintenance()
            return True
        self._maint_thread = threading.Thread(target=self._run_maintenance, name=f"featurestore-compact-{self.name}", daemon=True)
        self._maint_thread.start()
        return True

    def _dataset_uri(self, table: Any) -> str | None:
        if self._uri is False:
            from featurestore.maintenance import dataset_uri

            self._uri = dataset_uri(table)
        return self._uri  # type: ignore[return-value]

    def _run_maintenance(self, prune_only: bool = False) -> None:
        try:
            with try_lock(self.store_path, self.name + MAINTAIN_SUFFIX) as mine:
                if not mine:
                    return  # another process is maintaining this table
                uri = self._dataset_uri(self.table)
                if uri is not None:
                    self._maintain_fast(uri, prune_only)
                elif not prune_only:
                    optimize(connect(self.store_path).open_table(self.name), self.policy.prune_older_than)
                    self.optimizations += 1
                    self.compactions += 1
        except Exception as exc:  # noqa: BLE001 - the rows are committed; a failed compaction only costs speed
            self.maintenance_error = exc
            warnings.warn(f"maintaining table {self.name} failed ({type(exc).__name__}: {exc}); writes go on", stacklevel=1)

    def _maintain_fast(self, uri: str, prune_only: bool) -> None:
        from featurestore.maintenance import maintain_fast

        p = self.policy
        prune = p.prune_grace is not None and (prune_only or time.monotonic() - self._pruned_at >= PRUNE_EVERY_S)
        got = maintain_fast(uri, p, prune=prune, prune_only=prune_only)
        self.optimizations += got.updated or got.compacted
        self.compactions += got.compacted
        if got.kept_fragments is not None:
            self._kept_fragments = got.kept_fragments
        if prune:
            self._pruned_at = time.monotonic()
            self.pruned_versions += got.pruned.versions
            self.pruned_bytes += got.pruned.bytes


def needs_optimize(table: Any, key: str | None, policy: MaintainPolicy, kept_fragments: int | None = None) -> bool:
    """Too many small fragments, or too many rows outside the key's index.

    ``kept_fragments`` (the pylance path, whose compaction leaves large fragments alone): the
    fragments its last compaction left alone; the others count as small (the maintenance
    thread looks closer). None: LanceDB's count of small fragments."""
    try:
        frag = table.stats()["fragment_stats"]
        if kept_fragments is not None:
            small = int(frag["num_fragments"]) - kept_fragments
        else:
            small = int(frag["num_small_fragments"])
        if small > policy.max_small_fragments:
            return True
        if key:
            for idx in table.list_indices():
                if list(idx.columns) == [key]:
                    st = table.index_stats(idx.name)
                    return st is not None and int(st.num_unindexed_rows) > policy.max_unindexed_rows
    except (KeyError, TypeError, AttributeError):  # pragma: no cover - stats layout of another LanceDB
        return False
    return False


def conform(rows: pa.Table, schema: pa.Schema) -> pa.Table:
    """``rows`` in the table's column order and types; columns added to the table since the
    rows were built (e.g. cluster assignments) are null."""
    if rows.schema == schema:
        return rows
    extra = [n for n in rows.column_names if n not in schema.names]
    if extra:
        raise ValueError(f"rows have columns {extra} that the table lacks (it has {schema.names})")
    cols = []
    for f in schema:
        if f.name in rows.column_names:
            col = rows.column(f.name)
            cols.append(col if col.type == f.type else col.cast(f.type))
        elif f.nullable:
            cols.append(pa.nulls(rows.num_rows, f.type))
        else:
            raise ValueError(f"rows lack the required column {f.name!r}")
    return pa.Table.from_arrays(cols, schema=schema)


def _concat(parts: Sequence[tuple[pa.Table, int | None]], schema: pa.Schema) -> pa.Table:
    return pa.concat_tables([conform(t, schema) for t, _ in parts])


class StoredIds:
    """Asks a table which keys it holds, a chunk at a time; picklable for loader workers.

    It carries only the store path and table name and opens the table (read-only use)
    in the process that asks — a worker started from the clean forkserver — so no
    process ever holds the set of every stored id. Each answer comes with the table
    version it was read at, which the writer uses to skip its own lookup.
    """

    def __init__(self, store_path: str, table: str, column: str = "id"):
        self.store_path = store_path
        self.table_name = table
        self.column = column
        self._table: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"store_path": self.store_path, "table_name": self.table_name, "column": self.column, "_table": None}

    def _latest(self) -> tuple[Any, int]:
        if self._table is None:
            self._table = connect(self.store_path).open_table(self.table_name)
        self._table.checkout_latest()
        return self._table, int(self._table.version)

    def check(self, keys: Sequence[str]) -> tuple[set[str], int]:
        """(the stored subset of ``keys``, the version it was read at)."""
        table, version = self._latest()
        return (stored_keys(table, keys, self.column) if keys else set()), version

    def of_video(self, video_id: str) -> tuple[set[str], int]:
        """(the keys of the stored rows of ``video_id``, the version) — one indexed query per video."""
        table, version = self._latest()
        if "video_id" not in table.schema.names:
            return set(), version
        res = table.search().where(f"video_id = {sql_strings([video_id])}").select([self.column]).limit(None).to_arrow()
        return set(res.column(self.column).to_pylist()), version


__all__ = [
    "CommitResult",
    "Committer",
    "MaintainPolicy",
    "StoredIds",
    "ensure_indices",
    "index_columns",
    "key_prefixes",
    "needs_optimize",
    "optimize",
    "stored_keys",
    "stored_pairs",
]
