"""Text-to-image and image-to-image search over the published index, joined with the catalog.

The searcher reads only published state: it follows the CURRENT pointer on every query and
switches to a newly published version without a restart. It loads the model recorded in the
version's manifest, so queries are always encoded by the model that built the index.

Large indexes are memory-mapped, not copied into the process: on-disk versions always (their
inverted lists stay in ``index.ivfdata``), others when ``index.faiss`` is at least
``indexer.index.MMAP_MIN_BYTES`` (256 MiB); ``Searcher(mmap=True/False)`` forces either way.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer import index as versions
from indexer.catalog import Catalog
from indexer.home import Home
from query.text import TextEncoder
from vistag import uris
from vistag.errors import InputError, ModelMismatch, NotFound
from vistag.models import LoadedModel, load_model

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
        return {"id": self.id, "uri": self.uri, "score": round(self.score, 6), "width": self.width,
                "height": self.height, "sha256": self.sha256}  # fmt: skip


class Searcher:
    """Answers queries from the published index version of a home."""

    def __init__(self, home: Home, catalog: Catalog, device: str | None = None, mmap: bool | None = None):
        self.home = home
        self.catalog = catalog
        self.device = device
        self.mmap = mmap
        self._lock = threading.Lock()
        self._version: versions.IndexVersion | None = None
        self._index: Any = None
        self._vectors: versions.VectorTable | None = None
        self._model: LoadedModel | None = None

    def version(self) -> versions.IndexVersion:
        """The current version, reloading the index if a newer one was published."""
        with self._lock:
            path = versions.current_version_path(self.home)
            if self._version is None or path != self._version.path:
                version = versions.current_version(self.home)
                self._index = version.load(self.mmap)
                self._vectors = versions.VectorTable.load(self.home, version)
                self._version = version
            return self._version

    def model(self) -> LoadedModel:
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

    def encode_text(self, texts: list[str]) -> np.ndarray:
        return TextEncoder(self.model()).encode(texts)

    def search_vectors(self, xq: np.ndarray, k: int) -> list[list[Hit]]:
        """Top-k hits for each row of ``xq`` (Q, D) float32."""
        k = _check_k(k)
        version = self.version()
        with self._lock:
            index, table = self._index, self._vectors
        xq = np.ascontiguousarray(xq, dtype=np.float32)
        k = min(k, max(index.ntotal, 1))
        if version.rerank:  # lossy codes: re-score candidates with the stored vectors
            fetch = table.fetch if table is not None else (  # versions written before the table: the catalog
                lambda ids: versions.stored_vectors(self.home, self.catalog, version.identity, ids)
            )
            D, I = versions.rerank_search(index, xq, k, version.rerank, fetch)
        else:
            D, I = index.search(xq, k)
        return [self._join(d, i) for d, i in zip(D, I, strict=True)]

    def _join(self, D: np.ndarray, I: np.ndarray) -> list[Hit]:
        ids = [int(i) for i in I if i >= 0]
        rows = {r["id"]: r for r in self.catalog.images(ids)}
        return [
            Hit(int(i), rows[int(i)]["uri"], float(d), rows[int(i)]["width"], rows[int(i)]["height"],
                rows[int(i)]["sha256"])  # fmt: skip
            for d, i in zip(D, I, strict=True)
            if int(i) in rows
        ]

    def search(self, text: str, k: int = 10) -> list[Hit]:
        """Text-to-image search."""
        return self.search_vectors(self.encode_text([text]), k)[0]

    def similar(self, image: int | str | os.PathLike[str], k: int = 10) -> list[Hit]:
        """Image-to-image search from an indexed image id or uri, or any image file."""
        return self.search_vectors(self.image_vector(image)[None, :], k)[0]

    def image_vector(self, image: int | str | os.PathLike[str]) -> np.ndarray:
        """(D,) float32 embedding of an indexed image (by id or uri) or of an image file."""
        try:
            image_id = self.image_id(image)
            if self.catalog.image(image_id)["status"] == "indexed":
                return self._stored_vector(image_id)
        except NotFound:
            if _is_id(image):
                raise
        uri = uris.normalize(os.fspath(image))
        if uris.is_remote(uri) or not os.path.isfile(uris.to_path(uri)):
            raise NotFound(f"{uri} is neither an indexed image id nor an image file")
        return self.embed_file(uri)

    def image_id(self, image: int | str | os.PathLike[str]) -> int:
        """Catalog id of an indexed image given by id or path; raises :class:`NotFound`."""
        if _is_id(image):
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
        try:
            return versions.stored_vectors(self.home, self.catalog, version.identity, [int(image_id)])[0]
        except KeyError as err:
            raise NotFound(f"image {image_id} is not in the published index") from err

    def embed_file(self, path: str) -> np.ndarray:
        """Embed one image file with the index's model: (D,) float32."""
        from pipeline.decode import DecodeError, decode_image
        from pipeline.handler import encode_images

        model = self.model()
        size = model.identity.preprocess.get("size", 224)
        draft = int(size if isinstance(size, int) else max(size))
        try:
            decoded = decode_image(uris.read_local(path), draft_size=draft)
        except DecodeError as err:
            raise InputError(f"{path}: {err.reason}") from err
        return encode_images(model, [model.transform(decoded.image)])[0]


def _is_id(image: object) -> bool:
    return isinstance(image, int) or (isinstance(image, str) and image.isdigit() and not Path(image).exists())


def _check_k(k: int) -> int:
    if not isinstance(k, int) or k < 1 or k > MAX_K:
        raise InputError(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
    return k
