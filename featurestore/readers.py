"""Downstream readers: a torch ``Dataset`` over one model's feature table, pinned to a model
hash and a table version, plus numpy / Arrow / Parquet / ``.npy`` export.

A :class:`FeatureDataset` resolves its rows once, at construction, with a projected scan of
``id`` (and ``uri`` when labels are joined by uri) on the pinned version, and keeps their
LanceDB row ids. Each item or batch is then one ``take_row_ids`` on that version: only the
asked rows and columns are read, never the whole table. Row ids of a pinned version never
change, so a reader opened on version V keeps reading V while another process appends.

The dataset pickles without open handles; each process (e.g. a DataLoader worker) opens the
table again on first use, keyed by its pid.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import DataLoader, Dataset

from featurestore.config import TokenLayout
from featurestore.errors import ConfigError, StoreError
from featurestore.loader import worker_context
from featurestore.store import Store

# Model and version pinning live in the torch-free featurestore.versions (the `versions` and
# `tag` commands import it alone); re-exported here, where readers have always found them.
from featurestore.versions import _store_path, resolve_model, resolve_version, table_versions, tag_version  # noqa: F401

_CHUNK_BYTES = 64 << 20  # rows per bulk read are sized to about this many bytes
_SHOW = 5  # how many bad values an error message lists


def _few(values: Sequence[Any]) -> str:
    head = ", ".join(repr(v) for v in list(values)[:_SHOW])
    return head + (f" … ({len(values)} in all)" if len(values) > _SHOW else "")


# -- labels ----------------------------------------------------------------------------


LABEL_KEYS = ("id", "uri")


def read_labels(
    source: str | Path | pa.Table, key: str | None = None, *, text_columns: Sequence[str] = ()
) -> tuple[pa.Table, str]:
    """Read a label table and pick its join key: the one label reader of export, probe,
    adapters and map pictures, so a file joins the same way everywhere.

    Args:
        source: a ``.parquet`` / ``.csv`` / ``.tsv`` file, or an Arrow table.
        key: ``"id"`` or ``"uri"``; None picks ``id`` when the table has that column, else ``uri``.
        text_columns: more columns read as strings from CSV/TSV (keys always are), so a
            label such as ``007`` keeps its zeros.

    Returns:
        The table, with ``key`` as a string column of unique, non-empty values, and the key.

    Raises:
        ConfigError: Missing file, unknown format, no key column, or empty / repeated keys.
    """
    if key is not None and key not in LABEL_KEYS:
        raise ConfigError(f"label key {key!r}: labels join by 'id' or 'uri'.")
    if isinstance(source, pa.Table):
        t, what = source, "the label table"
    else:
        path = Path(source)
        what = f"label file {str(path)!r}"
        if not path.is_file():
            raise ConfigError(f"{what} does not exist. Fix: pass a .csv, .tsv or .parquet file with columns id (or uri) and label.")
        suffix = path.suffix.lower()
        if suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            t = pq.read_table(path)
        elif suffix in (".csv", ".tsv"):
            from pyarrow import csv

            # keys stay strings even when they look like numbers (columns the file lacks are ignored)
            opts = csv.ConvertOptions(column_types={c: pa.string() for c in (*LABEL_KEYS, *text_columns)})
            t = csv.read_csv(path, parse_options=csv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ","), convert_options=opts)
        else:
            raise ConfigError(f"{what}: unknown format {suffix!r}. Fix: use .csv, .tsv or .parquet.")
    cols = t.column_names
    if key is None:
        key = next((k for k in LABEL_KEYS if k in cols), None)
        if key is None:
            raise ConfigError(
                f"{what} lacks the column(s) id or uri (it has: {', '.join(cols) or 'none'}). Fix: one row per image "
                "with a column id (the row id, SHA-256 of the file) or uri (the path as stored)."
            )
    elif key not in cols:
        raise ConfigError(f"{what} has no {key!r} column (columns: {', '.join(cols)}). Fix: add it, or join by the other key.")
    keys = t.column(key).cast(pa.string()).to_pylist()
    if None in keys:
        raise ConfigError(f"{what} has rows with an empty {key!r}. Fix: remove them.")
    if len(set(keys)) != len(keys):
        seen: set[str] = set()
        dup = sorted({k for k in keys if k in seen or seen.add(k)})  # type: ignore[func-returns-value]
        raise ConfigError(f"{what} repeats {key} values: {_few(dup)}. Fix: one row per {key}.")
    return t.set_column(cols.index(key), key, pa.array(keys, pa.string())), key


# -- arrow → numpy ---------------------------------------------------------------------


def _one_chunk(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    if not isinstance(col, pa.ChunkedArray):
        return col
    return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()  # combining copies


def _fsl_numpy(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """(n, D) from a ``fixed_size_list`` column (zero-copy where Arrow allows)."""
    arr = _one_chunk(col)
    width = arr.type.list_size
    return arr.flatten().to_numpy(zero_copy_only=False).reshape(len(arr), width)


def _patches_numpy(col: pa.ChunkedArray | pa.Array) -> np.ndarray | list[np.ndarray]:
    """(n, N, P) float16 from ``list<fixed_size_list<f16, P>>``; a list when N varies by row."""
    arr = _one_chunk(col)
    if arr.null_count:
        raise StoreError("some rows have no patch tokens (null `patches`); the table is inconsistent.")
    width = arr.type.value_type.list_size
    counts = arr.value_lengths().to_numpy()
    if not len(counts):
        return np.empty((0, 0, width), np.float16)
    flat = arr.flatten().flatten().to_numpy(zero_copy_only=False).reshape(-1, width)  # (sum N, P)
    if (counts == counts[0]).all():
        return flat.reshape(len(arr), int(counts[0]), width)
    return np.split(flat, np.cumsum(counts)[:-1])


def _tensor(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """A tensor of ``dtype`` that owns its memory (Arrow buffers are read-only)."""
    if a.flags.writeable:
        return torch.from_numpy(a).to(dtype)
    with warnings.catch_warnings():  # `.to` below copies: nothing ever writes into Arrow's buffer
        warnings.simplefilter("ignore", UserWarning)
        t = torch.from_numpy(a)
    return t.to(dtype, copy=True)


def _column_tensor(col: pa.ChunkedArray, dtype: torch.dtype, part: slice | None) -> torch.Tensor | list[torch.Tensor]:
    """``cls`` (n, D) or ``patches`` (n, N, P) as one tensor of ``dtype``, converted chunk by
    chunk straight into place (no intermediate copy); a list of (N_i, P) when N varies."""
    patches = pa.types.is_list(col.type)
    width = col.type.value_type.list_size if patches else col.type.list_size
    chunks = [c for c in col.chunks if len(c)]
    counts = np.concatenate([c.value_lengths().to_numpy() for c in chunks]) if patches and chunks else None
    if counts is not None and not (counts == counts[0]).all():
        return [_tensor(x, dtype) for x in _patches_numpy(col)]
    tail = (int(counts[0]), width) if counts is not None else (width,)
    out = torch.empty((len(col), *tail), dtype=dtype)
    start = 0
    for c in chunks:
        flat = c.flatten().flatten() if patches else c.flatten()  # flatten honours slice offsets
        vals = flat.to_numpy(zero_copy_only=False).reshape(len(c), *tail)
        with warnings.catch_warnings():  # read-only Arrow memory, only ever read by copy_
            warnings.simplefilter("ignore", UserWarning)
            out[start : start + len(c)].copy_(torch.from_numpy(vals))
        start += len(c)
    return out[..., part] if part is not None else out


def _as_slice(pos: np.ndarray) -> slice | np.ndarray:
    """``pos`` as a slice when it is a run of consecutive positions (a copy, not a scatter)."""
    if len(pos) and pos[-1] - pos[0] == len(pos) - 1 and (np.diff(pos) == 1).all():
        return slice(int(pos[0]), int(pos[-1]) + 1)
    return pos


def _slice_fsl(arr: pa.ChunkedArray, part: slice) -> pa.Array:
    vals = _fsl_numpy(arr)[:, part]
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(vals).reshape(-1)), vals.shape[1])


# -- the dataset -----------------------------------------------------------------------


class FeatureDataset(Dataset):
    """Map-style dataset over the rows of one model's feature table, pinned to a version.

    Args:
        store: the store directory (or a ``Store`` / ``FeatureStore``).
        model: table name, model hash, hash prefix or backbone name.
        columns: table columns per item: ``cls`` (float tensor (D,)), ``patches`` (float
            tensor (N, P), plus ``grid`` = (grid_h, grid_w)), or plain columns (``uri``,
            ``width``, ``timestamp_s`` …) as Python values. ``id`` is always included.
        ids: only these rows, in this order (every id must exist).
        where: a LanceDB SQL filter, e.g. ``"video_id IS NULL"``.
        layer: for ``--layers`` tables, one stored block (absolute index, as in
            ``card.layers``): ``cls`` and ``patches`` become that block's slice.
        version: a table version number or tag; None pins the latest at construction.
        expected_hash: the model hash (or a prefix of ≥ 6 hex digits) the table must have.
        labels: a ``.parquet`` / ``.csv`` / ``.tsv`` file or an Arrow table joined on ``label_key``
            (read by :func:`read_labels`).
        label_key: ``"id"`` or ``"uri"`` (uris match as stored; relative ones, in the label file or
            an older store, are taken from the current directory); None (default): ``id`` when the
            labels have that column, else ``uri``, as ``probe`` picks it.
        label_columns: which label columns to add to items (default all but the keys id and uri).
        drop_missing_labels: leave out rows without a label instead of raising.
        dtype: dtype of the feature tensors (stored ``cls`` is float32, ``patches`` float16).

    Attributes:
        card: the model card; ``token_layout`` and ``grid`` its patch layout.
        version: the pinned table version; ``tag`` the tag it came from, if any.
        ids: the id of every item, in order.
    """

    def __init__(
        self,
        store: Any,
        model: str,
        *,
        columns: Sequence[str] = ("cls",),
        ids: Sequence[str] | None = None,
        where: str | None = None,
        layer: int | None = None,
        version: int | str | None = None,
        expected_hash: str | None = None,
        labels: str | Path | pa.Table | None = None,
        label_key: str | None = None,
        label_columns: Sequence[str] | None = None,
        drop_missing_labels: bool = False,
        dtype: torch.dtype = torch.float32,
    ):
        self.path = _store_path(store)
        st = Store(self.path)
        self.card = resolve_model(st, model, expected_hash)
        self.table_name = self.card.table
        table = st.open_table(self.table_name)
        self.version, self.tag = resolve_version(table, version)
        table.checkout(self.version)  # time-travel mode: this handle never moves past it
        self.schema: pa.Schema = table.schema
        # an integer-coded adapter's table (quantizer) stores `codes`; `cls` reads decode them
        self._coded = "cls" not in self.schema.names and "codes" in self.schema.names and self.card.adapter is not None
        self._adapter: Any = None
        self.columns = self._check_columns(columns)
        self.dtype = dtype
        self._slices = self._layer_slices(layer)
        self.layer = layer
        lab, key = read_labels(labels, label_key) if labels is not None else (None, None)
        by_uri = key == "uri"
        row_ids, rowids, uris = self._scan_rows(table, where, with_uri=by_uri)
        if ids is not None:
            pick = self._pick(row_ids, ids, where)
            row_ids, rowids = [row_ids[i] for i in pick], rowids[pick]
            uris = [uris[i] for i in pick] if uris is not None else None
        self.where = where
        self.label_names: list[str] = []
        self._labels: dict[str, list[Any]] = {}
        if lab is not None:
            keep = self._join_labels(lab, key, label_columns, uris if by_uri else row_ids, drop_missing_labels)
            row_ids, rowids = [row_ids[i] for i in keep], rowids[keep]
        self.ids: list[str] = row_ids
        self._rowids = np.ascontiguousarray(rowids, np.int64)
        self._table: Any = table
        self._pid = os.getpid()

    # -- construction helpers ------------------------------------------------------------
    def _check_columns(self, columns: Sequence[str]) -> list[str]:
        if isinstance(columns, str):
            columns = [c.strip() for c in columns.split(",") if c.strip()]
        names = self.schema.names + (["cls"] if self._coded else [])
        for c in columns:
            if c == "patches" and c not in names:
                raise ConfigError(
                    f"table {self.table_name} holds no patch tokens (extracted without --dense). "
                    "Fix: ask for columns=('cls',), or extract again with --dense."
                )
            if c not in names:
                raise ConfigError(f"column {c!r} is not in table {self.table_name} (columns: {', '.join(names)}).")
        return [c for c in dict.fromkeys(columns) if c != "id"]

    def _layer_slices(self, layer: int | None) -> dict[str, slice]:
        if layer is None:
            return {}
        stored = self.card.layers
        if not stored or not self.card.layer_dims:
            raise ConfigError(f"model {self.table_name} stores one output, not several blocks. Fix: leave out layer.")
        if layer not in stored:
            raise ConfigError(f"layer {layer} is not stored in {self.table_name}: it holds blocks {stored}. Fix: pass one of them.")
        k = stored.index(layer)
        start = sum(self.card.layer_dims[:k])
        part = slice(start, start + self.card.layer_dims[k])
        out = {"cls": part}
        if "patches" in self.schema.names:
            # patches are concatenated the same way unless their width differs from cls
            if self.schema.field("patches").type.value_type.list_size == sum(self.card.layer_dims):
                out["patches"] = part
            elif "patches" in self.columns:
                raise ConfigError(f"the patch tokens of {self.table_name} are not split by block. Fix: leave out layer for patches.")
        return out

    @staticmethod
    def _scan_rows(table: Any, where: str | None, with_uri: bool) -> tuple[list[str], np.ndarray, list[str] | None]:
        """Ids, row ids (and uris) of the rows matching ``where``, in row-id order: a scan
        of these small columns only."""
        q = table.search().select(["id", "uri"] if with_uri else ["id"]).with_row_id(True).limit(None)
        if where:
            q = q.where(where)
        try:
            got = q.to_arrow()
        except (ValueError, RuntimeError) as exc:  # LanceDB: ValueError('Invalid input, …') with the parser's message
            raise ConfigError(
                f"filter {where!r} cannot run on table {table.name}: {str(exc).rstrip('.')}. "
                f"Fix: a SQL expression over the columns ({', '.join(table.schema.names)}), e.g. \"video_id IS NULL\"."
            ) from None
        order = pc.sort_indices(got.column("_rowid"))
        got = got.take(order)
        uris = got.column("uri").to_pylist() if with_uri else None
        return got.column("id").to_pylist(), got.column("_rowid").to_numpy(), uris

    def _pick(self, row_ids: list[str], ids: Sequence[str], where: str | None) -> np.ndarray:
        """Positions of ``ids`` (in their order) among the scanned rows."""
        if isinstance(ids, str):
            raise ConfigError("ids must be a sequence of ids, not one string. Fix: ids=[...].")
        pos = {k: i for i, k in enumerate(row_ids)}
        missing = [i for i in ids if i not in pos]
        if missing:
            cond = f" matching {where!r}" if where else ""
            raise ConfigError(
                f"{len(missing)} ids are not rows of {self.table_name}{cond} at version {self.version}: {_few(missing)}."
            )
        return np.array([pos[i] for i in ids], np.int64)

    def _join_labels(self, lab: pa.Table, key: str, label_columns: Sequence[str] | None, keys: list[str], drop: bool) -> np.ndarray:
        """Attach label columns aligned to ``keys``; returns the positions that keep a label."""
        # both keys identify rows (a file may carry id and uri): neither is a label column by default
        names = list(label_columns) if label_columns is not None else [c for c in lab.column_names if c not in LABEL_KEYS]
        bad = [c for c in names if c not in lab.column_names]
        if bad:
            raise ConfigError(f"label columns {bad} are not in the label table (columns: {', '.join(lab.column_names)}).")
        clash = [c for c in names if c in ("id", "grid", key, *self.columns)]
        if clash:
            raise ConfigError(f"label columns {clash} clash with item keys. Fix: rename them in the label file.")
        label_keys = lab.column(key).to_pylist()
        if key == "uri":  # relative uris (label file, older store) are taken from the current directory
            from featurestore.paths import uri_key

            label_keys, keys = [uri_key(k) for k in label_keys], [uri_key(k) for k in keys]
        row_of = {k: i for i, k in enumerate(label_keys)}
        idx = np.array([row_of.get(k, -1) for k in keys], np.int64)
        missing = [k for k, i in zip(keys, idx) if i < 0]
        if missing and not drop:
            example = f" (uris match as stored, relative ones from the current directory; e.g. {keys[0]!r})" if key == "uri" and keys else ""
            raise ConfigError(
                f"{len(missing)} of {len(keys)} rows have no label by {key}: {_few(missing)}{example}. "
                "Fix: add them to the label file, or pass drop_missing_labels=True (--drop-missing-labels)."
            )
        keep = np.flatnonzero(idx >= 0)
        self.label_names = names
        self._labels = {c: lab.column(c).take(pa.array(idx[keep])).to_pylist() for c in names}
        return keep

    # -- properties ----------------------------------------------------------------------
    @property
    def token_layout(self) -> TokenLayout | None:
        """Where the patch tokens come from (grid, patch size, dropped prefix tokens)."""
        return self.card.token_layout

    @property
    def grid(self) -> tuple[int, int] | None:
        """(grid_h, grid_w) of the card's token layout; per-row grids are in each item."""
        lay = self.card.token_layout
        return (lay.grid_h, lay.grid_w) if lay else None

    def __len__(self) -> int:
        return len(self._rowids)

    def __repr__(self) -> str:
        return f"FeatureDataset({self.table_name!r} v{self.version}, {len(self)} rows, columns={self.columns})"

    # -- handles: one per process ---------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_table"] = None  # LanceDB handles hold threads and sockets: reopen per process
        state["_adapter"] = None  # rebuilt from the store's artifact where needed
        state["_pid"] = None
        return state

    def _handle(self) -> Any:
        if self._pid is not None and self._pid != os.getpid():
            raise ConfigError(
                "this FeatureDataset was copied into a forked process (a DataLoader worker started by "
                "fork). LanceDB's threads do not survive fork and the worker can crash or hang. "
                "Fix: ds.loader(batch_size, num_workers=N), or DataLoader(ds, ..., "
                "multiprocessing_context=featurestore.loader.worker_context()) (\"forkserver\" or \"spawn\" also work)."
            )
        if self._table is None:
            table = Store(self.path).open_table(self.table_name)
            try:
                table.checkout(self.version)
            except (ValueError, RuntimeError, OSError) as exc:
                raise StoreError(f"version {self.version} of table {self.table_name} is gone (cleaned up?): {exc}") from None
            self._table, self._pid = table, os.getpid()
        return self._table

    # -- reading --------------------------------------------------------------------------
    def _physical(self, columns: Sequence[str]) -> list[str]:
        out: list[str] = []
        for c in columns:
            out += ["patches", "grid_h", "grid_w"] if c == "patches" else ["codes"] if (c == "cls" and self._coded) else [c]
        return list(dict.fromkeys(out))

    def _decoded(self, got: pa.Table) -> pa.Table:
        """Add ``cls`` decoded from ``codes`` (tables of an integer-coded adapter)."""
        if not self._coded or "codes" not in got.column_names:
            return got
        if self._adapter is None:
            from featurestore.adapters import load_fitted

            self._adapter = load_fitted(Store(self.path), self.card.adapter)
        codes = _fsl_numpy(got.column("codes"))
        x = np.ascontiguousarray(self._adapter.decode(codes), np.float32)  # (n, D)
        return got.append_column("cls", pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1]))

    def _take(self, positions: np.ndarray, physical: list[str]) -> tuple[pa.Table, np.ndarray | None]:
        """The rows at ``positions`` (sorted by row id) and the permutation into ``positions``
        order (None when it is the identity)."""
        rowids = self._rowids[positions]
        uniq, inverse = np.unique(rowids, return_inverse=True)
        # take returns rows in row-id order and drops repeats: read each once, reorder after
        got = self._handle().take_row_ids(uniq.tolist()).select(physical).with_row_id().to_arrow()
        back = got.column("_rowid").to_numpy()
        if len(back) != len(uniq) or not np.array_equal(back, uniq):
            order = np.argsort(back)
            if len(back) != len(uniq) or not np.array_equal(back[order], uniq):
                raise StoreError(f"rows of {self.table_name} v{self.version} could not be read back; the table changed under a pinned version.")
            got, back = got.take(pa.array(order)), back[order]
        same = len(inverse) == len(uniq) and bool((inverse == np.arange(len(uniq))).all())
        return self._decoded(got), None if same else inverse

    def _values(self, got: pa.Table, perm: np.ndarray | None, column: str) -> Any:
        """One column as numpy (feature columns, sliced by ``layer``) or a list, in order."""
        if column == "cls":
            a = _fsl_numpy(got.column("cls"))
            a = a[:, self._slices["cls"]] if "cls" in self._slices else a
        elif column == "patches":
            a = _patches_numpy(got.column("patches"))
            part = self._slices.get("patches")
            if isinstance(a, list):
                a = [x[:, part] if part else x for x in a]
                return a if perm is None else [a[i] for i in perm]
            a = a[:, :, part] if part else a
        elif column == "codes":  # an integer-coded adapter's table
            a = _fsl_numpy(got.column("codes"))
        elif column in ("grid_h", "grid_w"):
            a = got.column(column).to_numpy()
        else:
            vals = got.column(column).to_pylist()
            return vals if perm is None else [vals[i] for i in perm]
        return a if perm is None else a[perm]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """A whole batch in one take (``DataLoader`` calls this with a batch's indices)."""
        n = len(self)
        pos = np.asarray(indices, np.int64).reshape(-1)
        if len(pos) and (pos.min() < -n or pos.max() >= n):
            raise IndexError(f"index out of range for a dataset of {n} rows")
        pos = np.where(pos < 0, pos + n, pos)
        got, inv = self._take(pos, self._physical(self.columns))
        rows = inv if inv is not None else range(len(pos))  # item j is row rows[j] of `got`
        items: list[dict[str, Any]] = [{"id": self.ids[p]} for p in pos]
        for c in self.columns:
            if c in ("cls", "patches"):
                # one conversion per batch; items are views of it (the collate copies anyway)
                v: Any = _column_tensor(got.column(c), self.dtype, self._slices.get(c))
            else:
                v = got.column(c).to_pylist()
            for item, r in zip(items, rows):
                item[c] = v[r]
            if c == "patches":
                grid = torch.from_numpy(np.stack([got.column("grid_h").to_numpy(), got.column("grid_w").to_numpy()], 1).astype(np.int64))
                for item, r in zip(items, rows):
                    item["grid"] = grid[r]
        for c in self.label_names:
            col = self._labels[c]
            for item, p in zip(items, pos):
                item[c] = col[p]
        return items

    def loader(self, batch_size: int = 64, *, num_workers: int = 0, shuffle: bool = False, **kwargs: Any) -> DataLoader:
        """A ``DataLoader`` whose workers start from a forkserver rather than by forking a
        process that runs LanceDB's threads (which LanceDB warns may deadlock)."""
        if num_workers and "multiprocessing_context" not in kwargs:
            kwargs["multiprocessing_context"] = worker_context(["featurestore.readers"])
        return DataLoader(self, batch_size=batch_size, num_workers=num_workers, shuffle=shuffle, **kwargs)

    # -- bulk -----------------------------------------------------------------------------
    def _chunk_rows(self, columns: Sequence[str]) -> int:
        width = 0
        for c in columns:
            if c == "cls":
                width += 4 * self.card.dim  # decoded width for a table of codes
            elif c == "patches":
                lay = self.card.token_layout
                tokens = lay.grid_h * lay.grid_w if lay else 256
                width += 2 * tokens * self.schema.field("patches").type.value_type.list_size
            else:
                width += 64
        return max(1, _CHUNK_BYTES // max(width, 1))

    def _split(self, columns: Sequence[str] | str | None) -> tuple[list[str], list[str]]:
        """(table columns, label columns) asked for; None: the dataset's columns and labels."""
        if columns is None:
            return list(self.columns), list(self.label_names)
        if isinstance(columns, str):
            columns = [c.strip() for c in columns.split(",") if c.strip()]
        labels = [c for c in columns if c in self.label_names]
        table_cols = self._check_columns([c for c in columns if c not in self.label_names])
        if self.layer is not None and "patches" in table_cols and "patches" not in self._slices:
            raise ConfigError(f"the patch tokens of {self.table_name} are not split by block. Fix: leave out layer for patches.")
        return table_cols, labels

    def iter_arrow(self, columns: Sequence[str] | str | None = None, chunk_rows: int | None = None) -> Iterator[pa.Table]:
        """Arrow tables of ``id`` + ``columns`` (+ labels) in dataset order, about 64 MiB each."""
        cols, labels = self._split(columns)
        step = chunk_rows or self._chunk_rows(cols)
        for start in range(0, len(self), step) or [0]:  # an empty dataset gives one empty table
            pos = np.arange(start, min(start + step, len(self)))
            got, perm = self._take(pos, self._physical(cols))
            if perm is not None:
                got = got.take(pa.array(perm))
            out = {"id": pa.array([self.ids[p] for p in pos], pa.string())}
            for c in dict.fromkeys(x for c in cols for x in (["patches", "grid_h", "grid_w"] if c == "patches" else [c])):
                col = got.column(c)
                if c in self._slices:
                    col = _slice_fsl(col, self._slices[c]) if c == "cls" else _slice_patches(col, self._slices[c])
                out[c] = col
            for c in labels:
                out[c] = pa.array([self._labels[c][p] for p in pos])
            yield pa.table(out)

    def to_arrow(self, columns: Sequence[str] | str | None = None) -> pa.Table:
        """All rows as one Arrow table (``id``, the columns, then label columns)."""
        return pa.concat_tables(list(self.iter_arrow(columns)))

    def _bulk(self, cols: list[str]) -> Iterator[tuple[np.ndarray, pa.Table, np.ndarray | None]]:
        """``(positions, rows, perm)`` covering every row once, about 64 MiB at a time.

        When each row appears once, one streaming scan (with ``where``) reads the pinned
        version sequentially and rows land by row id wherever the scan puts them; ``ids=``
        with repeats, or no rows at all, read by take in dataset order instead.
        """
        physical, step, n = self._physical(cols), self._chunk_rows(cols), len(self)
        order = np.argsort(self._rowids, kind="stable")
        by_rowid = self._rowids[order]
        if n and not (by_rowid[1:] == by_rowid[:-1]).any():
            q = self._handle().search().select(physical).with_row_id(True).limit(None)
            for batch in (q.where(self.where) if self.where else q).to_batches(step):
                rid = batch.column("_rowid").to_numpy()
                k = np.minimum(np.searchsorted(by_rowid, rid), n - 1)
                hit = by_rowid[k] == rid  # rows the dataset leaves out (labels dropped, not in ids=)
                rows = pa.Table.from_batches([batch])
                yield order[k[hit]], self._decoded(rows if hit.all() else rows.filter(pa.array(hit))), None
            return
        for start in range(0, n, step) or [0]:  # an empty dataset: one empty read for the shapes
            pos = np.arange(start, min(start + step, n))
            got, perm = self._take(pos, physical)
            yield pos, got, perm

    def to_numpy(self, columns: Sequence[str] | str | None = None) -> dict[str, Any]:
        """``{"id": (n,) str, "cls": (n, D) float32, "patches": (n, N, P) float16, …}`` in
        dataset order; patches stay float16 (half the memory), labels are arrays or lists."""
        cols, labels = self._split(columns)
        out: dict[str, Any] = {"id": np.array(self.ids, dtype=object)}
        filled = 0
        for pos, got, perm in self._bulk(cols):
            for c in cols:
                v = self._values(got, perm, c)
                if c not in out:
                    out[c] = np.empty((len(self), *v.shape[1:]), v.dtype) if isinstance(v, np.ndarray) else [None] * len(self)
                if isinstance(out[c], np.ndarray) and isinstance(v, np.ndarray):
                    out[c][_as_slice(pos)] = v
                else:  # variable token counts (or a plain column): a list
                    out[c] = list(out[c])
                    for p, x in zip(pos, v):
                        out[c][p] = x
            filled += len(pos)
        if filled != len(self):
            raise StoreError(f"read {filled} of {len(self)} rows of {self.table_name} v{self.version}; the table changed under a pinned version.")
        for c in labels:
            out[c] = np.asarray(self._labels[c])
        return out

    def export(self, path: str | Path, fmt: str | None = None, columns: Sequence[str] | str | None = None) -> dict[str, Any]:
        """Write the rows to files for tools that want files; returns a summary.

        Args:
            path: ``.parquet`` file, or the ``.npy`` file of the CLS matrix (n, D) float32.
                ``npy`` also writes ``<stem>.ids.txt`` (one id per line, row order) and, when
                asked for, ``<stem>.patches.npy`` (n, N, P) float16.
            fmt: ``parquet`` or ``npy`` (default: from the suffix of ``path``).
            columns: table columns (and label columns, Parquet only); default the dataset's.
        """
        path = Path(path)
        fmt = fmt or path.suffix.lstrip(".").lower()
        if fmt not in ("parquet", "npy"):
            raise ConfigError(f"export format {fmt!r} is not supported. Fix: --format parquet or --format npy.")
        path.parent.mkdir(parents=True, exist_ok=True)
        cols, labels = self._split(columns)
        files: list[Path] = []
        if fmt == "parquet":
            import pyarrow.parquet as pq

            writer = None
            for part in self.iter_arrow([*cols, *labels]):
                writer = writer or pq.ParquetWriter(path, part.schema)
                writer.write_table(part)
            writer.close()
            files.append(path)
        else:
            files += self._export_npy(path, cols, labels)
        return {
            "format": fmt,
            "rows": len(self),
            "columns": ["id", *cols, *labels] if fmt == "parquet" else ["id", *cols],
            "files": [{"path": str(f), "bytes": f.stat().st_size} for f in files],
            "table": self.table_name,
            "model_hash": self.card.model_hash,
            "version": self.version,
        }

    def _export_npy(self, path: Path, cols: list[str], labels: list[str]) -> list[Path]:
        if labels:
            raise ConfigError(f"label columns {labels} cannot go into .npy files. Fix: export them with --format parquet.")
        bad = [c for c in cols if c not in ("cls", "patches")]
        if bad or not cols:
            raise ConfigError(f".npy export holds cls and/or patches, not {bad or 'nothing'}. Fix: --columns cls,patches or --format parquet.")
        stem = path.with_suffix("") if path.suffix == ".npy" else path
        targets = {"cls": stem.with_suffix(".npy"), "patches": Path(f"{stem}.patches.npy")}
        arrays: dict[str, np.ndarray] = {}
        for pos, got, perm in self._bulk(cols):
            for c in cols:
                v = self._values(got, perm, c)
                if isinstance(v, list):
                    raise ConfigError(f"rows of {self.table_name} have different numbers of patch tokens: no (n, N, P) array. Fix: --format parquet.")
                if c not in arrays:
                    arrays[c] = np.lib.format.open_memmap(targets[c], mode="w+", dtype=v.dtype, shape=(len(self), *v.shape[1:]))
                arrays[c][_as_slice(pos)] = v
        for a in arrays.values():
            a.flush()
        ids_path = Path(f"{stem}.ids.txt")
        ids_path.write_text("".join(i + "\n" for i in self.ids), encoding="utf-8")
        return [*(targets[c] for c in cols), ids_path]


def _slice_patches(col: pa.ChunkedArray, part: slice) -> pa.Array:
    arr = col.combine_chunks()
    width = arr.type.value_type.list_size
    flat = arr.flatten().flatten().to_numpy(zero_copy_only=False).reshape(-1, width)[:, part]
    inner = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(flat).reshape(-1), pa.float16()), flat.shape[1])
    return pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(arr.value_lengths().to_numpy())]).astype(np.int32)), inner)
