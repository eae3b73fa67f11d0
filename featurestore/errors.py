"""One error hierarchy for the whole project.

Every error derives from :class:`FeatureStoreError`, and most also derive from the
builtin that fits (``ValueError``, ``KeyError`` …) so callers can catch either.
Every message names the bad value and the fix.
"""

from __future__ import annotations


class FeatureStoreError(Exception):
    """Base class of every error raised by featurestore."""


class ConfigError(FeatureStoreError, ValueError):
    """A setting or argument has a value that cannot work."""


class MissingDependencyError(FeatureStoreError, ImportError):
    """An optional package is needed but not installed."""

    def __init__(self, package: str, purpose: str, install: str | None = None):
        self.package = package
        hint = install or f"pip install {package}"
        super().__init__(f"{purpose} needs the package {package!r}, which is not installed. Fix: {hint}")


# --- plugins and registries -------------------------------------------------


class PluginError(FeatureStoreError, RuntimeError):
    """A plugin could not be loaded or one of its hooks failed."""


class DuplicateNameError(FeatureStoreError, ValueError):
    """Two registrations claim the same name."""


class UnknownNameError(FeatureStoreError, KeyError):
    """A name (backbone, aggregator, adapter) that no loaded plugin provides."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class WeightsNotFoundError(FeatureStoreError, FileNotFoundError):
    """Model weights could not be found at the source that was tried."""


class UnsupportedModelError(FeatureStoreError, ValueError):
    """A model was loaded but cannot produce the features asked for."""


class UnsafeCheckpointError(ConfigError):
    """A pickled checkpoint needs more than tensors to load, so loading it could run code."""


# --- inputs -----------------------------------------------------------------


class InputError(FeatureStoreError, ValueError):
    """A source path, glob or list file that cannot be used."""


class MediaError(FeatureStoreError, ValueError):
    """One input item could not be decoded. Recorded in the errors table; the run goes on."""

    stage = "decode"

    def __init__(self, uri: str, message: str):
        self.uri = uri
        self.message = message
        super().__init__(f"{uri}: {message}")


class EmptyFileError(MediaError):
    """The file has zero bytes."""


class TruncatedImageError(MediaError):
    """The file ends before the image data does."""


class CorruptImageError(MediaError):
    """The header is readable but the image data is not."""


class UnsupportedFormatError(MediaError):
    """Not an image, or a format Pillow cannot identify."""


class DecompressionBombError(MediaError):
    """The image claims more pixels than the decoder's safety limit."""


class NoVideoStreamError(MediaError):
    """A media container without a decodable video stream (e.g. audio only)."""


class VideoDecodeError(MediaError):
    """Decoding a video failed part-way; frames before ``timestamp_s`` were usable.

    ``timestamp_s`` is where decoding failed (the last good frame's timestamp, or 0.0 when
    no frame decoded); ``frames_ok`` how many sampled frames were produced before it.
    """

    def __init__(self, uri: str, message: str, *, timestamp_s: float = 0.0, frames_ok: int = 0):
        self.timestamp_s = timestamp_s
        self.frames_ok = frames_ok
        super().__init__(uri, message)


class SourceMissingError(FeatureStoreError, FileNotFoundError):
    """A stored source (``uri``) is not where it was, even after ``--root`` mappings."""


class ReadError(MediaError):
    """The file could not be read (missing, permission denied, a directory …)."""

    stage = "read"


# --- store ------------------------------------------------------------------


class StoreError(FeatureStoreError, RuntimeError):
    """The LanceDB store is missing, unreadable or inconsistent."""


class StoreNotFoundError(StoreError):
    """A command that reads a store was pointed at a directory that does not exist (never created there)."""


class UnknownModelError(FeatureStoreError, KeyError):
    """A model hash, prefix or table name that the store does not hold."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
