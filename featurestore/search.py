"""kNN / ANN search over stored ``cls`` vectors and MaxSim search over stored patch tokens.

Nothing is re-extracted for a stored query (an ``id`` or a ``.npy`` vector); an image query
loads the model again, checked against the model card, and runs one forward pass.

* **CLS search** ranks by cosine similarity. When the table has a vector index on ``cls``
  LanceDB uses it (approximate; rows added after the index was built are still scanned
  exactly and merged in); otherwise, or with ``exact=True``, every row is compared.
* **Patch search** ranks by MaxSim: for each query token the best cosine over a stored
  image's tokens, averaged over the query tokens. It is LanceDB's own multivector search
  over the dense ``patches`` column (``list<fixed_size_list<f16, P>>``), which in 0.40 is an
  exact flat scan unless ``patches`` has a vector index.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from featurestore.config import ModelCard, TokenLayout
from featurestore.errors import ConfigError, StoreError

# the index kinds and their defaults live in the import-free featurestore.index_kinds, which
# the CLI reads to build its parser on every command
from featurestore.index_kinds import (  # noqa: F401
    DEFAULT_KIND,
    DEFAULT_NPROBES,
    DEFAULT_REFINE,
    HNSW_ROWS_PER_PARTITION,
    INDEX_KINDS,
    ROWS_PER_PARTITION,
)


@dataclass
class SearchResult:
    """Hits of one query and how they were found."""

    hits: list[dict[str, Any]]  # {rank, score, uri, id}, best first
    method: str  # "ann" (a vector index was used) or "exact" (every row compared)
    table: str
    query: dict[str, Any]
    index: dict[str, Any] | None = None  # the column's index, used or not
    params: dict[str, Any] = field(default_factory=dict)  # nprobes / refine_factor / ef when "ann"
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- inputs ----------------------------------------------------------------------------


def check_k(k: int) -> int:
    if k < 1:
        raise ConfigError(f"-k must be at least 1, got {k}")
    return int(k)


def as_query_vector(vector: Any, dim: int, what: str) -> np.ndarray:
    """A finite, non-zero float32 vector of width ``dim`` ((D,) or (1, D) accepted)."""
    v = np.asarray(vector)
    if v.ndim == 2 and v.shape[0] == 1:
        v = v[0]
    if v.ndim != 1 or v.shape[0] != dim:
        raise ConfigError(f"{what} has shape {tuple(v.shape)}, but the table's cls vectors have width {dim}. Fix: pass a vector of shape ({dim},).")
    if not np.issubdtype(v.dtype, np.number) or np.iscomplexobj(v):
        raise ConfigError(f"{what} has dtype {v.dtype}; a real-valued vector is needed (e.g. float32).")
    v = v.astype(np.float32)
    if not np.all(np.isfinite(v)):
        raise ConfigError(f"{what} contains NaN or infinite values. Fix: pass a finite vector.")
    if not np.any(v):
        raise ConfigError(f"{what} is all zeros: cosine similarity is undefined for it. Fix: pass a non-zero vector.")
    return v


def load_vector(path: str, dim: int) -> np.ndarray:
    """Read a ``.npy`` query vector (no pickles) and check its width against the card."""
    try:
        v = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ConfigError(f"--vector {path!r}: no such file. Fix: save the query with numpy.save(path, vector).") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--vector {path!r} is not a readable .npy array ({exc}). Fix: save it with numpy.save.") from None
    return as_query_vector(v, dim, f"--vector {path!r}")


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


MIN_ID_PREFIX = 6  # hex digits of a row id that name it (ids are 64: SHA-256)


def check_id_prefix(row_id: str) -> None:
    """Refuse a hex id prefix shorter than :data:`MIN_ID_PREFIX`, saying so, rather than
    answer "no such id" for a row that may well exist.

    Raises:
        ConfigError: ``row_id`` is 1 to 5 hex digits.
    """
    ref = row_id.strip()
    if re.fullmatch(r"[0-9a-fA-F]{1,%d}" % (MIN_ID_PREFIX - 1), ref):
        raise ConfigError(
            f"id prefix {row_id!r} is too short: {len(ref)} hex digit(s), an id prefix needs at least {MIN_ID_PREFIX}. "
            "Fix: pass more of the id (ids are the 64 hex digits of the SHA-256 of the file's bytes)."
        )


def stored_row(table: Any, row_id: str, columns: Sequence[str]) -> dict[str, Any]:
    """The row with this ``id``, or with this unique hex prefix (>= 6 characters) of one."""
    check_id_prefix(row_id)
    cols = list(dict.fromkeys(["id", "uri", *columns]))
    rows = table.search().where(f"id = {_sql_str(row_id)}").select(cols).limit(1).to_arrow().to_pylist()
    if not rows and len(row_id) >= 6 and re.fullmatch(r"[0-9a-f]+", row_id):
        rows = table.search().where(f"id LIKE '{row_id}%'").select(cols).limit(3).to_arrow().to_pylist()
        if len({r["id"] for r in rows}) > 1:  # one id stored twice (an older version's race) is still one row
            raise ConfigError(f"id prefix {row_id!r} matches several rows of table {table.name}. Fix: pass more of the id.")
    if not rows:
        raise ConfigError(
            f"no row with id {row_id!r} in table {table.name}. Fix: take an id from `featurestore search` or "
            f"`featurestore export` output (the SHA-256 of the file's bytes), or query by --image."
        )
    return rows[0]


# -- index -----------------------------------------------------------------------------


def index_info(table: Any, column: str = "cls") -> dict[str, Any] | None:
    """The vector index on ``column``: name, kind, distance type, indexed / unindexed rows."""
    for ix in table.list_indices():
        if list(ix.columns) != [column]:
            continue
        stats = table.index_stats(ix.name)
        if stats is None or not stats.distance_type:  # a scalar index (BTree …) is no vector index
            continue
        return {
            "name": ix.name,
            "kind": str(stats.index_type).lower(),
            "distance_type": stats.distance_type,
            "indexed_rows": int(stats.num_indexed_rows),
            "unindexed_rows": int(stats.num_unindexed_rows),
        }
    return None


def default_partitions(rows: int, kind: str) -> int:
    """sqrt(rows) for IVF kinds, one graph per ~1M rows for HNSW kinds; never below 256 rows each."""
    want = math.ceil(rows / HNSW_ROWS_PER_PARTITION) if "hnsw" in kind else round(math.sqrt(rows))
    return max(1, min(want, rows // ROWS_PER_PARTITION))


def default_sub_vectors(dim: int) -> int:
    """D/8 (8 dims per 1-byte code), else the divisor of D nearest D/8.

    LanceDB's own default, D/16, reached only recall 0.91 at refine 40 on 1M x 384 clustered
    vectors, against 0.98 for D/8 (docs/benchmarks.md).
    """
    if dim % 8 == 0:
        return dim // 8
    return min((m for m in range(1, dim + 1) if dim % m == 0), key=lambda m: abs(m - dim / 8))


def build_index(
    table: Any,
    dim: int,
    *,
    kind: str = DEFAULT_KIND,
    partitions: int | None = None,
    sub_vectors: int | None = None,
) -> dict[str, Any]:
    """Build (or replace) the cosine vector index on ``cls``.

    Raises:
        ConfigError: unknown kind, bad partitions / sub-vectors, or too few rows to train.
    """
    import lancedb.index as lix

    if kind not in INDEX_KINDS:
        raise ConfigError(f"unknown index kind {kind!r}. Fix: one of {', '.join(INDEX_KINDS)}.")
    cls_name, pq = INDEX_KINDS[kind]
    rows = table.count_rows()
    if partitions is not None and partitions < 1:
        raise ConfigError(f"--partitions must be at least 1, got {partitions}")
    p = partitions if partitions is not None else default_partitions(rows, kind)
    need = p * ROWS_PER_PARTITION
    if rows < need:
        fix = f"use --partitions {rows // ROWS_PER_PARTITION}, " if rows >= ROWS_PER_PARTITION else ""
        raise ConfigError(
            f"table {table.name} has {rows} rows; a {kind} index with {p} partition(s) needs at least {need} rows "
            f"({ROWS_PER_PARTITION} per partition to train it). Fix: {fix}extract more images first, or search "
            f"without an index (exact search is the default and is fast at this size)."
        )
    kw: dict[str, Any] = {"distance_type": "cosine", "num_partitions": p}
    if pq:
        m = sub_vectors if sub_vectors is not None else default_sub_vectors(dim)
        if m < 1 or dim % m:
            raise ConfigError(f"--sub-vectors {m} does not divide the vector width {dim}. Fix: e.g. --sub-vectors {default_sub_vectors(dim)}.")
        kw["num_sub_vectors"] = m
    elif sub_vectors is not None:
        raise ConfigError(f"--sub-vectors applies to product-quantised kinds (ivf_pq, ivf_hnsw_pq), not {kind}.")
    t0 = time.perf_counter()
    table.create_index("cls", config=getattr(lix, cls_name)(**kw), replace=True)
    seconds = time.perf_counter() - t0
    info = index_info(table)
    if info is None or info["indexed_rows"] < rows:  # LanceDB may leave an untrainable index empty
        raise StoreError(f"LanceDB built no usable {kind} index on table {table.name}: {info}. Fix: drop it with `featurestore index --drop`.")
    return {**info, "table": table.name, "partitions": p, "sub_vectors": kw.get("num_sub_vectors"), "rows": rows, "seconds": round(seconds, 3)}


def drop_index(table: Any) -> dict[str, Any] | None:
    """Drop the vector index on ``cls``; returns what was dropped (None: there was none)."""
    info = index_info(table)
    if info is not None:
        table.drop_index(info["name"])
    return info


# -- search ----------------------------------------------------------------------------


def _hits(rows: list[dict[str, Any]], score: Any) -> list[dict[str, Any]]:
    return [{"rank": i + 1, "score": float(score(r["_distance"])), "uri": r["uri"], "id": r["id"]} for i, r in enumerate(rows)]


def _plan(table: Any, column: str, k: int, exact: bool, nprobes: int | None, refine_factor: int | None, ef: int | None):
    """Whether the index on ``column`` is used, with which parameters, and why not."""
    for name, v in (("--nprobes", nprobes), ("--refine-factor", refine_factor), ("--ef", ef)):
        if v is not None and v < 1:
            raise ConfigError(f"{name} must be at least 1, got {v}")
    info = index_info(table, column)
    note = None
    if info is not None and info["distance_type"] != "cosine":
        # an index trained for another metric returns wrong neighbours for cosine queries
        note = f"index {info['name']} was built for {info['distance_type']} distance, not cosine; it was not used"
    use = info is not None and note is None and not exact
    params: dict[str, Any] = {}
    if use:
        params = {
            "nprobes": nprobes or DEFAULT_NPROBES,
            "refine_factor": refine_factor if refine_factor is not None else DEFAULT_REFINE.get(info["kind"]),
            "ef": ef,
        }
        fetched = k * (params["refine_factor"] or 1)  # the index is asked for this many candidates
        if ef is not None and ef < fetched:
            raise ConfigError(
                f"--ef {ef} is below the {fetched} candidates asked of the index (k {k} x refine factor "
                f"{params['refine_factor'] or 1}); HNSW cannot return more than ef. Fix: --ef {fetched} or more."
            )
    return use, info, params, note


def _run(builder: Any, use: bool, params: dict[str, Any], k: int) -> list[dict[str, Any]]:
    builder = builder.distance_type("cosine")
    if not use:
        builder = builder.bypass_vector_index()
    else:
        builder = builder.nprobes(params["nprobes"])
        if params["refine_factor"]:
            builder = builder.refine_factor(params["refine_factor"])
        if params["ef"]:
            builder = builder.ef(params["ef"])
    # _distance is selected explicitly: LanceDB 0.40 warns on every query otherwise
    return builder.select(["id", "uri", "_distance"]).limit(k).to_arrow().to_pylist()


def knn(
    table: Any,
    query: np.ndarray,
    k: int,
    *,
    query_info: dict[str, Any],
    exact: bool = False,
    nprobes: int | None = None,
    refine_factor: int | None = None,
    ef: int | None = None,
) -> SearchResult:
    """Top ``k`` rows by cosine similarity of ``cls`` to ``query`` (D,), through the index when there is one."""
    k = check_k(k)
    use, info, params, note = _plan(table, "cls", k, exact, nprobes, refine_factor, ef)
    rows = _run(table.search(query.astype(np.float32), vector_column_name="cls"), use, params, k)
    return SearchResult(_hits(rows, lambda d: 1.0 - d), "ann" if use else "exact", table.name, query_info, info, params, note)


def knn_decoded(dataset: Any, query: np.ndarray, k: int, *, query_info: dict[str, Any]) -> SearchResult:
    """Exact top ``k`` by cosine over a dataset's ``cls`` read chunk by chunk: for tables of
    integer codes (a quantizing adapter), which LanceDB cannot search; rows are decoded."""
    k = check_k(k)
    q = np.asarray(query, np.float32)
    q = q / max(float(np.linalg.norm(q)), 1e-12)
    best_s = np.empty(0, np.float32)
    best_i: list[str] = []
    best_u: list[Any] = []
    for part in dataset.iter_arrow(["cls", "uri"]):
        cls = part.column("cls").combine_chunks()
        x = cls.flatten().to_numpy(zero_copy_only=False).reshape(len(cls), cls.type.list_size)  # (n, D)
        s = (x @ q) / np.maximum(np.linalg.norm(x, axis=1), 1e-12)  # (n,)
        best_s = np.concatenate([best_s, s.astype(np.float32)])
        best_i += part.column("id").to_pylist()
        best_u += part.column("uri").to_pylist()
        if len(best_s) > k:
            keep = np.argsort(-best_s, kind="stable")[:k]
            best_s, best_i, best_u = best_s[keep], [best_i[i] for i in keep], [best_u[i] for i in keep]
    order = np.argsort(-best_s, kind="stable")[:k]
    hits = [{"rank": r + 1, "score": float(best_s[i]), "uri": best_u[i], "id": best_i[i]} for r, i in enumerate(order)]
    note = "integer codes decoded and compared exactly (no ANN index over codes)"
    return SearchResult(hits, "exact", dataset.table_name, query_info, None, {}, note)


def maxsim(
    table: Any,
    tokens: np.ndarray,
    k: int,
    *,
    query_info: dict[str, Any],
    exact: bool = False,
) -> SearchResult:
    """Top ``k`` rows by MaxSim of their ``patches`` to the query ``tokens`` (T, P).

    LanceDB's multivector distance is ``T - sum_t max_j cos(q_t, d_j)``; the score reported
    is the mean over query tokens of the best cosine, in [-1, 1] (1: every query token has
    an identical stored token).
    """
    k = check_k(k)
    if "patches" not in table.schema.names:
        raise ConfigError(
            f"table {table.name} holds no patch tokens (extracted without --dense). Fix: extract again with --dense, "
            f"or search by cls without --patches."
        )
    width = table.schema.field("patches").type.value_type.list_size
    t = np.asarray(tokens, np.float32)
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] != width:
        raise ConfigError(f"query patch tokens have shape {tuple(t.shape)}; the table stores tokens of width {width}.")
    if not np.all(np.isfinite(t)):
        raise ConfigError("query patch tokens contain NaN or infinite values")
    use, info, params, note = _plan(table, "patches", k, exact, None, None, None)
    n = t.shape[0]
    rows = _run(table.search(t, vector_column_name="patches"), use, params, k)
    return SearchResult(_hits(rows, lambda d: 1.0 - d / n), "ann" if use else "exact", table.name, query_info, info, params, note)


# -- regions ---------------------------------------------------------------------------


def parse_region(text: str | Sequence[float]) -> tuple[float, float, float, float]:
    """``"x0,y0,x1,y1"`` (pixels of the original image, after EXIF orientation) -> 4 floats."""
    parts = [p.strip() for p in text.split(",")] if isinstance(text, str) else list(text)
    try:
        x0, y0, x1, y1 = (float(p) for p in parts)
    except (TypeError, ValueError):
        raise ConfigError(f"--region {text!r} is not x0,y0,x1,y1 (4 numbers, pixels). Fix: e.g. --region 10,20,110,140.") from None
    if not (x0 < x1 and y0 < y1):
        raise ConfigError(f"--region {text!r} is empty: need x0 < x1 and y0 < y1 (left, top, right, bottom).")
    return x0, y0, x1, y1


def region_tokens(
    region: tuple[float, float, float, float],
    crop_box: Sequence[float],
    grid: tuple[int, int],
    layout: TokenLayout | None = None,
) -> np.ndarray:
    """Indices (row-major) of the patch tokens whose cell centre lies in ``region``.

    A cell's place in the original image comes from the crop box (what the model saw) and,
    when the card's token layout matches the grid, the patch size in model-input pixels
    (so a grid that does not cover the whole input maps exactly); else the grid divides the
    crop box evenly. A region smaller than a cell selects the cell under its centre.
    """
    gh, gw = grid
    left, top, right, bottom = (float(v) for v in crop_box)
    if not all(math.isfinite(v) for v in (left, top, right, bottom)):
        raise ConfigError(
            "the crop box of the query is unknown (the backbone's preprocessing geometry is not modelled), so a pixel "
            "region cannot be mapped to patch tokens. Fix: search without --region (all tokens)."
        )
    x0, y0, x1, y1 = region
    if x1 <= left or x0 >= right or y1 <= top or y0 >= bottom:
        raise ConfigError(
            f"--region {x0:g},{y0:g},{x1:g},{y1:g} lies outside the part of the image the model saw "
            f"(crop box {left:g},{top:g},{right:g},{bottom:g}). Fix: pick a region inside the crop box."
        )
    if layout is not None and (layout.grid_h, layout.grid_w) == (gh, gw):
        cw = layout.patch_size * (right - left) / layout.input_w
        ch = layout.patch_size * (bottom - top) / layout.input_h
    else:
        cw, ch = (right - left) / gw, (bottom - top) / gh
    cx = left + (np.arange(gw) + 0.5) * cw  # (gw,) cell centres, original pixels
    cy = top + (np.arange(gh) + 0.5) * ch  # (gh,)
    inside = ((cy >= y0) & (cy < y1))[:, None] & ((cx >= x0) & (cx < x1))[None, :]  # (gh, gw)
    idx = np.flatnonzero(inside)
    if idx.size == 0:
        mx, my = (max(x0, left) + min(x1, right)) / 2, (max(y0, top) + min(y1, bottom)) / 2
        c = min(int((mx - left) // cw), gw - 1)
        r = min(int((my - top) // ch), gh - 1)
        idx = np.array([r * gw + c])
    return idx


# -- image queries ---------------------------------------------------------------------


def verify_image_backbone(backbone: Any, card: ModelCard) -> None:
    """Refuse a model that would not reproduce the stored features.

    The weight digest is checked by :func:`featurestore.zeroshot.verify_backbone`; then the
    model hash is recomputed from that digest and today's preprocessing / output spec /
    decode policy, so a changed image processor is caught too.
    """
    from featurestore.hashing import canonical_json, model_hash
    from featurestore.media import DECODE_POLICY
    from featurestore.zeroshot import verify_backbone

    # a --layers table records no text width (its vectors are not in the text space) even
    # when the model has a text tower; verify_backbone would read that as another model
    checked = card.model_copy(update={"text_dim": backbone.text_dim}) if card.layers is not None else card
    verify_backbone(backbone, checked)
    layers = tuple(card.layers) if card.layers is not None else None
    now = {
        "preprocessing": backbone.preprocess_spec(),
        "output": backbone.output_spec(card.dense, layers=layers) if layers is not None else backbone.output_spec(card.dense),
        "decode": DECODE_POLICY,
    }
    if model_hash(card.weights_sha256, now) != card.model_hash:
        recorded = {"preprocessing": card.preprocessing, "output": card.output_spec, "decode": card.decode_policy}
        differs = [k for k in now if canonical_json(now[k]) != canonical_json(recorded[k])] or ["model hash"]
        raise ConfigError(
            f"the {' and '.join(differs)} of {card.backbone!r} as loaded now differ from what produced table {card.table}, "
            f"so its features of a query image would not be comparable. Fix: install the library versions in the "
            f"card ({card.library_versions})."
        )


def encode_image(backbone: Any, card: ModelCard, path: str, device: Any, *, dense: bool) -> dict[str, Any]:
    """Decode, preprocess and forward one image exactly as extraction does.

    Returns:
        ``cls`` (D,) float32, ``patches`` (N, P) float32 or None, ``grid``, ``crop_box``, ``size``.
    """
    import torch

    from featurestore.media import decode_image

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(f"--image {path!r}: cannot read it ({exc.strerror}). Fix: check the path.") from None
    return encode_pil(backbone, card, decode_image(data, path), device, dense=dense)


def encode_pil(backbone: Any, card: ModelCard, img: Any, device: Any, *, dense: bool) -> dict[str, Any]:
    """Preprocess and forward one decoded RGB image (or video frame) as extraction does."""
    import torch

    pre = backbone.preprocessor()(img)
    layers = tuple(card.layers) if card.layers is not None else None
    with torch.inference_mode():
        px = pre.pixel_values.unsqueeze(0).to(device)  # (1, C, H, W)
        out = backbone.forward(px, dense=dense, layers=layers) if layers is not None else backbone.forward(px, dense=dense)
    cls = out.cls.float().cpu().numpy()[0]  # (D,)
    if cls.shape[0] != card.dim:
        raise StoreError(f"backbone {card.backbone} returned cls of width {cls.shape[0]}, the card says {card.dim}")
    patches = out.patches.float().cpu().numpy()[0] if dense and out.patches is not None else None  # (N, P)
    return {
        "cls": cls,
        "patches": patches,
        "grid": (out.layout.grid_h, out.layout.grid_w),
        "crop_box": tuple(float(v) for v in pre.crop_box),
        "size": img.size,
    }


__all__ = [
    "INDEX_KINDS",
    "SearchResult",
    "as_query_vector",
    "build_index",
    "drop_index",
    "encode_image",
    "encode_pil",
    "index_info",
    "knn",
    "load_vector",
    "maxsim",
    "parse_region",
    "region_tokens",
    "stored_row",
    "check_id_prefix",
    "MIN_ID_PREFIX",
    "verify_image_backbone",
]
