"""The operations behind the routes, on one :class:`vistag.api.Archive`, shared by every request
thread."""

from __future__ import annotations

import contextlib
import hmac
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from core.decode import DecodeError
from core.errors import (
    InputError,
    NotFound,
)
from indexer.catalog import Catalog, ImageFilter
from query import corrections
from query.search import Hit, Searcher
from vistag.api import Archive
from vistag.http.config import (
    DETAIL_TAGS,
    ENV_WRITE_TOKEN,
    FACETS,
    FAISS_THREADS,
    HIT_TAGS,
    Busy,
    PayloadTooLarge,
    ServiceConfig,
    Unauthorized,
    UnsupportedMedia,
    WritesDisabled,
)
from vistag.http.duplicates import DuplicateReview
from vistag.http.metrics import Metrics
from vistag.http.thumbnails import ThumbnailCache, thumbnail_url


class Service:
    """Every operation of the API on one archive; thread-safe, shared by all request threads."""

    def __init__(self, archive: Archive, config: ServiceConfig):
        self.archive = archive
        self.config = config
        self.catalog: Catalog = archive.catalog
        # its own searcher: new queries' embeddings are kept in memory, never written to the catalog
        self.searcher = Searcher(
            archive.home, archive.catalog, archive.device, remember_texts=False, engine=archive.engine
        )
        self.thumbnails = ThumbnailCache(archive.home.root / "thumbnails", config.render_timeout_s)
        self.metrics = Metrics()
        self.review = DuplicateReview(archive.home, archive.catalog, self.searcher)
        self._write_lock = threading.Lock()  # one write (tag run, duplicate decision) at a time

    def search_text(self, q: str, k: int, where: ImageFilter) -> dict[str, Any]:
        return self._search("text", lambda: self.searcher.encode_text([q]), k, where)

    def search_upload(self, data: bytes, k: int, where: ImageFilter) -> dict[str, Any]:
        return self._search("image", lambda: self.embed_upload(data), k, where)

    def search_vector(self, vector: Sequence[float], k: int, where: ImageFilter) -> dict[str, Any]:
        return self._search("vector", lambda: self.query_vector(vector), k, where)

    def similar(self, image_id: int, k: int, where: ImageFilter) -> dict[str, Any]:
        row = self.image_row(image_id)
        return self._search("similar", lambda: self.searcher.image_vector(row["id"])[None, :], k, where)

    def _search(
        self, kind: str, encode: Callable[[], np.ndarray], k: int, where: ImageFilter
    ) -> dict[str, Any]:
        """Encode the query (1, D), search, join tags; observed in vistag_search_latency_seconds."""
        import faiss

        # Requests search in parallel threads; OpenMP teams inside each single-query search only
        # contend with them (10x slower per query measured on 2 busy cores). The OpenMP thread
        # count is per thread, so it is set in the request's own thread.
        faiss.omp_set_num_threads(FAISS_THREADS)
        start = time.perf_counter()
        hits = self.searcher.search_vectors(encode(), k, where)[0]
        tags = self.catalog.top_tags(self.catalog.latest_tag_run(), [h.id for h in hits], HIT_TAGS)
        seconds = time.perf_counter() - start
        self.metrics.search_latency.labels(kind).observe(seconds)
        return {
            "hits": [_hit(h, tags.get(h.id, [])) for h in hits],
            "k": k,
            "index_version": self.searcher.version().name,
            "took_ms": round(seconds * 1000, 3),
        }

    def query_vector(self, vector: Sequence[float]) -> np.ndarray:
        """(1, D) float32 L2-normalised query from a raw vector of the index's dimension."""
        dim = int(self.searcher.version().manifest["dim"])
        xq = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        if xq.shape[1] != dim:
            raise InputError(f"the vector has {xq.shape[1]} values; the index has {dim} dimensions")
        norm = float(np.linalg.norm(xq))
        if not math.isfinite(norm) or norm == 0:
            raise InputError("the vector must be finite and non-zero")
        return xq / norm

    def embed_upload(self, data: bytes) -> np.ndarray:
        """(1, D) float32 embedding of uploaded image bytes, with the index's model."""
        try:
            return self.searcher.embed_bytes(data, self.config.max_pixels)
        except DecodeError as err:
            raise _upload_error(err) from err

    def image_row(self, image_id: int) -> dict[str, Any]:
        """The catalog row of an indexed image; :class:`NotFound` for any other id."""
        row = self.catalog.image(int(image_id))
        if row["status"] != "indexed":
            raise NotFound(f"image {image_id} is {row['status']}, not indexed")
        return row

    def image(self, image_id: int) -> dict[str, Any]:
        row = self.image_row(image_id)
        tags = self.catalog.top_tags(self.catalog.latest_tag_run(), [row["id"]], DETAIL_TAGS).get(
            row["id"], []
        )
        return self.catalog.details(row) | {
            "tags": tags,
            "thumbnail": thumbnail_url(row["id"]),
        }

    def thumbnail(self, row: dict[str, Any], size: int) -> bytes:
        """JPEG bytes of an image row's thumbnail: cached, else rendered (see :class:`ThumbnailCache`)."""
        jpeg = self.thumbnails.cached(row["sha256"], size)
        self.metrics.thumbnails.labels("miss" if jpeg is None else "hit").inc()
        return jpeg if jpeg is not None else self.thumbnails.render(row, size)

    def check_size(self, size: int) -> int:
        if size not in self.config.thumbnail_sizes:
            raise InputError(f"size must be one of {', '.join(map(str, self.config.thumbnail_sizes))}")
        return size

    def labels(self) -> dict[str, Any]:
        run = self.catalog.latest_tag_run()
        return {"tag_run": run, "labels": self.catalog.label_counts(run, HIT_TAGS)}

    def facets(self) -> dict[str, Any]:
        """The most common keywords and tags (the tag filter's rule), and the range of dates taken."""
        run = self.catalog.latest_tag_run()
        return {"tag_run": run} | self.catalog.facets(run, HIT_TAGS, FACETS)

    def status(self) -> dict[str, Any]:
        """Counts, model and index (no home path or database URL), tag run, limits."""
        status = {k: v for k, v in self.archive.status().items() if k not in ("home", "database")}
        return status | {
            "tag_run": self.catalog.latest_tag_run(),
            "limits": self.config.limits(),
            "writes_enabled": self.config.write_token is not None,
        }

    def authorize(self, header: str | None) -> None:
        """Raise unless ``header`` is ``Bearer TOKEN`` with this server's write token."""
        token = self.config.write_token
        if token is None:
            raise WritesDisabled(
                f"write operations are disabled: start the server with --write-token or {ENV_WRITE_TOKEN}"
            )
        scheme, _, given = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise Unauthorized("missing or wrong bearer token")

    def tag(self, labels: list[str] | str, top: int) -> dict[str, Any]:
        """Run a zero-shot tag run over the archive (one write at a time)."""
        names = labels.split(",") if isinstance(labels, str) else list(labels)  # never a file name
        if len(names) > self.config.max_labels:
            raise InputError(f"at most {self.config.max_labels} labels")
        with self._one_write():
            result = self.archive.tag(names, top=top)
        return {"run_id": result.run_id, "images": result.images, "labels": list(result.labels)}

    def duplicates(self, kind: str, threshold: int | None) -> dict[str, Any]:
        """Duplicate groups (see :meth:`DuplicateReview.listing`); cached, shared: do not change it."""
        return self.review.listing(kind, threshold)

    def resolve_duplicates(
        self, group: str, keep: int | None, not_duplicates: bool, threshold: int | None
    ) -> dict[str, Any]:
        """Record a decision about a listed duplicate group (one write at a time)."""
        with self._one_write():
            return self.review.resolve(group, keep, not_duplicates, threshold)

    def correct(self, image_id: int, label: str, verdict: str) -> dict[str, Any]:
        """Confirm (``yes``) or reject (``no``) ``label`` for an indexed image's content."""
        return corrections.correct(self.catalog, [self.image_row(image_id)["id"]], label, verdict)[0]

    def corrections(self, label: str | None, limit: int) -> dict[str, Any]:
        """The active corrections, newest first, of ``label`` (any case) or all."""
        return {"corrections": corrections.listing(self.catalog, label, limit=limit)}

    def withdraw(self, correction_id: int) -> dict[str, Any]:
        """Withdraw one correction; :class:`NotFound` when there is no such correction."""
        done = corrections.withdraw(self.catalog, [correction_id])
        return {"id": correction_id, "withdrawn": correction_id in done["withdrawn"]}

    @contextlib.contextmanager
    def _one_write(self) -> Iterator[None]:
        """Hold the service's write lock; :class:`Busy` if another write holds it."""
        if not self._write_lock.acquire(blocking=False):
            raise Busy("another write (a tag run or a duplicate decision) is running; try again when it ends")
        try:
            yield
        finally:
            self._write_lock.release()


def _hit(hit: Hit, tags: list[dict]) -> dict[str, Any]:
    return hit.to_dict() | {"tags": tags, "thumbnail": thumbnail_url(hit.id)}


def _upload_error(err: DecodeError) -> InputError:
    if err.reason.startswith("decompression bomb"):
        return PayloadTooLarge(f"image too large: {err.reason}")
    if err.reason.startswith("not a recognised image"):
        return UnsupportedMedia(f"not an image: {err.reason}")
    return InputError(f"unusable image: {err.reason}")
