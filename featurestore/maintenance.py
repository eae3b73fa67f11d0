"""Compaction and cleanup of table versions, never losing a tagged version.

Every commit (an extraction batch, a cluster run, an adapter apply) is a LanceDB table
version with its own small files. ``compact`` rewrites each table's fragments into few
files (a new version with the same rows); ``cleanup`` deletes the files only old versions
use. Tags are durable pins (readers pin them, ``--version TAG``).

Without pylance, LanceDB 0.40 refuses a cleanup that would reach a tagged version, so the
cutoff is moved to just after the oldest tag's commit: versions older than it go; the
tagged version and everything after it stay.

With pylance (the ``lance`` package, Lance's own dataset API) importable, these commands and
the writers' background maintenance take a faster path (:func:`pylance`):

- cleanup skips tagged versions instead of stopping at the oldest one, so one tag no longer
  keeps every later untagged version's files;
- the writers prune, as they go and when they close, the untagged versions that a newer
  version replaced more than :data:`featurestore.commit.PRUNE_GRACE` ago (:func:`prune_superseded`);
- index updates add a small delta segment instead of merging every stored key
  (:func:`update_indices`), and compaction rewrites only small fragments that no large index
  segment covers (:func:`compact_small`).
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from featurestore.commit import MAINTAIN_SUFFIX, optimize
from featurestore.errors import ConfigError, StoreError
from featurestore.locks import is_local, table_lock

if TYPE_CHECKING:
    from featurestore.store import Store

#: LanceDB catalog tables are compacted like the others
_SKIP: frozenset[str] = frozenset()
#: fragments LanceDB's compaction aims at (its default)
TARGET_ROWS = 1 << 20
#: index segments smaller than this always take the new rows in; a larger one only once the
#: rows merged with it reach its size (a log-structured merge: each key is merged O(log n) times)
SEGMENT_MERGE_ROWS = 1 << 20
#: the background compaction leaves fragments of this many rows or more alone, and those a
#: large index segment covers (rewriting them would remap that whole segment)
COMPACT_KEEP_ROWS = 1 << 18
#: and reads at most this many rows per run (~1.5 GB of cls rows: tens of seconds on 2 cores)
COMPACT_MAX_ROWS = 1 << 21
#: index pages and metadata a dataset opened for maintenance may cache
MAINT_CACHE_BYTES = 32 << 20

_LANCE: Any = False  # False: not looked for yet; None: not usable


def _tables(store: Store, model: str | None) -> list[str]:
    if model is not None:
        return [store.card(model).table]
    return [t for t in store.table_names() if t not in _SKIP]


def _version_times(table: Any) -> dict[int, datetime]:
    out = {}
    for v in table.list_versions():
        ts = v["timestamp"]
        # LanceDB gives naive local times (datetime.fromtimestamp); astimezone reads them so
        out[int(v["version"])] = ts.astimezone(timezone.utc)
    return out


def _cleanup_cutoff(
    table: Any, older_than: timedelta, margin: timedelta = timedelta(milliseconds=10)
) -> tuple[timedelta, str | None]:
    """The ``older_than`` to pass to LanceDB so that no tagged version is reached.

    LanceDB measures ``older_than`` from its own "now", taken a little after ours: the
    ``margin`` (above the timestamps' microsecond resolution) covers that gap.
    """
    tags = {k: int(v["version"]) for k, v in table.tags.list().items()}
    if not tags:
        return older_than, None
    times = _version_times(table)
    now = datetime.now(timezone.utc)  # after the listing calls, which can be slow on a busy machine
    oldest = min(tags.values())
    if oldest not in times:  # pragma: no cover - a tag always points at a live version
        raise StoreError(f"table {table.name}: tag of version {oldest} points at no version")
    # LanceDB removes versions whose commit time is before now - older_than
    keep_from = now - times[oldest]
    if keep_from <= older_than:
        return older_than, None
    held = ", ".join(sorted(k for k, v in tags.items() if v == oldest))
    return keep_from + margin, f"kept versions from {oldest} on (tagged {held})"


def compact(store: Store, model: str | None = None, *, cleanup: bool = True, tag: str | None = None) -> list[dict[str, Any]]:
    """Compact every table of the store (or ``model``'s), then (``cleanup``) delete the
    files of untagged older versions; ``tag`` tags each compacted version.

    Returns one dict per table: ``table``, ``version_before``, ``version``, ``versions``
    (left), ``files_before``/``files`` (data files of the latest version), ``note``.
    """
    out = []
    for name in _tables(store, model):
        table = store.db.open_table(name)
        if tag is not None and tag in table.tags.list():
            raise ConfigError(f"table {name} already has a tag {tag!r}. Fix: choose another name.")
        # compaction adds no rows: writers keep appending; one compaction of a table at a time
        with table_lock(store.path, name + MAINTAIN_SUFFIX):
            table.checkout_latest()
            before = int(table.version)
            files_before = _data_files(table)
            optimize(table)  # compaction + index update; no cleanup here (see below)
            uri = dataset_uri(table)
            if uri is not None:  # pylance: the delta segments of each index become one
                merge_indices(open_dataset(uri))
                table.checkout_latest()
            note = None
            if cleanup:
                if uri is not None:
                    note = prune_older(open_dataset(uri), timedelta(0))
                else:
                    with warnings.catch_warnings():  # LanceDB warns that older versions go: that is what compact is for
                        warnings.filterwarnings("ignore", message=r"optimize\(cleanup_older_than=0\)")
                        note = _cleanup(table, timedelta(0))
            if tag is not None:
                table.tags.create(tag, int(table.version))
        out.append(
            {
                "table": name,
                "version_before": before,
                "version": int(table.version),
                "versions": len(table.list_versions()),
                "files_before": files_before,
                "files": _data_files(table),
                "note": note,
            }
        )
    return out


def cleanup(store: Store, model: str | None = None, *, older_than: timedelta = timedelta(days=7)) -> list[dict[str, Any]]:
    """Delete the files of versions older than ``older_than`` that no tag needs.

    With pylance, every untagged version older than ``older_than`` goes (tagged ones are
    skipped, whatever their age) and nothing is compacted. Without it, LanceDB 0.40 cleans up
    only as part of ``optimize``, so the tables are compacted too (a new version when there
    was anything to compact), and nothing from the oldest tagged version on is removed."""
    if older_than < timedelta(0):
        raise ConfigError(f"--older-than {older_than} is negative. Fix: a duration of 0 or more.")
    if older_than == timedelta(0) and pylance() is not None:
        warnings.warn(
            "cleanup --older-than 0 removes every version except the latest and the tagged ones. Any concurrent "
            "reader or writer still using an older untagged version will fail.",
            UserWarning,
            stacklevel=2,
        )
    out = []
    for name in _tables(store, model):
        table = store.db.open_table(name)
        before = len(table.list_versions())
        with table_lock(store.path, name + MAINTAIN_SUFFIX):
            uri = dataset_uri(table)
            note = prune_older(open_dataset(uri), older_than) if uri is not None else _cleanup(table, older_than)
        out.append({"table": name, "versions_before": before, "versions": len(table.list_versions()), "note": note})
    return out


def _cleanup(table: Any, older_than: timedelta) -> str | None:
    # When the process stalls between our clock reading and LanceDB's for longer than the
    # margin, LanceDB refuses (it would reach the tagged version) and nothing is removed:
    # try again with a wider margin, which only keeps a few more versions.
    for margin_ms in (10, 200, 5000):
        cutoff, note = _cleanup_cutoff(table, older_than, timedelta(milliseconds=margin_ms))
        try:
            table.optimize(cleanup_older_than=cutoff)
            return note
        except RuntimeError as exc:
            if "tagged version" not in str(exc) or margin_ms == 5000:
                raise
    return None  # pragma: no cover - the loop returns or raises


def _data_files(table: Any) -> int:
    try:
        return int(table.stats()["fragment_stats"]["num_fragments"])
    except Exception:  # stats layout differs between LanceDB releases: report nothing rather than fail
        return -1


# -- the pylance fast path ---------------------------------------------------------------------


def pylance() -> Any | None:
    """The ``lance`` module when it is importable and has what the fast path uses, else None.

    Imported on first use only (never by ``import featurestore``): a process that does no
    maintenance does not pay for it.
    """
    global _LANCE
    if _LANCE is False:
        try:
            import lance
            from lance.dataset import DatasetOptimizer, LanceDataset

            ok = "versions" in inspect.signature(LanceDataset.cleanup_old_versions).parameters and {
                "excluded_fragment_ids",
                "max_source_rows",
            } <= set(inspect.signature(DatasetOptimizer.compact_files).parameters)
            _LANCE = lance if ok else None
        except ImportError:
            _LANCE = None
    return _LANCE


def dataset_uri(table: Any) -> str | None:
    """The directory of ``table``'s Lance dataset when the fast path can open it (pylance is
    importable and the table is on a local filesystem); else None."""
    if pylance() is None:
        return None
    try:
        uri = str(table.uri)
    except Exception:  # noqa: BLE001 - a handle without a local dataset (remote table)
        return None
    return uri if is_local(uri) else None


def open_dataset(uri: str) -> Any:
    """The latest version of the dataset at ``uri``, with small caches (maintenance reads each
    index page once, so a large cache would only hold memory)."""
    lance = pylance()
    assert lance is not None, "open_dataset needs pylance (check dataset_uri first)"
    return lance.dataset(uri, index_cache_size_bytes=MAINT_CACHE_BYTES, metadata_cache_size_bytes=MAINT_CACHE_BYTES)


@dataclass
class _Layout:
    """Fragments and index segments of one dataset version (read from its manifest)."""

    rows: dict[int, int]  # fragment id -> physical rows
    # index name -> [(fragment ids covered, rows covered)] oldest segment first; and its type
    segments: dict[str, list[tuple[set[int], int]]] = field(default_factory=dict)
    scalar: dict[str, bool] = field(default_factory=dict)

    @classmethod
    def of(cls, ds: Any) -> "_Layout":
        rows = {f.fragment_id: int(f.metadata.physical_rows) for f in ds.get_fragments()}
        out = cls(rows)
        for d in ds.describe_indices():
            frags = [set(seg.fragment_ids) for seg in d.segments]
            out.segments[d.name] = [(f, sum(rows.get(i, 0) for i in f)) for f in frags]
            out.scalar[d.name] = "BTree" in str(d.type_url) or "Bitmap" in str(d.type_url)
        return out

    def unindexed(self, name: str) -> int:
        covered = set().union(*(f for f, _ in self.segments[name]))
        return sum(n for i, n in self.rows.items() if i not in covered)

    def small_fragments(self, keep_rows: int = COMPACT_KEEP_ROWS, merge_rows: int = SEGMENT_MERGE_ROWS) -> list[int]:
        """Fragments the background compaction may rewrite: below ``keep_rows`` rows and not
        covered by an index segment of ``merge_rows`` rows or more."""
        big = set().union(*(f for segs in self.segments.values() for f, n in segs if n >= merge_rows))
        return [i for i, n in self.rows.items() if n < keep_rows and i not in big]


def merge_count(sizes: list[int], new_rows: int, merge_rows: int = SEGMENT_MERGE_ROWS) -> int:
    """How many of the newest index segments (``sizes``, oldest first) to merge with
    ``new_rows`` rows the index does not cover yet; 0 makes a new delta segment.

    The newest segments are taken while each is small (< ``merge_rows``) or no larger than
    what is merged so far: a 10M-key segment stays untouched until about 10M new keys have
    gathered in the segments after it.
    """
    k, merged = 0, new_rows
    for n in reversed(sizes):
        if n >= merge_rows and n > merged:
            break
        k += 1
        merged += n
    return k


def update_indices(ds: Any, min_unindexed: int = 0, merge_rows: int = SEGMENT_MERGE_ROWS) -> list[str]:
    """Bring each index whose uncovered rows exceed ``min_unindexed`` up to date; returns their names.

    Scalar indices (the key's BTREE) merge only their newest small segments
    (:func:`merge_count`); other indices (vector) are updated as LanceDB's ``optimize`` does
    (the new rows go into the newest segment).
    """
    layout = _Layout.of(ds)
    done = []
    for name, segs in layout.segments.items():
        new = layout.unindexed(name)
        if new <= min_unindexed:
            continue
        k = merge_count([n for _, n in segs], new, merge_rows) if layout.scalar[name] else 1
        ds.optimize.optimize_indices(index_names=[name], num_indices_to_merge=k)
        done.append(name)
    return done


def merge_indices(ds: Any) -> list[str]:
    """Merge every segment of each index into one (what ``featurestore compact`` does); returns their names."""
    layout = _Layout.of(ds)
    done = []
    for name, segs in layout.segments.items():
        if len(segs) > 1 or layout.unindexed(name):
            ds.optimize.optimize_indices(index_names=[name], num_indices_to_merge=len(segs))
            done.append(name)
    return done


def compact_small(
    ds: Any,
    min_fragments: int = 1,
    max_rows: int = COMPACT_MAX_ROWS,
    keep_rows: int = COMPACT_KEEP_ROWS,
    merge_rows: int = SEGMENT_MERGE_ROWS,
) -> tuple[Any | None, int]:
    """Rewrite the small fragments into fragments of up to :data:`TARGET_ROWS`, at most
    ``max_rows`` of them, on one thread; only when more than ``min_fragments`` are small.

    Small: fewer than ``keep_rows`` rows and not covered by an index segment of ``merge_rows``
    rows or more. Returns (Lance's metrics, or None when nothing was due; the number of
    fragments left alone).
    """
    layout = _Layout.of(ds)
    small = set(layout.small_fragments(keep_rows, merge_rows))
    keep = [i for i in layout.rows if i not in small]
    if len(small) <= max(1, min_fragments):
        return None, len(keep)
    metrics = ds.optimize.compact_files(
        target_rows_per_fragment=TARGET_ROWS, excluded_fragment_ids=keep, max_source_rows=max_rows, num_threads=1
    )
    return metrics, len(keep)


@dataclass
class FastMaintenance:
    """What one run of :func:`maintain_fast` did."""

    updated: bool = False  # an index got the rows it did not cover
    compacted: bool = False
    kept_fragments: int | None = None  # fragments the compaction left alone (None: not looked at)
    pruned: "Pruned" = field(default_factory=lambda: Pruned())


def maintain_fast(uri: str, policy: Any, *, prune: bool, prune_only: bool = False) -> FastMaintenance:
    """A writer's background maintenance on the pylance path (the caller holds the table's
    maintenance lock): delta index segments (:func:`update_indices`) past
    ``policy.max_unindexed_rows`` uncovered rows, compaction of small fragments
    (:func:`compact_small`) past ``policy.max_small_fragments``, then (``prune``) pruning of
    versions replaced more than ``policy.prune_grace`` ago (:func:`prune_superseded`)."""
    out = FastMaintenance()
    if not prune_only:
        out.updated = bool(update_indices(open_dataset(uri), policy.max_unindexed_rows))
        metrics, out.kept_fragments = compact_small(open_dataset(uri), policy.max_small_fragments)
        out.compacted = metrics is not None
    if prune and policy.prune_grace is not None:
        out.pruned = prune_superseded(open_dataset(uri), policy.prune_grace)
    return out


def _utc(ts: datetime) -> datetime:
    # Lance gives naive local times (datetime.fromtimestamp); astimezone reads them so
    return ts.astimezone(timezone.utc)


@dataclass
class Pruned:
    """What :func:`prune_superseded` removed."""

    versions: int = 0
    bytes: int = 0


def prune_superseded(ds: Any, grace: timedelta) -> Pruned:
    """Delete the untagged versions that a newer version replaced more than ``grace`` ago.

    A version V is removed when the version after it was committed before ``now - grace``
    and no tag points at V; the latest version and every tagged one stay. A reader that
    opened V while it was the latest therefore keeps its files for at least ``grace``,
    however old V itself is. Files that a newer version still uses are never deleted, nor
    files of a commit in progress (Lance keeps unreferenced files younger than 7 days).
    """
    versions = sorted((int(v["version"]), _utc(v["timestamp"])) for v in ds.versions())
    tagged = {int(t["version"]) for t in ds.tags.list().values()}
    cutoff = datetime.now(timezone.utc) - grace
    drop = [v for (v, _), (_, replaced_at) in zip(versions, versions[1:]) if replaced_at <= cutoff and v not in tagged]
    if not drop:
        return Pruned()
    # a tag created since the listing is still honoured: Lance skips tagged versions itself
    stats = ds.cleanup_old_versions(versions=drop, error_if_tagged_old_versions=False)
    return Pruned(int(stats.old_versions), int(stats.bytes_removed))


def prune_older(ds: Any, older_than: timedelta) -> str | None:
    """``featurestore cleanup`` with pylance: delete every untagged version committed more than
    ``older_than`` ago (the latest stays); returns a note naming the tagged versions kept."""
    tags = ds.tags.list()
    if older_than == timedelta(0):
        drop = [int(v["version"]) for v in ds.versions() if int(v["version"]) != ds.latest_version]
        if drop:  # no clock involved: "0" means every version but the latest
            ds.cleanup_old_versions(versions=drop, error_if_tagged_old_versions=False)
    else:
        ds.cleanup_old_versions(older_than=older_than, error_if_tagged_old_versions=False)
    if not tags:
        return None
    by_version: dict[int, list[str]] = {}
    for name, t in tags.items():
        by_version.setdefault(int(t["version"]), []).append(name)
    held = "; ".join(f"{v} (tagged {', '.join(sorted(n))})" for v, n in sorted(by_version.items()))
    return f"kept tagged versions {held}"


def parse_duration(text: str) -> timedelta:
    """``7d``, ``12h``, ``30m``, ``45s`` or ``0`` → timedelta."""
    t = text.strip().lower()
    units = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
    try:
        if t == "0":
            return timedelta(0)
        return timedelta(**{units[t[-1]]: float(t[:-1])})
    except (KeyError, ValueError, IndexError):
        raise ConfigError(f"duration {text!r} is not NUMBER followed by d, h, m or s. Fix: e.g. 7d or 12h.") from None


__all__ = [
    "cleanup",
    "compact",
    "compact_small",
    "dataset_uri",
    "maintain_fast",
    "merge_count",
    "merge_indices",
    "open_dataset",
    "parse_duration",
    "prune_older",
    "prune_superseded",
    "pylance",
    "update_indices",
]
