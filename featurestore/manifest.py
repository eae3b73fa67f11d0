"""A JSON description of a store: every table, its card, rows, version, tags and a digest of
its contents. It is what a team shares ("these exact features") and what DVC records as a
metric (``featurestore manifest -s DIR -o manifest.json``).

The content digest is over the rows' values only, in id order: not over files, row order,
fragments, versions, or the run bookkeeping columns (``run_id``, ``created_at``, also left
out of the catalogs' card JSON), nor ``uri``: it is where the source was (an absolute path),
not what it held, which the row ``id`` (the SHA-256 of its bytes) already says. So it is
unchanged by compaction, and two clean extractions of the same images with the same model
give the same digest when their features are bit-identical, wherever the images lie.
"""

from __future__ import annotations

import hashlib
import json
import struct
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from featurestore import __version__
from featurestore.config import Manifest, ManifestTable
from featurestore.extsort import external_sorted
from featurestore.hashing import canonical_json
from featurestore.store import ERRORS_TABLE, MODELS_TABLE, Store

MANIFEST_FORMAT = "featurestore-manifest/1"
#: columns (and card fields) that record when and by which run a row was written, not what it holds
VOLATILE = frozenset({"run_id", "created_at"})
#: columns that say where a row's source lies (absolute paths differ between copies of a dataset)
LOCATION = frozenset({"uri"})
_CHUNK = 4096  # rows per streamed batch at most
_BATCH_BYTES = 64 << 20  # … and about this many bytes (dense rows are wide)
_SORT_RUN = 65_536  # (key, row hash) pairs sorted in memory at once (about 20 MiB)


def _drop_times(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _drop_times(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_drop_times(v) for v in obj]
    return obj


def _card_bytes(text: str | None) -> bytes:
    if text is None:
        return b""
    return canonical_json(_drop_times(json.loads(text))).encode()


def _cell_bytes(col: pa.Array, name: str = "") -> list[bytes]:
    """One canonical byte string per row of ``col`` (nulls distinct from any value)."""
    t = col.type
    valid = col.is_valid().to_numpy(zero_copy_only=False)
    if pa.types.is_fixed_size_list(t) and (pa.types.is_integer(t.value_type) or pa.types.is_floating(t.value_type)):
        vals = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), t.list_size)
        rows = [r.tobytes() for r in np.ascontiguousarray(vals)] if len(col) else []
    elif pa.types.is_list(t) and pa.types.is_fixed_size_list(t.value_type):  # patch tokens
        offsets = col.offsets.to_numpy()
        inner = col.values
        flat = inner.flatten().to_numpy(zero_copy_only=False).reshape(len(inner), inner.type.list_size)
        rows = [np.ascontiguousarray(flat[offsets[i] : offsets[i + 1]]).tobytes() for i in range(len(col))]
    elif pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        vals = col.fill_null(False if pa.types.is_boolean(t) else 0).to_numpy(zero_copy_only=False)
        rows = [np.asarray(v).tobytes() for v in vals]
    elif name == "card" and pa.types.is_string(t):  # a catalog's card JSON: without its timestamps
        rows = [_card_bytes(v) for v in col.to_pylist()]
    else:  # strings, timestamps and anything else: their Python value's repr is stable
        rows = [repr(v).encode() for v in col.to_pylist()]
    return [b"\x01" + r if ok else b"\x00" for r, ok in zip(rows, valid)]


def _batch_rows(table: Any, cols: list[str]) -> int:
    """Rows per streamed batch: :data:`_CHUNK`, fewer when rows are wide (patch tokens), so a
    batch holds about :data:`_BATCH_BYTES` whatever the table stores."""
    if not table.count_rows():
        return _CHUNK
    sample = table.search().select(cols).limit(8).to_arrow()
    width = max(1, sample.nbytes // max(1, sample.num_rows))
    return max(1, min(_CHUNK, _BATCH_BYTES // width))


def _row_hashes(table: Any, cols: list[str], key: str) -> Iterator[tuple[str, bytes]]:
    """(repr of the row's key, SHA-256 of its values) per row, streamed in batches."""
    for batch in table.search().select(cols).limit(None).to_batches(_batch_rows(table, cols)):
        parts = [_cell_bytes(batch.column(c), c) for c in cols]
        keys = batch.column(key).to_pylist()
        for i, k in enumerate(keys):
            h = hashlib.sha256()
            for p in parts:
                h.update(struct.pack("<Q", len(p[i])))
                h.update(p[i])
            yield repr(k), h.digest()


def content_digest(table: Any) -> tuple[str, int]:
    """(SHA-256 over the rows' values in id order, rows) of a LanceDB table.

    Tables without an ``id`` column (catalogs, centroids) are digested in the order of their
    first column's values. The order is that of ``(repr(key), row hash)``; it is reached with
    bounded memory whatever the table's size (:func:`featurestore.extsort.external_sorted`:
    beyond :data:`_SORT_RUN` rows, sorted runs of (key, 32-byte hash) go to a temporary
    directory, about 110 bytes a row, and are merged).
    """
    schema = table.schema
    cols = [f.name for f in schema if f.name not in VOLATILE | LOCATION]
    key = "id" if "id" in cols else cols[0]
    h = hashlib.sha256(MANIFEST_FORMAT.encode())
    h.update(",".join(cols).encode())
    rows = 0
    for _, rh in external_sorted(_row_hashes(table, cols, key), run=_SORT_RUN):
        h.update(rh)
        rows += 1
    return h.hexdigest(), rows


def _kinds(store: Store) -> dict[str, tuple[str, Any]]:
    from featurestore.adapters import ADAPTERS_TABLE
    from featurestore.clips import CLIPS_CATALOG, clip_tables

    kinds: dict[str, tuple[str, Any]] = {}
    for name in (MODELS_TABLE, ERRORS_TABLE, ADAPTERS_TABLE, CLIPS_CATALOG):
        kinds[name] = ("catalog", None)
    for card in store.cards():
        kinds[card.table] = ("adapted" if card.adapter else "features", card)
    for c in clip_tables(store):
        kinds[c["table"]] = ("clips", c)
    return kinds


def build_manifest(store: Store) -> Manifest:
    """Describe every table of ``store`` (see the module docstring for the digest)."""
    store.check_exists()
    kinds = _kinds(store)
    tables: dict[str, ManifestTable] = {}
    total = 0
    for name in sorted(store.table_names()):
        table = store.db.open_table(name)
        kind, info = kinds.get(name, ("centroids" if "-centroids-k" in name else "other", None))
        digest, rows = content_digest(table)
        card = info.model_dump(mode="json") if kind in ("features", "adapted") else None
        tables[name] = ManifestTable(
            kind=kind,
            model_hash=card["model_hash"] if card else (info.get("model_hash") if isinstance(info, dict) else None),
            backbone=card["backbone"] if card else None,
            rows=rows,
            version=int(table.version),
            tags={k: int(v["version"]) for k, v in table.tags.list().items()},
            content_digest=digest,
            columns=[f.name for f in table.schema],
            card=card,
        )
        if kind in ("features", "adapted"):
            total += rows
    return Manifest(format=MANIFEST_FORMAT, featurestore_version=__version__, store=store.path, rows=total, tables=tables)


__all__ = ["MANIFEST_FORMAT", "build_manifest", "content_digest"]
