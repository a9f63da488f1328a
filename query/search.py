"""Text-to-image and image-to-image search over the published index, with filters.

The searcher reads only published state: it follows the CURRENT pointer on every query and
switches to a newly published version without a restart. It loads the model recorded in the
version's manifest, so queries are always encoded by the model that built the index.

Large indexes are memory-mapped, not copied into the process: on-disk versions always (their
inverted lists stay in ``index.ivfdata``), others when ``index.faiss`` is at least
``indexer.versions.MMAP_MIN_BYTES`` (256 MiB); ``Searcher(mmap=True/False)`` forces either way.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core import engines, uris
from core.errors import CatalogMismatch, InputError, ModelMismatch, NotFound
from core.models import LoadedModel, load_model
from indexer import check, vectors, versions
from indexer.catalog import Catalog, ImageFilter
from indexer.home import Home
from indexer.tables import HitTable, VectorTable
from query.text import TextEncoder, TextMemo

MAX_K = 10_000


@dataclass(frozen=True)
class Hit:
    """One search result: catalog image id (= FAISS id), its uri, cosine score and metadata."""

    id: int
    uri: str
    score: float
    width: int | None = None
    height: int | None = None
    sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "uri": self.uri,
            "score": round(self.score, 6),
            "width": self.width,
            "height": self.height,
            "sha256": self.sha256,
        }


class Searcher:
    """Answers queries from the published index version of a home.

    ``remember_texts``: new text queries' embeddings are stored in the catalog's cache (the CLI:
    a repeated query then needs no model); false for a server, which keeps them in a bounded
    in-memory cache instead (anyone could fill a database with queries).
    """

    def __init__(
        self,
        home: Home,
        catalog: Catalog,
        device: str | None = None,
        mmap: bool | None = None,
        *,
        remember_texts: bool = True,
        engine: str | None = None,
    ):
        self.home = home
        self.catalog = catalog
        self.device = device
        self.engine = engine  # for text: auto, torch or openvino (see core.engines)
        self.mmap = mmap
        self.remember_texts = remember_texts
        self._lock = threading.Lock()
        self._version: versions.IndexVersion | None = None
        self._index: Any = None
        self._vectors: VectorTable | None = None
        self._hits: HitTable | None = None
        self._model: LoadedModel | None = None
        self._memo = TextMemo()
        self._read_mark: tuple[int, int, int] | None = None  # of the CURRENT file the version came from

    def version(self) -> versions.IndexVersion:
        """The current version, reloading the index if a newer one was published;
        :class:`CatalogMismatch` when the catalog is not the one it was built from."""
        with self._lock:
            mark = self._pointer_mark()
            if self._version is not None and mark is not None and mark == self._read_mark:
                return self._version
            path = versions.current_version_path(self.home)
            if self._version is None or path != self._version.path:
                version = versions.current_version(self.home)
                problem = check.catalog_problem(self.home, self.catalog, version)
                if problem:
                    raise CatalogMismatch(problem)
                self._index = version.load(self.mmap)
                self._vectors, self._hits = version.vector_table(self.home), version.hit_table()
                self._version, self._memo = version, TextMemo()
            self._read_mark = mark
            return self._version

    def _pointer_mark(self) -> tuple[int, int, int] | None:
        """What tells one CURRENT file from the next (publishing replaces it: a new inode), by one stat."""
        try:
            st = os.stat(self.home.current_pointer)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def model(self) -> LoadedModel:
        """The version's model (loaded once; :class:`ModelMismatch` if its files changed since)."""
        identity = self.version().identity
        with self._lock:
            if self._model is None or self._model.identity.key != identity.key:
                loaded = load_model(identity.spec(), self.device)
                if loaded.identity.key != identity.key:
                    raise ModelMismatch(
                        f"model files of {identity.model} changed since the index was built "
                        f"(key {loaded.identity.key} != {identity.key}); re-run `vistag index`"
                    )
                self._model = loaded
            return self._model

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), D) float32 query embeddings: from the caches when they hold them (no model
        is loaded then), else encoded by the version's model."""
        return self.text_encoder(remember=self.remember_texts, memo=self._memo).encode(list(texts))

    def text_encoder(
        self, catalog: Catalog | None = None, *, remember: bool = True, memo: TextMemo | None = None
    ) -> TextEncoder:
        """A text encoder of the version's model (loaded only when no cache holds a text), with
        this searcher's engine; embeddings cached in ``catalog`` (default: the searcher's)."""
        return TextEncoder(
            self.model,
            catalog=catalog or self.catalog,
            identity=self.version().identity,
            remember=remember,
            memo=memo,
            engine=self.engine,
            engine_cache=engines.cache_root(self.home.root),
        )

    def search_vectors(self, xq: np.ndarray, k: int, where: ImageFilter | None = None) -> list[list[Hit]]:
        """Top-k hits for each row of ``xq`` (Q, D) float32, among the images that pass ``where``,
        scored the same way with or without it (lossy codes are re-ranked with the stored vectors)."""
        k = _check_k(k)
        version = self.version()
        with self._lock:
            index, table = self._index, self._vectors
        ids = self.catalog.matching_ids(where) if where else None
        if ids is not None and not len(ids):
            return [[] for _ in range(len(xq))]
        params = vectors.only_ids(index, ids) if ids is not None else None
        xq = np.ascontiguousarray(xq, dtype=np.float32)
        k = min(k, max(index.ntotal, 1), len(ids) if ids is not None else k)
        if version.rerank:  # lossy codes: re-score candidates with the stored vectors
            fetch = (
                table.fetch
                if table is not None
                # versions written before the table: the catalog
                else (lambda found: vectors.stored_vectors(self.home, self.catalog, version.identity, found))
            )
            D, I = vectors.rerank_search(index, xq, k, version.rerank, fetch, params)
        else:
            D, I = index.search(xq, k, params=params)
        if ids is not None:
            D, I = self._complete(xq, k, ids, D, I)
        return [self._join(d, i) for d, i in zip(D, I, strict=True)]

    def _complete(
        self, xq: np.ndarray, k: int, ids: np.ndarray, D: np.ndarray, I: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """A filtered search returns ``k`` hits whenever ``k`` images pass the filter: the queries an
        approximate index left short (an HNSW walk or the probed IVF lists meet too few of ``ids``)
        are searched again exactly among ``ids``' stored vectors."""
        short = (I >= 0).sum(axis=1) < min(k, len(ids))
        if not short.any():
            return D, I
        identity = self.version().identity
        locations = self.catalog.vector_locations(self.catalog.model_id(identity), ids=[int(i) for i in ids])
        exact_d, exact_i = vectors.exact_search(self.home, locations, identity.embed_dim, xq[short], k)
        D, I = D.copy(), I.copy()
        D[short], I[short] = exact_d, exact_i
        return D, I

    def _join(self, D: np.ndarray, I: np.ndarray) -> list[Hit]:
        """Hits of one query's (k,) scores and ids: from the version's hit table, or (versions
        written before it) the catalog's indexed images."""
        ids = [int(i) for i in I if i >= 0]
        with self._lock:
            hits = self._hits
        if hits is not None:
            rows = hits.rows(ids)
        else:
            rows = {
                r["id"]: (r["id"], r["uri"], r["width"], r["height"], r["sha256"])
                for r in self.catalog.images(ids)
            }
        return [
            Hit(row[0], row[1], float(d), row[2], row[3], row[4])
            for d, i in zip(D, I, strict=True)
            if (row := rows.get(int(i))) is not None
        ]

    def search(self, text: str, k: int = 10, where: ImageFilter | None = None) -> list[Hit]:
        """Text-to-image search."""
        return self.search_vectors(self.encode_text([text]), k, where)[0]

    def similar(
        self, image: int | str | os.PathLike[str], k: int = 10, where: ImageFilter | None = None
    ) -> list[Hit]:
        """Image-to-image search from an indexed image id or uri, or any image file."""
        return self.search_vectors(self.image_vector(image)[None, :], k, where)[0]

    def image_vector(self, image: int | str | os.PathLike[str]) -> np.ndarray:
        """(D,) float32 embedding of an indexed image (by id or uri) or of an image file."""
        try:
            image_id = self.image_id(image)
            if self.catalog.image(image_id)["status"] == "indexed":
                return self._stored_vector(image_id)
        except NotFound:
            if is_image_id(image):
                raise
        uri = uris.normalize(os.fspath(image))
        if uris.is_remote(uri) or not os.path.isfile(uris.to_path(uri)):
            raise NotFound(f"{uri} is neither an indexed image id nor an image file")
        return self.embed_file(uri)

    def image_id(self, image: int | str | os.PathLike[str]) -> int:
        """Catalog id of an indexed image given by id or path; raises :class:`NotFound`."""
        if is_image_id(image):
            return int(self.catalog.image(int(image))["id"])
        return int(self.catalog.image(uris.normalize(os.fspath(image)))["id"])

    def _stored_vector(self, image_id: int) -> np.ndarray:
        version = self.version()
        with self._lock:
            index = self._index
        try:
            return index.reconstruct(int(image_id))
        except RuntimeError:  # IVF and on-disk indexes keep no id -> position map: read the shards
            pass
        with self._lock:
            table = self._vectors
        try:
            if table is not None:
                return table.fetch(np.array([int(image_id)]))[0]
            return vectors.stored_vectors(self.home, self.catalog, version.identity, [int(image_id)])[0]
        except KeyError as err:
            raise NotFound(f"image {image_id} is not in the published index") from err

    def embed_file(self, path: str) -> np.ndarray:
        """Embed one image file with the index's model: (D,) float32."""
        from core.decode import DecodeError

        try:
            return self.embed_bytes(uris.read_local(path), name=path)[0]
        except DecodeError as err:
            raise InputError(f"{path}: {err.reason}") from err

    def embed_bytes(self, data: bytes, max_pixels: int | None = None, name: str = "") -> np.ndarray:
        """(1, D) float32 embedding of the image in ``data`` (file name ``name``, if any: it tells
        camera RAW files whose content is a plain TIFF) with the index's model;
        :class:`core.decode.DecodeError` when it is no usable image (within ``max_pixels``)."""
        from core.decode import DEFAULT_MAX_PIXELS, decode_image
        from core.encode import encode_images

        model = self.model()
        size = model.identity.preprocess.get("size", 224)
        draft = int(size if isinstance(size, int) else max(size))
        decoded = decode_image(data, max_pixels=max_pixels or DEFAULT_MAX_PIXELS, draft_size=draft, name=name)
        return encode_images(model, [model.transform(decoded.image)])


def is_image_id(image: object) -> bool:
    """Whether ``image`` names a catalog id (an int, or digits that are not an existing file's name)."""
    return isinstance(image, int) or (isinstance(image, str) and image.isdigit() and not Path(image).exists())


def _check_k(k: int) -> int:
    if not isinstance(k, int) or k < 1 or k > MAX_K:
        raise InputError(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
    return k
