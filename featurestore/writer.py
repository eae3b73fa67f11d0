"""Grouped commits on a background thread: the forward pass never waits for a commit.

:class:`TableWriter` takes batches of rows (``put``) and commits them through a
:class:`featurestore.commit.Committer` when ``commit_rows`` rows or ``commit_seconds``
seconds have gathered — one LanceDB version per group instead of one per forward batch.
A bounded queue sits between the caller and the writer thread: when commits fall behind,
``put`` blocks (memory stays bounded) instead of piling batches up. A commit that fails
stops the writer; the next ``put`` (or ``close``) raises :class:`StoreError` on the
caller's thread, saying how many rows were committed before.

A killed process loses what was not committed yet: at most ``commit_seconds`` of work
plus what sits in the queue. ``close`` waits for the committer's background maintenance and,
with pylance, prunes the untagged versions replaced more than
:data:`featurestore.commit.PRUNE_GRACE` ago.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import pyarrow as pa

from featurestore.commit import CommitResult, Committer, MaintainPolicy
from featurestore.errors import StoreError

#: defaults: a kill loses at most about this much work
COMMIT_SECONDS = 2.0
COMMIT_ROWS = 50_000
#: a group is committed once its rows hold this many bytes, whatever the two limits above
COMMIT_BYTES = 256 << 20
QUEUE_BATCHES = 8


_DUE = object()


@dataclass
class _Flush:
    done: threading.Event


class TableWriter:
    """Commits rows to one table in groups, on a background thread.

    Args:
        table: a LanceDB table handle for the writer's own use.
        key: the column rows are keyed by (only unseen keys are inserted); None appends all.
        commit_rows: commit once this many rows are waiting.
        commit_seconds: commit once the oldest waiting row has waited this long.
        background: False commits on the caller's thread (inside ``put``/``flush``).
        on_commit: called (on the writer thread) with each commit's result.
        policy: when to compact and update indices.
        label: names the table in error messages.
    """

    def __init__(
        self,
        table: Any,
        *,
        key: str | None = "id",
        commit_rows: int = COMMIT_ROWS,
        commit_seconds: float = COMMIT_SECONDS,
        background: bool = True,
        on_commit: Callable[[CommitResult], None] | None = None,
        policy: MaintainPolicy | None = None,
        label: str | None = None,
    ):
        if commit_rows < 1 or commit_seconds < 0:
            raise ValueError(f"commit_rows must be >= 1 and commit_seconds >= 0, got {commit_rows}, {commit_seconds}")
        self.committer = Committer(table, key=key, policy=policy)
        self.label = label or self.committer.name
        self.commit_rows = commit_rows
        self.commit_seconds = commit_seconds
        self.on_commit = on_commit
        self.inserted = 0  # rows the commits really appended
        self.handed = 0  # rows given to put()
        self.commits = 0
        self.version: int | None = None
        self._pending: list[tuple[pa.Table, int | None]] = []
        self._pending_rows = 0
        self._pending_bytes = 0
        self._first_at = 0.0
        self._error: BaseException | None = None
        self._closed = False
        self._queue: queue.Queue[Any] | None = None
        self._thread: threading.Thread | None = None
        if background:
            self._queue = queue.Queue(maxsize=QUEUE_BATCHES)
            self._thread = threading.Thread(target=self._run, name=f"featurestore-writer-{self.label}", daemon=True)
            self._thread.start()

    # -- caller side ---------------------------------------------------------------
    def put(self, rows: pa.Table, absent_at: int | None = None) -> None:
        """Hand over ``rows`` (``absent_at``: a table version at which none of their keys was stored)."""
        if self._closed:
            raise StoreError(f"the writer of table {self.label} is closed")
        self._raise_if_failed()
        if not rows.num_rows:
            return
        self.handed += rows.num_rows
        if self._queue is None:
            self._add(rows, absent_at)
            if self._due():
                self._commit_here()
            return
        self._put_item((rows, absent_at))

    def flush(self) -> None:
        """Commit everything handed over so far; raises if a commit failed."""
        self._raise_if_failed()
        if self._queue is None:
            self._commit_here()
            return
        done = threading.Event()
        self._put_item(_Flush(done))
        while not done.wait(0.1):
            if self._error is not None or not self._thread.is_alive():  # type: ignore[union-attr]
                break
        self._raise_if_failed()

    def close(self) -> None:
        """Flush and stop the writer thread."""
        if self._closed:
            self._raise_if_failed()
            return
        try:
            self.flush()
        finally:
            self._closed = True
            if self._queue is not None:
                self._put_item(None, check=False)
                self._thread.join(timeout=60)  # type: ignore[union-attr]
            # a compaction in progress ends before the run does; with pylance, versions
            # replaced more than the grace period ago are pruned
            self.committer.close()
        self._raise_if_failed()

    def abort(self) -> None:
        """Stop without committing what is still waiting (the run is failing anyway)."""
        self._closed = True
        if self._queue is not None:
            while True:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
            self._put_item(None, check=False)
            self._thread.join(timeout=60)  # type: ignore[union-attr]

    def __enter__(self) -> "TableWriter":
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _put_item(self, item: Any, check: bool = True) -> None:
        assert self._queue is not None and self._thread is not None
        while True:
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                if check:
                    self._raise_if_failed()
                if not self._thread.is_alive():
                    return

    def _commit_here(self) -> None:
        try:
            self._commit()
        except Exception as exc:
            self._error = exc
            self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            exc = self._error
            raise StoreError(
                f"writing to table {self.label} failed: {type(exc).__name__}: {exc}. {self.inserted} rows were committed "
                f"by this writer before the failure ({self.commits} commits) and are kept; re-run to finish."
            ) from exc

    # -- writer thread -------------------------------------------------------------
    def _run(self) -> None:
        assert self._queue is not None
        while True:
            timeout = None
            if self._pending:
                timeout = max(0.0, self._first_at + self.commit_seconds - time.monotonic())
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = _DUE  # the oldest waiting row has waited commit_seconds
            try:
                if item is None:
                    return
                if isinstance(item, _Flush):
                    if self._error is None:
                        self._commit()
                    item.done.set()
                    continue
                if item is _DUE:
                    if self._error is None:
                        self._commit()
                    continue
                if self._error is None:
                    self._add(*item)
                    if self._due():
                        self._commit()
            except BaseException as exc:  # surfaced on the caller's thread by the next put/flush
                self._error = exc
                self._pending, self._pending_rows, self._pending_bytes = [], 0, 0

    def _add(self, rows: pa.Table, absent_at: int | None) -> None:
        if not self._pending:
            self._first_at = time.monotonic()
        self._pending.append((rows, absent_at))
        self._pending_rows += rows.num_rows
        self._pending_bytes += rows.nbytes

    def _due(self) -> bool:
        return (
            self._pending_rows >= self.commit_rows
            or self._pending_bytes >= COMMIT_BYTES
            or time.monotonic() - self._first_at >= self.commit_seconds
        )

    def _commit(self) -> None:
        if not self._pending:
            return
        parts = self._pending
        self._pending, self._pending_rows, self._pending_bytes = [], 0, 0
        res = self.committer.commit(parts)
        self.inserted += res.inserted
        self.commits += 1
        self.version = res.version
        if self.on_commit is not None:
            self.on_commit(res)


__all__ = ["COMMIT_ROWS", "COMMIT_SECONDS", "TableWriter"]
