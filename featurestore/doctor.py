"""Find (and repair) keys stored twice: ``featurestore doctor -s STORE [--repair]``.

Featurestore's commit path never stores a key twice (see docs/guarantees.md), but tables
written by older versions — two ``extract`` runs at once, two first runs registering one
model — may hold duplicates. This finds them in every keyed table (feature, adapted and
clip tables by ``id``; the ``models``, ``adapters`` and ``clips`` catalogs by their key;
k-means centroid tables by ``cluster``) without a whole-table set of Python strings: the key
column is streamed once into 8-byte prefixes (a sorted numpy array, 8 bytes a row), and only
keys whose prefix repeats are read again exactly. ``repair`` keeps one row per key — the
earliest ``created_at``, then the lowest row id, so the choice is deterministic — and
deletes the others in one commit, under the table's writer lock. Centroid tables keep the
*latest* rows instead: each ``cluster`` run replaces the whole table, and the cluster
columns of the feature table are those of the last run.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from featurestore.commit import key_prefixes, sql_strings
from featurestore.locks import table_lock
from featurestore.store import MODELS_TABLE, Store

CENTROID_KEY = "cluster"  # centroid tables: one row per cluster, the latest run's kept
_SCAN = 65_536
_IN = 4096
_SHOW = 10


@dataclass
class TableCheck:
    """Duplicates found (and removed) in one table."""

    table: str
    key: str
    rows: int
    duplicate_keys: int  # keys stored more than once
    extra_rows: int  # rows beyond one per key
    examples: list[str] = field(default_factory=list)
    removed: int = 0
    version: int | None = None  # the table's version after a repair

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def keyed_tables(store: Store) -> list[tuple[str, str]]:
    """(table, key column) of every keyed table of the store."""
    from featurestore.adapters import ADAPTERS_TABLE
    from featurestore.clips import CLIPS_CATALOG, clip_tables

    names = set(store.table_names())
    out = [(t, k) for t, k in ((MODELS_TABLE, "model_hash"), (ADAPTERS_TABLE, "adapter_hash"), (CLIPS_CATALOG, "table")) if t in names]
    seen = {t for t, _ in out}
    models = list(dict.fromkeys(c.table for c in store.cards()))  # a model registered twice is one table
    for table in models + [c["table"] for c in clip_tables(store)]:
        if table in names and table not in seen:
            out.append((table, "id"))
            seen.add(table)
    for table in models:  # the k-means centroids of each model table (`featurestore cluster`)
        pat = re.compile(re.escape(table) + r"-centroids-k\d+")
        out += [(n, CENTROID_KEY) for n in sorted(names) if pat.fullmatch(n) and n not in seen]
    return out


def duplicate_keys(table: Any, key: str = "id") -> dict[Any, int]:
    """``{key: times stored}`` for every key of ``table`` stored more than once (streamed)."""
    parts = []
    for rb in table.search().select([key]).limit(None).to_batches(_SCAN):
        parts.append(key_prefixes([str(v) for v in rb.column(0).to_pylist()]))  # centroid keys are ints
    if not parts:
        return {}
    pref = np.sort(np.concatenate(parts))
    repeated = set(pref[1:][pref[1:] == pref[:-1]].tolist())
    if not repeated:
        return {}
    counts: dict[str, int] = {}
    for rb in table.search().select([key]).limit(None).to_batches(_SCAN):
        vals = rb.column(0).to_pylist()
        for k, p in zip(vals, key_prefixes([str(v) for v in vals]).tolist()):
            if p in repeated:
                counts[k] = counts.get(k, 0) + 1
    return {k: n for k, n in counts.items() if n > 1}


def _rows_to_drop(table: Any, key: str, keys: list[Any], latest: bool = False) -> list[int]:
    """Row ids of every copy but the first (earliest ``created_at``, then lowest row id;
    ``latest``: the latest ``created_at``, then the highest row id)."""
    has_time = "created_at" in table.schema.names
    cols = [key] + (["created_at"] if has_time else [])
    way = "descending" if latest else "ascending"
    drop: list[int] = []
    for i in range(0, len(keys), _IN):
        chunk = keys[i : i + _IN]
        values = sql_strings(chunk) if isinstance(chunk[0], str) else ", ".join(str(int(v)) for v in chunk)
        t = table.search().where(f"{key} IN ({values})").select(cols).with_row_id(True).limit(None).to_arrow()
        order = [(key, "ascending")] + ([("created_at", way)] if has_time else []) + [("_rowid", way)]
        t = t.sort_by(order)
        ks, rid = t.column(key).to_pylist(), t.column("_rowid").to_pylist()
        drop += [r for j, (k, r) in enumerate(zip(ks, rid)) if j > 0 and ks[j - 1] == k]
    return drop


def check_table(store: Store, name: str, key: str, *, repair: bool = False) -> TableCheck:
    """Count the duplicate keys of one table; with ``repair`` keep one row per key."""
    table = store.db.open_table(name)
    dups = duplicate_keys(table, key)
    res = TableCheck(name, key, table.count_rows(), len(dups), sum(n - 1 for n in dups.values()), [str(k) for k in sorted(dups)[:_SHOW]])
    if repair and dups:
        with table_lock(store.path, name):  # no commit in between: the rows to drop stay the ones found
            table.checkout_latest()
            dups = duplicate_keys(table, key)
            drop = _rows_to_drop(table, key, sorted(dups), latest=key == CENTROID_KEY)
            if drop:
                # one commit: readers see the table before or after, never halfway
                table.delete("_rowid IN (" + ", ".join(map(str, drop)) + ")")
            res.removed = len(drop)
            res.version = int(table.version)
            res.rows = table.count_rows()
    return res


def doctor(store: Store, *, repair: bool = False) -> list[TableCheck]:
    """Check every keyed table of ``store`` for keys stored twice (``repair``: remove the extra rows)."""
    return [check_table(store, name, key, repair=repair) for name, key in keyed_tables(store)]


__all__ = ["CENTROID_KEY", "TableCheck", "check_table", "doctor", "duplicate_keys", "keyed_tables"]
