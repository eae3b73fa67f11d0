"""The version of an installed distribution, read from one place: its ``pyproject.toml``.

``featurestore.__version__`` and each first-party plugin's ``__version__`` come from here.
The version is written once, in the distribution's ``pyproject.toml``; installing it (also
editable) copies it into the package metadata, which :func:`dist_version` reads. A source
checkout that was never installed falls back to reading that ``pyproject.toml`` itself, so
the number is never typed twice.

Kept free of heavy imports: ``importlib.metadata`` is imported only when a version is asked
for (``featurestore/__init__.py`` resolves ``__version__`` lazily).
"""

from __future__ import annotations

import re
from pathlib import Path

UNKNOWN = "0+unknown"  # a PEP 440 local version that sorts below every release


def dist_version(dist: str, package_dir: str | Path) -> str:
    """The version of distribution ``dist``, whose import package lives in ``package_dir``.

    Args:
        dist: The distribution name as in ``pyproject.toml``'s ``[project] name``
            (e.g. ``"featurestore"``, ``"featurestore-timm"``).
        package_dir: The import package's directory (``Path(__file__).parent`` of its
            ``__init__.py``); its parent holds ``pyproject.toml`` in a source checkout.

    Returns:
        The installed metadata's version; else, when ``dist`` is not installed, the
        ``version`` of the ``pyproject.toml`` beside the package when that file names
        ``dist``; else ``"0+unknown"``.
    """
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return pyproject_version(Path(package_dir).parent / "pyproject.toml", dist) or UNKNOWN


def pyproject_version(path: Path, dist: str) -> str | None:
    """``[project] version`` of the ``pyproject.toml`` at ``path`` when its name is ``dist``, else None.

    A line-based read of the ``[project]`` table (``tomllib`` is not in Python 3.10), enough for
    the plain ``name = "…"`` / ``version = "…"`` lines these files hold.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    m = re.search(r"^\[project\][ \t]*\n(.*?)(?=^\[|\Z)", text, re.M | re.S)
    if not m:
        return None
    fields = dict(re.findall(r'^(name|version)\s*=\s*"([^"]*)"', m.group(1), re.M))
    if _normalise(fields.get("name", "")) != _normalise(dist):
        return None
    return fields.get("version")


def _normalise(name: str) -> str:
    """PEP 503 normalised distribution name: ``Featurestore_Timm`` and ``featurestore-timm`` are one."""
    return re.sub(r"[-_.]+", "-", name).lower()
