"""Side tables of an index version, memory-mapped so a search needs no SQL: where each vector lives
(:class:`VectorTable`, for re-ranking lossy codes) and what each hit shows (:class:`HitTable`).

Both are written with the version, checked against its checksums when loaded, and sorted by
catalog id, so a lookup is a binary search touching a few pages whatever the archive's size.
"""

from __future__ import annotations

import json
import mmap
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from core.errors import DamagedState, NotFound
from indexer.home import Home
from pipeline import shards

REPAIR = "`vistag index PATH` rebuilds it from the shards"
HitRow = tuple[int, str, int, int, str | None]  # id, uri, width, height, sha256


class VersionFolder(Protocol):
    """What a table needs of an index version (see :class:`indexer.versions.IndexVersion`)."""

    path: Path

    @property
    def name(self) -> str: ...

    def verify(self, names: Iterable[str] | None = None, full: bool = False) -> int: ...


def _unreadable(version: VersionFolder, what: str, err: Exception) -> DamagedState:
    return DamagedState(
        f"index version {version.name}: unreadable {what} ({err}); {REPAIR}", str(version.path)
    )


class VectorTable:
    """Where each vector of an index version lives, so re-ranking reads candidates' stored
    vectors with no SQL: ``vectors-ids.npy`` (n,) int64 catalog ids, sorted, and
    ``vectors-at.npy`` (n, 2) int64 (shard number, row), both memory-mapped (a lookup touches
    a few pages, whatever n), plus ``vectors.json`` naming the shards (folders relative to the
    home, as the catalog stores them). Written with versions whose codes are re-ranked (PQ):
    fetching 1,000 candidates through the catalog costs milliseconds a query. Shards are
    memory-mapped once each and kept open."""

    IDS, AT, NAMES = "vectors-ids.npy", "vectors-at.npy", "vectors.json"

    def __init__(self, home: Home, ids: np.ndarray, at: np.ndarray, names: list[tuple[str, str]], dim: int):
        self.home, self.ids, self.at, self.names, self.dim = home, ids, at, names, dim
        self._shards: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    @classmethod
    def write(cls, folder: Path, locations: Sequence[tuple[int, str, str, int]]) -> None:
        """Write the table of ``locations`` ((id, shard_dir, shard, row), as the catalog gives them)."""
        number: dict[tuple[str, str], int] = {}
        ids = np.fromiter((loc[0] for loc in locations), np.int64, len(locations))
        at = np.empty((len(locations), 2), np.int64)
        for i, (_, shard_dir, shard, row) in enumerate(locations):
            at[i] = (number.setdefault((shard_dir, shard), len(number)), row)
        order = np.argsort(ids, kind="stable")
        np.save(folder / cls.IDS, ids[order])
        np.save(folder / cls.AT, at[order])
        (folder / cls.NAMES).write_text(json.dumps([list(k) for k in number]))

    @classmethod
    def load(cls, home: Home, version: VersionFolder, dim: int) -> VectorTable | None:
        """The version's table, or None for versions written without one (or that lost it: the
        catalog then serves stored vectors); checked against the version's checksums first."""
        if not (version.path / cls.IDS).exists():
            return None
        version.verify([cls.IDS, cls.AT, cls.NAMES])
        try:
            names = [(str(a), str(b)) for a, b in json.loads((version.path / cls.NAMES).read_text())]
            ids = np.load(version.path / cls.IDS, mmap_mode="r")
            at = np.load(version.path / cls.AT, mmap_mode="r")
        except (OSError, ValueError, TypeError) as err:
            raise _unreadable(version, "vector table", err) from err
        return cls(home, ids, at, names, dim)

    def fetch(self, ids: np.ndarray) -> np.ndarray:
        """(len(ids), dim) float32 stored vectors of catalog ``ids``; :class:`NotFound` for an id
        the version does not hold."""
        ids = np.asarray(ids, dtype=np.int64)
        out = np.empty((len(ids), self.dim), np.float32)
        if not len(ids):
            return out
        pos = np.searchsorted(self.ids, ids).clip(0, max(len(self.ids) - 1, 0))
        if not len(self.ids) or not np.array_equal(self.ids[pos], ids):
            missing = ids if not len(self.ids) else ids[self.ids[pos] != ids]
            raise NotFound(f"image {int(missing[0])} is not in this index version")
        at = self.at[pos]
        for number in np.unique(at[:, 0]):
            mask = at[:, 0] == number
            out[mask] = self._shard(int(number))[at[mask, 1]]
        return out

    def _shard(self, number: int) -> np.ndarray:
        with self._lock:
            if number not in self._shards:
                shard_dir, shard = self.names[number]
                self._shards[number] = shards.read_embeddings(self.home.absolute(shard_dir), shard)
            return self._shards[number]


class HitTable:
    """What a search hit shows of each image of a version (id, uri, width, height, sha256), so the
    searcher joins hits without the catalog: ``hits-ids.npy`` (n,) int64 sorted, ``hits-meta.npy``
    (n,) width, height and the SHA-256's 32 bytes, ``hits-uris.bin`` the UTF-8 uris one after the
    other and ``hits-ends.npy`` (n,) int64 where each ends. Written at publish from the catalog
    rows the index was built from; a later publish writes a new one."""

    IDS, META, URIS, ENDS = "hits-ids.npy", "hits-meta.npy", "hits-uris.bin", "hits-ends.npy"
    FILES = (IDS, META, URIS, ENDS)
    META_DTYPE = np.dtype([("width", "<i4"), ("height", "<i4"), ("sha256", "S32")])

    def __init__(self, ids: np.ndarray, meta: np.ndarray, uris: bytes | mmap.mmap, ends: np.ndarray):
        self.ids, self.meta, self.uris, self.ends = ids, meta, uris, ends

    @classmethod
    def write(cls, folder: Path, rows: Iterable[HitRow], ids: np.ndarray) -> None:
        """Write the table of the ``rows`` (by id, as :meth:`Catalog.hit_rows` gives them) whose id is
        in ``ids`` (the version's ids)."""
        wanted = np.unique(np.asarray(ids, dtype=np.int64))
        kept, meta, ends, size = [], [], [], 0
        with open(folder / cls.URIS, "wb") as fh:
            for image_id, uri, width, height, sha in rows:
                pos = np.searchsorted(wanted, image_id)
                if pos >= len(wanted) or wanted[pos] != image_id:
                    continue
                data = uri.encode()
                fh.write(data)
                size += len(data)
                kept.append(image_id)
                ends.append(size)
                meta.append((width or 0, height or 0, bytes.fromhex(sha) if sha else b""))
        np.save(folder / cls.IDS, np.asarray(kept, dtype=np.int64))
        np.save(folder / cls.META, np.asarray(meta, dtype=cls.META_DTYPE))
        np.save(folder / cls.ENDS, np.asarray(ends, dtype=np.int64))

    @classmethod
    def load(cls, version: VersionFolder) -> HitTable | None:
        """The version's table, or None for versions written without one (the catalog then joins
        hits); checked against the version's checksums first."""
        if not (version.path / cls.IDS).exists():
            return None
        version.verify(list(cls.FILES))
        try:
            ids = np.load(version.path / cls.IDS, mmap_mode="r")
            meta = np.load(version.path / cls.META, mmap_mode="r")
            ends = np.load(version.path / cls.ENDS, mmap_mode="r")
            with open(version.path / cls.URIS, "rb") as fh:
                uris = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if ends.size and ends[-1] else b""
        except (OSError, ValueError, TypeError) as err:
            raise _unreadable(version, "hit table", err) from err
        if not (len(ids) == len(meta) == len(ends)):
            raise _unreadable(version, "hit table", ValueError("its parts disagree"))
        return cls(ids, meta, uris, ends)

    def rows(self, ids: Sequence[int] | np.ndarray) -> dict[int, HitRow]:
        """id -> (id, uri, width, height, sha256) of those of ``ids`` the version holds."""
        ids = np.asarray(ids, dtype=np.int64)
        if not len(ids) or not len(self.ids):
            return {}
        pos = np.searchsorted(self.ids, ids).clip(0, len(self.ids) - 1)
        out: dict[int, HitRow] = {}
        for image_id, p in zip(ids.tolist(), pos.tolist(), strict=True):
            if int(self.ids[p]) != image_id:
                continue
            start = int(self.ends[p - 1]) if p else 0
            width, height, sha = self.meta[p]
            uri = bytes(self.uris[start : int(self.ends[p])]).decode()
            out[image_id] = (image_id, uri, int(width), int(height), sha.hex() if sha else None)
        return out
