"""The embedding shard format (version 1), written by the pipeline and read by the indexer.

A shard named ``NAME`` in a shard folder is four files:

- ``NAME.npy``: float32 array of shape (E, D), L2-normalised embeddings, one row per embedded image;
- ``NAME.parquet``: one row per image: uri, sha256, size, mtime, width, height, row, where ``row``
  indexes ``NAME.npy`` or is -1 when the content was already embedded (same sha256 and model),
  then what the catalog keeps of it (:data:`META_COLUMNS`: perceptual hash, date, photo metadata);
- ``NAME.failures.parquet``: uri, stage, reason for inputs that failed;
- ``NAME.json``: the manifest (format version, model identity, ``engine``: what embedded the rows
  and its minimum cosine to torch fp32, see :mod:`core.engines`; counts, and ``files``: the
  SHA-256 and size of each file above), written **last**.

Every file is written under a temporary name and renamed, and a shard exists only once its
manifest does, so a crash never leaves a half shard that a reader would take. Writes, and
reads of remote folders, go through Beam's ``FileSystems``, so a shard folder may be local or
``gs://``; local reads use the OS directly (readers such as a search need not import Beam).

Integrity: a shard read whole (:func:`read_shard`, or :func:`read_embeddings` from a remote
folder) is checked against its checksums as it is read; a local shard memory-mapped by
:func:`read_embeddings` is hashed unless its verification stamp ``NAME.stamp`` vouches for the
file (see :func:`verify_files`, which index versions use too). A file that differs raises
:class:`DamagedState`. Shards written before checksums were recorded are read unchecked.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import json
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core import uris
from core.errors import DamagedState, ShardFormatError

FORMAT_VERSION = 1
STAMP_SUFFIX = ".stamp"
# A stamp vouches only for files last changed at least this long before it was taken: file times
# come from a coarse clock (a few ms; 1-2 s on some filesystems), so a change in the same tick as
# the stamp would leave size, times and inode equal (git's "racily clean" entries, same cure).
RACY_NS = 2_000_000_000
READ_BLOCK = 1 << 20
SHARD_REPAIR = "`vistag index PATH` re-embeds the images whose vectors it held"
META_COLUMNS = (
    ("uri", "string"),
    ("sha256", "string"),
    ("size", "int64"),
    ("mtime", "float64"),
    ("width", "int32"),
    ("height", "int32"),
    ("row", "int32"),
    ("phash", "string"),  # since shard format 1 files of 2026-11; older shards lack it (read as None)
    ("taken", "float64"),
    ("orientation", "int32"),  # the EXIF orientation decoding applied (1..8), since 2026-11
    # photo metadata (core.photometa), since 2026-11; None where it was not read (and in older shards)
    ("camera", "string"),
    ("lens", "string"),
    ("lat", "float64"),
    ("lon", "float64"),
    ("keywords", "string"),  # a JSON array of keywords as spelt (lower-case in shards before 0009)
    ("sidecars", "string"),  # the state of the image's sidecars when read (core.photometa.sidecar_state)
)
FAILURE_COLUMNS = (("uri", "string"), ("stage", "string"), ("reason", "string"))


@dataclass(frozen=True)
class Shard:
    """A shard read back: ``meta`` rows, ``embeddings`` (E, D) float32, ``failures`` rows, manifest."""

    name: str
    meta: list[dict[str, Any]]
    embeddings: np.ndarray
    failures: list[dict[str, str]]
    manifest: dict[str, Any]


def is_local(path: str) -> bool:
    """Whether ``path`` is on this machine's filesystem (read without Beam) rather than a URI."""
    return not uris.is_remote(path)


def join(folder: str, name: str) -> str:
    if is_local(folder):
        return os.path.join(folder, name)
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.join(folder, name)


def _write_atomic(path: str, payload: bytes) -> None:
    from apache_beam.io.filesystems import FileSystems

    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with FileSystems.create(tmp) as fh:
        fh.write(payload)
    FileSystems.rename([tmp], [path])


def _open(path: str) -> Any:
    if is_local(path):
        return open(path, "rb")
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.open(path)


def _read(path: str) -> bytes:
    with _open(path) as fh:
        return fh.read()


def _parquet_bytes(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> bytes:
    """``rows`` as Parquet with ``columns`` ((name, pyarrow type name)); pyarrow is imported only
    here and where shards are read (a search never imports it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([(name, getattr(pa, kind)()) for name, kind in columns])
    table = pa.Table.from_pylist(list(rows), schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


# integrity -----------------------------------------------------------------------------------
def checksum(data: bytes) -> dict[str, Any]:
    """``{"sha256": hex digest, "size": bytes}`` of ``data``."""
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def checksum_file(path: str) -> dict[str, Any]:
    """:func:`checksum` of a file (local, or on any Beam filesystem), read a block at a time."""
    digest, size = hashlib.sha256(), 0
    with _open(path) as fh:
        while block := fh.read(READ_BLOCK):
            digest.update(block)
            size += len(block)
    return {"sha256": digest.hexdigest(), "size": size}


def verify_files(
    folder: str,
    expected: Mapping[str, Mapping[str, Any]],
    what: str,
    repair: str,
    *,
    full: bool = False,
    stamp: str | None = None,
) -> int:
    """Check the files ``expected`` names in ``folder`` ({file name: {"sha256", "size"}}).

    Local files that the ``stamp`` file vouches for (hashed before with this checksum, and the
    same size, mtime, ctime and inode since, see ``RACY_NS``) are not read unless ``full``; the
    others are hashed, and those that match are added to the stamp (where it can be written:
    a reader without write permission verifies each time). Remote files are compared by size
    only unless ``full``. Returns the bytes hashed; raises :class:`DamagedState` ("``what`` is
    damaged: ...; ``repair``") at the first file that is missing or differs.
    """
    vouched = _read_stamp(stamp) if stamp and not full else {}
    fresh: dict[str, dict[str, Any]] = {}
    hashed = 0
    for name, want in expected.items():
        path = join(folder, name)
        before = _stat(path)
        if _vouches(vouched.get(name), want, before):
            continue
        problem = _size_problem(path, want, before)
        if problem is None and (full or before is not None):
            problem = None if checksum_file(path) == dict(want) else "differs from its SHA-256 checksum"
            hashed += int(want["size"])
            if problem is None and before is not None and _stat(path) == before:
                fresh[name] = {"sha256": want["sha256"], "stat": before}
        if problem:
            raise DamagedState(f"{what} is damaged: {name} {problem}; {repair}", path)
    if stamp and fresh:
        _write_stamp(stamp, fresh)
    return hashed


def check_bytes(data: bytes, want: Mapping[str, Any], what: str, name: str, repair: str, path: str) -> None:
    """Raise :class:`DamagedState` unless ``data`` (file ``name`` of ``what``, read whole) matches ``want``."""
    if len(data) != int(want["size"]):
        raise DamagedState(
            f"{what} is damaged: {name} has {len(data)} bytes, not {want['size']}; {repair}", path
        )
    if checksum(data) != dict(want):
        raise DamagedState(f"{what} is damaged: {name} differs from its SHA-256 checksum; {repair}", path)


def _stat(path: str) -> list[int] | None:
    """[size, mtime_ns, ctime_ns, inode] of a local file; None when missing or remote."""
    if not is_local(path):
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _size_problem(path: str, want: Mapping[str, Any], stat: list[int] | None) -> str | None:
    if is_local(path):
        size = stat[0] if stat is not None else None
    else:
        from apache_beam.io.filesystems import FileSystems

        try:
            size = FileSystems.match([path])[0].metadata_list[0].size_in_bytes
        except Exception:  # any filesystem's "not found"
            size = None
    if size is None:
        return "is missing"
    return None if size == int(want["size"]) else f"has {size} bytes, not {want['size']}"


def _vouches(entry: Mapping[str, Any] | None, want: Mapping[str, Any], stat: list[int] | None) -> bool:
    if not entry or stat is None or entry.get("sha256") != want["sha256"] or entry.get("stat") != stat:
        return False
    return int(entry.get("taken_ns", 0)) - stat[2] >= RACY_NS


def _read_stamp(stamp: str) -> dict[str, Any]:
    try:
        with open(stamp, encoding="utf-8") as fh:
            files = json.load(fh).get("files", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return files if isinstance(files, dict) else {}


def _write_stamp(stamp: str, fresh: Mapping[str, dict[str, Any]]) -> None:
    """Add ``fresh`` entries (verified just now) to the stamp file; skipped where it cannot be written."""
    now = time.time_ns()
    files = _read_stamp(stamp) | {name: entry | {"taken_ns": now} for name, entry in fresh.items()}
    tmp = f"{stamp}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"format_version": 1, "files": files}, fh)
        os.replace(tmp, stamp)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


# shards --------------------------------------------------------------------------------------
def write_shard(
    folder: str,
    meta: Sequence[dict[str, Any]],
    embeddings: np.ndarray,
    failures: Sequence[dict[str, str]],
    model: dict[str, Any],
    name: str | None = None,
    engine: dict[str, Any] | None = None,
) -> str:
    """Write one shard into ``folder`` and return its name. ``embeddings`` is (E, D) float32;
    ``engine`` (an :class:`core.engines.EngineInfo` as a dict) is what embedded them."""
    from apache_beam.io.filesystems import FileSystems

    name = name or f"shard-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:12]}"
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32).reshape(-1, int(model["embed_dim"]))
    if not FileSystems.exists(folder):
        FileSystems.mkdirs(folder)
    buf = io.BytesIO()
    np.save(buf, embeddings)
    payloads = {
        f"{name}.npy": buf.getvalue(),
        f"{name}.parquet": _parquet_bytes(meta, META_COLUMNS),
        f"{name}.failures.parquet": _parquet_bytes(failures, FAILURE_COLUMNS),
    }
    for file_name, payload in payloads.items():
        _write_atomic(join(folder, file_name), payload)
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "model": model,
        "engine": engine,
        "images": len(meta),
        "embedded": int(embeddings.shape[0]),
        "failures": len(failures),
        "created": time.time(),
        "files": {file_name: checksum(payload) for file_name, payload in payloads.items()},
    }
    _write_atomic(join(folder, f"{name}.json"), json.dumps(manifest, indent=1).encode())
    return name


def write_text(path: str, text: str) -> None:
    """Write a small text file atomically on any Beam filesystem."""
    _write_atomic(path, text.encode())


def exists(path: str) -> bool:
    if is_local(path):
        return os.path.exists(path)
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.exists(path)


def list_shards(folder: str) -> list[str]:
    """Names of the complete shards in ``folder`` (those whose manifest exists), sorted."""
    if is_local(folder):
        paths = glob.glob(os.path.join(glob.escape(folder), "*.json"))
    else:
        from apache_beam.io.filesystems import FileSystems

        if not FileSystems.exists(folder):
            return []
        paths = [m.path for m in FileSystems.match([join(folder, "*.json")])[0].metadata_list]
    return sorted(os.path.basename(p)[: -len(".json")] for p in paths if ".tmp-" not in p)


def read_manifest(folder: str, name: str) -> dict[str, Any]:
    path = join(folder, f"{name}.json")
    try:
        manifest = json.loads(_read(path))
    except Exception as err:
        raise ShardFormatError(
            f"shard {name} in {folder}: unreadable manifest ({err}); {SHARD_REPAIR}", path
        ) from err
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        version = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise ShardFormatError(f"shard {name}: unknown format version {version}", path)
    return manifest


def shard_label(folder: str, name: str) -> str:
    """How messages name a shard: ``shard FOLDER/NAME``."""
    return f"shard {join(folder, name)}"


def verify_shard(folder: str, name: str, *, full: bool = False) -> tuple[dict[str, Any], int]:
    """Check every file of a shard against its manifest's checksums, as :func:`verify_files` does
    (``full``: hash them all). Returns the manifest and the bytes hashed; raises
    :class:`DamagedState`. Shards written before checksums were recorded are not checked."""
    manifest = read_manifest(folder, name)
    files = manifest.get("files") or {}
    stamp = join(folder, f"{name}{STAMP_SUFFIX}") if is_local(folder) else None
    hashed = verify_files(folder, files, shard_label(folder, name), SHARD_REPAIR, full=full, stamp=stamp)
    return manifest, hashed


def read_embeddings(folder: str, name: str, mmap: bool = True, verify: bool = True) -> np.ndarray:
    """The (E, D) float32 embeddings of a shard; memory-mapped when the folder is local. With
    ``verify``, checked against the manifest's checksum first (see :func:`verify_files`)."""
    path = join(folder, f"{name}.npy")
    manifest = read_manifest(folder, name) if verify else {}
    want = (manifest.get("files") or {}).get(f"{name}.npy")
    what = shard_label(folder, name)
    try:
        if mmap and is_local(path) and os.path.exists(path):
            if want:
                stamp = join(folder, f"{name}{STAMP_SUFFIX}")
                verify_files(folder, {f"{name}.npy": want}, what, SHARD_REPAIR, stamp=stamp)
            matrix = np.load(path, mmap_mode="r")
        else:
            data = _read(path)
            if want:
                check_bytes(data, want, what, f"{name}.npy", SHARD_REPAIR, path)
            matrix = np.load(io.BytesIO(data))
    except (OSError, ValueError, EOFError) as err:
        raise ShardFormatError(f"{what} cannot be read ({err}); {SHARD_REPAIR}", path) from err
    if verify and (matrix.ndim != 2 or matrix.shape[0] != manifest["embedded"]):
        raise ShardFormatError(
            f"{what}: {matrix.shape} embeddings, not the {manifest['embedded']} of its manifest", path
        )
    return matrix


def read_meta(folder: str, name: str, columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The image rows of a shard (``columns`` of them), checked against their checksum."""
    path = join(folder, f"{name}.parquet")
    want = (read_manifest(folder, name).get("files") or {}).get(f"{name}.parquet")
    try:
        data = _read(path)
        if want:
            check_bytes(data, want, shard_label(folder, name), f"{name}.parquet", SHARD_REPAIR, path)
        import pyarrow.parquet as pq

        return pq.read_table(io.BytesIO(data), columns=list(columns) if columns else None).to_pylist()
    except DamagedState:
        raise
    except Exception as err:
        raise ShardFormatError(
            f"{shard_label(folder, name)} cannot be read ({err}); {SHARD_REPAIR}", path
        ) from err


def read_shard(folder: str, name: str) -> Shard:
    """Read a whole shard, check its files against their checksums as they are read, and check
    that its parts agree. A local shard that matches is stamped (see :func:`verify_files`)."""
    manifest = read_manifest(folder, name)
    files = manifest.get("files") or {}
    fresh: dict[str, dict[str, Any]] = {}

    def part(suffix: str) -> bytes:
        file_name = f"{name}{suffix}"
        path = join(folder, file_name)
        before = _stat(path)
        data = _read(path)
        if file_name in files:
            check_bytes(data, files[file_name], shard_label(folder, name), file_name, SHARD_REPAIR, path)
            if before is not None and _stat(path) == before:
                fresh[file_name] = {"sha256": files[file_name]["sha256"], "stat": before}
        return data

    try:
        import pyarrow.parquet as pq

        meta = pq.read_table(io.BytesIO(part(".parquet"))).to_pylist()
        failures = pq.read_table(io.BytesIO(part(".failures.parquet"))).to_pylist()
        embeddings = np.load(io.BytesIO(part(".npy")))
    except DamagedState:
        raise
    except Exception as err:
        raise ShardFormatError(f"shard {name} in {folder}: {err}", join(folder, name)) from err
    if len(meta) != manifest["images"] or embeddings.shape[0] != manifest["embedded"]:
        raise ShardFormatError(
            f"shard {name} in {folder}: counts disagree with its manifest", join(folder, name)
        )
    if fresh and is_local(folder):
        _write_stamp(join(folder, f"{name}{STAMP_SUFFIX}"), fresh)
    return Shard(name, meta, embeddings, failures, manifest)
