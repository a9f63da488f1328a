"""Typed exceptions of the library. The CLI turns each into a one-line message and an exit code."""

from __future__ import annotations

__all__ = [
    "VistagError",
    "InputError",
    "ModelLoadError",
    "ModelMismatch",
    "IndexNotFound",
    "EmptyCorpus",
    "CatalogError",
    "LockHeld",
    "DamagedState",
    "DamagedIndex",
    "CatalogMismatch",
    "ShardFormatError",
    "IndexFormatError",
    "NotFound",
    "PipelineError",
    "DecodeError",
    "SidecarError",
]


class VistagError(Exception):
    """Base class of every error vistag raises on purpose."""

    exit_code = 1


class InputError(VistagError):
    """An input path, glob, manifest or argument is unusable."""

    exit_code = 2


class ModelLoadError(VistagError):
    """An OpenCLIP model spec cannot be parsed or its weights cannot be had."""

    exit_code = 3


class ModelMismatch(VistagError):
    """Two pieces of state were made by different models and must not be mixed."""

    exit_code = 3


class IndexNotFound(VistagError):
    """No index version has been published in this home yet."""

    exit_code = 4


class EmptyCorpus(VistagError):
    """There is nothing to index, search or tag."""

    exit_code = 4


class CatalogError(VistagError):
    """The catalog database is unreachable, locked by another writer, or inconsistent."""

    exit_code = 5


class LockHeld(CatalogError):
    """Another process is writing to this home."""


class DamagedState(VistagError):
    """A file of the home's state (index version, vector table, embedding shard) is missing, truncated
    or differs from the checksum recorded when it was written; ``path`` names it. ``vistag index``
    rebuilds what is damaged from what is intact."""

    exit_code = 5

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = path


class DamagedIndex(DamagedState, IndexNotFound):
    """The published index (its pointer or manifest) cannot be read: to a writer, as if none were
    published (the next ``vistag index`` publishes a new one); to a reader, exit code 5."""


class CatalogMismatch(CatalogError):
    """The catalog is not the one the published index was built from (deleted, replaced or emptied)."""


class ShardFormatError(DamagedState):
    """An embedding shard on disk is missing, truncated or of an unknown format version."""


class IndexFormatError(DamagedState):
    """An index version on disk is of a format or kind this vistag cannot read."""


class NotFound(VistagError):
    """An image id or uri asked for is not in the catalog."""

    exit_code = 4


class PipelineError(VistagError):
    """The embedding pipeline failed as a whole (not one bad file: those are recorded failures)."""

    exit_code = 6


class DecodeError(Exception):
    """The bytes are not a usable image; ``reason`` is a short human-readable cause (recorded as a
    failure row, not a user error: no exit code)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class SidecarError(Exception):
    """An XMP sidecar cannot be read or updated (damaged, not XMP); ``reason`` is a short cause. A
    per-file failure of ``write-xmp``, reported with the others, not a user error: no exit code."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
