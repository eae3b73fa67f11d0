"""k-means over stored CLS vectors, written back into the feature table.

Spherical k-means: rows are L2-normalised, a row joins the centroid of highest cosine
similarity, and each centroid is the normalised mean of its rows (Lloyd iterations), seeded
by greedy k-means++ (as scikit-learn: ``2 + ln k`` candidates per step, the one that lowers
the potential most wins). Everything is seeded, so the same rows, ``k`` and ``seed`` give
the same clusters. Similarities are computed in chunks of rows so memory stays at the
(n, D) float32 matrix plus about :data:`CHUNK_BYTES`.

Results go back into the model's feature table as two columns, one new table version:

* ``cluster_k{K}`` (int32): the cluster, numbered by decreasing size (0 = largest);
* ``cluster_k{K}_dist`` (float32): cosine distance ``1 - cos`` to the cluster's centroid.

They are added (null for every row) the first time and then filled by ``merge_insert`` on
``id``; rows written later hold nulls until the next run. The centroids go to a table
``<model table>-centroids-k{K}`` (k rows: ``cluster``, ``size``, unit ``centroid``, plus the
seed and the feature-table versions they came from and went to), replaced on every run.

Runs at once (one machine): the columns and the centroid table are written together under
the feature table's writer lock, so they always come from the same fit — the last run's.
A run whose fit read fewer rows of an older version than the fit already written (another
run clustered rows committed since) writes nothing and says so in its ``note``.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from featurestore.errors import ConfigError, StoreError

CHUNK_BYTES = 64 << 20  # similarity block (rows x k float32) per step


def column_names(k: int) -> tuple[str, str]:
    """``(cluster column, distance column)`` for ``k`` clusters."""
    return f"cluster_k{k}", f"cluster_k{k}_dist"


def centroids_table_name(table: str, k: int) -> str:
    """Name of the table holding the ``k`` centroids of feature table ``table``."""
    return f"{table}-centroids-k{k}"


@dataclass
class KMeansFit:
    """A fitted k-means: ``labels`` (n,), ``dist`` (n,) = 1 - cos, unit ``centroids`` (k, D)."""

    labels: np.ndarray
    dist: np.ndarray
    centroids: np.ndarray
    inertia: float  # sum of cosine distances to the assigned centroid
    iterations: int
    converged: bool


def _chunk(k: int) -> int:
    return max(1, CHUNK_BYTES // (4 * max(k, 1)))


def _assign(x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(best cluster, its cosine) per row, one block of rows at a time."""
    labels = torch.empty(len(x), dtype=torch.int64)
    best = torch.empty(len(x), dtype=x.dtype)
    step = _chunk(len(c))
    for s in range(0, len(x), step):
        sims = x[s : s + step] @ c.T  # (chunk, k)
        best[s : s + step], labels[s : s + step] = sims.max(1)
    return labels, best


def _kmeanspp(x: torch.Tensor, k: int, rng: np.random.Generator) -> torch.Tensor:
    """Greedy k-means++ on unit rows; the potential of a row is 1 - cos to its nearest centre
    (half the squared Euclidean distance, so D² sampling is sampling by it)."""
    n = len(x)
    trials = 2 + int(math.log(k))
    first = int(rng.integers(n))
    centres = [first]
    pot = (1.0 - x @ x[first]).clamp_min(0)  # (n,)
    step = _chunk(trials)
    for _ in range(1, k):
        p = pot.double().numpy()
        total = p.sum()
        if total <= 1e-12:
            break  # every row already sits on a centre: fewer distinct rows than k
        cand = rng.choice(n, size=trials, replace=True, p=p / total)
        # each candidate's potential, all at once: one pass over x (n x trials floats kept,
        # fewer than x's own n x D)
        new_pot = torch.empty(n, trials, dtype=x.dtype)
        for s in range(0, n, step):
            d = (1.0 - x[s : s + step] @ x[cand].T).clamp_min(0)  # (chunk, trials)
            new_pot[s : s + step] = torch.minimum(pot[s : s + step, None], d)
        best = int(torch.argmin(new_pot.sum(0, dtype=torch.float64)))  # first of equal scores
        centres.append(int(cand[best]))
        pot = new_pot[:, best].contiguous()
    if len(centres) < k:
        distinct = len(centres)
        raise ConfigError(
            f"--k {k} is more than the number of distinct directions among the {n} rows (about {distinct}). "
            f"Fix: pass --k {distinct} or fewer."
        )
    return x[centres].clone()


def _sums(x: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """(k, D) float64 sum of each cluster's rows: one-hot matmuls, a block of rows at a time."""
    out = torch.zeros(k, x.shape[1], dtype=torch.float64)
    step = _chunk(k)
    for s in range(0, len(x), step):
        onehot = torch.nn.functional.one_hot(labels[s : s + step], k).to(x.dtype)  # (chunk, k)
        out += (onehot.T @ x[s : s + step]).double()
    return out


def kmeans(x: np.ndarray, k: int, *, seed: int = 0, max_iter: int = 100, tol: float = 1e-6) -> KMeansFit:
    """Spherical k-means of the rows of ``x`` (any scale: they are L2-normalised first).

    Args:
        x: (n, D) features.
        k: clusters (2 <= k <= n).
        seed: seeds k-means++.
        max_iter: Lloyd iterations at most.
        tol: stop when no centroid moves by more than this (1 - cos) and no row changes cluster.

    Returns:
        :class:`KMeansFit`, clusters numbered by decreasing size (ties: lowest first row).
    """
    n = len(x)
    if k < 1 or k > n:
        raise ConfigError(f"--k {k}: must be between 1 and the number of rows ({n}).")
    xt = torch.nn.functional.normalize(torch.as_tensor(np.ascontiguousarray(x, np.float32)), dim=1)  # (n, D)
    rng = np.random.default_rng(seed)
    c = _kmeanspp(xt, k, rng)  # (k, D)
    labels = torch.full((n,), -1, dtype=torch.int64)
    converged, it = False, 0
    for it in range(1, max_iter + 1):
        new_labels, best = _assign(xt, c)
        sums = _sums(xt, new_labels, k)  # (k, D)
        counts = torch.bincount(new_labels, minlength=k)
        empty = torch.nonzero(counts == 0).flatten()
        if len(empty):
            # an emptied cluster restarts at the rows farthest from their centroids
            far = torch.argsort(best, stable=True)[: len(empty)]
            sums[empty] = xt[far].double()
            counts[empty] = 1
        new_c = torch.nn.functional.normalize(sums, dim=1).float()
        shift = float((1.0 - (new_c * c).sum(1)).max())
        changed = bool((new_labels != labels).any())
        c, labels = new_c, new_labels
        if shift <= tol and not changed and not len(empty):
            converged = True
            break
    labels, best = _assign(xt, c)  # final assignment against the centroids that are kept
    dist = (1.0 - best).clamp_min(0)
    counts = torch.bincount(labels, minlength=k).numpy()
    first = np.full(k, n, np.int64)
    np.minimum.at(first, labels.numpy(), np.arange(n))
    order = np.lexsort((first, -counts))  # by size, descending, then first row
    rank = np.empty(k, np.int64)
    rank[order] = np.arange(k)
    return KMeansFit(
        labels=rank[labels.numpy()].astype(np.int32), dist=dist.numpy().astype(np.float32), centroids=c.numpy()[order],
        inertia=float(dist.double().sum()), iterations=it, converged=converged,
    )


# -- the store -------------------------------------------------------------------------


@dataclass
class ClusterResult:
    """What ``cluster`` wrote (``as_dict`` for JSON)."""

    table: str
    model_hash: str
    k: int
    seed: int
    rows: int
    column: str
    dist_column: str
    sizes: list[int]
    inertia: float
    mean_dist: float
    iterations: int
    converged: bool
    source_version: int  # table version the features were read from
    version: int  # table version holding the written columns
    centroids_table: str
    seconds: float
    note: str | None = None
    written: bool = True  # False: a concurrent run's fit of more rows was kept (see note)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _write_columns(table: Any, ids: list[str], fit: KMeansFit, k: int) -> int:
    """Add (once) and fill the two cluster columns by ``id``; returns the new version."""
    from featurestore.commit import table_store_path
    from featurestore.locks import table_lock
    from featurestore.store import ensure_fields

    col, dcol = column_names(k)
    want = pa.schema([pa.field(col, pa.int32()), pa.field(dcol, pa.float32())])
    for f in want:
        if f.name in table.schema.names and table.schema.field(f.name).type != f.type:
            raise StoreError(
                f"table {table.name} already has a column {f.name!r} of type {table.schema.field(f.name).type}, not {f.type}. "
                f"Fix: drop it (table.drop_columns([{f.name!r}])) and cluster again."
            )
    src = pa.table({"id": pa.array(ids, pa.string()), col: pa.array(fit.labels, pa.int32()), dcol: pa.array(fit.dist, pa.float32())})
    if len(set(ids)) != len(ids):  # a table with duplicate ids (made by an older version): one source row per id
        pos = {v: i for i, v in reversed(list(enumerate(ids)))}
        first = sorted(pos.values())
        src = src.take(pa.array(first, pa.int64()))
    with table_lock(table_store_path(table), table.name):  # ordered with the writers' commits (re-entrant)
        table.checkout_latest()
        ensure_fields(table, want)
        # only the given columns are replaced; rows not in `src` (written since we read) keep theirs
        res = table.merge_insert("id").when_matched_update_all().execute(src)
    version = int(getattr(res, "version", 0) or table.version)
    return version


def _index_note(table: Any) -> str | None:
    """merge_insert rewrites the updated rows, so an ANN index on ``cls`` no longer covers them."""
    try:
        indices = [i for i in table.list_indices() if list(i.columns) == ["cls"]]
        if not indices:
            return None
        stats = table.index_stats(indices[0].name)
    except (AttributeError, ValueError, RuntimeError):  # pragma: no cover - index API differences
        return None
    if stats is None or not stats.num_unindexed_rows:
        return None
    return (
        f"the ANN index on cls now covers {stats.num_indexed_rows} of {stats.num_indexed_rows + stats.num_unindexed_rows} rows "
        "(writing the columns rewrote the rows); searches stay exact for the rest. Fix: run `featurestore index` again."
    )


def cluster(store: Any, model: str, k: int, *, seed: int = 0, max_iter: int = 100) -> ClusterResult:
    """k-means on ``model``'s stored CLS; assignments and distances written back as columns.

    Args:
        store: store directory, ``Store`` or ``FeatureStore``.
        model: table name, model hash (prefix) or backbone name.
        k: number of clusters.
        seed: seeds k-means++; the same rows, ``k`` and ``seed`` give the same columns.
        max_iter: Lloyd iterations at most.

    Returns:
        :class:`ClusterResult` with the new table version and the centroid table's name.
    """
    from featurestore.readers import FeatureDataset, _store_path
    from featurestore.store import Store

    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ConfigError(f"--k {k!r}: k-means needs at least 2 clusters.")
    t0 = time.perf_counter()
    ds = FeatureDataset(store, model, columns=["cls"])
    if len(ds) < k:
        raise ConfigError(f"--k {k} is more than the {len(ds)} rows of table {ds.table_name}. Fix: pass --k {max(2, len(ds))} or fewer.")
    data = ds.to_numpy(["cls"])
    fit = kmeans(data["cls"], k, seed=seed, max_iter=max_iter)
    st = Store(_store_path(store))
    table = st.open_table(ds.table_name)  # the latest version, not the pinned one
    sizes = np.bincount(fit.labels, minlength=k)
    name = centroids_table_name(ds.table_name, k)
    version, kept = commit_fit(st, table, list(ds.ids), fit, seed=seed, model_hash=ds.card.model_hash, source_version=ds.version)
    if kept is not None:
        note = (
            f"not written: another run wrote the {k}-means of {kept[1]} rows of version {kept[0]} meanwhile, "
            f"newer than this run's {len(ds)} rows of version {ds.version}; it is kept (table version {version}). "
            f"Fix: nothing to do; run cluster again to fit the latest rows."
        )
    else:
        note = _index_note(table)
    return ClusterResult(
        table=ds.table_name, model_hash=ds.card.model_hash, k=k, seed=seed, rows=len(ds), column=column_names(k)[0],
        dist_column=column_names(k)[1], sizes=sizes.tolist(), inertia=fit.inertia, mean_dist=fit.inertia / len(ds),
        iterations=fit.iterations, converged=fit.converged, source_version=ds.version, version=version,
        centroids_table=name, seconds=time.perf_counter() - t0, note=note, written=kept is None,
    )


def commit_fit(
    st: Any, table: Any, ids: list[str], fit: KMeansFit, *, seed: int, model_hash: str, source_version: int
) -> tuple[int, tuple[int, int] | None]:
    """Write a fit's columns and its centroid table as one step, unless the stored fit is newer.

    Both writes happen under the feature table's writer lock (the centroid table's own lock
    inside it, always in that order), so concurrent runs cannot leave the columns of one fit
    beside the centroids of another, nor race LanceDB's overwrite of the centroid table
    (a commit conflict or a panic). A fit is stale when the stored one read a later version
    *and* more rows: a run that read rows committed since is not overwritten by one that
    read fewer (rows only grow, except when ``doctor --repair`` drops duplicates; the stored
    fit then read fewer rows, so a new run replaces it).

    Args:
        st: the store.
        table: the feature table (any version: it is moved to the latest).
        ids: the ids of the rows fitted, in ``fit``'s order.
        fit: the fit.
        seed: its seed.
        model_hash: the table's model.
        source_version: the table version the fitted rows were read at.

    Returns:
        (the table version holding the columns, None), or, when the stored fit is newer and
        nothing was written, (the version holding its columns, (its source version, its rows)).
    """
    from featurestore.locks import table_lock

    k = len(fit.centroids)
    name = centroids_table_name(table.name, k)
    with table_lock(st.path, table.name):
        if name in st.table_names():
            old = st.db.open_table(name).to_arrow()
            if old.num_rows:
                old = old.filter(pc.equal(old.column("created_at"), pc.max(old.column("created_at"))))  # the latest run's rows
                old_src = pc.max(old.column("source_version")).as_py()
                old_rows = pc.sum(old.column("size")).as_py()
                if old_src > source_version and old_rows > len(ids):
                    return pc.max(old.column("table_version")).as_py(), (old_src, old_rows)
        version = _write_columns(table, ids, fit, k)
        cent = pa.table(
            {
                "cluster": pa.array(np.arange(k), pa.int32()),
                "size": pa.array(np.bincount(fit.labels, minlength=k), pa.int64()),
                "centroid": pa.FixedSizeListArray.from_arrays(pa.array(fit.centroids.reshape(-1), pa.float32()), fit.centroids.shape[1]),
                "model_hash": pa.array([model_hash] * k, pa.string()),
                "seed": pa.array([seed] * k, pa.int64()),
                "source_version": pa.array([source_version] * k, pa.int64()),
                "table_version": pa.array([version] * k, pa.int64()),
                "created_at": pa.array([datetime.now(timezone.utc)] * k, pa.timestamp("us", tz="UTC")),
            }
        )
        with table_lock(st.path, name):
            st.db.create_table(name, cent, mode="overwrite")
    return version, None


def load_centroids(store: Any, model: str, k: int) -> np.ndarray:
    """The (k, D) unit centroids saved by :func:`cluster` for ``model`` and ``k``.

    Raises:
        ConfigError: ``model`` was never clustered with this ``k``.
    """
    from featurestore.readers import _store_path
    from featurestore.store import Store

    st = Store(_store_path(store))
    card = st.card(model)
    name = centroids_table_name(card.table, k)
    if name not in st.table_names():
        raise ConfigError(f"table {card.table} has no k-means with k={k}. Fix: run `featurestore cluster --model {card.table} --k {k}`.")
    t = st.db.open_table(name).to_arrow().sort_by([("cluster", "ascending"), ("created_at", "descending")])
    if t.num_rows > k:  # rows of two runs (a table written around featurestore): the latest run's, as doctor keeps
        cl = t.column("cluster").to_pylist()
        keep = [i for i in range(len(cl)) if i == 0 or cl[i] != cl[i - 1]]
        t = t.take(pa.array(keep, pa.int64()))
    col = t.column("centroid").combine_chunks()
    return col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size)


def cluster_columns(schema: pa.Schema) -> list[int]:
    """The ``k`` of every ``cluster_k{K}`` column in a feature table's schema, ascending."""
    return sorted(int(m.group(1)) for name in schema.names if (m := re.fullmatch(r"cluster_k(\d+)", name)))
