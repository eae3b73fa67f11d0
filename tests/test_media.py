"""Tests for featurestore.media.decode_image: real files written by Pillow, decoded from bytes."""

from __future__ import annotations

import json
import resource
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

from featurestore.errors import (
    ConfigError,
    CorruptImageError,
    DecompressionBombError,
    EmptyFileError,
    MediaError,
    TruncatedImageError,
    UnsupportedFormatError,
)
from featurestore.media import DECODE_POLICY, decode_image

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


@pytest.fixture
def encode(tmp_path):
    """Save an image to a real file with Pillow and return the file's bytes."""

    def _encode(img: Image.Image, fmt: str, **params) -> bytes:
        path = tmp_path / f"image.{fmt.lower()}"
        img.save(path, fmt, **params)
        return path.read_bytes()

    return _encode


def blocks(size=(40, 30)) -> Image.Image:
    """Four flat colour quadrants: few colours (GIF-safe), easy to check after lossy coding."""
    w, h = size
    arr = np.zeros((h, w, 3), np.uint8)
    arr[: h // 2, : w // 2] = RED
    arr[: h // 2, w // 2 :] = GREEN
    arr[h // 2 :, : w // 2] = BLUE
    arr[h // 2 :, w // 2 :] = (200, 200, 40)
    return Image.fromarray(arr)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload)
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_with_size(data: bytes, width: int, height: int) -> bytes:
    """Patch the IHDR width/height of a PNG and recompute the chunk CRC."""
    ihdr = struct.pack(">II", width, height) + data[24:29]
    return data[:8] + png_chunk(b"IHDR", ihdr) + data[33:]


def pixel(img: Image.Image, xy) -> np.ndarray:
    return np.asarray(img, dtype=np.int16)[xy[1], xy[0]]


@pytest.mark.parametrize(
    ("fmt", "params", "lossless"),
    [
        ("JPEG", {"quality": 95, "subsampling": 0}, False),
        ("PNG", {}, True),
        ("WEBP", {"lossless": True}, True),
        ("GIF", {}, True),
        ("TIFF", {}, True),
        ("BMP", {}, True),
    ],
)
def test_round_trip(encode, fmt, params, lossless):
    src = blocks()
    out = decode_image(encode(src, fmt, **params), f"mem://x.{fmt}")
    assert out.mode == "RGB" and out.size == src.size
    assert not isinstance(out, ImageFile.ImageFile)  # detached from the decoder and its buffer
    diff = np.abs(np.asarray(out, np.int16) - np.asarray(src, np.int16))
    assert diff.max() == 0 if lossless else diff.mean() < 3


def test_exif_orientation_6_rotates_clockwise(encode):
    src = Image.new("RGB", (40, 20), BLUE)
    src.paste(RED, (0, 0, 10, 10))  # marks the top-left corner
    exif = src.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    out = decode_image(encode(src, "JPEG", exif=exif, quality=95), "mem://rot.jpg")
    assert out.size == (20, 40)
    assert np.abs(pixel(out, (15, 4)) - RED).max() < 20  # top-left went to top-right
    assert np.abs(pixel(out, (4, 4)) - BLUE).max() < 20


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow_exif_transpose(encode, tmp_path, orientation):
    src = blocks((24, 14))
    exif = src.getexif()
    exif[0x0112] = orientation
    data = encode(src, "PNG", exif=exif)
    with Image.open(tmp_path / "image.png") as opened:
        expected = ImageOps.exif_transpose(opened).convert("RGB")
    assert np.array_equal(np.asarray(decode_image(data, "mem://o.png")), np.asarray(expected))


def test_cmyk_jpeg_becomes_rgb(encode):
    out = decode_image(encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"), "mem://c.jpg")
    assert out.mode == "RGB"
    assert np.abs(pixel(out, (8, 8)) - RED).max() <= 8


def test_palette_png_transparency_composited_on_white(encode):
    img = Image.new("P", (2, 1))
    img.putpalette([0, 0, 0, 255, 0, 0])
    img.putpixel((1, 0), 1)
    out = decode_image(encode(img, "PNG", transparency=0), "mem://p.png")
    assert tuple(pixel(out, (0, 0))) == WHITE  # index 0 is transparent black, not black
    assert tuple(pixel(out, (1, 0))) == RED


def test_rgba_composited_on_white(encode):
    img = Image.new("RGBA", (3, 1))
    for x, value in enumerate([(0, 0, 0, 0), (255, 0, 0, 255), (255, 0, 0, 128)]):
        img.putpixel((x, 0), value)
    out = decode_image(encode(img, "PNG"), "mem://a.png")
    assert tuple(pixel(out, (0, 0))) == WHITE
    assert tuple(pixel(out, (1, 0))) == RED
    assert np.abs(pixel(out, (2, 0)) - (255, 128, 128)).max() <= 1


def test_la_composited_on_white(encode):
    img = Image.new("LA", (3, 1))
    for x, value in enumerate([(0, 0), (0, 255), (100, 128)]):
        img.putpixel((x, 0), value)
    out = decode_image(encode(img, "PNG"), "mem://la.png")
    assert [tuple(pixel(out, (x, 0))) for x in range(2)] == [WHITE, (0, 0, 0)]
    assert abs(pixel(out, (2, 0))[0] - 177) <= 1  # 100 * 128/255 + 255 * 127/255


@pytest.mark.parametrize(
    ("mode", "values", "expected"), [("L", [0, 77, 255], [0, 77, 255]), ("1", [0, 1], [0, 255])]
)
def test_grayscale_and_bilevel(encode, mode, values, expected):
    img = Image.new(mode, (len(values), 1))
    for x, value in enumerate(values):
        img.putpixel((x, 0), value)
    out = decode_image(encode(img, "PNG"), f"mem://{mode}.png")
    assert out.mode == "RGB"
    assert np.asarray(out)[0].tolist() == [[v, v, v] for v in expected]


SIXTEEN = np.array([[65535, 32896, 32768, 25700, 0]], dtype=np.uint16)
SIXTEEN_TO_8 = [255, 128, 128, 100, 0]  # round(v / 257); clipping would give 255 for all but 0


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_sixteen_bit_gray_is_scaled_not_clipped(encode, tmp_path, fmt):
    img = Image.fromarray(SIXTEEN)  # Pillow 13 picks mode "I;16" itself (mode= is rejected)
    data = encode(img, fmt)
    with Image.open(tmp_path / f"image.{fmt.lower()}") as opened:
        assert opened.mode == "I;16"
    out = decode_image(data, f"mem://16.{fmt}")
    assert np.asarray(out)[0, :, 0].tolist() == SIXTEEN_TO_8


def test_sixteen_bit_rgb_png():
    # Pillow cannot write 16-bit RGB, so build the PNG by hand; Pillow opens it as "RGB".
    rows = np.array([[[65535, 32896, 0]]], dtype=">u2")
    raw = b"\x00" + rows.tobytes()
    data = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 16, 2, 0, 0, 0))
        + png_chunk(b"IDAT", zlib.compress(raw))
        + png_chunk(b"IEND", b"")
    )
    assert tuple(pixel(decode_image(data, "mem://rgb16.png"), (0, 0))) == (255, 128, 0)


@pytest.mark.parametrize(
    ("values", "expected"),
    [([0.0, 0.5, 1.0], [0, 128, 255]), ([2.0, 300.0, -5.0, float("nan")], [2, 255, 0, 0])],
)
def test_float_tiff(encode, values, expected):
    # max <= 1 means 0..1 data (scaled by 255), otherwise 0..255 data (clipped)
    img = Image.fromarray(np.array([values], np.float32))
    out = decode_image(encode(img, "TIFF"), "mem://f.tif")
    assert np.asarray(out)[0, :, 0].tolist() == expected


@pytest.mark.parametrize(
    ("fmt", "params"), [("GIF", {}), ("PNG", {}), ("WEBP", {"lossless": True}), ("TIFF", {})]
)
def test_animated_or_multipage_gives_first_frame(encode, fmt, params):
    frames = [Image.new("RGB", (8, 8), color) for color in (RED, GREEN, BLUE)]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], **params)
    assert tuple(pixel(decode_image(data, f"mem://anim.{fmt}"), (4, 4))) == RED


def test_empty_file():
    with pytest.raises(EmptyFileError, match="mem://empty.jpg"):
        decode_image(b"", "mem://empty.jpg")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP"])
def test_truncated_file(encode, fmt):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), fmt)
    with pytest.raises(TruncatedImageError, match="mem://half"):
        decode_image(data[: len(data) // 2], "mem://half")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_corrupt_body_is_a_media_error(encode):
    data = encode(blocks((64, 64)), "PNG")
    noise = np.random.default_rng(0).integers(0, 256, len(data) - 33, dtype=np.uint8)
    garbage = data[:33] + noise.tobytes()  # signature and IHDR kept, the rest is noise
    with pytest.raises((CorruptImageError, TruncatedImageError)) as info:
        decode_image(garbage, "mem://garbage.png")
    assert isinstance(info.value, MediaError) and "mem://garbage.png" in str(info.value)


@pytest.mark.parametrize(
    ("data", "detected"),
    [
        (b"hello, this is a text file\n", "text"),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
        (bytes(range(256)) * 4, "binary"),
    ],
)
def test_not_an_image(data, detected):
    with pytest.raises(UnsupportedFormatError) as info:
        decode_image(data, "mem://not-image")
    assert detected in str(info.value) and "supported: JPEG, PNG" in str(info.value)


def test_decompression_bomb_above_pillow_hard_limit(encode):
    data = png_with_size(encode(Image.new("L", (1, 1)), "PNG"), 40000, 40000)
    limit_before = Image.MAX_IMAGE_PIXELS
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(DecompressionBombError, match="max_pixels") as info:
        decode_image(data, "mem://bomb.png")
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
    assert grown_kib < 200_000  # the 1.6 GB image was never allocated
    assert Image.MAX_IMAGE_PIXELS == limit_before
    assert "1,600,000,000 pixels" in str(info.value) and "MAX_IMAGE_PIXELS" in str(info.value)


def test_decompression_bomb_warning_range_is_an_error(encode):
    # Between 1x and 2x MAX_IMAGE_PIXELS Pillow only warns; we must still refuse.
    data = png_with_size(encode(Image.new("L", (1, 1)), "PNG"), 10000, 10000)
    filters_before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(DecompressionBombError):
            decode_image(data, "mem://bomb2.png")
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert warnings.filters == filters_before


def test_explicit_small_max_pixels(encode):
    expected = r"40x30 = 1,200 pixels.*limit of 1,000 pixels.*larger max_pixels"
    with pytest.raises(DecompressionBombError, match=expected):
        decode_image(encode(blocks(), "PNG"), "mem://small.png", max_pixels=1000)


def test_limit_read_at_call_time_and_larger_max_pixels_allowed(encode, monkeypatch):
    data = encode(blocks(), "PNG")  # 1200 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(DecompressionBombError):
        decode_image(data, "mem://global.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert decode_image(data, "mem://trusted.png", max_pixels=5000).size == (40, 30)
    assert not caught


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "100"])
def test_invalid_max_pixels(bad):
    with pytest.raises(ConfigError):
        decode_image(b"x", "mem://cfg", max_pixels=bad)


@pytest.mark.parametrize("data", [b"", b"plain text", b"\x89PNG\r\n\x1a\n"])
def test_errors_carry_uri_and_stage(data):
    with pytest.raises(MediaError) as info:
        decode_image(data, "s3://bucket/key.png")
    err = info.value
    assert err.uri == "s3://bucket/key.png" and err.stage == "decode"
    assert isinstance(err, ValueError) and str(err).startswith("s3://bucket/key.png: ")


def test_decode_policy_is_stable_json():
    text = json.dumps(DECODE_POLICY, sort_keys=True)
    assert json.loads(text) == DECODE_POLICY
    assert DECODE_POLICY["alpha"] == "composite_white" and DECODE_POLICY["mode"] == "RGB"
