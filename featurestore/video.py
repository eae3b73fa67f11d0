"""Video decoding and frame sampling: a file in, sampled upright RGB frames out, streamed.

Frames are keyed by presentation timestamp (pts), never by a frame counter, so variable
frame rate gives the right frames. "The frame shown at time t" is the last frame whose
time (``pts * time_base``) is <= t, or the first frame when t is before it. Frames come
out in increasing time order, each at most once (two targets that select the same frame
yield it once). Sampling rules (``start`` = time of the first decoded frame):

- ``uniform:N``: the frames shown at ``start + (i + 0.5) * (end - start) / N``,
  i = 0 … N-1, where ``end`` is the end of the video stream per the metadata (stream
  duration, else Matroska's per-track DURATION tag, else the container's duration).
  Without any (e.g. a browser-recorded WebM) one extra pass reads the packets, without
  decoding them, to find the end.
- ``fps:R``: the frames shown at ``start + k / R`` for k = 0, 1, … while before the end
  of the last frame (its time plus duration; the metadata's end if that is later). Not
  the metadata's end alone: MP4 durations of streams with B-frames are measured on the
  dts timeline and can end before the last frame does.
- ``keyframes``: every key frame; non-key frames are not decoded (``skip_frame``).
- ``every:K``: frames 0, K, 2K … in presentation order (a sequential decode).

All times are exact rationals, so a target that equals a frame's time selects that frame.
``Frame.frame_index`` is exact for frames reached by decoding sequentially from the
first frame (``every`` always; ``uniform``/``fps`` until the first seek), else None.

Seeking (``uniform`` and ``fps`` only): decoding everything up to a far target is the
slow part, so the reader jumps when the next target is at least :data:`SEEK_MIN_GAP_S`
past the latest decoded frame and the stream's index (``stream.index_entries``: MP4
sample tables, Matroska cues once loaded) lists a key frame after that frame and at or
before the target, i.e. when decoding on would have to pass that key frame anyway. Without a usable index it jumps only when the target is
more than :data:`SEEK_BLIND_GAP_S` ahead (longer than common key-frame intervals, so a
blind seek rarely lands behind the current position). A seek never changes which frame
is chosen: after ``container.seek(t, backward=True)`` frames are discarded up to the first
key frame K, and the seek counts only if K's time is <= t (then every frame from K on is
decoded, so the last frame <= t is found). Otherwise it retries 1, 2, 4 … s earlier,
then from the current position, then from the start.

Bad input raises the :class:`~featurestore.errors.MediaError` family: a zero-byte file
:class:`EmptyFileError`; something that is not one of the allowed containers
:class:`UnsupportedFormatError`; no video stream (cover art does not count)
:class:`NoVideoStreamError`; frames above ``max_pixels`` :class:`DecompressionBombError`;
an allowed container whose header or index cannot be read (e.g. an MP4 cut before its
``moov`` box) :class:`VideoDecodeError` with ``frames_ok=0``. A decoder error part-way
raises :class:`VideoDecodeError` after the good frames were yielded, with ``timestamp_s``
= time of the last good decoded frame (0.0 if none) and ``frames_ok`` = frames yielded.
FFmpeg often stops at a truncation without any error, so when the packets read end more
than ``max(TRUNCATION_MIN_S, TRUNCATION_FRACTION * duration)`` before the end the
metadata promises, that also raises :class:`VideoDecodeError` (after yielding the frames
that are certain). Containers whose duration is itself measured from the file (MPEG-TS,
MPEG-PS, AVI without index) cannot show truncation this way, and a Matroska demuxer that
resynchronises past damaged bytes drops frames silently.

Rotation: the frame's display matrix (FFmpeg puts the container's, e.g. MP4 ``tkhd``, on
every decoded frame) is applied as ffmpeg/ffplay autorotate does: right angles and flips;
other angles are ignored. It is re-read when ``frame.rotation`` changes, not per frame.

Threads: inside a torch DataLoader worker the decoder and the RGB conversion use one
thread (parallelism comes from the workers); elsewhere at most four. Threads do not
change pixels.
"""

from __future__ import annotations

import itertools
import math
import numbers
import os
import re
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from featurestore.errors import (
    ConfigError,
    DecompressionBombError,
    EmptyFileError,
    MediaError,
    MissingDependencyError,
    NoVideoStreamError,
    ReadError,
    UnsupportedFormatError,
    VideoDecodeError,
)

if TYPE_CHECKING:
    from PIL import Image

VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    {".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".wmv", ".flv", ".3gp"}
)
DEFAULT_SAMPLE = "uniform:8"

# FFmpeg demuxers allowed to open a file (its format_whitelist). Anything else, including
# playlist demuxers (HLS, concat, DASH) that would open further URLs, is refused.
CONTAINERS: tuple[str, ...] = ("mov", "matroska", "avi", "mpeg", "mpegts", "mpegvideo", "asf", "flv")

SEEK_MIN_GAP_S = 0.5  # with an index: skip seeks that would save less than this
SEEK_BLIND_GAP_S = 10.0  # without an index: seek only past gaps longer than a typical GOP
TRUNCATION_MIN_S = 1.0  # "ended early" needs at least this much missing ...
TRUNCATION_FRACTION = 0.02  # ... and this fraction of the duration (audio may outlast video)

VIDEO_DECODE_POLICY: dict[str, Any] = {
    "version": 1,
    "library": "PyAV/FFmpeg",
    "containers": sorted(CONTAINERS),
    "stream": "first video stream that is not an attached picture",
    "conversion": "swscale to rgb24, bilinear, the frame's own matrix and range (untagged: swscale default)",
    "transfer_and_primaries": "not converted",
    "alpha": "dropped",
    "sample_aspect_ratio": "ignored (coded pixels)",
    "rotation": "display matrix as ffmpeg autorotate: right angles and flips; other angles ignored",
    "timestamps": "pts * time_base; frames whose pts does not increase are dropped",
    "frame_at_t": "last frame with time <= t, else the first frame",
    "uniform": "start + (i + 0.5) * (end - start) / N",
    "fps": "start + k / R while before the end of the last frame",
    "keyframes": "frames the decoder marks as key frames",
    "every": "presentation-order index % K == 0",
    "max_pixels": "no limit unless given",
}

_FORMS = (
    "uniform:N (N >= 1 frames spread evenly over the video), fps:R (R > 0 frames per second), "
    "every:K (every K-th frame, K >= 1) or keyframes"
)


def is_video_path(path: str | os.PathLike[str]) -> bool:
    """True when the file name ends in one of :data:`VIDEO_EXTENSIONS` (any case)."""
    return os.path.splitext(os.fspath(path))[1].lower() in VIDEO_EXTENSIONS


@dataclass(frozen=True)
class SampleSpec:
    """Which frames of a video to use; see the module docstring for the exact rules.

    Attributes:
        kind: ``"uniform"``, ``"fps"``, ``"keyframes"`` or ``"every"``.
        value: N for uniform (int >= 1), R for fps (float > 0), K for every (int >= 1),
            None for keyframes.
    """

    kind: str
    value: float | int | None = None

    def __post_init__(self) -> None:
        kind, value = self.kind, self.value
        if kind in ("uniform", "every"):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ConfigError(f"{kind} needs an integer >= 1, got {value!r}; accepted: {_FORMS}")
            object.__setattr__(self, "value", int(value))
        elif kind == "fps":
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
            if not ok or not math.isfinite(value) or value <= 0:  # type: ignore[arg-type]
                raise ConfigError(f"fps needs a number > 0, got {value!r}; accepted: {_FORMS}")
            object.__setattr__(self, "value", float(value))  # type: ignore[arg-type]
        elif kind == "keyframes":
            if value is not None:
                raise ConfigError(f"keyframes takes no value, got {value!r}; accepted: {_FORMS}")
        else:
            raise ConfigError(f"unknown frame sampling kind {kind!r}; accepted: {_FORMS}")

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form, e.g. ``{"kind": "uniform", "value": 8}``."""
        return {"kind": self.kind, "value": self.value}

    def __str__(self) -> str:
        if self.value is None:
            return self.kind
        value = self.value
        if isinstance(value, float):  # 2.0 -> "2", 29.97 -> "29.97" (repr round-trips)
            return f"{self.kind}:{int(value) if value.is_integer() else repr(value)}"
        return f"{self.kind}:{value}"


def parse_sample(text: str) -> SampleSpec:
    """Parse ``"uniform:8"``, ``"fps:2"``, ``"keyframes"`` or ``"every:10"`` (any case).

    Raises:
        ConfigError: Not one of the accepted forms; the message names it and the forms.
    """
    if not isinstance(text, str):
        raise ConfigError(f"frame sampling must be a string such as {DEFAULT_SAMPLE!r}, got {text!r}")
    kind, sep, arg = text.strip().lower().partition(":")
    kind, arg = kind.strip(), arg.strip()
    bad = f"invalid frame sampling {text!r}"
    if kind == "keyframes" and not sep:
        return SampleSpec("keyframes")
    if kind in ("uniform", "every") and re.fullmatch(r"\+?\d+", arg):
        if int(arg) >= 1:
            return SampleSpec(kind, int(arg))
    elif kind == "fps" and arg:
        try:
            rate = float(arg)
        except ValueError:
            rate = math.nan
        if math.isfinite(rate) and rate > 0:
            return SampleSpec("fps", rate)
    if kind not in ("uniform", "fps", "every", "keyframes"):
        raise ConfigError(f"{bad}: unknown kind {kind!r}; accepted: {_FORMS}")
    raise ConfigError(f"{bad}: bad value {arg!r}; accepted: {_FORMS}")


@dataclass
class Frame:
    """One sampled frame.

    Attributes:
        image: RGB image, display rotation applied.
        timestamp_s: Presentation time in seconds, ``pts * time_base`` on the stream's own
            timeline (not shifted to start at 0).
        pts: Presentation timestamp in ``time_base`` units.
        time_base: The stream's time base.
        frame_index: 0-based index in presentation order from the first frame when known
            exactly (sequential decoding); None for frames reached after a seek and for
            ``keyframes`` sampling.
    """

    image: Image.Image
    timestamp_s: float
    pts: int
    time_base: Fraction
    frame_index: int | None


def iter_frames(
    path: str | os.PathLike[str],
    spec: SampleSpec,
    *,
    uri: str | None = None,
    max_pixels: int | None = None,
) -> Iterator[Frame]:
    """Decode the frames ``spec`` selects, lazily, one at a time.

    Args:
        path: The video file.
        spec: What to sample (:func:`parse_sample` makes one from text).
        uri: Name used in error messages; defaults to ``path``.
        max_pixels: Largest width*height accepted; None means no limit.

    Returns:
        A generator of :class:`Frame` in increasing time order. At most one decoded frame
        is held besides the decoder's own buffers; the file is closed when the generator
        finishes or is closed.

    Raises:
        ConfigError: At call time, when ``spec`` or ``max_pixels`` is invalid.
        MediaError: While iterating; see the module docstring for which subclass when.
    """
    if not isinstance(spec, SampleSpec):
        raise ConfigError(f"spec must be a SampleSpec (e.g. parse_sample({DEFAULT_SAMPLE!r})), got {spec!r}")
    if max_pixels is not None and (
        isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels <= 0
    ):
        raise ConfigError(f"max_pixels must be a positive integer or None, got {max_pixels!r}")
    path = os.fspath(path)
    return _generate(path, spec, path if uri is None else uri, max_pixels)


def _generate(path: str, spec: SampleSpec, uri: str, max_pixels: int | None) -> Iterator[Frame]:
    _check_file(path, uri)
    reader = _Reader(path, uri, max_pixels, keyframes_only=spec.kind == "keyframes")
    try:
        if spec.kind == "every":
            yield from reader.every(int(spec.value))  # type: ignore[arg-type]
        elif spec.kind == "keyframes":
            yield from reader.keyframes()
        else:
            yield from reader.at_times(spec)
    finally:
        reader.close()


def _targets(spec: SampleSpec, start: Fraction, end: Fraction | None) -> Iterator[Fraction]:
    """Target times in seconds, exact: fps's repr() is the rate the user wrote (29.97)."""
    if spec.kind == "uniform":
        n = int(spec.value)  # type: ignore[arg-type]
        return (start + Fraction(2 * i + 1, 2 * n) * (end - start) for i in range(n))  # type: ignore[operator]
    rate = Fraction(repr(spec.value))
    return (start + k / rate for k in itertools.count())  # ends with the stream


class _Reader:
    """One open video stream: decoding, seeking, RGB conversion and what errors report.

    Positions and targets are in the stream's pts units (exact ``Fraction``s).
    """

    def __init__(self, path: str, uri: str, max_pixels: int | None, *, keyframes_only: bool):
        self.av = _import_av()
        self.path, self.uri, self.max_pixels = path, uri, max_pixels
        self.keyframes_only = keyframes_only
        self.threads = _decode_threads()
        self.yielded = 0  # frames handed out: VideoDecodeError.frames_ok
        self.decoded = 0
        self.last_good: int | None = None  # pts of the latest good decoded frame
        self.data_end: Fraction | None = None  # end of the latest packet read, pts units
        self._rotation: object = None  # display rotation the cached ops were made for
        self._ops: list[int] = []
        self._open()

    def _open(self) -> None:
        try:
            # "file:" so FFmpeg never reads the path as a protocol ("concat:…", "C:\\…").
            self.container = self.av.open(
                "file:" + os.path.abspath(self.path),
                container_options={"format_whitelist": ",".join(CONTAINERS), "protocol_whitelist": "file"},
                metadata_errors="replace",
            )
        except MemoryError:
            raise
        except Exception as exc:  # av raises FFmpegError subclasses, OSError, ValueError ...
            raise _open_error(self.path, self.uri, exc) from exc
        try:
            self._select_stream()
        except BaseException:
            self.container.close()
            raise

    def _select_stream(self) -> None:
        attached = self.av.stream.Disposition.attached_pic
        streams = [s for s in self.container.streams.video if not s.disposition & attached]
        if not streams:
            kinds = sorted({s.type for s in self.container.streams}) or ["no"]
            raise NoVideoStreamError(
                self.uri,
                f"no video stream (only {', '.join(kinds)} streams, e.g. an audio file). "
                "Fix: remove it from the sources, or pass the video it belongs to",
            )
        stream = streams[0]
        try:
            cc = stream.codec_context
        except Exception:
            cc = None
        if cc is None or stream.time_base is None:
            raise UnsupportedFormatError(self.uri, "the video codec has no decoder in this FFmpeg build. Fix: re-encode to H.264")
        if self.max_pixels is not None and cc.width * cc.height > self.max_pixels:
            raise _bomb_error(self.uri, cc.width, cc.height, self.max_pixels)
        cc.thread_type = "AUTO"
        cc.thread_count = self.threads
        if self.keyframes_only:
            cc.skip_frame = "NONKEY"  # the decoder drops non-key frames without decoding them
        self.stream, self.tb = stream, Fraction(stream.time_base)
        rate = stream.average_rate or stream.guessed_rate
        self.step = 1 / (Fraction(rate) * self.tb) if rate else Fraction(0)  # pts per frame
        self.end = _metadata_end(self.container, stream)  # seconds, or None

    def close(self) -> None:
        try:
            self.container.close()
        except Exception:  # closing a damaged file must not hide the real error
            pass

    # --- decoding ---------------------------------------------------------------

    def frames(self) -> Iterator[tuple[Any, int]]:
        """(frame, pts) in presentation order from the current position; av errors -> fault."""
        demux = self.container.demux(self.stream)
        last: int | None = None
        while True:
            try:
                packet = next(demux, None)
                if packet is None:
                    return
                ts = packet.pts if packet.pts is not None else packet.dts
                if ts is not None:
                    end = ts + (packet.duration or self.step)
                    self.data_end = end if self.data_end is None else max(self.data_end, end)
                decoded = packet.decode()
            except (MemoryError, MediaError):
                raise
            except Exception as exc:
                raise self.fault(f"decoding failed ({type(exc).__name__}: {exc})") from exc
            for frame in decoded:
                pts = frame.pts
                if pts is None:  # no timestamp: continue the timeline by one frame
                    pts = 0 if last is None else last + int(frame.duration or self.step or 1)
                if frame.is_corrupt:
                    raise self.fault(f"the decoder marked the frame at {float(pts * self.tb):.3f} s as corrupt")
                if self.max_pixels is not None and frame.width * frame.height > self.max_pixels:
                    raise _bomb_error(self.uri, frame.width, frame.height, self.max_pixels)
                self.decoded += 1
                self.last_good = pts if self.last_good is None else max(self.last_good, pts)
                last = pts
                yield frame, pts

    def emit(self, frame: Any, pts: int, index: int | None) -> Frame:
        """Convert one decoded frame to an upright RGB :class:`Frame` and count it."""
        try:
            image = frame.to_image(interpolation="BILINEAR", threads=self.threads)
        except MemoryError:
            raise
        except Exception as exc:
            raise UnsupportedFormatError(
                self.uri, f"frames in pixel format {frame.format.name} cannot be converted to RGB ({exc})"
            ) from exc
        for op in self._orientation(frame):
            image = image.transpose(op)
        self.yielded += 1
        return Frame(image, float(pts * self.tb), int(pts), self.tb, index)

    def _orientation(self, frame: Any) -> list[int]:
        """Transpose ops for the frame's display matrix, re-read only when its angle changes.

        ``frame.side_data`` makes a reference cycle with the frame in PyAV 18, so reading
        it for every frame keeps each decoded frame alive until a full garbage collection
        (hundreds of MB on a long 720p video); ``frame.rotation`` does not.
        """
        rotation = getattr(frame, "rotation", 0)
        if rotation != self._rotation:
            matrix = frame.side_data.get("DISPLAYMATRIX")
            self._ops = _display_transpose(bytes(matrix)) if matrix is not None else []
            self._rotation = rotation
        return self._ops

    def fault(self, what: str) -> VideoDecodeError:
        at = 0.0 if self.last_good is None else float(self.last_good * self.tb)
        return VideoDecodeError(
            self.uri,
            f"{what}; last good frame at {at:.3f} s, {self.yielded} sampled frames produced before it. "
            "The file is probably truncated or corrupt. Fix: re-download or re-export the video",
            timestamp_s=at,
            frames_ok=self.yielded,
        )

    def check_complete(self) -> None:
        """At the end of the stream: raise if nothing decoded or the data ended early."""
        if self.decoded == 0:
            raise self.fault("no video frame could be decoded")
        missing = self.missing_s()
        if missing is not None:
            raise self.fault(
                f"the video data ends {float(missing):.2f} s before the {float(self.end):.2f} s "  # type: ignore[arg-type]
                "its metadata promises (decoding stopped early without an error)"
            )

    def missing_s(self) -> Fraction | None:
        """Seconds of promised video the packets never reached, if beyond the tolerance."""
        if self.end is None or self.data_end is None:
            return None
        start = Fraction(self.stream.start_time or 0) * self.tb
        missing = self.end - self.data_end * self.tb
        tolerance = max(Fraction(TRUNCATION_MIN_S), Fraction(repr(TRUNCATION_FRACTION)) * (self.end - start))
        return missing if missing > tolerance else None

    # --- sampling -----------------------------------------------------------------

    def every(self, k: int) -> Iterator[Frame]:
        index, last = 0, None
        for frame, pts in self.frames():
            if last is not None and pts <= last:
                continue
            last = pts
            if index % k == 0:
                yield self.emit(frame, pts, index)
            index += 1
        self.check_complete()

    def keyframes(self) -> Iterator[Frame]:
        last = None
        for frame, pts in self.frames():
            # key_frame check too: some decoders ignore skip_frame
            if frame.key_frame and (last is None or pts > last):
                last = pts
                yield self.emit(frame, pts, None)
        self.check_complete()

    def at_times(self, spec: SampleSpec) -> Iterator[Frame]:
        """Yield the frame shown at each target time (uniform, fps)."""
        if spec.kind == "uniform" and self.end is None:
            self.end = self._scan_end()
        frames = self.frames()
        first = next(frames, None)
        if first is None:
            self.check_complete()  # raises: nothing decoded
            return
        prev, prev_pts = first
        start_pts, prev_index, counting = prev_pts, 0, True
        targets = (t / self.tb for t in _targets(spec, prev_pts * self.tb, self.end))
        t = next(targets, None)
        done_pts, check_seek = None, True
        while t is not None:
            if check_seek and self._should_seek(prev_pts, t):
                frames, counting = self._seek(t, prev_pts, start_pts), False
            check_seek = False
            item = next(frames, None)
            if item is None:
                break
            frame, pts = item
            if pts <= prev_pts:  # already passed (after a seek), or pts not increasing
                continue
            while t is not None and pts > t:  # prev is the last frame <= t
                if prev_pts != done_pts:
                    yield self.emit(prev, prev_pts, prev_index)
                    done_pts = prev_pts
                t, check_seek = next(targets, None), True
            prev, prev_pts = frame, pts
            prev_index = prev_index + 1 if counting and prev_index is not None else None
        if t is None:
            return
        # The stream ended: the last frame is shown until the end of the video, or only
        # for its own duration when the data ended early.
        shown_until = prev_pts + (prev.duration or self.step)
        if self.end is not None and self.missing_s() is None:
            shown_until = max(shown_until, self.end / self.tb)
        if t < shown_until and prev_pts != done_pts:
            yield self.emit(prev, prev_pts, prev_index)
        self.check_complete()

    def _scan_end(self) -> Fraction:
        """End of the video from its packets (no decoding), then back to the start."""
        end = None
        try:
            for packet in self.container.demux(self.stream):
                ts = packet.pts if packet.pts is not None else packet.dts
                if ts is not None:
                    stop = ts + (packet.duration or self.step)
                    end = stop if end is None else max(end, stop)
        except (MemoryError, MediaError):
            raise
        except Exception as exc:
            raise self.fault(f"reading packets failed ({type(exc).__name__}: {exc})") from exc
        self.container.close()
        self._open()  # a fresh demuxer: seeking back to 0 is not exact in every format
        if end is None:
            raise VideoDecodeError(
                self.uri,
                "the video has no duration in its metadata and its packets no timestamps, so "
                "uniform:N cannot place its frames. Fix: sample with fps:R or every:K",
            )
        return Fraction(end) * self.tb

    def _should_seek(self, pos: int, target: Fraction) -> bool:
        """The seeking rule of the module docstring."""
        gap_s = (target - pos) * self.tb
        if gap_s < Fraction(repr(SEEK_MIN_GAP_S)):
            return False
        try:
            entries = self.stream.index_entries
            n = len(entries)
        except Exception:
            n = 0
        if n < 2:  # no index (yet): Matroska loads its cues on the first seek
            return gap_s > SEEK_BLIND_GAP_S
        lo, hi = 0, n  # index timestamps are sorted; find the last one <= target
        while lo < hi:
            mid = (lo + hi) // 2
            if entries[mid].timestamp <= target:
                lo = mid + 1
            else:
                hi = mid
        for j in range(lo - 1, max(lo - 1 - _INDEX_WALK, -1), -1):
            entry = entries[j]
            if entry.timestamp <= pos:
                return False
            if entry.is_keyframe:
                return True
        return lo > _INDEX_WALK  # a long stretch without key frames: let a seek find one

    def _seek(self, target: Fraction, pos: int, start: int) -> Iterator[tuple[Any, int]]:
        """Frames from a key frame at or before ``target`` on (see the module docstring)."""
        offsets, back, second = [], Fraction(0), 1 / self.tb
        while target - back > pos:
            offsets.append(target - back)
            back = second if back == 0 else 2 * back
        for offset in [*offsets, Fraction(pos), Fraction(start)]:
            try:
                self.container.seek(math.floor(offset), stream=self.stream, backward=True)
            except (MemoryError, MediaError):
                raise
            except Exception:  # a seek the demuxer refuses: try earlier
                continue
            frames = self.frames()
            for frame, pts in frames:
                if frame.key_frame:
                    break
            else:
                continue  # nothing decodable after this point (e.g. truncated data)
            if pts <= target:
                return itertools.chain([(frame, pts)], frames)
        raise self.fault(f"no key frame found at or before {float(target * self.tb):.3f} s")


_INDEX_WALK = 2000  # index entries inspected backwards from a target for a key frame


def _metadata_end(container: Any, stream: Any) -> Fraction | None:
    """End time (s) of the video stream per metadata: stream, Matroska tag, container."""
    tb = Fraction(stream.time_base)
    start = Fraction(stream.start_time or 0) * tb
    if stream.duration:
        return start + Fraction(stream.duration) * tb
    for key, value in stream.metadata.items():  # Matroska writes DURATION per track
        found = re.fullmatch(r"(\d+):(\d\d):(\d\d(?:\.\d+)?)", value.strip()) if key.upper().startswith("DURATION") else None
        if found:
            return start + int(found[1]) * 3600 + int(found[2]) * 60 + Fraction(found[3])
    if container.duration:
        return Fraction((container.start_time or 0) + container.duration, 1_000_000)
    return None


def _check_file(path: str, uri: str) -> None:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ReadError(uri, f"cannot read the file ({exc.strerror or exc}). Fix: check the path and permissions") from exc
    if not os.path.isfile(path):
        raise ReadError(uri, "not a regular file (a directory?). Fix: pass the path of a video file")
    if st.st_size == 0:
        raise EmptyFileError(uri, "file is empty (0 bytes)")


def _import_av() -> Any:
    """``import av`` with an install hint when PyAV is missing."""
    try:
        import av
    except ImportError as exc:
        raise MissingDependencyError("av", "Decoding video", "pip install av") from exc
    return av


def _decode_threads() -> int:
    """1 inside a torch DataLoader worker (the workers are the parallelism), else <= 4."""
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            from torch.utils.data import get_worker_info

            if get_worker_info() is not None:
                return 1
        except Exception:  # an odd torch build must not stop decoding
            pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


# Leading bytes of the allowed containers, to tell "a damaged video" from "not a video".
_VIDEO_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"ftyp", 4, "an MP4/QuickTime file"),
    (b"moov", 4, "an MP4/QuickTime file"),
    (b"mdat", 4, "an MP4/QuickTime file"),
    (b"\x1a\x45\xdf\xa3", 0, "a Matroska/WebM file"),
    (b"AVI ", 8, "an AVI file"),
    (b"\x30\x26\xb2\x75\x8e\x66\xcf\x11", 0, "an ASF/WMV file"),
    (b"FLV", 0, "an FLV file"),
    (b"\x00\x00\x01\xba", 0, "an MPEG program stream"),
)


def _open_error(path: str, uri: str, exc: BaseException) -> MediaError:
    """Name why FFmpeg could not open ``path``: a damaged video, or not a video at all."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError as read_exc:
        return ReadError(uri, f"cannot read the file ({read_exc.strerror or read_exc})")
    detail = f"{type(exc).__name__}: {exc}"
    for magic, offset, looks_like in _VIDEO_MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return VideoDecodeError(
                uri,
                f"{looks_like} whose header or index cannot be read ({detail}); it is probably "
                "truncated (an interrupted download or recording) or corrupt. Fix: re-download "
                "or re-export the video",
            )
    if len(head) > 188 and head[0] == 0x47 and head[188] == 0x47:  # MPEG-TS sync bytes
        return VideoDecodeError(uri, f"an MPEG-TS file that cannot be read ({detail}). Fix: re-export it")
    from featurestore.media import _sniff  # unknown bytes described as for images

    looks_like, _ = _sniff(head)
    return UnsupportedFormatError(
        uri,
        f"not a video container that can be read (looks like {looks_like}); readable: "
        f"{', '.join(CONTAINERS)} (FFmpeg demuxers). Fix: convert it, e.g. "
        "`ffmpeg -i INPUT -c:v libx264 OUTPUT.mp4`",
    )


def _bomb_error(uri: str, width: int, height: int, limit: int) -> DecompressionBombError:
    return DecompressionBombError(
        uri,
        f"video frames are {width}x{height} = {width * height:,} pixels, more than max_pixels "
        f"= {limit:,}; if the video is trusted, pass a larger max_pixels",
    )


# FFmpeg's display matrix is 9 int32 (16.16 fixed point for a, b, c, d).
_DISPLAYMATRIX = struct.Struct("=9i")


def _display_transpose(matrix_bytes: bytes) -> list[int]:
    """PIL ``Image.Transpose`` ops that show a frame as ffmpeg/ffplay autorotate would.

    Mirrors the autorotate rules of ffmpeg's filter setup: theta is the clockwise angle
    ``-round(av_display_rotation_get(m))`` in [0, 360); 90 -> transpose "clock" (or
    "cclock_flip" when m[3] > 0), 270 -> "cclock" (or "clock_flip" when m[3] < 0),
    180 -> hflip if m[0] < 0 and vflip if m[4] < 0, 0 -> vflip if m[4] < 0. Other angles
    (ffmpeg would rotate with black corners) are left alone.
    """
    from PIL import Image

    m = _DISPLAYMATRIX.unpack(matrix_bytes)
    scale0, scale1 = math.hypot(m[0], m[3]), math.hypot(m[1], m[4])
    if scale0 == 0 or scale1 == 0:
        return []
    theta = -round(-math.degrees(math.atan2(m[1] / scale1, m[0] / scale0)))
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
    T = Image.Transpose
    if abs(theta - 90) < 1:
        return [T.TRANSPOSE if m[3] > 0 else T.ROTATE_270]  # cclock_flip / clock
    if abs(theta - 270) < 1:
        return [T.TRANSVERSE if m[3] < 0 else T.ROTATE_90]  # clock_flip / cclock
    ops = []
    if abs(theta - 180) < 1 and m[0] < 0:
        ops.append(T.FLIP_LEFT_RIGHT)
    if (abs(theta - 180) < 1 or abs(theta) < 1) and m[4] < 0:
        ops.append(T.FLIP_TOP_BOTTOM)
    return ops
