"""Helpers and opt-in pytest fixtures for the tests of featurestore and of its plugins.

Images are real files written by Pillow; stores are real LanceDB directories. Importing
this module adds nothing to anyone's test run: a test suite opts in to the fixtures in its
top-level ``conftest.py``::

    pytest_plugins = ["featurestore.testing"]

and gets ``fs_image_dir``, ``fs_store_path`` and ``fs_silent_hub`` (the first-party plugins'
``<plugin>.testing`` modules add tiny models the same way, e.g. ``fs_tiny_dinov2``). While
opted in, the catalog cache of every command the tests run is kept in a temporary
directory. The unprefixed names of earlier versions (``image_dir`` …) still work for one
release, with a ``DeprecationWarning``.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

HUB = ("huggingface.co", 443)


def hub_unreachable_reason(timeout: float = 3.0, host: tuple[str, int] = HUB) -> str | None:
    """None when a TLS connection to the model hub opens within ``timeout`` s, else why not.

    For tests that need real hub downloads: ``pytest.skip`` with this reason. The connect
    runs in a daemon thread so a slow DNS lookup (which the socket timeout does not cover)
    cannot hang the test run.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    result: dict[str, str | None] = {}

    def probe() -> None:
        try:
            with socket.create_connection(host, timeout=timeout) as sock:
                # a TLS handshake too: some sandboxes accept any TCP connection
                with ssl.create_default_context().wrap_socket(sock, server_hostname=host[0]):
                    result["reason"] = None
        except OSError as exc:  # ssl.SSLError is an OSError
            result["reason"] = f"cannot connect to {host[0]}:{host[1]}: {exc}"

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return result.get("reason", f"no connection to {host[0]}:{host[1]} within {timeout:.0f} s")


class LoopbackHub:
    """A TCP server on 127.0.0.1 standing in for the hub: it counts connections and either
    never answers (``answer=False``: accepts, reads, stays silent) or answers every request
    with ``404``. Point ``HF_ENDPOINT`` at :attr:`url`.
    """

    def __init__(self, *, answer: bool = False):
        self.answer = answer
        self.connections = 0
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._open: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def _serve(self) -> None:
        self._sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:  # timeout, or closed by close()
                continue
            self.connections += 1
            self._open.append(conn)  # kept open: a silent hub never closes on the client
            if self.answer:
                conn.settimeout(2)
                try:
                    conn.recv(65536)
                    conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                except OSError:
                    pass
                conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for c in self._open:
            c.close()
        self._sock.close()


@pytest.fixture
def fs_silent_hub():
    """A :class:`LoopbackHub` that accepts connections and never answers."""
    hub = LoopbackHub()
    yield hub
    hub.close()


def closed_port_url() -> str:
    """``http://127.0.0.1:<port>`` where nothing listens (the port was just released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def put_in_hub_cache(cache: Path, repo_id: str, files_from: Path, revision: str = "0" * 40) -> Path:
    """Copy the files of ``files_from`` into hub cache ``cache`` (the ``HF_HUB_CACHE`` layout
    huggingface_hub documents) as the ``main`` snapshot of model repo ``repo_id``; returns the snapshot."""
    import shutil

    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    shutil.copytree(files_from, snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot


MODEL_LIBRARIES = ("torch", "transformers", "timm", "open_clip")

_RUN_CLI = """
import json, sys
from featurestore.cli import main
watch = sys.argv[1].split(",")
rc = main(sys.argv[2:])
print("\\n" + json.dumps({"rc": rc, "imported": [m for m in watch if m in sys.modules]}))
"""


def run_cli_fresh(
    args: list[str], env: dict[str, str] | None = None, *, watch: tuple[str, ...] = MODEL_LIBRARIES, timeout: float = 600
) -> tuple[dict, str]:
    """``featurestore ARGS`` in a fresh interpreter.

    Returns:
        ``({"rc": exit code, "imported": the modules of `watch` it imported, "stdout": what the
        command printed}, stderr)``.
    """
    import json
    import subprocess
    import sys

    cmd = [sys.executable, "-c", _RUN_CLI, ",".join(watch), *(str(a) for a in args)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    printed, _, last = out.stdout.rstrip().rpartition("\n")
    assert last.startswith("{"), out.stdout + out.stderr
    return {**json.loads(last), "stdout": printed.removesuffix("\n")}, out.stderr


def hub_env(cache: Path, endpoint: str, **extra: str) -> dict[str, str]:
    """This process's environment with the hub at ``endpoint``, hub cache ``cache``, no offline
    variable, and a 0.5 s hub probe (featurestore.hub)."""
    drop = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "FEATURESTORE_HUB_TIMEOUT")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(HF_ENDPOINT=endpoint, HF_HUB_CACHE=str(cache), FEATURESTORE_HUB_TIMEOUT="0.5", **extra)
    return env


def smooth_image(width: int, height: int, seed: int) -> np.ndarray:
    """A smooth random RGB image (gradients + blobs), so JPEG keeps it recognisable."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.empty((height, width, 3), np.float32)
    for c in range(3):
        fx, fy, ph = rng.uniform(0.5, 4), rng.uniform(0.5, 4), rng.uniform(0, 6.28)
        out[..., c] = 127.5 + 127.5 * np.sin(fx * x / width * 6.28 + fy * y / height * 6.28 + ph)
    return out.clip(0, 255).astype(np.uint8)


def write_images(directory: Path, n: int, *, size: tuple[int, int] = (64, 48), fmt: str = "JPEG", seed: int = 0) -> list[Path]:
    """Write ``n`` distinct images of ``size`` (w, h) into ``directory``; returns their paths."""
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    ext = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}[fmt]
    paths = []
    for i in range(n):
        w, h = size
        # vary the aspect ratio a little so crop boxes differ
        w = w + (i % 3) * 8
        p = directory / f"img_{i:05d}.{ext}"
        Image.fromarray(smooth_image(w, h, seed + i)).save(p, fmt, **({"quality": 92} if fmt == "JPEG" else {}))
        paths.append(p)
    return paths


@pytest.fixture(scope="session", autouse=True)
def _fs_catalog_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory):
    """The catalog commands' answers (featurestore.catalog_cache) go to a temporary directory,
    not the user's cache, for the whole test session (subprocesses included)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEATURESTORE_CACHE_DIR", str(tmp_path_factory.mktemp("catalog-cache")))
        yield


@pytest.fixture
def fs_image_dir(tmp_path: Path) -> Path:
    """A directory of 7 distinct JPEGs (and 1 PNG in a subdirectory)."""
    d = tmp_path / "images"
    write_images(d, 7)
    write_images(d / "sub", 1, fmt="PNG", seed=100)
    return d


@pytest.fixture
def fs_store_path(tmp_path: Path) -> Path:
    """Path for a fresh LanceDB store directory."""
    return tmp_path / "store.lance"


def deprecated_fixture_alias(old: str, new: str, *, scope: str = "function") -> Any:
    """A fixture named ``old`` that gives fixture ``new``'s value and a ``DeprecationWarning``.

    Keeps a renamed fixture working for one release. ``scope`` must be ``new``'s scope, so
    fixtures of that scope can still request the old name.
    """

    @pytest.fixture(name=old, scope=scope)
    def alias(request: pytest.FixtureRequest) -> Any:
        warnings.warn(
            f"the pytest fixture {old!r} is deprecated and will be removed in the release after 0.1.0; use {new!r}",
            DeprecationWarning,
            stacklevel=2,
        )
        return request.getfixturevalue(new)

    alias.__doc__ = f"Deprecated: use ``{new}``."
    return alias


# the names before the fs_ prefix, for one release
_silent_hub = deprecated_fixture_alias("silent_hub", "fs_silent_hub")
_image_dir = deprecated_fixture_alias("image_dir", "fs_image_dir")
_store_path = deprecated_fixture_alias("store_path", "fs_store_path")


# --- video --------------------------------------------------------------------------

# A test frame is an 8 x 6 grid of cells: cell 0 (top left) is a red marker that shows
# the orientation; cells 1-24 hold the frame number in binary (bright = 1, dark = 0) and
# cells 25-47 the inverse of bits 0-22, so a garbled frame is recognised as such.
_GRID = (8, 6)
_BITS = 24
_MARKER = (220, 30, 30)


def video_frame_pattern(index: int, size: tuple[int, int] = (64, 48)) -> np.ndarray:
    """RGB frame (h, w, 3) whose content encodes ``index`` (see :func:`read_frame_pattern`)."""
    w, h = size
    cw, ch = w // _GRID[0], h // _GRID[1]
    out = np.full((h, w, 3), 24, np.uint8)
    for cell in range(1, _GRID[0] * _GRID[1]):
        bit = cell - 1 if cell <= _BITS else cell - 1 - _BITS
        on = (index >> bit) & 1 if cell <= _BITS else 1 - ((index >> bit) & 1)
        if on:
            r, c = divmod(cell, _GRID[0])
            out[r * ch : (r + 1) * ch, c * cw : (c + 1) * cw] = 232
    out[:ch, :cw] = _MARKER
    return out


def read_frame_pattern(image: object) -> int:
    """The frame number drawn by :func:`video_frame_pattern` in an upright image.

    Raises:
        ValueError: The image does not hold a readable pattern (wrong orientation,
            garbled by the codec, not a test frame).
    """
    a = np.asarray(image, dtype=np.float32)
    h, w = a.shape[:2]
    cw, ch = w // _GRID[0], h // _GRID[1]

    def cell(k: int) -> np.ndarray:  # the mean colour of the middle of cell k
        r, c = divmod(k, _GRID[0])
        return a[r * ch + ch // 4 : (r + 1) * ch - ch // 4, c * cw + cw // 4 : (c + 1) * cw - cw // 4].mean((0, 1))

    red = cell(0)
    if not (red[0] > 150 and red[1] < 100 and red[2] < 100):
        raise ValueError(f"no red marker in the top-left cell (mean colour {red.round()})")
    bits = [int(cell(k).mean() > 128) for k in range(1, _GRID[0] * _GRID[1])]
    if any(bits[i] == bits[_BITS + i] for i in range(len(bits) - _BITS)):
        raise ValueError("frame pattern is garbled (a bit and its inverse agree)")
    return sum(b << i for i, b in enumerate(bits[:_BITS]))


def write_video(
    path: Path,
    *,
    n_frames: int,
    fps: int = 10,
    size: tuple[int, int] = (64, 48),
    codec: str = "libx264",
    vfr_pts: list[int] | None = None,
    time_base: Fraction | None = None,
    rotation: int | None = None,
    hflip: bool = False,
    gop: int | None = None,
    audio: bool = False,
    faststart: bool = False,
    container_options: dict[str, str] | None = None,
) -> Path:
    """Encode ``n_frames`` pattern frames (frame i shows ``video_frame_pattern(i)``).

    Args:
        path: Output file; the container follows the suffix (.mp4, .mkv, .avi …).
        fps: Frame rate for constant-rate videos (pts = i in a 1/fps time base).
        codec: ``"libx264"`` (with B-frames, near-lossless) or ``"mpeg4"``.
        vfr_pts: Explicit presentation timestamps (variable frame rate), in ``time_base``.
        time_base: Time base of ``vfr_pts`` (default 1/1000).
        rotation: Display rotation in degrees counter-clockwise (PyAV's
            ``set_display_rotation``), e.g. 90, -90, 180; ``hflip`` mirrors after it.
        gop: Key frame every ``gop`` frames exactly (no scene-cut key frames).
        audio: Add an AAC stream (silence) as long as the video.
        faststart: MP4 only: put the index (moov) before the data.
        container_options: More muxer options, e.g. ``{"live": "1"}`` for Matroska
            without duration or cues.
    """
    import av

    path = Path(path)
    options = dict(container_options or {})
    if faststart:
        options["movflags"] = "+faststart"
    tb = time_base or Fraction(1, 1000)
    with av.open(str(path), "w", options=options) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        if vfr_pts is not None:
            stream.codec_context.time_base = tb
        if codec == "libx264":
            params = "scenecut=0" + (f":keyint={gop}:min-keyint={gop}" if gop else "")
            stream.codec_context.options = {"crf": "8", "x264-params": params}
        else:
            stream.codec_context.options = {"qscale": "2"}  # near-lossless: the pattern survives
            if gop:
                stream.codec_context.gop_size = gop
        if rotation or hflip:
            stream.set_display_rotation(rotation or 0, hflip=hflip)
        sound = out.add_stream("aac", rate=16000) if audio else None
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(video_frame_pattern(i, size), format="rgb24")
            if vfr_pts is not None:
                frame.pts, frame.time_base = vfr_pts[i], tb
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
        if sound is not None:
            seconds = (vfr_pts[-1] * tb + Fraction(1, fps)) if vfr_pts else Fraction(n_frames, fps)
            _write_silence(av, out, sound, float(seconds))
    return path


def _write_silence(av: object, out: object, stream: object, seconds: float) -> None:
    rate, chunk = stream.rate, 1024  # type: ignore[attr-defined]
    for start in range(0, int(seconds * rate), chunk):
        frame = av.AudioFrame.from_ndarray(np.zeros((1, chunk), np.float32), format="fltp", layout="mono")  # type: ignore[attr-defined]
        frame.sample_rate, frame.pts = rate, start
        out.mux(stream.encode(frame))  # type: ignore[attr-defined]
    out.mux(stream.encode())  # type: ignore[attr-defined]


def write_audio_only(path: Path, *, seconds: float = 1.0) -> Path:
    """An audio-only file (AAC silence) in the container the suffix names, e.g. .mp4/.m4a."""
    import av

    path = Path(path)
    with av.open(str(path), "w") as out:
        _write_silence(av, out, out.add_stream("aac", rate=16000), seconds)
    return path
