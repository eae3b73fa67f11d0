"""Expand what a user names on the command line into a list of input files.

Accepted: image and video files, directories (recursive; image and video extensions
only), glob patterns,
and ``@list.txt`` files with one path (or glob, or directory) per line (``#`` comments
and blank lines ignored; relative paths are relative to the list file).

Paths come back absolute and normalised (:func:`featurestore.paths.source_uri`): that is the
``uri`` stored, so any later command finds the file from any directory.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Iterable

from featurestore.errors import InputError
from featurestore.paths import source_uri

IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .apng .webp .gif .tif .tiff .bmp .dib .ppm .pgm .pbm .pnm .tga .ico .jp2 .j2k .avif".split()
)
_GLOB_CHARS = set("*?[")


def _media_extensions() -> frozenset[str]:
    from featurestore.video import VIDEO_EXTENSIONS

    return IMAGE_EXTENSIONS | VIDEO_EXTENSIONS


def _walk(directory: Path) -> list[str]:
    found = []
    exts = _media_extensions()
    for root, dirs, files in os.walk(directory, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in exts:
                found.append(os.path.join(root, f))
    return found


def _expand_one(arg: str, base: Path | None, depth: int) -> list[str]:
    if arg.startswith("@"):
        return _read_list(Path(arg[1:]) if base is None else base / arg[1:], depth)
    path = Path(arg).expanduser()
    if base is not None and not path.is_absolute():
        path = base / path
    if any(c in arg for c in _GLOB_CHARS) and not path.exists():
        matches = sorted(glob.glob(str(path), recursive=True))
        out: list[str] = []
        for m in matches:
            out.extend(_walk(Path(m)) if os.path.isdir(m) else [m])
        return out
    if path.is_dir():
        return _walk(path)
    # A named file is taken whatever its extension, and a missing one too: reading it
    # fails per item and lands in the errors table instead of stopping the run.
    return [str(path)]


def _read_list(list_file: Path, depth: int) -> list[str]:
    if depth > 8:
        raise InputError(f"@{list_file}: list files nest more than 8 deep (a loop?). Fix: flatten the lists.")
    try:
        text = list_file.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read list file @{list_file}: {exc.strerror or exc}. Fix: check the path after '@'.") from exc
    out: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.extend(_expand_one(line, list_file.parent, depth + 1))
    return out


def expand_sources(args: Iterable[str]) -> list[str]:
    """Expand paths, directories, globs and ``@lists`` into absolute file paths, in order, without repeats.

    A named file that does not exist is kept (reading it fails and becomes an ``errors``
    row), unless none of the inputs exists: then nothing could be extracted, and the run
    is refused before a model is loaded or a store created.

    Raises:
        InputError: when no argument is given, a list file cannot be read, nothing matches,
            or none of the named files exists.
    """
    args = [str(a) for a in args]
    if not args:
        raise InputError("no inputs given. Fix: name image files, directories, globs or @list.txt files.")
    seen: set[str] = set()
    out: list[str] = []
    for arg in args:
        for p in _expand_one(arg, None, 0):
            key = source_uri(p)
            if key not in seen:
                seen.add(key)
                out.append(key)
    if not out:
        raise InputError(
            f"no image or video files found in {', '.join(args)}. Directories are searched recursively for "
            f"{', '.join(sorted(IMAGE_EXTENSIONS)[:8])} …, .mp4, .mkv, .webm, .mov, .avi …; name other files explicitly."
        )
    # stops at the first file that exists: one stat in the usual case, however many inputs
    if not any(os.path.exists(p) for p in out):
        shown = ", ".join(out[:5]) + (f" … ({len(out)} in all)" if len(out) > 5 else "")
        raise InputError(
            f"none of the inputs exists: {shown}. Fix: check the paths (relative ones are taken from the current "
            "directory, or from the list file's directory for @lists)."
        )
    return out
