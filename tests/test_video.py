"""featurestore.video on real files written by PyAV (featurestore.testing.write_video).

Every test frame shows its own number (video_frame_pattern), so which frame came back is
checked by content, not only by timestamp. References come from a plain sequential PyAV
decode of the same file.
"""

from __future__ import annotations

import gc
import json
import types
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from featurestore.errors import (
    ConfigError,
    DecompressionBombError,
    EmptyFileError,
    MediaError,
    NoVideoStreamError,
    ReadError,
    UnsupportedFormatError,
    VideoDecodeError,
)
from featurestore.testing import (
    read_frame_pattern,
    video_frame_pattern,
    write_audio_only,
    write_video,
)
from featurestore.video import (
    DEFAULT_SAMPLE,
    VIDEO_DECODE_POLICY,
    VIDEO_EXTENSIONS,
    Frame,
    SampleSpec,
    is_video_path,
    iter_frames,
    parse_sample,
)


def reference(path: Path) -> tuple[list[tuple[Fraction, int]], Fraction, Fraction]:
    """A plain sequential PyAV decode: every frame's (time, pattern number), the stream's
    end per metadata, and the end of the last frame (its time + duration)."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        frames, last_end = [], Fraction(0)
        for f in c.decode(s):
            frames.append((Fraction(f.pts) * s.time_base, read_frame_pattern(f.to_image())))
            last_end = Fraction(f.pts + f.duration) * s.time_base
        if s.duration:
            end = Fraction(s.start_time or 0) * s.time_base + Fraction(s.duration) * s.time_base
        elif "DURATION" in s.metadata:
            h, m, sec = s.metadata["DURATION"].split(":")
            end = int(h) * 3600 + int(m) * 60 + Fraction(sec)
        else:
            end = Fraction(c.duration, 1_000_000)
    return frames, end, last_end


def targets_of(sample: str, start: Fraction, end: Fraction, last_end: Fraction) -> list[Fraction]:
    """The module docstring's target times, computed independently."""
    spec = parse_sample(sample)
    if spec.kind == "uniform":
        return [start + Fraction(2 * i + 1, 2 * spec.value) * (end - start) for i in range(spec.value)]
    rate = Fraction(repr(spec.value))
    return [start + k / rate for k in range(int((last_end - start) * rate) + 2) if start + k / rate < last_end]


def shown_at(ref: list[tuple[Fraction, int]], targets: list[Fraction]) -> list[tuple[Fraction, int]]:
    """The last frame with time <= t for each target, each frame once, in order."""
    picks: list[tuple[Fraction, int]] = []
    for t in targets:
        before = [f for f in ref if f[0] <= t]
        pick = before[-1] if before else ref[0]
        if pick not in picks:
            picks.append(pick)
    return picks


def run(path: Path, sample: str, **kw) -> list[tuple[Fraction, int, int | None]]:
    """(time, pattern number, frame_index) of what iter_frames yields."""
    out = []
    for f in iter_frames(path, parse_sample(sample), **kw):
        assert f.image.mode == "RGB"
        assert Fraction(f.pts) * f.time_base == Fraction(f.timestamp_s).limit_denominator(10**9)
        out.append((Fraction(f.pts) * f.time_base, read_frame_pattern(f.image), f.frame_index))
    return out


# --- names and parsing ---------------------------------------------------------------


def test_is_video_path() -> None:
    assert {".mp4", ".mkv", ".webm", ".mov", ".avi", ".ts"} <= VIDEO_EXTENSIONS
    assert is_video_path("a/b/Clip.MP4") and is_video_path(Path("x.webm")) and is_video_path("y.3gp")
    assert not is_video_path("photo.jpg") and not is_video_path("mp4") and not is_video_path("a.mp4.txt")


@pytest.mark.parametrize(
    ("text", "kind", "value", "shown"),
    [
        ("uniform:8", "uniform", 8, "uniform:8"),
        (" Uniform : 3 ", "uniform", 3, "uniform:3"),
        ("fps:2", "fps", 2.0, "fps:2"),
        ("FPS:0.5", "fps", 0.5, "fps:0.5"),
        ("fps:29.97", "fps", 29.97, "fps:29.97"),
        ("keyframes", "keyframes", None, "keyframes"),
        ("every:10", "every", 10, "every:10"),
    ],
)
def test_parse_sample_valid(text: str, kind: str, value: float | None, shown: str) -> None:
    spec = parse_sample(text)
    assert spec == SampleSpec(kind, value)
    assert type(spec.value) is type(value)
    assert str(spec) == shown and parse_sample(str(spec)) == spec
    assert json.loads(json.dumps(spec.as_dict())) == {"kind": kind, "value": value}


@pytest.mark.parametrize(
    "text",
    ["", "uniform", "uniform:0", "uniform:2.5", "uniform:-1", "uniform:8:9", "fps:0", "fps:-2",
     "fps:nan", "fps:inf", "fps:", "fps:abc", "keyframes:2", "every:0", "every:x", "random:3"],
)
def test_parse_sample_invalid(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_sample(text)
    assert repr(text) in str(info.value) and "uniform:N" in str(info.value) and "fps:R" in str(info.value)


def test_sample_spec_validates_and_iter_frames_checks_arguments(tmp_path: Path) -> None:
    for kind, value in [("uniform", 0), ("every", 2.0), ("fps", True), ("fps", -1), ("keyframes", 3), ("all", None)]:
        with pytest.raises(ConfigError):
            SampleSpec(kind, value)
    assert parse_sample(DEFAULT_SAMPLE) == SampleSpec("uniform", 8)
    with pytest.raises(ConfigError, match="SampleSpec"):
        iter_frames(tmp_path / "a.mp4", "uniform:8")  # type: ignore[arg-type]
    for bad in (0, -5, True, 2.5):
        with pytest.raises(ConfigError, match="max_pixels"):
            iter_frames(tmp_path / "a.mp4", parse_sample("every:1"), max_pixels=bad)  # type: ignore[arg-type]
    json.dumps(VIDEO_DECODE_POLICY)


# --- constant frame rate: exact frames -----------------------------------------------


@pytest.fixture(scope="module")
def cfr(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """30 frames at 10 fps, key frame every 10, in three containers / two codecs."""
    d = tmp_path_factory.mktemp("cfr")
    return {
        "mp4-h264": write_video(d / "a.mp4", n_frames=30, gop=10),
        "mkv-h264": write_video(d / "a.mkv", n_frames=30, gop=10),
        "avi-mpeg4": write_video(d / "a.avi", n_frames=30, gop=10, codec="mpeg4"),
    }


@pytest.mark.parametrize("name", ["mp4-h264", "mkv-h264", "avi-mpeg4"])
@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        ("uniform:4", [3, 11, 18, 26]),  # t = 0.375, 1.125, 1.875, 2.625 over 3.0 s
        ("uniform:1", [15]),
        ("uniform:15", list(range(1, 30, 2))),  # t = 0.1, 0.3 … exactly (0.3 as a float is < 0.3)
        ("uniform:60", list(range(30))),  # two targets per frame, each frame once
        ("fps:2", [0, 5, 10, 15, 20, 25]),
        ("fps:3", [0, 3, 6, 10, 13, 16, 20, 23, 26]),  # k/3 exactly: 1.0 s is frame 10, not 9
        ("fps:100", list(range(30))),
        ("every:7", [0, 7, 14, 21, 28]),
        ("every:1", list(range(30))),
        ("keyframes", [0, 10, 20]),
    ],
)
def test_cfr_frames_are_exact(cfr: dict[str, Path], name: str, sample: str, expected: list[int]) -> None:
    got = run(cfr[name], sample)
    assert [n for _, n, _ in got] == expected  # by content
    assert [t for t, _, _ in got] == [Fraction(i, 10) for i in expected]  # by timestamp
    indices = [i for _, _, i in got]
    if sample.startswith("every"):
        assert indices == expected
    elif sample == "keyframes":
        assert indices == [None] * len(expected)
    else:  # exact until the first seek, None after it
        assert all(i is None or i == n for i, n in zip(indices, expected))


def test_cfr_with_audio_stream_and_frame_fields(tmp_path: Path) -> None:
    path = write_video(tmp_path / "av.mp4", n_frames=20, audio=True)
    frames = list(iter_frames(path, parse_sample("uniform:2")))
    assert [read_frame_pattern(f.image) for f in frames] == [5, 15]
    f = frames[0]
    assert isinstance(f, Frame) and isinstance(f.time_base, Fraction) and f.image.size == (64, 48)
    assert f.timestamp_s == pytest.approx(0.5) and f.pts * f.time_base == Fraction(1, 2) and f.frame_index == 5


def test_single_frame_video(tmp_path: Path) -> None:
    path = write_video(tmp_path / "one.mp4", n_frames=1)
    for sample in ("uniform:8", "fps:30", "every:4", "keyframes"):
        assert [n for _, n, _ in run(path, sample)] == [0], sample


# --- variable frame rate ----------------------------------------------------------


VFR_MS = [0, 100, 150, 400, 410, 1000, 1020, 1500]


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_vfr_frame_shown_at_each_target(tmp_path: Path, suffix: str) -> None:
    path = write_video(tmp_path / f"vfr{suffix}", n_frames=len(VFR_MS), vfr_pts=VFR_MS)
    ref, end, last_end = reference(path)
    assert [t for t, _ in ref] == [Fraction(ms, 1000) for ms in VFR_MS]
    # fps:4 -> 0, .25, .5, .75, 1.0, 1.25, 1.5: .5 and .75 both show frame 4 (0.41 s), 1.0 is frame 5
    got = run(path, "fps:4")
    assert [n for _, n, _ in got] == [0, 2, 4, 5, 6, 7]
    assert [t for t, _, _ in got] == [Fraction(VFR_MS[i], 1000) for i in [0, 2, 4, 5, 6, 7]]
    assert [i for _, _, i in got] == [0, 2, 4, 5, 6, 7]
    # uniform spreads over the metadata's duration (MP4 reports 1.25 s here: dts-based)
    targets = targets_of("uniform:5", ref[0][0], end, last_end)
    assert [(t, n) for t, n, _ in run(path, "uniform:5")] == shown_at(ref, targets)
    assert [n for _, n, _ in run(path, "every:3")] == [0, 3, 6]


# --- seeking -------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 s at 30 fps, key frame every 15 frames, B-frames (pts != dts)."""
    return write_video(tmp_path_factory.mktemp("long") / "long.mp4", n_frames=600, fps=30, gop=15)


@pytest.mark.parametrize(
    ("sample", "seeks"), [("uniform:9", True), ("fps:0.7", True), ("fps:1.9", True), ("fps:1", True), ("fps:7", False)]
)
def test_seeking_matches_sequential_decode(long_clip: Path, sample: str, seeks: bool) -> None:
    ref, end, last_end = reference(long_clip)
    got = run(long_clip, sample)
    assert [(t, n) for t, n, _ in got] == shown_at(ref, targets_of(sample, ref[0][0], end, last_end))
    assert any(i is None for _, _, i in got) == seeks  # targets >= 0.5 s apart seek
    assert all(i is None or i == n for _, n, i in got)


def test_seeking_on_vfr_and_without_index(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    pts = np.cumsum(rng.integers(20, 400, size=240)).tolist()  # irregular gaps, ~50 s
    vfr = write_video(tmp_path / "vfr_long.mp4", n_frames=240, vfr_pts=pts, gop=8)
    # Matroska has no index until its cues are read at the first seek: the blind rule applies.
    mkv = write_video(tmp_path / "blind.mkv", n_frames=300, fps=5, gop=10)
    for path, samples in [(vfr, ["fps:0.5", "fps:1", "uniform:5"]), (mkv, ["uniform:3", "fps:0.08"])]:
        ref, end, last_end = reference(path)
        for sample in samples:
            got = run(path, sample)
            assert [(t, n) for t, n, _ in got] == shown_at(ref, targets_of(sample, ref[0][0], end, last_end)), (path.name, sample)
            assert got[-1][2] is None, (path.name, sample)  # the last frame was reached by seeking


def test_uniform_without_duration_metadata(tmp_path: Path) -> None:
    path = write_video(tmp_path / "live.mkv", n_frames=30, container_options={"live": "1"})
    with av.open(str(path)) as c:
        assert c.duration is None and c.streams.video[0].duration is None
    assert [n for _, n, _ in run(path, "uniform:3")] == [5, 15, 25]  # end found from packets: 3.0 s
    assert [n for _, n, _ in run(path, "fps:2")] == [0, 5, 10, 15, 20, 25]


def test_iter_frames_is_lazy(tmp_path: Path) -> None:
    # The file breaks at 70 %: a lazy reader hands out the first frame without touching it.
    full = write_video(tmp_path / "full.mp4", n_frames=300, gop=30, faststart=True).read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(full[: int(len(full) * 0.7)])
    gen = iter_frames(path, parse_sample("every:1"))
    assert isinstance(gen, types.GeneratorType)
    assert read_frame_pattern(next(gen).image) == 0
    gen.close()
    with pytest.raises(VideoDecodeError):
        list(iter_frames(path, parse_sample("every:1")))


def test_frames_are_freed_without_the_cycle_collector(tmp_path: Path) -> None:
    # A reference cycle per frame would keep every decoded frame alive until a full
    # collection: hundreds of MB on a long 720p video.
    path = write_video(tmp_path / "a.mp4", n_frames=60, rotation=90)
    gc.collect()
    gc.disable()
    try:
        n = sum(1 for _ in iter_frames(path, parse_sample("every:1")))
        n += sum(1 for _ in iter_frames(path, parse_sample("fps:4")))
        cyclic = gc.collect()
    finally:
        gc.enable()
    assert n == 60 + 24
    assert cyclic < 30  # a few objects per file, not per frame


# --- rotation ------------------------------------------------------------------


@pytest.mark.parametrize(("rotation", "hflip"), [(None, False), (90, False), (-90, False), (180, False), (90, True), (0, True)])
def test_display_rotation_is_applied(tmp_path: Path, rotation: int | None, hflip: bool) -> None:
    path = write_video(tmp_path / "rot.mp4", n_frames=3, rotation=rotation, hflip=hflip)
    expected = np.rot90(video_frame_pattern(2), k=(rotation or 0) // 90)  # counter-clockwise
    if hflip:
        expected = expected[:, ::-1]
    frame = list(iter_frames(path, parse_sample("every:1")))[2]
    got = np.asarray(frame.image, dtype=np.int16)
    assert got.shape == expected.shape
    assert np.abs(got - expected).mean() < 8  # near-lossless encode; a wrong turn differs by ~100


# --- bad input -----------------------------------------------------------------


def _cut(src: Path, dst: Path, fraction: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_truncated_video_yields_good_frames_then_raises(tmp_path: Path, suffix: str) -> None:
    # MP4 with its index first (faststart) fails in the decoder; Matroska just stops early.
    src = write_video(tmp_path / f"full{suffix}", n_frames=200, gop=20, faststart=suffix == ".mp4")
    path = _cut(src, tmp_path / f"cut{suffix}", 0.6)
    for sample, most in (("every:1", 200), ("uniform:8", 7), ("fps:1", 19)):
        got = []
        with pytest.raises(VideoDecodeError) as info:
            for f in iter_frames(path, parse_sample(sample)):
                got.append(f)
        err = info.value
        assert 0 < len(got) == err.frames_ok <= most, sample
        assert all(read_frame_pattern(f.image) == round(f.timestamp_s * 10) for f in got)
        assert got[-1].timestamp_s <= err.timestamp_s < 20 * 0.75
        assert str(path) in str(err) and "truncated" in str(err)


def test_mp4_cut_before_its_index(tmp_path: Path) -> None:
    path = _cut(write_video(tmp_path / "full.mp4", n_frames=60), tmp_path / "cut.mp4", 0.6)
    with pytest.raises(VideoDecodeError) as info:
        next(iter_frames(path, parse_sample("uniform:8")))
    assert info.value.frames_ok == 0 and info.value.timestamp_s == 0.0
    assert "MP4" in str(info.value) and "truncated" in str(info.value)


def test_corrupt_bytes_mid_stream(tmp_path: Path) -> None:
    src = write_video(tmp_path / "full.mp4", n_frames=200, gop=20, faststart=True)
    data = bytearray(src.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 400] = np.random.default_rng(0).integers(0, 256, 400, dtype=np.uint8).tobytes()
    path = tmp_path / "corrupt.mp4"
    path.write_bytes(bytes(data))
    got = []
    with pytest.raises(VideoDecodeError) as info:
        for f in iter_frames(path, parse_sample("every:1")):
            got.append(f)
    assert 0 < len(got) == info.value.frames_ok < 200
    assert [read_frame_pattern(f.image) for f in got] == list(range(len(got)))  # no garbage frames
    assert info.value.timestamp_s == pytest.approx(got[-1].timestamp_s)


def test_inputs_that_are_not_videos(tmp_path: Path) -> None:
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n" * 50)
    playlist = tmp_path / "playlist.mp4"  # HLS would fetch the URL; the demuxer is not allowed
    playlist.write_text("#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nhttp://127.0.0.1:9/x.ts\n#EXT-X-ENDLIST\n")
    audio = write_audio_only(tmp_path / "speech.mp4")
    cases = [
        (empty, EmptyFileError),
        (text, UnsupportedFormatError),
        (playlist, UnsupportedFormatError),
        (audio, NoVideoStreamError),
        (tmp_path / "missing.mp4", ReadError),
        (tmp_path, ReadError),
    ]
    messages = {}
    for path, error in cases:
        with pytest.raises(error) as info:
            list(iter_frames(path, parse_sample("uniform:8"), uri=f"s3://bucket/{path.name}"))
        err = info.value
        assert isinstance(err, MediaError) and err.uri == f"s3://bucket/{path.name}"
        assert str(err).startswith(err.uri)
        messages[path.name] = str(err)
    assert "looks like text" in messages["notes.mp4"] and "Fix" in messages["notes.mp4"]
    assert "no video stream" in messages["speech.mp4"] and "Fix" in messages["speech.mp4"]
    assert "0 bytes" in messages["empty.mp4"]


def test_path_is_not_read_as_an_ffmpeg_protocol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_video(tmp_path / "concat:clip.mp4", n_frames=3)
    monkeypatch.chdir(tmp_path)
    assert [n for _, n, _ in run(Path("concat:clip.mp4"), "every:1")] == [0, 1, 2]


def test_max_pixels(tmp_path: Path) -> None:
    path = write_video(tmp_path / "a.mp4", n_frames=3)
    with pytest.raises(DecompressionBombError, match="64x48 = 3,072 pixels.*max_pixels"):
        next(iter_frames(path, parse_sample("every:1"), max_pixels=3071))
    assert len(list(iter_frames(path, parse_sample("every:1"), max_pixels=3072))) == 3
