"""LanceDB storage: the `models` catalog, one feature table per model hash, `errors`.

Feature rows are keyed by ``id`` (SHA-256 of the source bytes). Every write goes through
:class:`featurestore.commit.Committer`: under the table's writer lock it appends only the
ids the table does not hold yet (an indexed lookup), so a batch committed twice — by a
re-run, or by two runs at once — never duplicates a row. Tables are created, and catalog
rows added, under the same kind of lock.

Dense patch tokens are stored as ``list<fixed_size_list<float16, D>>`` (LanceDB's
multivector type). A FixedSizeList of FixedSizeList is never used: LanceDB 0.40 cannot
read such a column back at real sizes.
"""

from __future__ import annotations

import os
import re
import weakref
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import pyarrow as pa

from featurestore.commit import Committer, MaintainPolicy, ensure_indices, index_columns
from featurestore.config import ErrorRecord, ModelCard
from featurestore.errors import MissingDependencyError, StoreError, StoreNotFoundError, UnknownModelError
from featurestore.extsort import external_sorted
from featurestore.locks import table_lock

if TYPE_CHECKING:
    import lancedb

MODELS_TABLE = "models"
ERRORS_TABLE = "errors"
_TS = pa.timestamp("us", tz="UTC")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
ERRORS_BATCH = 8192  # error rows per streamed batch
ERRORS_SORT_RUN = 16_384  # error rows held at once when they must be put in time order

MODELS_SCHEMA = pa.schema(
    [
        pa.field("model_hash", pa.string(), nullable=False),
        pa.field("backbone", pa.string()),
        pa.field("table", pa.string()),
        pa.field("dim", pa.int32()),
        pa.field("dense", pa.bool_()),
        pa.field("card", pa.string()),  # the full ModelCard as JSON
        pa.field("created_at", _TS),
    ]
)

ERRORS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("uri", pa.string()),
        pa.field("stage", pa.string()),
        pa.field("error_type", pa.string()),
        pa.field("message", pa.string()),
        pa.field("timestamp_s", pa.float64()),
        pa.field("run_id", pa.string()),
        pa.field("model_hash", pa.string()),
        pa.field("backbone", pa.string()),
        pa.field("created_at", _TS),
    ]
)


# frame rows carry these; image rows leave them null. Tables made before video support
# get them added (all null) the first time they are opened for writing.
VIDEO_FIELDS = [
    pa.field("video_id", pa.string()),  # SHA-256 of the video file's bytes
    pa.field("timestamp_s", pa.float64()),  # presentation time of the frame
    pa.field("frame_index", pa.int64()),  # presentation index, when known exactly
]


def table_name_for(backbone: str, model_hash: str) -> str:
    """``<backbone slug>-<first 12 hex of the hash>``; LanceDB allows ``[A-Za-z0-9_.-]``."""
    slug = re.sub(r"[^a-z0-9]+", "_", backbone.lower()).strip("_")[-48:].strip("_") or "model"
    return f"{slug}-{model_hash[:12]}"


def feature_schema(dim: int, dense: bool, patch_dim: int | None = None) -> pa.Schema:
    """Schema of a feature table: ``cls`` of width ``dim``, patch tokens of width ``patch_dim`` (default ``dim``)."""
    pdim = dim if patch_dim is None else patch_dim
    fields = [
        pa.field("id", pa.string(), nullable=False),
        pa.field("uri", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("crop_box", pa.list_(pa.float32(), 4)),
        pa.field("cls", pa.list_(pa.float32(), dim)),
    ]
    if dense:
        fields += [
            pa.field("patches", pa.list_(pa.list_(pa.float16(), pdim))),
            pa.field("grid_h", pa.int16()),
            pa.field("grid_w", pa.int16()),
        ]
    fields += [*VIDEO_FIELDS, pa.field("run_id", pa.string()), pa.field("created_at", _TS)]
    return pa.schema(fields)


def feature_batch(
    schema: pa.Schema,
    *,
    ids: Sequence[str],
    uris: Sequence[str],
    sizes: Sequence[tuple[int, int]],
    crop_boxes: np.ndarray,  # (B, 4)
    cls: np.ndarray,  # (B, D)
    patches: Sequence[np.ndarray] | None,  # B arrays of (N_i, D)
    grids: Sequence[tuple[int, int]] | None,  # B (grid_h, grid_w), with patches
    run_id: str,
    video_ids: Sequence[str | None] | None = None,
    timestamps: Sequence[float | None] | None = None,
    frame_indices: Sequence[int | None] | None = None,
) -> pa.Table:
    """Build one Arrow batch of feature rows in exactly the layout the store writes."""
    n = len(ids)
    dim = cls.shape[1]
    cols: dict[str, pa.Array] = {
        "id": pa.array(list(ids), pa.string()),
        "uri": pa.array(list(uris), pa.string()),
        "width": pa.array([s[0] for s in sizes], pa.int32()),
        "height": pa.array([s[1] for s in sizes], pa.int32()),
        "crop_box": pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(crop_boxes, np.float32).reshape(-1)), 4),
        "cls": pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(cls, np.float32).reshape(-1)), dim),
    }
    if "patches" in schema.names:
        if patches is None or grids is None:
            raise ValueError("this table is dense: patches and grids are required")
        counts = np.array([p.shape[0] for p in patches], dtype=np.int64)
        flat = np.concatenate([np.asarray(p, np.float16).reshape(-1) for p in patches])
        inner = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float16()), schema.field("patches").type.value_type.list_size)
        offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
        cols["patches"] = pa.ListArray.from_arrays(offsets, inner)
        cols["grid_h"] = pa.array([g[0] for g in grids], pa.int16())
        cols["grid_w"] = pa.array([g[1] for g in grids], pa.int16())
    for name, values, typ in (
        ("video_id", video_ids, pa.string()),
        ("timestamp_s", timestamps, pa.float64()),
        ("frame_index", frame_indices, pa.int64()),
    ):
        if name in schema.names:
            cols[name] = pa.array(list(values) if values is not None else [None] * n, typ)
    now = datetime.now(timezone.utc)
    cols["run_id"] = pa.array([run_id] * n, pa.string())
    cols["created_at"] = pa.array([now] * n, _TS)
    # columns added to the table later (e.g. cluster assignments) are not features: null in new rows
    for f in schema:
        if f.name not in cols:
            if not f.nullable:
                raise ValueError(f"table column {f.name!r} is required but extraction does not produce it")
            cols[f.name] = pa.nulls(n, f.type)
    return pa.Table.from_pydict(cols, schema=schema)


def ensure_fields(table: Any, schema: pa.Schema) -> Any:
    """Add the nullable fields of ``schema`` that an older ``table`` lacks (existing rows get nulls)."""
    have = set(table.schema.names)
    missing = [f for f in schema if f.name not in have]
    if missing:
        if any(not f.nullable for f in missing):
            raise StoreError(f"table {table.name} lacks required columns {[f.name for f in missing]}")
        table.add_columns(pa.schema(missing))
    return table


def error_rows(records: Sequence[ErrorRecord], *, run_id: str, model_hash: str, backbone: str) -> pa.Table:
    """Rows of the ``errors`` table for ``records``."""
    now = datetime.now(timezone.utc)
    rows = [dict(r.model_dump(), run_id=run_id, model_hash=model_hash, backbone=backbone, created_at=now) for r in records]
    return pa.Table.from_pylist(rows, schema=ERRORS_SCHEMA)


#: committers of table handles passed to Store.write_features (gone with the handle)
_COMMITTERS: "weakref.WeakKeyDictionary[Any, Committer]" = weakref.WeakKeyDictionary()


def _connect(path: str) -> "lancedb.DBConnection":
    from featurestore.lazy import import_lancedb  # skips the REST client a local store never uses

    try:
        lancedb = import_lancedb()
    except ImportError as exc:  # pragma: no cover - lancedb is a hard dependency
        raise MissingDependencyError("lancedb", "the feature store") from exc
    return lancedb.connect(path)


class Store:
    """A LanceDB database directory holding the catalog, feature tables and errors.

    Reading a store that does not exist is an error (:class:`StoreNotFoundError`), never an
    empty store: the directory is created only when a model is registered, i.e. by an
    extraction (``featurestore extract``), so a mistyped ``--store`` creates nothing.
    """

    def __init__(self, path: str | Path):
        self.path = str(path)
        self._db: Any = None

    def _local(self) -> bool:
        return "://" not in self.path  # object-store and cloud URIs are LanceDB's to check

    def check_exists(self) -> None:
        """Raise :class:`StoreNotFoundError` unless the store's directory exists."""
        if self._local() and not os.path.isdir(self.path):
            what = "is not a directory" if os.path.exists(self.path) else "does not exist"
            raise StoreNotFoundError(
                f"no featurestore at {self.path}: the directory {what}. Fix: check --store, or create one "
                f"with featurestore extract IMAGES… --store {self.path} --backbone NAME."
            )

    def create(self) -> None:
        """Make the store's directory (extraction does, before registering its model)."""
        if self._local():
            Path(self.path).mkdir(parents=True, exist_ok=True)

    @property
    def db(self) -> "lancedb.DBConnection":
        if self._db is None:
            self.check_exists()  # lancedb.connect would create the directory
            self._db = _connect(self.path)
        return self._db

    # -- tables --------------------------------------------------------------
    def table_names(self) -> list[str]:
        names: list[str] = []
        token = None
        while True:
            resp = self.db.list_tables(page_token=token)
            names.extend(resp.tables)
            token = resp.page_token
            if not token:
                return names

    def _open_or_create(self, name: str, schema: pa.Schema, *, key: str | None = None) -> Any:
        """Open table ``name`` for writing, creating it (with ``schema``) when missing.

        Under the table's writer lock, so two processes creating one table at once get one
        table, and columns an older table lacks are added once. ``key``: the column rows
        are keyed by; it (and ``video_id`` where present) gets a BTREE index.
        """
        with table_lock(self.path, name):
            if name in self.table_names():
                table = ensure_fields(self.db.open_table(name), schema)
            else:
                table = self.db.create_table(name, schema=schema)
            if key is not None:
                ensure_indices(table, index_columns(table.schema, key))
            return table

    def open_table(self, name: str) -> Any:
        if name not in self.table_names():
            raise UnknownModelError(f"table {name!r} does not exist in store {self.path}")
        return self.db.open_table(name)

    # -- catalog ---------------------------------------------------------------
    def register_model(self, card: ModelCard, schema: pa.Schema | None = None) -> Any:
        """Add the card to `models` (once per hash) and return the feature table
        (``schema``: its columns, default the feature schema of the card).

        The table is the one already registered for ``card.model_hash`` when there is one:
        the same model reached by another spelling of its path (``hf:../m`` here, ``hf:m``
        there) gives another table name, but must write into the same table. Creates the
        store's directory when it does not exist yet.
        """
        if self._db is None:
            self.create()
        models = self._open_or_create(MODELS_TABLE, MODELS_SCHEMA)
        row = pa.Table.from_pylist(
            [
                {
                    "model_hash": card.model_hash,
                    "backbone": card.backbone,
                    "table": card.table,
                    "dim": card.dim,
                    "dense": card.dense,
                    "card": card.model_dump_json(),
                    "created_at": card.created_at,
                }
            ],
            schema=MODELS_SCHEMA,
        )
        # two first runs of one model at once: the lock makes it one `models` row
        Committer(models, key="model_hash", policy=MaintainPolicy(enabled=False), index=False).commit(row)
        # read back after the insert: whichever card won (an earlier run's, or a concurrent one's) names the table
        key = card.model_hash.replace("'", "''")
        got = models.search().where(f"model_hash = '{key}'").select(["table"]).limit(1).to_arrow()
        name = got.column("table")[0].as_py() if got.num_rows else card.table
        return self._open_or_create(name, schema or feature_schema(card.dim, card.dense, card.patch_dim), key="id")

    def cards(self) -> list[ModelCard]:
        if MODELS_TABLE not in self.table_names():
            return []
        # the whole catalog, in memory: one row per model (bounded by the models, not the images)
        rows = self.db.open_table(MODELS_TABLE).to_arrow().sort_by("created_at").to_pylist()
        # a model registered twice (by racing older versions): its earliest row, as doctor keeps
        first: dict[str, Any] = {}
        for r in rows:
            first.setdefault(r["model_hash"], r)
        return [ModelCard.model_validate_json(r["card"]) for r in rows if first[r["model_hash"]] is r]

    def card(self, ref: str) -> ModelCard:
        """Find a model by full hash, hash prefix (≥ 6 hex), table name or backbone name."""
        cards = self.cards()
        exact = [c for c in cards if ref in (c.model_hash, c.table)]
        if exact:
            return exact[0]
        matches = [c for c in cards if (len(ref) >= 6 and c.model_hash.startswith(ref)) or c.backbone == ref]
        if len(matches) == 1:
            return matches[0]
        known = ", ".join(f"{c.table} ({c.backbone})" for c in cards) or "(none yet: run featurestore extract)"
        if matches:
            raise UnknownModelError(
                f"{ref!r} matches {len(matches)} models in {self.path}: "
                f"{', '.join(c.table for c in matches)}. Fix: pass the table name or a longer hash prefix."
            )
        raise UnknownModelError(f"no model {ref!r} in store {self.path}. Known: {known}")

    def models(self) -> list[dict[str, Any]]:
        """One summary per model: ``model_hash``, ``backbone``, ``table``, ``rows``, ``dim`` …"""
        out = []
        names = set(self.table_names())
        for c in self.cards():
            rows = self.db.open_table(c.table).count_rows() if c.table in names else 0
            out.append(
                {
                    "model_hash": c.model_hash,
                    "backbone": c.backbone,
                    "table": c.table,
                    "rows": rows,
                    "dim": c.dim,
                    "patch_dim": c.patch_dim if c.patch_dim is not None else (c.dim if c.dense else None),
                    "dense": c.dense,
                    "layers": c.layers,
                    "text_dim": c.text_dim,
                    "token_layout": c.token_layout.model_dump() if c.token_layout else None,
                    "weights_source": c.weights_source,
                    "plugin": f"{c.plugin} {c.plugin_version}",
                    "adapter": c.adapter.name if c.adapter else None,
                    "base_model_hash": c.adapter.base_model_hash if c.adapter else None,
                    "base_table": c.adapter.base_table if c.adapter else None,
                    "created_at": c.created_at.isoformat(),
                }
            )
        return out

    # -- feature rows ----------------------------------------------------------
    @staticmethod
    def committer(table: Any, key: str = "id") -> Committer:
        """The committer of this table handle (one per handle, so it remembers its own commits)."""
        c = _COMMITTERS.get(table)
        if c is None or c.key != key:
            c = _COMMITTERS[table] = Committer(table, key=key)
        return c

    @staticmethod
    def write_features(table: Any, batch: pa.Table, absent_at: int | None = None) -> int:
        """Insert the rows whose ``id`` is not yet in ``table`` (one atomic commit under the
        table's writer lock); returns how many were inserted.

        Args:
            absent_at: a version of ``table`` at which none of the batch's ids was stored
                (lets the commit skip its lookup when nobody else committed since).
        """
        if not batch.num_rows:
            return 0
        return Store.committer(table).commit(batch, absent_at).inserted

    # -- errors ----------------------------------------------------------------
    def write_errors(self, records: Sequence[ErrorRecord], *, run_id: str, model_hash: str, backbone: str) -> None:
        if not records:
            return
        self._open_or_create(ERRORS_TABLE, ERRORS_SCHEMA).add(error_rows(records, run_id=run_id, model_hash=model_hash, backbone=backbone))

    def _errors_query(self, run_id: str | None) -> tuple[Any, str | None] | None:
        """(the ``errors`` table pinned at its current version, the SQL filter for ``run_id``),
        or None when the store has no ``errors`` table."""
        if ERRORS_TABLE not in self.table_names():
            return None
        table = self.db.open_table(ERRORS_TABLE)
        table.checkout(table.version)  # both passes of iter_errors read the same rows
        # filtered by LanceDB: only that run's rows are read into Python
        return table, None if run_id is None else "run_id = '" + run_id.replace("'", "''") + "'"

    def count_errors(self, run_id: str | None = None) -> int:
        """How many error rows the store holds (of run ``run_id``), without reading them."""
        got = self._errors_query(run_id)
        if got is None:
            return 0
        table, flt = got
        return int(table.count_rows(flt))

    def iter_errors(self, run_id: str | None = None) -> Iterator[dict[str, Any]]:
        """The error rows (of run ``run_id``) oldest first, as :meth:`errors`, streamed.

        Memory does not grow with the table. Rows are read :data:`ERRORS_BATCH` at a time;
        a first pass over ``created_at`` alone checks that the table already holds them in
        time order (one writer at a time commits them so), and then they are yielded as
        read. Runs that committed errors at the same time can interleave them out of order:
        then they are put in order by :func:`featurestore.extsort.external_sorted` (stable,
        like the sort it replaces; past :data:`ERRORS_SORT_RUN` rows, on temporary files).
        """
        got = self._errors_query(run_id)
        if got is None:
            return
        table, flt = got

        def scan(cols: list[str]) -> Iterator[pa.RecordBatch]:
            q = table.search().select(cols)
            if flt is not None:
                q = q.where(flt)
            return iter(q.limit(None).to_batches(ERRORS_BATCH))

        in_order, last = True, None
        for rb in scan(["created_at"]):
            col = rb.column(0)
            if col.null_count:  # sort_by puts nulls last: not the table's order
                in_order = False
                break
            ts = col.cast(pa.int64()).to_numpy()
            if len(ts) and ((last is not None and ts[0] < last) or bool((ts[1:] < ts[:-1]).any())):
                in_order = False
                break
            last = ts[-1] if len(ts) else last
        rows = (r for rb in scan(table.schema.names) for r in rb.to_pylist())
        if in_order:
            yield from rows
        else:
            yield from external_sorted(rows, key=_created_key, run=ERRORS_SORT_RUN)

    def errors(self, run_id: str | None = None) -> list[dict[str, Any]]:
        """Every error row (of run ``run_id``), oldest first. The list grows with the rows
        asked for: :meth:`iter_errors` streams them, :meth:`count_errors` counts them."""
        return list(self.iter_errors(run_id))


def _created_key(row: dict[str, Any]) -> tuple[bool, datetime]:
    """Sort key of an error row: by ``created_at``, nulls last (as ``pyarrow``'s ``sort_by``)."""
    ts = row["created_at"]
    return (ts is None, ts if ts is not None else _EPOCH)
