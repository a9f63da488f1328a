"""Expand corpus inputs (folders, globs, manifest files, image files, any Beam filesystem URI).

One parser for the one identifier kind "corpus input". Local files are named by their absolute
path (or, when that is not valid UTF-8, by its ``file://`` URI: see :mod:`core.uris`); other
filesystems (``gs://``, ``s3://``...) by their URI as Beam's ``FileSystems`` sees it.
"""

from __future__ import annotations

import errno
import glob
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from core import uris
from core.errors import InputError
from core.formats import HEIF_EXTENSIONS, RAW_EXTENSIONS

IMAGE_EXTENSIONS = (
    frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".jfif", ".ppm", ".pgm"})
    | HEIF_EXTENSIONS
    | RAW_EXTENSIONS
)  # sidecars (.xmp) are none of these: never listed, never failures
MANIFEST_EXTENSIONS = frozenset({".txt", ".lst", ".list", ".manifest"})
GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True, order=True)
class FileEntry:
    """One listed file: its URI, size in bytes and modification time (seconds since the epoch)."""

    uri: str
    size: int
    mtime: float


@dataclass(frozen=True)
class Listing:
    """Result of expanding inputs.

    ``entries`` are unique and sorted by URI; ``roots`` are the folders that were listed
    completely (a catalog image under a folder root that is no longer listed was deleted);
    ``missing`` are (uri, reason) pairs for manifest lines that could not be read.
    """

    entries: tuple[FileEntry, ...]
    roots: tuple[str, ...]
    missing: tuple[tuple[str, str], ...]
    # walked folder -> the lower-case names of the XMP sidecars in it
    sidecars: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def may_exist(self, path: str) -> bool:
        """False when the local file ``path`` is surely absent: its folder was walked and held no
        file of that name in any case (a re-index then needs no ``stat`` to know)."""
        folder, name = os.path.split(path)
        names = self.sidecars.get(folder)
        return names is None or name.lower() in names


def has_image_extension(uri: str) -> bool:
    return os.path.splitext(uri)[1].lower() in IMAGE_EXTENSIONS


def expand_inputs(inputs: Sequence[str]) -> Listing:
    """Expand every input into image files; raise :class:`InputError` for unusable inputs."""
    if not inputs:
        raise InputError("no input given: pass folders, globs, image files or manifest files")
    found: dict[str, FileEntry] = {}
    roots: list[str] = []
    missing: list[tuple[str, str]] = []
    sidecars: dict[str, frozenset[str]] = {}
    for raw in inputs:
        entries = _expand_one(raw, roots, missing, sidecars)
        for entry in entries:
            found[entry.uri] = entry
    return Listing(tuple(sorted(found.values())), tuple(roots), tuple(missing), sidecars)


def _expand_one(
    raw: str, roots: list[str], missing: list[tuple[str, str]], sidecars: dict[str, frozenset[str]]
) -> list[FileEntry]:
    text = raw.strip()
    if not text:
        raise InputError("empty input path")
    if uris.is_remote(text):
        return _expand_remote(text, roots)
    path = Path(uris.to_path(text)).expanduser()
    if path.is_dir():
        root = str(path.resolve())
        roots.append(uris.from_path(root))
        return list(_walk(root, sidecars))
    if path.is_file():
        if path.suffix.lower() in MANIFEST_EXTENSIONS:
            return _read_manifest(path, missing)
        return [_local_entry(str(path.resolve()))]
    if path.exists():
        raise InputError(f"input {raw!r} is not a regular file or folder")
    if GLOB_CHARS & set(text):
        matches = sorted(glob.glob(str(path), recursive=True))
        files = [m for m in matches if os.path.isfile(m) and has_image_extension(m) and _is_regular(m)]
        if not files:
            raise InputError(f"glob {raw!r} matched no image files")
        return [_local_entry(os.path.abspath(m)) for m in files]
    raise InputError(f"input {raw!r} does not exist")


def _local_entry(path: str) -> FileEntry:
    """A regular file's entry; anything else (FIFO, socket, device) raises, since reading it could
    block forever."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise IsADirectoryError(errno.EINVAL, "not a regular file", path)
    return FileEntry(uris.from_path(path), st.st_size, st.st_mtime)


def _is_regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _walk(root: str, sidecars: dict[str, frozenset[str]]) -> Iterable[FileEntry]:
    """Image files below root; symlinked folders are not followed (no loops), unreadable ones skipped.
    ``sidecars`` gets, per folder walked, the lower-case names of its ``.xmp`` files."""
    for folder, dirs, files in os.walk(root, onerror=None, followlinks=False):
        dirs.sort()
        sidecars[folder] = frozenset(n.lower() for n in files if n.lower().endswith(".xmp"))
        for name in sorted(files):
            if not has_image_extension(name):
                continue
            path = os.path.join(folder, name)
            try:
                yield _local_entry(path)
            except OSError:
                continue  # vanished, a dangling link, or not a regular file (a FIFO would block reads)


def _read_manifest(path: Path, missing: list[tuple[str, str]]) -> list[FileEntry]:
    entries = []
    base = path.resolve().parent
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read manifest {path}: {err}") from err
    for line in lines:
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        if uris.is_remote(item):
            entries.extend(_match_remote(item) or [])
            continue
        local = Path(uris.to_path(item)).expanduser()
        local = local if local.is_absolute() else base / local
        try:
            entries.append(_local_entry(str(local.resolve())))
        except OSError as err:
            missing.append(
                (uris.from_path(str(local)), f"listed in manifest but unreadable: {err.strerror or err}")
            )
    return entries


def _expand_remote(uri: str, roots: list[str]) -> list[FileEntry]:
    pattern = uri
    if uri.endswith("/"):
        roots.append(uri)
        pattern = uri + "**"
    entries = [e for e in _match_remote(pattern) if has_image_extension(e.uri) or pattern == uri]
    if not entries:
        raise InputError(f"input {uri!r} matched no files")
    return entries


def _match_remote(pattern: str) -> list[FileEntry]:
    from apache_beam.io.filesystems import FileSystems

    try:
        result = FileSystems.match([pattern])[0]
    except Exception as err:  # Beam raises BeamIOError or filesystem-specific errors
        raise InputError(f"cannot list {pattern!r}: {err}") from err
    return [
        FileEntry(m.path, int(m.size_in_bytes), float(m.last_updated_in_seconds or 0.0))
        for m in result.metadata_list
    ]
