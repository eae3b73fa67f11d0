"""Safe, deterministic image decoding: bytes in, fully loaded 8-bit RGB image out.

Every rule that changes pixel values is listed in :data:`DECODE_POLICY`, which is hashed
into the model hash, so two runs that decode differently never share a hash.

Nothing here touches global state: ``ImageFile.LOAD_TRUNCATED_IMAGES`` and
``Image.MAX_IMAGE_PIXELS`` are only read, never set, and warning filters are changed
only inside a ``warnings.catch_warnings()`` block. That block is not thread-safe
(Python restores the filters on exit), which is fine for DataLoader worker processes.
"""

from __future__ import annotations

import codecs
import io
import re
import warnings

import numpy as np
from PIL import ExifTags, Image

from featurestore.errors import (
    ConfigError,
    CorruptImageError,
    DecompressionBombError,
    EmptyFileError,
    MediaError,
    TruncatedImageError,
    UnsupportedFormatError,
)

# Formats Pillow may try, as Pillow names them. An allowlist rather than "everything
# Pillow knows" because some plugins hand the file to outside programs (EPS runs
# Ghostscript) or only parse headers. JPEG also covers MPO, which Pillow opens through it.
SUPPORTED_FORMATS: tuple[str, ...] = (
    "JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP", "DIB", "ICO",
    "PPM", "TGA", "JPEG2000", "AVIF", "QOI",
)

DECODE_POLICY: dict = {
    "version": 1,
    "formats": sorted(SUPPORTED_FORMATS),
    "mode": "RGB",
    "animated": "first_frame",
    "exif_transpose": True,
    "icc_profile": "ignored",
    "alpha": "composite_white",
    "palette": "rgba_then_composite_white",
    "cmyk": "pillow_convert",
    "sixteen_bit": "scale_1_257",
    "sixteen_bit_rgb": "pillow_high_byte",
    "int32": "clip_0_65535_then_scale_1_257",
    "float": "clip_0_1_times_255_if_max_le_1_else_clip_0_255",
    "max_pixels": "pillow_default",
}

# Same table as PIL.ImageOps.exif_transpose. We apply it ourselves, after converting to
# RGB, because TIFF keeps orientation in a tag that convert() does not carry over, and
# transposing the final 8-bit image is the cheapest place to do it.
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

# Leading bytes -> (what it looks like, the Pillow format that would read it or None).
_MAGIC: tuple[tuple[bytes, int, str, str | None], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "PNG", "PNG"),
    (b"\xff\xd8\xff", 0, "JPEG", "JPEG"),
    (b"GIF87a", 0, "GIF", "GIF"),
    (b"GIF89a", 0, "GIF", "GIF"),
    (b"II*\x00", 0, "TIFF", "TIFF"),
    (b"MM\x00*", 0, "TIFF", "TIFF"),
    (b"BM", 0, "BMP", "BMP"),
    (b"WEBP", 8, "WebP", "WEBP"),
    (b"ftypavif", 4, "AVIF", "AVIF"),
    (b"ftypheic", 4, "HEIC", None),
    (b"ftypheix", 4, "HEIC", None),
    (b"ftypmif1", 4, "HEIF", None),
    (b"%PDF", 0, "a PDF document", None),
    (b"%!PS", 0, "a PostScript/EPS document", None),
    (b"\xc5\xd0\xd3\xc6", 0, "a PostScript/EPS document", None),
    (b"PK\x03\x04", 0, "a ZIP archive", None),
    (b"\x1f\x8b", 0, "a gzip archive", None),
)


def decode_image(data: bytes, uri: str, *, max_pixels: int | None = None) -> Image.Image:
    """Decode one encoded image into a fully loaded 8-bit RGB image.

    Args:
        data: The whole encoded file.
        uri: Where the bytes came from; only used in error messages.
        max_pixels: Largest width*height accepted. ``None`` uses
            ``PIL.Image.MAX_IMAGE_PIXELS`` as it is at call time (no limit if that is
            ``None``). Pass a larger value for trusted images; note that ``Image.open``
            itself refuses anything above ``2 * PIL.Image.MAX_IMAGE_PIXELS``.

    Returns:
        A new ``Image.Image`` in mode ``"RGB"``, independent of ``data``, with the EXIF
        orientation applied and alpha composited over white (see :data:`DECODE_POLICY`).

    Raises:
        EmptyFileError: ``data`` has zero bytes.
        UnsupportedFormatError: Not an image in a supported format, or a pixel mode
            that cannot be converted to RGB.
        TruncatedImageError: The file ends before the image data does.
        CorruptImageError: The image data cannot be decoded for another reason.
        DecompressionBombError: The image has more pixels than the limit.
        ConfigError: ``max_pixels`` is not a positive integer.
    """
    limit = _pixel_limit(max_pixels)
    if len(data) == 0:
        raise EmptyFileError(uri, "file is empty (0 bytes)")
    data = bytes(data)  # a memoryview or bytearray could change under us

    # Pillow warns between 1x and 2x its own limit. Inside our limit the warning is noise
    # (the caller vouched for the image); beyond it, it has to stop the decode.
    pillow_limit = Image.MAX_IMAGE_PIXELS
    trusted = limit is None or (pillow_limit is not None and limit > pillow_limit)
    with warnings.catch_warnings(), io.BytesIO(data) as fp:
        warnings.simplefilter("ignore" if trusted else "error", Image.DecompressionBombWarning)
        img = _open(fp, data, uri, limit)
        try:
            width, height = img.size
            if limit is not None and width * height > limit:
                raise _bomb_error(uri, limit, size=(width, height))
            try:
                img.seek(0)  # animated GIF/WebP/APNG, multi-page TIFF: first frame only
                img.load()
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise _bomb_error(uri, limit, pillow_exc=exc) from exc
            except MemoryError:
                raise
            except Exception as exc:  # plugins raise many types; _decode_error names them
                raise _decode_error(exc, data, uri) from exc
            orientation = _orientation(img)
            rgb = _to_rgb(img, uri)
        finally:
            img.close()
    return rgb.transpose(_TRANSPOSE[orientation]) if orientation in _TRANSPOSE else rgb


def _pixel_limit(max_pixels: int | None) -> int | None:
    if max_pixels is None:
        return Image.MAX_IMAGE_PIXELS  # read per call so a caller's setting is honoured
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels <= 0:
        raise ConfigError(f"max_pixels must be a positive integer or None, got {max_pixels!r}")
    return max_pixels


def _open(fp: io.BytesIO, data: bytes, uri: str, limit: int | None) -> Image.Image:
    """``Image.open`` restricted to SUPPORTED_FORMATS, with its failures named."""
    Image.init()  # registers all plugins once; without it the names below may be missing
    formats = [name for name in SUPPORTED_FORMATS if name in Image.OPEN]
    try:
        return Image.open(fp, formats=formats)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb_error(uri, limit, pillow_exc=exc) from exc
    except Image.UnidentifiedImageError as exc:
        looks_like, fmt = _sniff(data)
        if fmt not in formats:
            supported = ", ".join(formats)
            raise UnsupportedFormatError(
                uri, f"not a supported image (looks like {looks_like}); supported: {supported}"
            ) from exc
        if _looks_cut_short(data, fmt):
            raise TruncatedImageError(uri, f"{looks_like} file ends inside its header") from exc
        raise CorruptImageError(uri, f"{looks_like} header cannot be read") from exc
    except MemoryError:
        raise
    except Exception as exc:  # plugins raise OSError, SyntaxError, EOFError ...
        raise _decode_error(exc, data, uri) from exc


def _bomb_error(
    uri: str,
    limit: int | None,
    *,
    size: tuple[int, int] | None = None,
    pillow_exc: BaseException | None = None,
) -> DecompressionBombError:
    """Say how big the image is, what the limit is, and how to let a trusted image through."""
    if size is not None:
        pixels: int | None = size[0] * size[1]
        what = f"{size[0]}x{size[1]} = {pixels:,}"
    else:  # Image.open refused before we saw the size; its message carries the count
        found = re.search(r"\((\d+) pixels\)", str(pillow_exc))
        pixels = int(found[1]) if found else None
        what = "an unknown number of" if pixels is None else f"{pixels:,}"
    shown_limit = "the limit" if limit is None else f"{limit:,} pixels"
    message = (
        f"image has {what} pixels, more than the decompression-bomb limit of {shown_limit}; "
        "if the image is trusted, pass a larger max_pixels"
    )
    hard = Image.MAX_IMAGE_PIXELS
    if hard is not None and (pixels is None or pixels > 2 * hard):
        message += (
            f" and raise PIL.Image.MAX_IMAGE_PIXELS: Image.open refuses more than 2 x that"
            f" ({2 * hard:,} pixels) whatever max_pixels is"
        )
    return DecompressionBombError(uri, message)


def _decode_error(exc: BaseException, data: bytes, uri: str) -> MediaError:
    """Name a decoder failure: truncated if Pillow says so or the file visibly stops early."""
    detail = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, EOFError) or "truncated" in str(exc).lower():
        return TruncatedImageError(uri, f"file is truncated ({detail})")
    looks_like, fmt = _sniff(data)
    if fmt is not None and _looks_cut_short(data, fmt):
        return TruncatedImageError(uri, f"{looks_like} file ends before its data does ({detail})")
    return CorruptImageError(uri, f"image data cannot be decoded ({detail})")


def _sniff(data: bytes) -> tuple[str, str | None]:
    """Guess what the bytes are, for error messages: (description, Pillow format or None)."""
    for magic, offset, looks_like, fmt in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return looks_like, fmt
    head = data[:1024].lstrip().lower()
    if b"<svg" in head or (head.startswith(b"<?xml") and b"svg" in head):
        return "SVG (vector graphics)", None
    if head.startswith((b"<!doctype html", b"<html")):
        return "an HTML page", None
    if b"\x00" not in data[:1024]:
        try:  # final=False: a character cut in two at byte 1024 is still text
            codecs.getincrementaldecoder("utf-8")().decode(data[:1024], final=False)
            return "text", None
        except UnicodeDecodeError:
            pass
    return f"unrecognised binary data starting {data[:8].hex(' ')}", None


def _looks_cut_short(data: bytes, fmt: str) -> bool:
    """True when the format's own end marker or length field shows the file stops early."""
    if fmt == "JPEG":
        return not data.rstrip(b"\x00").endswith(b"\xff\xd9")  # EOI marker
    if fmt == "PNG":
        return _png_cut_short(data)
    if fmt == "GIF":
        return not data.rstrip(b"\x00").endswith(b";")  # trailer byte 0x3B
    if fmt == "WEBP":
        return len(data) < 12 or len(data) < 8 + int.from_bytes(data[4:8], "little")  # RIFF size
    if fmt == "BMP":
        return len(data) < 6 or len(data) < int.from_bytes(data[2:6], "little")  # bfSize
    return False  # TIFF and others have no cheap end marker


def _png_cut_short(data: bytes) -> bool:
    """Walk the PNG chunks: cut short if they run out before IEND, not if one is garbage."""
    pos = 8
    while pos + 8 <= len(data):
        kind = data[pos + 4 : pos + 8]
        if kind == b"IEND":
            return False
        if not kind.isalpha():  # overwritten bytes, not a missing tail
            return False
        pos += 12 + int.from_bytes(data[pos : pos + 4], "big")  # length, type, data, CRC
    return True


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(ExifTags.Base.Orientation, 1))
    except MemoryError:
        raise
    except Exception:
        # Broken EXIF is metadata damage, not pixel damage: decode without rotating.
        return 1


def _to_rgb(img: Image.Image, uri: str) -> Image.Image:
    """Convert any Pillow mode to a new 8-bit RGB image (never the file-backed ``img``)."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:  # PNG tRNS keys out one colour
        # Pillow 13 already reduced 16-bit RGB(A) to 8 bits (high byte) during decoding.
        return img.copy()  # detach from the file object that is about to be closed
    if mode == "I" or mode.startswith("I;"):
        # 16-bit data: round(v / 257) maps 0..65535 onto 0..255 exactly (65535 -> 255);
        # convert("L") would clip everything above 255 to white. "I" (32-bit) is nearly
        # always widened 16-bit data, so it gets the same scale after clipping.
        values = np.clip(np.asarray(img).astype(np.int32), 0, 65535)  # also fixes byte order
        return _gray_to_rgb((values + 128) // 257)
    if mode == "F":
        # Float data has no fixed range. Treat max <= 1 as 0..1 data and anything else
        # as 0..255 data; NaN becomes 0. Data-dependent, but deterministic per image.
        values = np.asarray(img, dtype=np.float64)
        values = np.nan_to_num(values, nan=0.0, posinf=255.0, neginf=0.0)
        if values.size and values.max() <= 1.0:
            values = np.clip(values, 0.0, 1.0) * 255.0
        return _gray_to_rgb(np.rint(np.clip(values, 0.0, 255.0)))
    if mode == "La":
        img = img.convert("LA")  # Pillow converts premultiplied La only to LA
    has_alpha = img.mode in ("RGBA", "RGBa", "LA", "PA") or "transparency" in img.info
    try:
        if has_alpha:
            return _composite_white(img.convert("RGBA"))
        return img.convert("RGB")  # 1, L, P, CMYK, YCbCr, LAB (real conversion), HSV, RGBX
    except ValueError as exc:
        message = f"pixel mode {mode!r} cannot be converted to RGB ({exc})"
        raise UnsupportedFormatError(uri, message) from exc


def _gray_to_rgb(values: np.ndarray) -> Image.Image:
    return Image.fromarray(values.astype(np.uint8)).convert("RGB")


def _composite_white(rgba: Image.Image) -> Image.Image:
    """Alpha-composite over opaque white: round(c * a / 255 + 255 * (1 - a / 255))."""
    pixels = np.asarray(rgba, dtype=np.uint32)
    alpha = pixels[..., 3:4]
    # (x + 127) // 255 is round(x / 255): x / 255 is never exactly half-way (255 is odd).
    out = (pixels[..., :3] * alpha + 255 * (255 - alpha) + 127) // 255
    return Image.fromarray(out.astype(np.uint8))
