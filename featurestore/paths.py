"""Where stored sources and model weights are now.

Extraction stores each source as its absolute, normalised path (:func:`source_uri`:
``os.path.abspath``, so ``.`` and ``..`` are gone but symlinks are kept: a symlinked tree
is how many people organise their data). The model card records the weights location the
same way (:func:`local_locations`). Later commands never open a stored path directly;
they go through this module, which

* applies the user's re-root mappings (``--root OLD=NEW``, ``roots=`` in Python) for a tree
  that was moved or mounted elsewhere: a stored path under ``OLD`` is read under ``NEW``;
* resolves the relative uris that older versions stored against the current directory;
* reports a source or weights location that is not there, naming it and the fix.

Stored uris themselves are data (row identity for label joins and exports) and are never
rewritten in the store.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence, Union

from featurestore.errors import ConfigError, SourceMissingError, WeightsNotFoundError

if TYPE_CHECKING:
    from featurestore.config import ModelCard

Roots = Sequence[tuple[str, str]]
RootsArg = Union[Mapping[str, str], Iterable[Union[str, tuple[str, str]]], None]

# a video frame may be named "<path>#t=<seconds>"; a "#" elsewhere is part of a file name
_FRAGMENT = re.compile(r"#t=[0-9.]+$")
# "hf-hub:org/repo": a scheme that is no local path; "local-dir:" is the one that is
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_LOCAL_SCHEME = "local-dir:"
_PATH_START = ("/", "./", "../", "~", ".\\", "..\\")


def source_uri(path: str | os.PathLike[str]) -> str:
    """The uri extraction stores for ``path``: absolute and normalised, symlinks kept."""
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


def _is_remote(path: str) -> bool:
    return "://" in path


def parse_roots(roots: RootsArg) -> list[tuple[str, str]]:
    """``OLD=NEW`` strings, ``(old, new)`` pairs or a ``{old: new}`` mapping → checked pairs.

    ``OLD`` is matched against stored paths as written (normalised; relative ``OLD`` matches
    relative uris of older stores), ``NEW`` is made absolute against the current directory.
    Longer ``OLD`` prefixes are tried first. A path holding ``=`` can be mapped from Python
    (``roots={old: new}``); on the command line the first ``=`` splits.

    Raises:
        ConfigError: a mapping without ``=`` or with an empty side.
    """
    if roots is None:
        return []
    items = list(roots.items()) if isinstance(roots, Mapping) else list(roots)
    out: list[tuple[str, str]] = []
    for item in items:
        if isinstance(item, str):
            old, sep, new = item.partition("=")
            if not sep:
                raise ConfigError(f"--root {item!r} is not OLD=NEW. Fix: e.g. --root /old/photos=/mnt/photos.")
        else:
            old, new = (str(v) for v in item)
        if not old.strip() or not new.strip():
            raise ConfigError(f"--root {old}={new}: both sides must name a directory. Fix: e.g. --root /old/photos=/mnt/photos.")
        out.append((os.path.normpath(os.path.expanduser(old)), os.path.abspath(os.path.expanduser(new))))
    return sorted(out, key=lambda p: -len(p[0]))


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/\\") + os.sep)


def apply_roots(path: str, roots: RootsArg = None) -> str:
    """``path`` with the first (longest) matching ``OLD`` prefix replaced by its ``NEW``."""
    pairs = parse_roots(roots)  # idempotent on pairs it already checked
    norm = os.path.normpath(path) if path else path
    for old, new in pairs:
        if _under(norm, old):
            rest = norm[len(old) :].lstrip("/\\")
            return os.path.join(new, rest) if rest else new
    return path


def split_fragment(uri: str) -> tuple[str, str]:
    """``("<path>", "#t=1.5")`` for a frame uri, ``(uri, "")`` for anything else."""
    m = _FRAGMENT.search(uri)
    return (uri[: m.start()], m.group(0)) if m else (uri, "")


def resolve_source(uri: str, roots: RootsArg = None) -> str:
    """The path to open now for a stored ``uri`` (no existence check; a ``#t=`` suffix is kept).

    Re-root mappings apply first; a relative uri (stored by an older version) is taken from
    the current directory.
    """
    path, frag = split_fragment(uri)
    if _is_remote(path):
        return uri
    mapped = apply_roots(path, roots)
    if not os.path.isabs(mapped):
        mapped = os.path.abspath(os.path.expanduser(mapped))
    return mapped + frag


def find_source(uri: str, roots: RootsArg = None) -> str:
    """:func:`resolve_source`, checked: the path (without a ``#t=`` suffix) of a file that exists.

    Raises:
        SourceMissingError: nothing is there; the message names the stored uri, where it was
            looked for and the fix.
    """
    path = split_fragment(resolve_source(uri, roots))[0]
    if not os.path.isfile(path):
        raise SourceMissingError(missing_message(uri, path, bool(roots)))
    return path


def missing_message(uri: str, looked: str, mapped: bool) -> str:
    """What to say about a stored source that is not there."""
    where = f" (looked for {looked})" if split_fragment(uri)[0] != looked else ""
    fix = "check the --root mappings" if mapped else "if the files moved, pass --root OLD=NEW (repeatable) to read them from there"
    return f"source {uri} is missing{where}. Fix: {fix}."


def uri_key(uri: str) -> str:
    """A uri as label joins compare it: relative ones (label files, older stores) taken from
    the current directory, so ``photos/a.jpg`` matches the stored ``/data/photos/a.jpg``."""
    return uri if _is_remote(uri) or os.path.isabs(uri) else source_uri(uri)


# -- weights locations -------------------------------------------------------------------


def _looks_local(text: str) -> bool:
    return text.startswith(_PATH_START) or os.path.isabs(text)


def _within(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([os.path.realpath(path), os.path.realpath(root)]) == os.path.realpath(root)
    except ValueError:  # different drives
        return False


def _name_path(name: str) -> tuple[str, str] | None:
    """``(prefix, path)`` when a backbone name carries a path after its family: ``hf:<path>``,
    ``open_clip:local-dir:<path>``; None for plain names and hub ids with a scheme."""
    if ":" not in name:
        return None
    family, rest = name.split(":", 1)  # the registry's own rule for families
    prefix = family + ":"
    if rest.startswith(_LOCAL_SCHEME):
        return prefix + _LOCAL_SCHEME, rest[len(_LOCAL_SCHEME) :]
    if not rest or (_SCHEME.match(rest) and not os.path.isabs(rest)):
        return None
    return prefix, rest


def local_locations(backbone: str, weights: str | None, weights_source: str | None) -> tuple[str | None, str | None]:
    """What the card records so later commands reload the same model from any directory.

    Returns:
        ``(backbone_resolved, weights_resolved)``: the backbone name with its local path made
        absolute (``hf:../m`` → ``hf:/data/m``), and ``--weights`` made absolute when it names
        a local file or directory; None where there is no local path. A name's path counts
        when it exists and either looks like a path or holds the weights that were loaded
        (``weights_source``), so a hub id or architecture name is never mistaken for one.
    """
    name_resolved = None
    split = _name_path(backbone)
    if split is not None:
        prefix, path = split
        full = os.path.expanduser(path)
        loaded_here = bool(weights_source) and os.path.isabs(str(weights_source)) and _within(str(weights_source), full)
        if os.path.exists(full) and (_looks_local(path) or prefix.endswith(_LOCAL_SCHEME) or loaded_here):
            name_resolved = prefix + source_uri(path)
    weights_resolved = None
    if weights and os.path.exists(os.path.expanduser(weights)):  # every plugin reads an existing path as one
        weights_resolved = source_uri(weights)
    return name_resolved, weights_resolved


def _missing_weights(table: str, recorded: str, now: str, mapped: bool, what: str) -> WeightsNotFoundError:
    moved = f" (mapped by --root to {now})" if mapped else ""
    return WeightsNotFoundError(
        f"the {what} of table {table} was {recorded} at extraction{moved}, and nothing is there now. "
        f"Fix: --root OLD=NEW if the directory moved, or --weights PATH to load the model from elsewhere "
        f"(its weight digest is checked either way)."
    )


def reload_args(card: "ModelCard", weights: str | None = None, roots: RootsArg = None) -> tuple[str, str | None]:
    """``(backbone name, weights)`` that load ``card``'s model again, from any directory.

    ``weights`` (the user's ``--weights``) wins; else the card's resolved locations with the
    ``roots`` mappings applied. Cards written before these were recorded fall back to the
    name and ``--weights`` as typed (relative to the current directory).

    Raises:
        WeightsNotFoundError: a recorded local location is not there (and no ``weights`` given).
    """
    pairs = parse_roots(roots)
    table = card.table
    name = card.backbone_resolved or card.backbone
    split = _name_path(name) if card.backbone_resolved else None
    if split is not None:
        prefix, path = split
        now = apply_roots(path, pairs)
        name = prefix + now
        if weights is None and not os.path.exists(now):
            raise _missing_weights(table, f"loaded from {path}", now, now != path, "backbone")
    if weights is not None:
        return name, weights
    recorded = card.weights_resolved
    if recorded is None:
        return name, card.weights_arg
    now = apply_roots(recorded, pairs)
    if not os.path.exists(now):
        raise _missing_weights(table, f"read from {recorded}", now, now != recorded, "--weights")
    return name, now


def add_root_option(parser: Any) -> None:
    """``--root OLD=NEW`` (repeatable) on a command that opens stored sources or reloads a model."""
    parser.add_argument(
        "--root",
        action="append",
        metavar="OLD=NEW",
        help="read stored paths under OLD from NEW instead (the images or model directory moved); repeatable",
    )


__all__ = [
    "add_root_option",
    "apply_roots",
    "find_source",
    "local_locations",
    "missing_message",
    "parse_roots",
    "reload_args",
    "resolve_source",
    "source_uri",
    "split_fragment",
    "uri_key",
]
