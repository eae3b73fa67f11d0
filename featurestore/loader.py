"""Read → hash → decode → preprocess, run in DataLoader worker processes.

Each item comes back as ok (pixels ready), skipped (its content id is already in the
table, so it is not computed; images are not even decoded — the table is asked, by
index, a chunk of files at a time), or an error record. A video
becomes one item per sampled frame. Batches are collated in the workers so the main
process only runs the forward pass and writes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from featurestore.backbone import Preprocessor
from featurestore.config import ErrorRecord
from featurestore.errors import MediaError
from featurestore.hashing import content_id
from featurestore.media import decode_image
from featurestore.video import is_video_path

# the forkserver the workers start from; torch-free, so FeatureStore.extract can start it before
# the model library is loaded (re-exported here, where it always was)
from featurestore.workers import BASE_PRELOAD, pickled_modules, start_worker_server, worker_context  # noqa: F401


@dataclass
class Meta:
    """Metadata of one image (or video frame) that reached the model."""

    id: str
    uri: str
    size: tuple[int, int]  # (width, height) after EXIF orientation / display rotation
    crop_box: tuple[float, float, float, float]
    video_id: str | None = None  # SHA-256 of the video file's bytes, for frames
    timestamp_s: float | None = None  # presentation time of a frame
    frame_index: int | None = None  # presentation index of a frame, when known exactly
    checked_version: int | None = None  # table version at which this id was not stored


@dataclass
class Group:
    """Images of one batch that share an input shape, stacked."""

    pixel_values: torch.Tensor  # (b, C, H, W)
    metas: list[Meta]

    def pin_memory(self) -> "Group":
        return Group(self.pixel_values.pin_memory(), self.metas)


@dataclass
class Batch:
    """What the workers hand the main process for one DataLoader batch."""

    groups: list[Group] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (id, uri) already stored
    errors: list[ErrorRecord] = field(default_factory=list)
    sources_done: int = 0  # input files finished with this batch (for progress)
    video_ids: list[str] = field(default_factory=list)  # videos with frames (new or stored) in this batch
    stat_records: list[Any] = field(default_factory=list)  # featurestore.statcache.StatRecord of files hashed

    def __len__(self) -> int:
        return sum(len(g.metas) for g in self.groups) + len(self.skipped) + len(self.errors)

    def pin_memory(self) -> "Batch":
        return Batch([g.pin_memory() for g in self.groups], self.skipped, self.errors, self.sources_done, self.video_ids, self.stat_records)


@dataclass
class _Item:
    """One unit from a worker: pixels + meta, a skip, or an error; ``last`` ends its source."""

    kind: str  # "ok" | "skip" | "error"
    payload: Any
    last: bool = True
    video_id: str | None = None  # set on frame items (ok or skip) of a video
    stat: Any = None  # a StatRecord: this item's file was read and hashed, to be cached


def _error(uri: str, cid: str | None, stage: str, exc: BaseException, timestamp_s: float | None = None) -> ErrorRecord:
    msg = exc.message if isinstance(exc, MediaError) else f"{type(exc).__name__}: {exc}"
    return ErrorRecord(id=cid, uri=uri, stage=stage, error_type=type(exc).__name__, message=msg, timestamp_s=timestamp_s)  # type: ignore[arg-type]


def _read_error(uri: str, exc: OSError) -> ErrorRecord:
    reason = exc.strerror or str(exc)
    return ErrorRecord(uri=uri, stage="read", error_type=type(exc).__name__, message=f"cannot read {uri}: {reason}. Fix: check the path and permissions.")


def frame_id(video_id: str, pts: int, time_base: Any) -> str:
    """Row id of a video frame: the file's content hash plus its exact presentation time."""
    return content_id(f"{video_id}@{pts}*{time_base.numerator}/{time_base.denominator}".encode())


def _file_sha256(uri: str) -> str:
    h = hashlib.sha256()
    with open(uri, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


#: images read and hashed before one "which of these are stored?" question to the table
CHECK_CHUNK = 32
#: image files stat'ed per question to the stat cache (no bytes are held for these)
STAT_CHUNK = 1024


class SourceDataset(IterableDataset):
    """Image and video files → items; picklable so it runs in worker processes.

    Each worker takes every ``num_workers``-th source. An image is one item; a video is
    one item per sampled frame, decoded as a stream (never the whole video in memory).
    ``stored`` says which ids are stored already (those are not decoded): a
    :class:`featurestore.commit.StoredIds` that asks the table by index, a chunk of
    images (or one video) at a time, or a plain set. ``stat_cache`` (a
    :class:`featurestore.statcache.StatCache`) knows the ids of files read before: a stored
    file it knows is skipped without being read.
    """

    def __init__(
        self,
        uris: list[str],
        preprocessor: Preprocessor,
        stored: Any,  # featurestore.commit.StoredIds, or a set of ids
        max_pixels: int | None,
        sample: Any = None,  # featurestore.video.SampleSpec for video files
        stat_cache: Any = None,  # featurestore.statcache.StatCache, or None (read every file)
    ):
        self.uris = uris
        self.preprocessor = preprocessor
        self.stored = stored
        self.max_pixels = max_pixels
        self.sample = sample
        self.stat_cache = stat_cache

    def _stored(self, ids: list[str]) -> tuple[set[str] | frozenset[str], int | None]:
        if isinstance(self.stored, (set, frozenset)):
            return self.stored, None
        return self.stored.check(ids)

    def __iter__(self) -> Iterator[_Item]:
        info = get_worker_info()
        uris = self.uris if info is None else self.uris[info.id :: info.num_workers]
        chunk: list[str] = []
        for uri in uris:
            if is_video_path(uri):
                yield from self._image_chunk(chunk)  # sources keep their order
                chunk = []
                yield from _with_last(self._video_items(uri))
                continue
            chunk.append(uri)
            if len(chunk) >= STAT_CHUNK:
                yield from self._image_chunk(chunk)
                chunk = []
        yield from self._image_chunk(chunk)

    def _image_chunk(self, uris: list[str]) -> Iterator[_Item]:
        """Items of ``uris`` in their order: those the stat cache knows and the table holds
        are skipped unread; the rest are read and asked about :data:`CHECK_CHUNK` at a time."""
        if not uris:
            return
        known: dict[str, str] = {}
        stats: dict[str, Any] = {}
        if self.stat_cache is not None:
            known, stats = self.stat_cache.lookup(uris)
        stored_known: set[str] | frozenset[str] = set()
        known_version: int | None = None
        if known:
            stored_known, known_version = self._stored(list(dict.fromkeys(known.values())))
        window: list[str] = []
        for uri in uris:
            cid = known.get(uri)
            if cid is not None and cid in stored_known and not window:
                yield _Item("skip", (cid, uri))
                continue
            window.append(uri)
            if len(window) >= CHECK_CHUNK:
                yield from self._image_items(window, known, stats, stored_known, known_version)
                window = []
        yield from self._image_items(window, known, stats, stored_known, known_version)

    def _image_items(
        self,
        uris: list[str],
        known: dict[str, str] | None = None,
        stats: dict[str, Any] | None = None,
        stored_known: set[str] | frozenset[str] = frozenset(),
        known_version: int | None = None,
    ) -> Iterator[_Item]:
        from featurestore.statcache import record_for

        known = known or {}
        stats = stats or {}
        # (uri, bytes or None when skipped unread, cid, stat record) in input order
        read: list[tuple[str, bytes | None, str, Any]] = []
        for uri in uris:
            cid = known.get(uri)
            if cid is not None and cid in stored_known:
                read.append((uri, None, cid, None))  # stored, and the cache says these are its bytes
                continue
            try:
                data = Path(uri).read_bytes()
            except OSError as exc:
                yield _Item("error", _read_error(uri, exc))
                continue
            real = content_id(data)
            st = stats.get(uri)
            rec = record_for(uri, st, real) if self.stat_cache is not None and st is not None and real != cid else None
            read.append((uri, data, real, rec))
        if not read:
            return
        # files the cache knew (with these bytes) were found absent at known_version already
        ask = [cid for uri, data, cid, _ in read if data is not None and cid != known.get(uri)]
        fresh, version = self._stored(ask) if ask else (set(), None)
        while read:
            uri, data, cid, rec = read.pop(0)  # each file's bytes are released once it is done
            if data is None:
                yield _Item("skip", (cid, uri))
                continue
            if cid == known.get(uri):
                item = self._image_item(uri, data, cid, frozenset(), known_version)
            else:
                item = self._image_item(uri, data, cid, fresh, version)
            item.stat = rec
            yield item

    def _image_item(self, uri: str, data: bytes, cid: str, stored: set[str] | frozenset[str], version: int | None) -> _Item:
        if cid in stored:
            return _Item("skip", (cid, uri))
        try:
            img = decode_image(data, uri, max_pixels=self.max_pixels)
        except Exception as exc:  # any decoder failure is this item's, not the run's
            return _Item("error", _error(uri, cid, "decode", exc))
        try:
            pre = self.preprocessor(img)
        except Exception as exc:
            return _Item("error", _error(uri, cid, "preprocess", exc))
        meta = Meta(cid, uri, img.size, tuple(float(v) for v in pre.crop_box), checked_version=version)  # type: ignore[arg-type]
        return _Item("ok", (meta, pre.pixel_values))

    def _video_items(self, uri: str) -> Iterator[_Item]:
        """Items of one video's sampled frames; the first carries the file's stat record."""
        rec: list[Any] = []
        for n, item in enumerate(self._frames(uri, rec)):
            if n == 0 and rec:
                item.stat = rec[0]  # not an item of its own: batches stay what they were
            yield item

    def _frames(self, uri: str, rec_out: list[Any]) -> Iterator[_Item]:
        from featurestore.video import DEFAULT_SAMPLE, iter_frames, parse_sample

        try:
            vid, rec = self._video_id(uri)
        except OSError as exc:
            yield _Item("error", _read_error(uri, exc))
            return
        if rec is not None:
            rec_out.append(rec)
        if isinstance(self.stored, (set, frozenset)):
            stored, version = self.stored, None
        else:
            stored, version = self.stored.of_video(vid)  # one indexed query for all its frames
        frames = iter_frames(uri, self.sample or parse_sample(DEFAULT_SAMPLE), uri=uri, max_pixels=self.max_pixels)
        last_ts: float | None = None
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                return
            except Exception as exc:  # decoding stopped: frames before it are kept
                ts = getattr(exc, "timestamp_s", last_ts)
                yield _Item("error", _error(uri, vid, "decode", exc, timestamp_s=ts))
                return
            last_ts = frame.timestamp_s
            fid = frame_id(vid, frame.pts, frame.time_base)
            label = f"{uri}#t={frame.timestamp_s:.6f}"
            if fid in stored:
                yield _Item("skip", (fid, label), video_id=vid)
                continue
            try:
                pre = self.preprocessor(frame.image)
            except Exception as exc:
                yield _Item("error", _error(uri, fid, "preprocess", exc, timestamp_s=frame.timestamp_s))
                continue
            meta = Meta(fid, uri, frame.image.size, tuple(float(v) for v in pre.crop_box), vid, frame.timestamp_s, frame.frame_index, version)  # type: ignore[arg-type]
            yield _Item("ok", (meta, pre.pixel_values), video_id=vid)


    def _video_id(self, uri: str) -> tuple[str, Any]:
        """(the video file's SHA-256, a stat record to cache when it was hashed here)."""
        from featurestore.statcache import record_for

        if self.stat_cache is None:
            return _file_sha256(uri), None
        known, stats = self.stat_cache.lookup([uri])
        if uri in known:
            return known[uri], None
        vid = _file_sha256(uri)
        st = stats.get(uri)
        return vid, (record_for(uri, st, vid) if st is not None else None)


def _with_last(items: Iterator[_Item]) -> Iterator[_Item]:
    """Mark the final item of a source (one item of lookahead); a source with no items
    at all (a video where nothing was sampled) still counts as finished."""
    prev: _Item | None = None
    for it in items:
        if prev is not None:
            prev.last = False
            yield prev
        prev = it
    if prev is None:
        prev = _Item("skip", None)
    prev.last = True
    yield prev


def collate(items: list[_Item]) -> Batch:
    """Sort items into ok groups (stacked by shape), skips and errors."""
    batch = Batch()
    by_shape: dict[tuple[int, ...], tuple[list[torch.Tensor], list[Meta]]] = {}
    for it in items:
        batch.sources_done += int(it.last)
        if it.stat is not None:
            batch.stat_records.append(it.stat)
        if it.video_id is not None and it.video_id not in batch.video_ids:
            batch.video_ids.append(it.video_id)
        if it.kind == "error":
            batch.errors.append(it.payload)
        elif it.kind == "skip":
            if it.payload is not None:
                batch.skipped.append(it.payload)
        else:
            meta, px = it.payload
            tensors, metas = by_shape.setdefault(tuple(px.shape), ([], []))
            tensors.append(px)
            metas.append(meta)
    for tensors, metas in by_shape.values():
        batch.groups.append(Group(torch.stack(tensors), metas))  # (b, C, H, W)
    return batch


def _worker_init(_: int) -> None:
    # Workers only decode and preprocess; one thread each keeps them off the cores
    # the forward pass uses.
    torch.set_num_threads(1)


def make_loader(dataset: SourceDataset, *, batch_size: int, workers: int, pin_memory: bool) -> DataLoader:
    return DataLoader(
        dataset,
        multiprocessing_context=worker_context() if workers else None,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        worker_init_fn=_worker_init if workers else None,
        prefetch_factor=2 if workers else None,
        persistent_workers=False,
    )
