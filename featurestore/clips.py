"""Clip-level features: temporal aggregators over the stored frame rows of videos.

Frame rows (``video_id`` not null) of a model's table are grouped by video, ordered by
timestamp, optionally cut into windows, and handed to an
:class:`~featurestore.aggregator.Aggregator`. Clip rows go to a table keyed by the model
hash and the aggregator's spec (name, parameters, version), named
``<model table>-<aggregator>-<spec hash[:8]>``, with ``video_id``, ``start_s``, ``end_s``,
``n_frames`` and the ``frame_ids`` used, so a clip vector traces back to its frames. The
``clips`` catalog table lists every clip table. Rows are keyed by a clip id derived from
(spec, video, window) and committed under the table's writer lock, so aggregating twice —
or twice at once — adds nothing.

The frames of a video may be read while an ``extract`` run is still committing them (a
concurrent ``aggregate``): the clips made from part of a video are replaced once its clips
are made again from more frames, and a run that read fewer frames than the stored clips
were made from leaves them alone (frame rows are only ever added, so more frames means a
later read). Each video ends up with the clips of all its stored frames, whichever
aggregation commits last.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from featurestore.aggregator import Aggregator
from featurestore.commit import (
    MAINTAIN_SUFFIX,
    Committer,
    MaintainPolicy,
    conform,
    needs_optimize,
    optimize,
    sql_strings,
    table_store_path,
)
from featurestore.config import ModelCard
from featurestore.errors import ConfigError
from featurestore.hashing import canonical_json, content_id
from featurestore.locks import table_lock, try_lock
from featurestore.store import Store

CLIPS_CATALOG = "clips"
_TS = pa.timestamp("us", tz="UTC")
_IN_CHUNK = 256  # video ids per filtered read
_SCAN = 8192  # rows per streamed batch
FRAMES_PER_READ = 8192  # frame rows read (and aggregated) at once; a longer video is read alone
#: when an aggregation compacts its clip table (each commit adds a fragment)
MAINTAIN = MaintainPolicy()

CATALOG_SCHEMA = pa.schema(
    [
        pa.field("table", pa.string(), nullable=False),
        pa.field("model_hash", pa.string()),
        pa.field("model_table", pa.string()),
        pa.field("aggregator", pa.string()),
        pa.field("spec", pa.string()),  # the aggregator spec as canonical JSON
        pa.field("spec_hash", pa.string()),
        pa.field("dim", pa.int32()),
        pa.field("dense", pa.bool_()),
        pa.field("created_at", _TS),
    ]
)


@dataclass
class AggregateResult:
    """What one aggregation wrote."""

    table: str
    aggregator: str
    spec: dict[str, Any]
    videos: int
    written: int  # clip rows committed: new, or replacing clips made from fewer frames
    clips: int  # clip rows computed (new or already stored)
    replaced: int = 0  # stored clip rows made from part of a video's frames, replaced or removed

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def parse_spec(
    text: str, kind: str = "aggregator", example: str = "trimmed-mean:proportion=0.2", names: str = "mean, meanmax"
) -> tuple[str, dict[str, Any]]:
    """Parse ``NAME`` or ``NAME:key=value[,key=value]`` (an aggregator or adapter spec).

    Values are JSON literals when they parse as one (``0.2`` → float, ``true`` → bool) and
    stripped strings otherwise. Whether a parameter exists and its value is acceptable is
    for the plugin's factory to say; this only splits the text. ``kind``, ``example`` and
    ``names`` (plain names to suggest) word the error messages.

    Raises:
        ConfigError: no name, a parameter that is not ``key=value``, an empty key or value,
            or the same key twice (keeping the last would hash a spec nobody wrote).
    """
    ex_param = example.partition(":")[2]
    ex_value = ex_param.partition("=")[2]
    if not isinstance(text, str):
        raise ConfigError(f"{kind} {text!r} is a {type(text).__name__}, not text. Fix: e.g. '{example}'.")
    name, _, rest = text.strip().partition(":")
    name = name.strip()
    if not name:
        raise ConfigError(f"{kind} {text!r} has no name. Fix: e.g. {names} or {example}.")
    params: dict[str, Any] = {}
    for part in (p.strip() for p in rest.split(",")):
        if not part:  # "mean:" or a trailing comma: nothing to parse
            continue
        key, eq, value = (x.strip() for x in part.partition("="))
        if not eq or not key:
            raise ConfigError(f"{kind} {text!r}: parameter {part!r} is not key=value. Fix: e.g. {name}:{ex_param}.")
        if not value:
            raise ConfigError(f"{kind} {text!r}: parameter {key!r} has no value after '='. Fix: e.g. {name}:{key}={ex_value}.")
        if key in params:
            raise ConfigError(f"{kind} {text!r} gives {key!r} twice. Fix: keep one {key}=… .")
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    return name, params


def parse_aggregator(text: str) -> tuple[str, dict[str, Any]]:
    """Parse an aggregator spec ``NAME[:key=value,…]`` (see :func:`parse_spec`)."""
    return parse_spec(text)


def load_aggregators(specs: Sequence[str]) -> list[Aggregator]:
    """Build the aggregators named by ``--aggregate`` / ``--aggregator`` (checked before any work)."""
    from featurestore.plugins import get_host

    out = []
    for text in specs:
        name, params = parse_aggregator(text)
        entry = get_host().aggregators.get(name)
        agg = entry.factory(name, **params)
        if not isinstance(agg, Aggregator):
            raise ConfigError(
                f"plugin {entry.plugin!r} returned {type(agg).__name__} for aggregator {name!r}, "
                "not a featurestore.aggregator.Aggregator. Fix: report this to the plugin's authors."
            )
        out.append(agg)
    return out


def clip_table_name(card: ModelCard, agg: Aggregator) -> tuple[str, str]:
    """(table name, spec hash) of the clip table of ``agg`` over ``card``'s model."""
    spec_hash = content_id(canonical_json({"model_hash": card.model_hash, "aggregator": agg.spec()}).encode())
    slug = re.sub(r"[^a-z0-9]+", "_", agg.name.lower()).strip("_") or "agg"
    return f"{card.table}-{slug}-{spec_hash[:8]}", spec_hash


def clip_schema(dim: int, patch_dim: int | None) -> pa.Schema:
    fields = [
        pa.field("id", pa.string(), nullable=False),
        pa.field("video_id", pa.string()),
        pa.field("start_s", pa.float64()),
        pa.field("end_s", pa.float64()),
        pa.field("window_s", pa.float64()),  # null: the whole video
        pa.field("stride_s", pa.float64()),
        pa.field("n_frames", pa.int32()),
        pa.field("frame_ids", pa.list_(pa.string())),
        pa.field("cls", pa.list_(pa.float32(), dim)),
    ]
    if patch_dim is not None:
        fields += [
            pa.field("patches", pa.list_(pa.list_(pa.float16(), patch_dim))),
            pa.field("grid_h", pa.int16()),
            pa.field("grid_w", pa.int16()),
        ]
    fields += [pa.field("run_id", pa.string()), pa.field("created_at", _TS)]
    return pa.schema(fields)


def windows(ts: np.ndarray, window: float | None, stride: float | None) -> list[tuple[float, float, np.ndarray]]:
    """(start_s, end_s, frame positions) per clip of one video's sorted timestamps.

    Without ``window``: one clip from the first to the last frame. With it: windows
    ``[start, start + window)`` from the first frame, every ``stride`` (default ``window``)
    seconds, up to the last frame; windows holding no frame are left out.
    """
    if len(ts) == 0:
        return []
    if window is None:
        return [(float(ts[0]), float(ts[-1]), np.arange(len(ts)))]
    step = stride or window
    out = []
    k = 0
    while True:
        start = float(ts[0]) + k * step
        if start > ts[-1]:
            return out
        pos = np.nonzero((ts >= start) & (ts < start + window))[0]
        if len(pos):
            out.append((start, start + window, pos))
        k += 1


def _in_filter(ids: Sequence[str]) -> str:
    return "video_id IN (" + ", ".join("'" + v.replace("'", "''") + "'" for v in ids) + ")"


def _frame_counts(table: Any, video_ids: Sequence[str] | None) -> dict[str, int]:
    """Frame rows per video, videos in the order a scan meets them: the ``video_id`` column
    alone, streamed (one entry per video, none per frame)."""
    if video_ids is None:
        filters = ["video_id IS NOT NULL"]
    else:
        ids = list(dict.fromkeys(video_ids))
        filters = [_in_filter(ids[i : i + _IN_CHUNK]) for i in range(0, len(ids), _IN_CHUNK)]
    counts: dict[str, int] = {}
    for flt in filters:
        for rb in table.search().where(flt).select(["video_id"]).limit(None).to_batches(_SCAN):
            for vid in rb.column(0).to_pylist():
                counts[vid] = counts.get(vid, 0) + 1
    return counts


def _video_groups(counts: dict[str, int], limit: int) -> Iterator[list[str]]:
    """Consecutive videos whose frames add up to at most ``limit`` (a longer video: alone)."""
    group: list[str] = []
    n = 0
    for vid, c in counts.items():
        if group and (n + c > limit or len(group) >= _IN_CHUNK):
            yield group
            group, n = [], 0
        group.append(vid)
        n += c
    if group:
        yield group


def _patches_array(col: pa.ChunkedArray) -> np.ndarray:
    """(T, N, P) float32 of a patches column whose rows hold N tokens each."""
    arr = col.combine_chunks()
    lengths = arr.value_lengths().to_numpy(zero_copy_only=False)
    if len(arr) and (lengths == lengths[0]).all():
        width = arr.type.value_type.list_size
        flat = arr.flatten().flatten().to_numpy(zero_copy_only=False)  # (T * N * P,) float16
        return flat.reshape(len(arr), int(lengths[0]), width).astype(np.float32)
    return np.stack([np.asarray(p, np.float32) for p in arr.to_pylist()])  # raises on unequal token counts


def _frames(table: Any, video_ids: Sequence[str], with_patches: bool) -> dict[str, dict[str, Any]]:
    """Frame rows grouped by video: ids, timestamps, cls (T, D) and maybe patches, time-ordered."""
    cols = ["id", "video_id", "timestamp_s", "cls"] + (["patches", "grid_h", "grid_w"] if with_patches else [])
    parts: dict[str, list[pa.RecordBatch]] = {v: [] for v in video_ids}
    for rb in table.search().where(_in_filter(video_ids)).select(cols).limit(None).to_batches(_SCAN):
        if rb.num_rows == 0:
            continue
        col = rb.column("video_id")
        for vid in dict.fromkeys(col.to_pylist()):
            parts[vid].append(rb.filter(pc.equal(col, vid)))
    out = {}
    for vid, batches in parts.items():
        if not batches:  # its frames were deleted since they were counted
            continue
        t = pa.Table.from_batches(batches).sort_by("timestamp_s")
        ids = t.column("id").to_pylist()
        if len(set(ids)) != len(ids):  # a frame stored twice (an older version's race): counted once
            first = list({k: i for i, k in reversed(list(enumerate(ids)))}.values())
            t = t.take(pa.array(sorted(first), pa.int64()))
        cls_col = t.column("cls").combine_chunks()
        d = cls_col.type.list_size
        rec: dict[str, Any] = {
            "ids": t.column("id").to_pylist(),
            "ts": t.column("timestamp_s").to_numpy(),
            "cls": cls_col.values.to_numpy(zero_copy_only=False).reshape(t.num_rows, d).astype(np.float32),
        }
        if with_patches:
            rec["patches"] = _patches_array(t.column("patches"))  # (T, N, P)
            rec["grid"] = (t.column("grid_h")[0].as_py(), t.column("grid_w")[0].as_py())
        out[vid] = rec
    return out


def iter_video_frames(table: Any, video_ids: Sequence[str] | None, with_patches: bool) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(video_id, frames)`` per video of ``video_ids`` (None: every video in ``table``), in
    the order a scan meets them; frames as :func:`_frames` gives them.

    Memory does not grow with the table: videos are read a group at a time, a group holding
    at most :data:`FRAMES_PER_READ` frame rows (a longer video is read alone: its frames are
    what its clips are made of). The ``video_id`` BTREE index serves each group's read.
    """
    for group in _video_groups(_frame_counts(table, video_ids), FRAMES_PER_READ):
        yield from _frames(table, group, with_patches).items()


def aggregate_videos(
    store: Store,
    card: ModelCard,
    agg: Aggregator,
    *,
    video_ids: Sequence[str] | None = None,
    window: float | None = None,
    stride: float | None = None,
    run_id: str = "",
) -> AggregateResult:
    """Aggregate the stored frames of ``video_ids`` (None: every video in the table)."""
    if window is not None and window <= 0 or stride is not None and stride <= 0:
        raise ConfigError(f"--window and --stride must be positive seconds, got window={window}, stride={stride}")
    if stride is not None and window is None:
        raise ConfigError("--stride needs --window. Fix: e.g. --window 4 --stride 2.")
    feat_table = store.open_table(card.table)
    pdim_in = card.patch_dim or card.dim
    patch_dim = agg.patch_dim(pdim_in) if card.dense else None
    name, spec_hash = clip_table_name(card, agg)
    dim = agg.cls_dim(card.dim)
    table = store._open_or_create(name, clip_schema(dim, patch_dim), key="id")
    _register(store, name, card, agg, spec_hash, dim, patch_dim is not None)
    if video_ids is not None and not video_ids:
        return AggregateResult(name, agg.name, agg.spec(), 0, 0, 0)
    rows: list[dict[str, Any]] = []
    written = total = videos = replaced = 0
    now = datetime.now(timezone.utc)
    for vid, rec in iter_video_frames(feat_table, video_ids, patch_dim is not None):
        videos += 1
        for start, end, pos in windows(rec["ts"], window, stride):
            cls = np.asarray(agg.aggregate(rec["cls"][pos]), np.float32)
            if cls.shape != (dim,):
                raise ConfigError(f"aggregator {agg.name!r} returned shape {cls.shape}, expected ({dim},): a plugin bug")
            row: dict[str, Any] = {
                "id": content_id(f"{spec_hash}|{vid}|{start!r}|{end!r}|{window!r}|{stride!r}".encode()),
                "video_id": vid,
                "start_s": start,
                "end_s": end,
                "window_s": window,
                "stride_s": (stride or window) if window is not None else None,
                "n_frames": len(pos),
                "frame_ids": [rec["ids"][i] for i in pos],
                "cls": cls,
                "run_id": run_id,
                "created_at": now,
            }
            if patch_dim is not None:
                p = np.asarray(agg.aggregate_patches(rec["patches"][pos]), np.float32)
                if p.shape != (rec["patches"].shape[1], patch_dim):
                    raise ConfigError(
                        f"aggregator {agg.name!r} returned patches of shape {p.shape}, expected "
                        f"({rec['patches'].shape[1]}, {patch_dim}): a plugin bug"
                    )
                row["patches"] = p.astype(np.float16)
                row["grid_h"], row["grid_w"] = rec["grid"]
            rows.append(row)
        if len(rows) >= 512:  # after a whole video: one commit holds all clips of a video
            w, r = _write(table, rows)
            written, replaced, total = written + w, replaced + r, total + len(rows)
            rows = []
    if rows:
        w, r = _write(table, rows)
        written, replaced, total = written + w, replaced + r, total + len(rows)
    if written:
        _maintain(table)
    return AggregateResult(name, agg.name, agg.spec(), videos, written, total, replaced)


def _maintain(table: Any) -> None:
    """Compact the clip table and update its indices when its fragments or unindexed rows
    pile up (each commit makes a fragment), as the feature writers do; one process at a time."""
    if not needs_optimize(table, "id", MAINTAIN):
        return
    try:
        with try_lock(table_store_path(table), table.name + MAINTAIN_SUFFIX) as mine:
            if mine:  # else another process is compacting it
                optimize(table)
    except Exception as exc:  # noqa: BLE001 - the clips are committed; a failed compaction only costs speed
        warnings.warn(f"compacting clip table {table.name} failed ({type(exc).__name__}: {exc})", stacklevel=1)


def _write(table: Any, rows: list[dict[str, Any]]) -> tuple[int, int]:
    schema = table.schema
    cols: dict[str, Any] = {}
    for f in schema:
        vals = [r.get(f.name) for r in rows]
        if f.name == "cls":
            cols[f.name] = pa.FixedSizeListArray.from_arrays(pa.array(np.concatenate(vals).astype(np.float32)), f.type.list_size)
        elif f.name == "patches":
            inner = pa.FixedSizeListArray.from_arrays(
                pa.array(np.concatenate([v.reshape(-1) for v in vals]), pa.float16()), f.type.value_type.list_size
            )
            offsets = pa.array(np.concatenate([[0], np.cumsum([v.shape[0] for v in vals])]).astype(np.int32))
            cols[f.name] = pa.ListArray.from_arrays(offsets, inner)
        else:
            cols[f.name] = pa.array(vals, f.type)
    return commit_clips(table, pa.Table.from_pydict(cols, schema=schema))


def _groups(t: pa.Table) -> dict[tuple[Any, Any, Any], tuple[set[str], set[str]]]:
    """``{(video_id, window_s, stride_s): (clip ids, frame ids used)}`` of clip rows ``t``."""
    out: dict[tuple[Any, Any, Any], tuple[set[str], set[str]]] = {}
    cols = [t.column(c).to_pylist() for c in ("video_id", "window_s", "stride_s", "id", "frame_ids")]
    for vid, w, s, cid, fids in zip(*cols):
        ids, frames = out.setdefault((vid, w, s), (set(), set()))
        ids.add(cid)
        frames.update(fids or ())
    return out


def commit_clips(table: Any, batch: pa.Table) -> tuple[int, int]:
    """Commit the clip rows ``batch`` (every clip of each of its videos for one window and
    stride); returns (rows written, stored rows replaced).

    Under the table's writer lock, per (video, window, stride):

    * no clip stored: this batch's are appended;
    * every frame this batch used is among those the stored clips were made from (a re-run,
      or a run that read the video before more of its frames were committed): the stored
      clips stay, nothing is written;
    * this batch used frames the stored clips lack (committed since they were made): this
      batch's clips replace them — updated by id, and stored clips this batch does not have
      (e.g. a whole-video clip whose end moved) deleted, in one ``merge_insert`` commit, so
      readers see the old clips or the new ones, never a video without clips.
    """
    if not batch.num_rows:
        return 0, 0
    new = _groups(batch)
    vids = list(dict.fromkeys(v for v, _, _ in new))
    with table_lock(table_store_path(table), table.name):
        table.checkout_latest()
        stored_parts = [
            table.search().where(f"video_id IN ({sql_strings(vids[i : i + _IN_CHUNK])})")
            .select(["id", "video_id", "window_s", "stride_s", "frame_ids"]).limit(None).to_arrow()
            for i in range(0, len(vids), _IN_CHUNK)
        ]
        stored = _groups(pa.concat_tables(stored_parts)) if stored_parts else {}
        take: set[tuple[Any, Any, Any]] = set()
        stale: set[str] = set()  # stored clip ids of replaced groups that this batch does not have
        for key, (ids, frames) in new.items():
            old = stored.get(key)
            if old is None:
                take.add(key)
            elif frames - old[1]:  # frames committed since the stored clips were made
                take.add(key)
                stale |= old[0] - ids
        if not take:
            return 0, 0
        keys = list(zip(*(batch.column(c).to_pylist() for c in ("video_id", "window_s", "stride_s"))))
        rows = conform(batch.filter(pa.array([k in take for k in keys])), table.schema)
        replacing = [k for k in take if k in stored]
        if not replacing:
            table.add(rows)
            return rows.num_rows, 0
        merge = table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all()
        if stale:
            merge = merge.when_not_matched_by_source_delete(f"id IN ({sql_strings(sorted(stale))})")
        res = merge.execute(rows)  # the rows carry distinct ids: one source row per target row
        return rows.num_rows, int(res.num_updated_rows) + int(res.num_deleted_rows)


def _register(store: Store, name: str, card: ModelCard, agg: Aggregator, spec_hash: str, dim: int, dense: bool) -> None:
    row = pa.Table.from_pylist(
        [
            {
                "table": name,
                "model_hash": card.model_hash,
                "model_table": card.table,
                "aggregator": agg.name,
                "spec": canonical_json(agg.spec()),
                "spec_hash": spec_hash,
                "dim": dim,
                "dense": dense,
                "created_at": datetime.now(timezone.utc),
            }
        ],
        schema=CATALOG_SCHEMA,
    )
    catalog = store._open_or_create(CLIPS_CATALOG, CATALOG_SCHEMA)
    Committer(catalog, key="table", policy=MaintainPolicy(enabled=False), index=False).commit(row)  # one row, also when two runs race


def clip_tables(store: Store) -> list[dict[str, Any]]:
    """The ``clips`` catalog: one entry per clip table, with its row count."""
    if CLIPS_CATALOG not in store.table_names():
        return []
    names = set(store.table_names())
    # the whole catalog, in memory: one row per clip table (bounded by the tables, not the clips)
    out, seen = [], set()
    for r in store.db.open_table(CLIPS_CATALOG).to_arrow().sort_by("created_at").to_pylist():
        if r["table"] in seen:  # a catalog row stored twice by an older version: listed once
            continue
        seen.add(r["table"])
        r["spec"] = json.loads(r["spec"])
        r["rows"] = store.db.open_table(r["table"]).count_rows() if r["table"] in names else 0
        out.append(r)
    return out


__all__ = ["AggregateResult", "aggregate_videos", "clip_tables", "commit_clips", "load_aggregators", "parse_aggregator", "parse_spec", "windows"]
