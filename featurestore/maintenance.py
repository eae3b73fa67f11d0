"""Compaction and cleanup of table versions, never losing a tagged version.

Every commit (an extraction batch, a cluster run, an adapter apply) is a LanceDB table
version with its own small files. ``compact`` rewrites each table's fragments into few
files (a new version with the same rows); ``cleanup`` deletes the files only old versions
use. Tags are durable pins (readers pin them, ``--version TAG``): LanceDB 0.40 refuses a
cleanup that would reach a tagged version, so the cutoff is moved to just after the oldest
tag's commit. Versions older than it go; the tagged version and everything after it stay.
"""

from __future__ import annotations

import warnings
from datetime import datetime, timedelta, timezone
from typing import Any

from featurestore.commit import MAINTAIN_SUFFIX, optimize
from featurestore.errors import ConfigError, StoreError
from featurestore.locks import table_lock
from featurestore.store import Store

#: LanceDB catalog tables are compacted like the others
_SKIP: frozenset[str] = frozenset()


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
            note = None
            if cleanup:
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

    LanceDB 0.40 (without pylance) cleans up only as part of ``optimize``, so the tables are
    compacted too (a new version when there was anything to compact)."""
    if older_than < timedelta(0):
        raise ConfigError(f"--older-than {older_than} is negative. Fix: a duration of 0 or more.")
    out = []
    for name in _tables(store, model):
        table = store.db.open_table(name)
        before = len(table.list_versions())
        with table_lock(store.path, name + MAINTAIN_SUFFIX):
            note = _cleanup(table, older_than)
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


__all__ = ["cleanup", "compact", "parse_duration"]
