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

    def __len__(self) -> int:
        return sum(len(g.metas) for g in self.groups) + len(self.skipped) + len(self.errors)

    def pin_memory(self) -> "Batch":
        return Batch([g.pin_memory() for g in self.groups], self.skipped, self.errors, self.sources_done, self.video_ids)


@dataclass
class _Item:
    """One unit from a worker: pixels + meta, a skip, or an error; ``last`` ends its source."""

    kind: str  # "ok" | "skip" | "error"
    payload: Any
    last: bool = True
    video_id: str | None = None  # set on frame items (ok or skip) of a video


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


class SourceDataset(IterableDataset):
    """Image and video files → items; picklable so it runs in worker processes.

    Each worker takes every ``num_workers``-th source. An image is one item; a video is
    one item per sampled frame, decoded as a stream (never the whole video in memory).
    ``stored`` says which ids are stored already (those are not decoded): a
    :class:`featurestore.commit.StoredIds` that asks the table by index, a chunk of
    images (or one video) at a time, or a plain set.
    """

    def __init__(
        self,
        uris: list[str],
        preprocessor: Preprocessor,
        stored: Any,  # featurestore.commit.StoredIds, or a set of ids
        max_pixels: int | None,
        sample: Any = None,  # featurestore.video.SampleSpec for video files
    ):
        self.uris = uris
        self.preprocessor = preprocessor
        self.stored = stored
        self.max_pixels = max_pixels
        self.sample = sample

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
                yield from _with_last(self._video_items(uri))
                continue
            chunk.append(uri)
            if len(chunk) >= CHECK_CHUNK:
                yield from self._image_items(chunk)
                chunk = []
        yield from self._image_items(chunk)

    def _image_items(self, uris: list[str]) -> Iterator[_Item]:
        read: list[tuple[str, bytes, str]] = []
        for uri in uris:
            try:
                data = Path(uri).read_bytes()
            except OSError as exc:
                yield _Item("error", _read_error(uri, exc))
                continue
            read.append((uri, data, content_id(data)))
        if not read:
            return
        stored, version = self._stored([cid for _, _, cid in read])
        while read:
            uri, data, cid = read.pop(0)  # each file's bytes are released once it is done
            yield self._image_item(uri, data, cid, stored, version)

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
        from featurestore.video import DEFAULT_SAMPLE, iter_frames, parse_sample

        try:
            vid = _file_sha256(uri)
        except OSError as exc:
            yield _Item("error", _read_error(uri, exc))
            return
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
