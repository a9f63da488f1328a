"""FAISS index versions: write a version folder, publish it by pointer switch, read it back.

Every index holds L2-normalised vectors under inner product (cosine), with ids = catalog image
ids. A version folder (``index.faiss`` + ``manifest.json``) is written under a temporary name
and renamed whole; ``CURRENT`` is then replaced atomically, so a reader sees either the old or
the new version, never half of one. The previous version stays until the next publish.

Reading (see :func:`read_index`): the inverted lists of an on-disk version (``index.ivfdata``,
see :mod:`indexer.build`) are always memory-mapped; other indexes are memory-mapped
(``IO_FLAG_MMAP_IFC``, read-only) when ``index.faiss`` is at least ``MMAP_MIN_BYTES``, so a
server maps a large index instead of copying it into its own memory. FAISS stores the lists'
file name inside ``index.faiss``; it is written as the bare name and resolved against the
version folder on every read, so a version folder can be moved or copied whole.

Integrity: the manifest (written last) holds the SHA-256 and size of every other file of the
version (``files``) and the id of the catalog it was built from (``catalog_id``). Files are
checked when they are loaded: hashed unless the folder's verification stamp (``stamp.json``,
see :func:`pipeline.shards.verify_files`) vouches for them. A damaged version raises
:class:`DamagedState`; ``vistag index`` then rebuilds it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import (
    DamagedIndex,
    DamagedState,
    IndexFormatError,
    IndexNotFound,
)
from core.models import ModelIdentity
from indexer.build import ONDISK_FILE, ondisk_lists
from indexer.home import Home
from indexer.tables import REPAIR as VERSION_REPAIR
from indexer.tables import HitRow, HitTable, VectorTable
from pipeline import shards

FORMAT_VERSION = 1


INDEX_FILE = "index.faiss"


MMAP_MIN_BYTES = 256 * 2**20  # index files at least this large are memory-mapped for serving


STAMP_FILE = "stamp.json"


def read_index(path: Path, storage: str = "memory", mmap: bool | None = None) -> Any:
    """Read an index file of a version folder.

    ``storage="ondisk"``: the inverted lists are memory-mapped from ``index.ivfdata`` next to
    ``path`` (wherever the folder is now; read-only). Otherwise ``mmap``: True maps the file
    read-only instead of reading it, False reads it into memory, None (default) maps it when it
    is at least ``MMAP_MIN_BYTES``.
    """
    import faiss

    path = Path(path)
    if storage == "ondisk":
        # IO_FLAG_ONDISK_SAME_DIR does the same but printf()s to stdout; skip the data, then map
        # the lists file of this folder ourselves.
        index = faiss.read_index(str(path), faiss.IO_FLAG_SKIP_IVF_DATA | faiss.IO_FLAG_READ_ONLY)
        lists = ondisk_lists(index)
        if lists is None:
            raise IndexFormatError(
                f"{path} is marked on-disk but has no on-disk inverted lists; {VERSION_REPAIR}", str(path)
            )
        lists.filename = str(path.parent / ONDISK_FILE)
        if lists.totsize:
            lists.do_mmap()
        return index
    if mmap is None:
        mmap = path.stat().st_size >= MMAP_MIN_BYTES
    flags = 0
    if mmap:  # IO_FLAG_MMAP_IFC maps flat codes, HNSW storage and IVF lists alike (FAISS >= 1.11)
        flags = getattr(faiss, "IO_FLAG_MMAP_IFC", faiss.IO_FLAG_MMAP) | faiss.IO_FLAG_READ_ONLY
    return faiss.read_index(str(path), flags)


@dataclass(frozen=True)
class IndexVersion:
    """A published (or about to be published) index version folder."""

    path: Path
    manifest: dict[str, Any]

    @property
    def identity(self) -> ModelIdentity:
        return ModelIdentity.from_dict(self.manifest["model"])

    @property
    def name(self) -> str:
        return f"{self.manifest['model']['key']}/{self.path.name}"

    @property
    def storage(self) -> str:
        """``"memory"``, or ``"ondisk"`` when the inverted lists are in ``index.ivfdata``."""
        return str(self.manifest.get("storage", "memory"))

    def load(self, mmap: bool | None = None) -> Any:
        """The FAISS index with its tuned search parameters applied. Memory-mapped read-only when
        on disk, or when ``mmap`` is True, or (None) when the file is large; see :func:`read_index`."""
        from indexer.choice import set_search_params

        self.verify([INDEX_FILE, ONDISK_FILE])
        try:
            index = read_index(self.path / INDEX_FILE, self.storage, mmap)
        except (RuntimeError, MemoryError, OSError) as err:  # files written before checksums were recorded
            reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            raise DamagedState(
                f"index version {self.name} cannot be read ({reason}); {VERSION_REPAIR}", str(self.path)
            ) from err
        set_search_params(index, self.manifest.get("search", {}).get("params", {}))
        return index

    def verify(self, names: Iterable[str] | None = None, full: bool = False) -> int:
        """Check the version's files (``names``: those of them) against the manifest's checksums,
        hashing those the stamp does not vouch for (``full``: all); returns the bytes hashed.
        Raises :class:`DamagedState`; versions written without checksums are not checked."""
        files = self.manifest.get("files") or {}
        if names is not None:
            files = {n: files[n] for n in names if n in files}
        if not files:
            return 0
        return shards.verify_files(
            str(self.path),
            files,
            f"index version {self.name}",
            VERSION_REPAIR,
            full=full,
            stamp=str(self.path / STAMP_FILE),
        )

    def vector_table(self, home: Home) -> VectorTable | None:
        """Where the version's vectors live (re-ranked versions), or None; see :class:`VectorTable`."""
        return VectorTable.load(home, self, self.identity.embed_dim)

    def hit_table(self) -> HitTable | None:
        """What the version's hits show, or None for versions written before it; see :class:`HitTable`."""
        return HitTable.load(self)

    @property
    def rerank(self) -> int:
        return int(self.manifest.get("search", {}).get("rerank", 0))


def new_staging(home: Home, identity: ModelIdentity) -> Path:
    """A new temporary folder among ``identity``'s versions, to build an on-disk index into; it
    becomes the version folder (one rename) in :func:`write_version`, or is removed by recovery."""
    model_root = home.index_root / identity.key
    model_root.mkdir(parents=True, exist_ok=True)
    tmp = model_root / f".tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    return tmp


def write_version(
    home: Home,
    identity: ModelIdentity,
    index: Any,
    index_type: str,
    run_id: int | None,
    catalog_state: str = "",
    search: dict[str, Any] | None = None,
    locations: Sequence[tuple[int, str, str, int]] | None = None,
    catalog_id: str = "",
    hits: Iterable[HitRow] | None = None,
    engines: Sequence[dict[str, Any]] = (),
) -> IndexVersion:
    """Write ``index`` as the next version folder of ``identity``'s model (not yet published).

    ``catalog_state`` identifies the catalog content the index was built from (see
    :meth:`indexer.catalog.Catalog.live_state`), so a later run can tell whether it is current;
    ``search`` holds how to search it (``params`` such as nprobe, ``rerank``, measured recall).
    ``locations`` (the vectors the index was built from): written as the version's
    :class:`VectorTable` when its search re-ranks; ``hits`` (the catalog's
    :meth:`~indexer.catalog.Catalog.hit_rows`), with ``locations``, as its :class:`HitTable`.
    ``catalog_id``: the catalog's identity
    (:meth:`indexer.catalog.Catalog.catalog_id`). The manifest records every file's checksum.
    An on-disk index (see :func:`build_ondisk`) is finished in the staging folder it was built in.
    """
    import faiss

    model_root = home.index_root / identity.key
    lists = ondisk_lists(index)
    if lists is not None:
        tmp = Path(lists.filename).parent
        if tmp.parent.resolve() != model_root.resolve() or not tmp.name.startswith(".tmp-"):
            raise ValueError(
                f"on-disk index lists {lists.filename} are not in a staging folder of {model_root}"
            )
        built_at = lists.filename
        lists.filename = ONDISK_FILE  # stored inside index.faiss: the bare name keeps the folder relocatable
        try:
            faiss.write_index(index, str(tmp / INDEX_FILE))
        finally:
            lists.filename = built_at
    else:
        tmp = new_staging(home, identity)
        faiss.write_index(index, str(tmp / INDEX_FILE))
    manifest = {
        "format_version": FORMAT_VERSION,
        "model": identity.to_dict(),
        "metric": "inner_product",
        "count": int(index.ntotal),
        "dim": identity.embed_dim,
        "index_type": index_type,
        "id_map": "faiss id = catalog images.id",
        "run_id": run_id,
        "created": time.time(),
        "catalog_state": catalog_state,
        "search": search or {},
        "storage": "ondisk" if lists is not None else "memory",
        "catalog_id": catalog_id,
        "engines": list(engines),
    }
    if lists is not None:
        manifest["ivfdata"] = ONDISK_FILE
    if locations is not None and (search or {}).get("rerank"):
        VectorTable.write(tmp, locations)
    if locations is not None and hits is not None:
        HitTable.write(tmp, hits, np.fromiter((loc[0] for loc in locations), np.int64, len(locations)))
    manifest["files"] = {p.name: shards.checksum_file(str(p)) for p in sorted(tmp.iterdir()) if p.is_file()}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    _fsync_dir(tmp)
    numbers = [int(p.name[1:]) for p in model_root.glob("v[0-9]*") if p.name[1:].isdigit()]
    final = model_root / f"v{max(numbers, default=0) + 1:06d}"
    os.rename(tmp, final)
    return IndexVersion(final, manifest)


def _fsync_dir(path: Path) -> None:
    for child in path.iterdir():
        with open(child, "rb") as fh:
            os.fsync(fh.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(home: Home, version: IndexVersion) -> None:
    """Point CURRENT at ``version`` atomically, then delete versions older than the previous one."""
    try:
        previous = current_version_path(home)
    except DamagedState:
        previous = None
    tmp = home.current_pointer.with_name(f"CURRENT.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps({"path": str(version.path.relative_to(home.root))}))
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, home.current_pointer)
    keep = {version.path.resolve()} | ({previous.resolve()} if previous else set())
    for old in home.index_root.glob("*/v[0-9]*"):
        if old.resolve() not in keep:
            shutil.rmtree(old, ignore_errors=True)


def current_version_path(home: Home) -> Path | None:
    """The published version's folder (None: nothing published); :class:`DamagedState` when the
    pointer cannot be read."""
    try:
        pointer = json.loads(home.current_pointer.read_text())
        return home.root / pointer["path"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DamagedIndex(
            f"{home.current_pointer} is damaged ({err}); {VERSION_REPAIR}", str(home.current_pointer)
        ) from err


def current_version(home: Home) -> IndexVersion:
    """The published version; raises :class:`IndexNotFound` when nothing is published."""
    path = current_version_path(home)
    if path is None or not (path / "manifest.json").exists():
        raise IndexNotFound(f"no index published in {home.root}: run `vistag index PATH` first")
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError) as err:
        name = f"{path.parent.name}/{path.name}"
        message = f"index version {name}: unreadable manifest ({err}); {VERSION_REPAIR}"
        raise DamagedIndex(message, str(path)) from err
    if not isinstance(manifest, dict):
        message = f"index version {path.parent.name}/{path.name}: manifest is not an object; {VERSION_REPAIR}"
        raise DamagedIndex(message, str(path))
    if manifest.get("format_version") != FORMAT_VERSION:
        raise IndexFormatError(
            f"index {path} has unknown format version {manifest.get('format_version')}; {VERSION_REPAIR}",
            str(path),
        )
    return IndexVersion(path, manifest)
