"""Image URIs: the one parser of the names vistag gives to images and folders.

A local file is named by its absolute path, as the operating system spells it, when that path is
valid UTF-8 (almost always). A path that is not (a Latin-1 ``café.jpg`` on an old share: Python
holds its bytes as lone surrogates, which no database, Parquet file or JSON output accepts) is
named by its ``file://`` URI instead, with every byte outside the unreserved set percent-encoded
(RFC 8089), e.g. ``file:///photos/caf%E9.jpg``: valid ASCII that maps back to the exact bytes.
Any other ``scheme://`` URI (``gs://``, ``s3://``...) names a file on a Beam filesystem.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Sequence
from typing import BinaryIO
from urllib.parse import quote_from_bytes, unquote_to_bytes

FILE_SCHEME = "file://"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SAFE = "/-._~!$&'()*+,;=:@"  # RFC 3986 path characters kept as they are


def is_remote(uri: str) -> bool:
    """Whether ``uri`` names a file on a Beam filesystem (``gs://``...), not a local file."""
    return bool(_SCHEME.match(uri)) and not uri.startswith(FILE_SCHEME)


def from_path(path: str) -> str:
    """The URI of a local absolute ``path`` (a ``str`` from ``os`` functions, surrogates and all)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return FILE_SCHEME + quote_from_bytes(os.fsencode(path), safe=_SAFE)
    return path


def to_path(uri: str) -> str:
    """The local path of ``uri`` (a plain path, or a ``file://`` URI whose escapes are decoded to
    the bytes they stand for), as ``os`` functions take it. Remote URIs raise ``ValueError``."""
    if uri.startswith(FILE_SCHEME):
        return os.fsdecode(unquote_to_bytes(uri[len(FILE_SCHEME) :]))
    if is_remote(uri):
        raise ValueError(f"not a local file: {uri}")
    return uri


def normalize(text: str, base: str | None = None) -> str:
    """The URI of a path or URI given by a person: local paths made absolute (``~`` expanded,
    relative ones taken from the folder ``base``, else the working folder; links resolved) and
    named as :func:`from_path` names them; remote URIs unchanged."""
    if is_remote(text):
        return text
    path = os.path.expanduser(to_path(text))
    return from_path(os.path.realpath(os.path.join(base, path) if base else path))


def under_any(roots: Sequence[str]) -> Callable[[str], bool]:
    """A test of whether a URI lies below any of the folder URIs ``roots``. A plain path can only
    lie below a plain path (a folder whose path is not UTF-8 holds only such files), so plain
    paths are compared as strings and ``file://`` URIs by their decoded paths."""
    remote = tuple(r.rstrip("/") + "/" for r in roots if is_remote(r))
    plain = tuple(
        r.rstrip(os.sep) + os.sep for r in roots if not is_remote(r) and not r.startswith(FILE_SCHEME)
    )
    local = tuple(to_path(r).rstrip(os.sep) + os.sep for r in roots if not is_remote(r))

    def test(uri: str) -> bool:
        if uri.startswith(FILE_SCHEME):
            return to_path(uri).startswith(local)
        return uri.startswith(remote if is_remote(uri) else plain)

    return test


def read_local(uri: str, max_bytes: int | None = None) -> bytes:
    """The bytes of a local regular file, opened without blocking and refused unless regular (a FIFO
    or device at that path could block the reader forever). ``OSError`` when unreadable;
    ``ValueError`` when over ``max_bytes``."""
    fd = os.open(to_path(uri), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise IsADirectoryError(f"not a regular file: {uri}")
        return _read_capped(fh, max_bytes)


def read_bytes(uri: str, max_bytes: int | None = None) -> bytes:
    """The bytes of any image URI: local files as :func:`read_local`, others through Beam's
    ``FileSystems`` (imported only then)."""
    if not is_remote(uri):
        return read_local(uri, max_bytes)
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(uri, compression_type="uncompressed") as fh:
        return _read_capped(fh, max_bytes)


def _read_capped(fh: BinaryIO, max_bytes: int | None) -> bytes:
    """All of ``fh``; ``ValueError`` when it holds more than ``max_bytes`` (reading one byte past)."""
    data = fh.read() if max_bytes is None else fh.read(max_bytes + 1)
    if max_bytes is not None and len(data) > max_bytes:
        raise ValueError(f"larger than {max_bytes} bytes")
    return data
