"""Find (and repair) keys stored twice: ``featurestore doctor -s STORE [--repair]``.

Featurestore's commit path never stores a key twice (see docs/guarantees.md), but tables
written by older versions — two ``extract`` runs at once, two first runs registering one
model — may hold duplicates. This finds them in every keyed table (feature, adapted and
clip tables by ``id``; the ``models``, ``adapters`` and ``clips`` catalogs by their key)
without a whole-table set of Python strings: the key column is streamed once into 8-byte
prefixes (a sorted numpy array, 8 bytes a row), and only keys whose prefix repeats are read
again exactly. ``repair`` keeps one row per key — the earliest ``created_at``, then the
lowest row id, so the choice is deterministic — and deletes the others in one commit,
under the table's writer lock.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from featurestore.commit import key_prefixes, sql_strings
from featurestore.locks import table_lock
from featurestore.store import MODELS_TABLE, Store

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
    for table in [c.table for c in store.cards()] + [c["table"] for c in clip_tables(store)]:
        if table in names and table not in seen:
            out.append((table, "id"))
            seen.add(table)
    return out


def duplicate_keys(table: Any, key: str = "id") -> dict[str, int]:
    """``{key: times stored}`` for every key of ``table`` stored more than once (streamed)."""
    parts = []
    for rb in table.search().select([key]).limit(None).to_batches(_SCAN):
        parts.append(key_prefixes(rb.column(0).to_pylist()))
    if not parts:
        return {}
    pref = np.sort(np.concatenate(parts))
    repeated = set(pref[1:][pref[1:] == pref[:-1]].tolist())
    if not repeated:
        return {}
    counts: dict[str, int] = {}
    for rb in table.search().select([key]).limit(None).to_batches(_SCAN):
        vals = rb.column(0).to_pylist()
        for k, p in zip(vals, key_prefixes(vals).tolist()):
            if p in repeated:
                counts[k] = counts.get(k, 0) + 1
    return {k: n for k, n in counts.items() if n > 1}


def _rows_to_drop(table: Any, key: str, keys: list[str]) -> list[int]:
    """Row ids of every copy but the first (earliest ``created_at``, then lowest row id)."""
    has_time = "created_at" in table.schema.names
    cols = [key] + (["created_at"] if has_time else [])
    drop: list[int] = []
    for i in range(0, len(keys), _IN):
        chunk = keys[i : i + _IN]
        t = table.search().where(f"{key} IN ({sql_strings(chunk)})").select(cols).with_row_id(True).limit(None).to_arrow()
        order = [(key, "ascending")] + ([("created_at", "ascending")] if has_time else []) + [("_rowid", "ascending")]
        t = t.sort_by(order)
        ks, rid = t.column(key).to_pylist(), t.column("_rowid").to_pylist()
        drop += [r for j, (k, r) in enumerate(zip(ks, rid)) if j > 0 and ks[j - 1] == k]
    return drop


def check_table(store: Store, name: str, key: str, *, repair: bool = False) -> TableCheck:
    """Count the duplicate keys of one table; with ``repair`` keep one row per key."""
    table = store.db.open_table(name)
    dups = duplicate_keys(table, key)
    res = TableCheck(name, key, table.count_rows(), len(dups), sum(n - 1 for n in dups.values()), sorted(dups)[:_SHOW])
    if repair and dups:
        with table_lock(store.path, name):  # no commit in between: the rows to drop stay the ones found
            table.checkout_latest()
            dups = duplicate_keys(table, key)
            drop = _rows_to_drop(table, key, sorted(dups))
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


__all__ = ["TableCheck", "check_table", "doctor", "duplicate_keys", "keyed_tables"]
