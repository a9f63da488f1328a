"""The HTTP query service: a JSON API with an OpenAPI schema, Prometheus metrics, and the web page.

``create_app(archive, config)`` builds a FastAPI app around one :class:`vistag.api.Archive`,
shared by every request thread; its Searcher follows the CURRENT pointer on each query, so a newly
published index version is served without a restart. ``serve`` runs the app on uvicorn.

Errors: library code raises typed :class:`vistag.errors.VistagError`; :data:`HTTP_STATUS` maps each
type to a status code in one place, and every error body is ``{"error": message}``.

Safety: files are read only for catalog rows looked up by integer id, never from a path in the
request, and only from a regular file whose bytes still hash to the row's sha256; renders and
request bodies have time limits; k, query length, request bodies, uploads (bytes and pixels),
metric label values and open connections are bounded; uploads stay in memory and are never stored;
writes need ``Authorization: Bearer TOKEN`` and are off without a configured token; a
loopback-bound server answers only loopback host names and its own address (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import ipaddress
import logging
import math
import os
import re
import socket
import stat
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import sqlalchemy as sa
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from indexer import schema as t
from indexer.catalog import Catalog
from pipeline.decode import DEFAULT_MAX_PIXELS, DecodeError, decode_image
from pipeline.inputs import is_remote
from query.search import MAX_K, Hit, Searcher
from vistag.errors import (
    CatalogError,
    EmptyCorpus,
    IndexNotFound,
    InputError,
    LockHeld,
    ModelLoadError,
    ModelMismatch,
    NotFound,
    ShardFormatError,
    VistagError,
)

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
ENV_WRITE_TOKEN = "VISTAG_WRITE_TOKEN"
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
HIT_TAGS = 3  # tags shown with each hit, and the ranks the tag filter accepts ("among its top 3")
DETAIL_TAGS = 10
MAX_SOURCE_BYTES = 256 * 1024 * 1024  # largest catalog file read for a thumbnail
MULTIPART_OVERHEAD = 64 * 1024
MIN_TOKEN_CHARS = 16
MAX_ID = 2**63 - 1
RENDER_SLOTS = 2  # thumbnails rendered at once
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
FAISS_THREADS = 1  # OpenMP threads per FAISS search of a request (see Service._search)


# -- configuration and errors ---------------------------------------------------------------------
@dataclass(frozen=True)
class ServiceConfig:
    """Limits and the write token of one server. ``allowed_hosts`` None answers any Host header."""

    max_k: int = 200
    max_query_chars: int = 1000
    max_upload_bytes: int = 20 * 1024 * 1024
    max_body_bytes: int = 1024 * 1024
    max_pixels: int = 40_000_000
    max_labels: int = 1000
    thumbnail_sizes: tuple[int, ...] = (128, 256, 512)
    render_timeout_s: float = 10.0  # a thumbnail request waits this long in all (render slot + render)
    body_timeout_s: float = 30.0  # a request body must arrive within this long (else 408)
    max_connections: int = 100  # open connections; beyond, uvicorn answers 503
    write_token: str | None = None
    allowed_hosts: tuple[str, ...] | None = LOOPBACK_HOSTS

    def __post_init__(self) -> None:
        if not 1 <= self.max_k <= MAX_K:
            raise InputError(f"--max-k must be from 1 to {MAX_K}, got {self.max_k}")
        if not (self.render_timeout_s > 0 and self.body_timeout_s > 0 and self.max_connections >= 1):
            raise InputError("time limits must be positive and max_connections at least 1")
        if self.write_token is not None and len(self.write_token) < MIN_TOKEN_CHARS:
            raise InputError(f"the write token must have at least {MIN_TOKEN_CHARS} characters")

    def limits(self) -> dict[str, Any]:
        """The limits a client may want to know (no token)."""
        return {k: v for k, v in asdict(self).items() if k not in ("write_token", "allowed_hosts")}


class PayloadTooLarge(InputError):
    """A request body, an upload or an image's pixel count is over its limit."""


class UnsupportedMedia(InputError):
    """An upload is not an image, or not sent as multipart/form-data."""


class Unauthorized(VistagError):
    """A write request without the right bearer token."""


class WritesDisabled(VistagError):
    """A write request to a server started without a write token."""


class Busy(VistagError):
    """Another write operation is running."""


class FileChanged(VistagError):
    """The file at an indexed path no longer has the bytes that were indexed."""


class Overloaded(VistagError):
    """A bounded wait ran out: every render slot stayed busy, or a render took too long."""


HTTP_STATUS: dict[type[VistagError], int] = {
    PayloadTooLarge: 413, UnsupportedMedia: 415, InputError: 400, NotFound: 404, Unauthorized: 401,
    WritesDisabled: 403, Busy: 409, LockHeld: 409, FileChanged: 409, Overloaded: 503, IndexNotFound: 503,
    EmptyCorpus: 503, ModelLoadError: 503, ModelMismatch: 503, CatalogError: 503, ShardFormatError: 500,
    VistagError: 500,
}  # fmt: skip


def http_status(err: VistagError) -> int:
    """The status code of the most specific class of ``err`` in :data:`HTTP_STATUS`."""
    return next(HTTP_STATUS[c] for c in type(err).__mro__ if c in HTTP_STATUS)


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


# -- filters --------------------------------------------------------------------------------------
def parse_time(text: str, *, end: bool = False) -> float:
    """Seconds since the epoch from epoch seconds or an ISO 8601 date or datetime.

    Without an offset, times are UTC. A date alone as an end bound means the end of that day.
    """
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is not None:
        if not math.isfinite(value):
            raise InputError(f"not a finite time: {text!r}")
        return value
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            day = datetime.combine(date.fromisoformat(text), datetime.min.time(), timezone.utc)
            return (day + timedelta(days=1)).timestamp() - 1e-3 if end else day.timestamp()
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as err:
        raise InputError(f"not an ISO 8601 date or epoch seconds: {text[:40]!r}") from err
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


@dataclass(frozen=True)
class Filters:
    """Search filters: a label among an image's top tags (latest tag run), a uri prefix, an mtime range."""

    tag: str | None = None
    prefix: str | None = None
    since: float | None = None
    until: float | None = None

    @classmethod
    def parse(cls, tag: str | None, prefix: str | None, since: str | None, until: str | None) -> Filters:
        lo = parse_time(since) if since else None
        hi = parse_time(until, end=True) if until else None
        if lo is not None and hi is not None and lo > hi:
            raise InputError("since is after until")
        return cls(tag or None, prefix or None, lo, hi)

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.tag, self.prefix, self.since, self.until))


def matching_ids(catalog: Catalog, filters: Filters, tag_run: int | None) -> np.ndarray:
    """(n,) int64 ids of the indexed images that pass every filter."""
    i = t.images
    query = sa.select(i.c.id).where(i.c.status == "indexed")
    if filters.prefix is not None:  # substr, not LIKE: exact and case-sensitive on every backend
        query = query.where(sa.func.substr(i.c.uri, 1, len(filters.prefix)) == filters.prefix)
    if filters.since is not None:
        query = query.where(i.c.mtime >= filters.since)
    if filters.until is not None:
        query = query.where(i.c.mtime <= filters.until)
    if filters.tag is not None:
        if tag_run is None:
            return np.empty(0, dtype=np.int64)
        tagged = (
            sa.select(t.tags.c.image_id)
            .join(t.labels, t.labels.c.id == t.tags.c.label_id)
            .where(t.tags.c.run_id == tag_run, t.labels.c.name == filters.tag, t.tags.c.rank < HIT_TAGS)
        )
        query = query.where(i.c.id.in_(tagged))
    with catalog.engine.connect() as conn:
        return np.fromiter(conn.execute(query).scalars(), dtype=np.int64)


def top_tags(catalog: Catalog, tag_run: int | None, ids: Sequence[int], ranks: int) -> dict[int, list[dict]]:
    """image id -> its ``ranks`` best tags of ``tag_run``: [{label, score, confidence, rank, method}]
    best first; confidence is calibrated in [0, 1], or None for runs that stored none."""
    if tag_run is None or not ids:
        return {}
    tg = t.tags
    query = (
        sa.select(tg.c.image_id, t.labels.c.name, tg.c.score, tg.c.confidence, tg.c.rank, tg.c.method)
        .join(t.labels, t.labels.c.id == tg.c.label_id)
        .where(tg.c.run_id == tag_run, tg.c.image_id.in_([int(i) for i in ids]), tg.c.rank < ranks)
        .order_by(tg.c.image_id, tg.c.rank)
    )
    out: dict[int, list[dict]] = {}
    with catalog.engine.connect() as conn:
        for image_id, label, score, confidence, rank, method in conn.execute(query):
            conf = None if confidence is None else round(float(confidence), 6)
            tag = {"label": label, "score": round(float(score), 6), "confidence": conf}
            out.setdefault(int(image_id), []).append(tag | {"rank": int(rank), "method": method})
    return out


def label_counts(catalog: Catalog, tag_run: int | None) -> list[dict[str, Any]]:
    """[{label, count}], most frequent first: labels of the tag run that are among the top tags of
    ``count`` > 0 images (the values the tag filter can match)."""
    if tag_run is None:
        return []
    count = sa.func.count(t.tags.c.image_id)
    query = (
        sa.select(t.labels.c.name, count)
        .join(t.labels, t.labels.c.id == t.tags.c.label_id)
        .where(t.tags.c.run_id == tag_run, t.tags.c.rank < HIT_TAGS)
        .group_by(t.labels.c.name)
        .order_by(count.desc(), t.labels.c.name)
    )
    with catalog.engine.connect() as conn:
        return [{"label": name, "count": int(n)} for name, n in conn.execute(query)]


def ranked_hits(searcher: Searcher, xq: np.ndarray, k: int, ids: np.ndarray | None) -> list[Hit]:
    """Top-k hits of one query ``xq`` (1, D) float32, among ``ids`` (n,) int64 when given.

    The id restriction is a FAISS IDSelector on the searcher's loaded index: exact for any filter,
    however selective. (It belongs in Searcher.search_vectors; until then it reads its index here.)
    """
    if ids is None:
        return searcher.search_vectors(xq, k)[0]
    if not len(ids):
        return []
    import faiss

    searcher.version()
    with searcher._lock:
        index = searcher._index
    params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(ids))
    D, I = index.search(np.ascontiguousarray(xq, dtype=np.float32), min(k, len(ids)), params=params)
    return searcher._join(D[0], I[0])


# -- thumbnails -----------------------------------------------------------------------------------
def read_catalog_file(uri: str, max_bytes: int = MAX_SOURCE_BYTES) -> bytes:
    """The bytes of a catalog image (local path or any Beam filesystem URI)."""
    try:
        if is_remote(uri):
            from apache_beam.io.filesystems import FileSystems

            with FileSystems.open(uri, compression_type="uncompressed") as fh:
                data = fh.read(max_bytes + 1)
        else:
            data = _read_regular_file(uri.removeprefix("file://"), max_bytes + 1)
    except Exception as err:  # any filesystem's error: vanished, not a file, permission, I/O
        raise NotFound(f"the image file can no longer be read ({type(err).__name__})") from err
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"the image file is larger than {max_bytes} bytes")
    return data


def _read_regular_file(path: str, max_bytes: int) -> bytes:
    """At most ``max_bytes`` of ``path``; opened without blocking (a FIFO or device put at an indexed
    path would block ``open`` or ``read`` forever), :class:`OSError` unless it is a regular file."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"not a regular file: {path}")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read(max_bytes)
    finally:
        os.close(fd)


def render_thumbnail(data: bytes, size: int) -> bytes:
    """JPEG bytes of the image in ``data`` scaled to fit a ``size`` x ``size`` box."""
    from PIL import Image

    try:
        image = decode_image(data, max_pixels=DEFAULT_MAX_PIXELS, draft_size=size).image.copy()
    except DecodeError as err:
        raise NotFound(f"the image file can no longer be decoded: {err.reason}") from err
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=85, optimize=True)
    return buf.getvalue()


class ThumbnailCache:
    """JPEG thumbnails in ``root``/<sha[:2]>/<sha>-<size>.jpg, keyed by content hash and size."""

    def __init__(self, root: Path):
        self.root = root

    def path(self, sha256: str, size: int) -> Path | None:
        if not re.fullmatch(r"[0-9a-f]{64}", sha256 or ""):
            return None
        return self.root / sha256[:2] / f"{sha256}-{size}.jpg"

    def cached(self, sha256: str, size: int) -> bytes | None:
        path = self.path(sha256, size)
        try:
            return path.read_bytes() if path is not None else None
        except FileNotFoundError:
            return None

    def render(self, row: dict[str, Any], size: int) -> bytes:
        """Render the thumbnail of a catalog image row and cache it (written atomically);
        :class:`FileChanged` if the file's bytes no longer hash to the row's sha256."""
        data = read_catalog_file(row["uri"])
        path = self.path(row["sha256"], size)
        if path is None or hashlib.sha256(data).hexdigest() != row["sha256"]:
            raise FileChanged("the file changed since it was indexed; re-run `vistag index` to show it")
        jpeg = render_thumbnail(data, size)
        self._write(path, jpeg)
        return jpeg

    @staticmethod
    def _write(path: Path, jpeg: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            tmp.write_bytes(jpeg)
            os.replace(tmp, path)
        except OSError as err:  # a read-only home still serves thumbnails, uncached
            log.warning("cannot cache thumbnail %s: %s", path, err)
            tmp.unlink(missing_ok=True)


# -- metrics --------------------------------------------------------------------------------------
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Prometheus metrics of one app, in their own registry (no global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("vistag_http_requests", "HTTP requests by method, route and status code",
                                ["method", "route", "status"], registry=r)  # fmt: skip
        self.request_latency = Histogram("vistag_http_request_duration_seconds", "HTTP request duration",
                                         ["method", "route"], buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.search_latency = Histogram("vistag_search_latency_seconds", "Search time in the service (encode, "
                                        "FAISS search, catalog join) by query kind", ["kind"],
                                        buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.thumbnails = Counter(
            "vistag_thumbnails", "Thumbnail requests by cache result", ["cache"], registry=r
        )
        ProcessCollector(registry=r)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """``method`` is any token a client sent: others than :data:`HTTP_METHODS` count as "other"."""
        method = method if method in HTTP_METHODS else "other"
        self.requests.labels(method, route, str(int(status))).inc()
        self.request_latency.labels(method, route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


# -- the operations behind the routes -------------------------------------------------------------
class Service:
    """Every operation of the API on one archive; thread-safe, shared by all request threads."""

    def __init__(self, archive: Any, config: ServiceConfig):
        self.archive = archive
        self.config = config
        self.catalog: Catalog = archive.catalog
        self.searcher: Searcher = archive.searcher  # made here, before request threads could race on it
        self.thumbnails = ThumbnailCache(archive.home.root / "thumbnails")
        self.metrics = Metrics()
        self._write_lock = threading.Lock()
        self._render_slots = threading.BoundedSemaphore(RENDER_SLOTS)

    def search_text(self, q: str, k: int, filters: Filters) -> dict[str, Any]:
        return self._search("text", lambda: self.searcher.encode_text([q]), k, filters)

    def search_upload(self, data: bytes, k: int, filters: Filters) -> dict[str, Any]:
        return self._search("image", lambda: self.embed_upload(data), k, filters)

    def search_vector(self, vector: Sequence[float], k: int, filters: Filters) -> dict[str, Any]:
        return self._search("vector", lambda: self.query_vector(vector), k, filters)

    def similar(self, image_id: int, k: int, filters: Filters) -> dict[str, Any]:
        row = self.image_row(image_id)
        return self._search("similar", lambda: self.searcher.image_vector(row["id"])[None, :], k, filters)

    def _search(
        self, kind: str, encode: Callable[[], np.ndarray], k: int, filters: Filters
    ) -> dict[str, Any]:
        """Encode the query (1, D), search, join tags; observed in vistag_search_latency_seconds."""
        import faiss

        # Requests search in parallel threads; OpenMP teams inside each single-query search only
        # contend with them (10x slower per query measured on 2 busy cores). The OpenMP thread
        # count is per thread, so it is set in the request's own thread.
        faiss.omp_set_num_threads(FAISS_THREADS)
        start = time.perf_counter()
        xq = encode()
        tag_run = self.catalog.latest_tag_run()
        ids = matching_ids(self.catalog, filters, tag_run) if filters else None
        hits = ranked_hits(self.searcher, xq, k, ids)
        tags = top_tags(self.catalog, tag_run, [h.id for h in hits], HIT_TAGS)
        seconds = time.perf_counter() - start
        self.metrics.search_latency.labels(kind).observe(seconds)
        return {"hits": [_hit(h, tags.get(h.id, [])) for h in hits], "k": k,
                "index_version": self.searcher.version().name, "took_ms": round(seconds * 1000, 3)}  # fmt: skip

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
        from pipeline.handler import encode_images

        model = self.searcher.model()
        size = model.identity.preprocess.get("size", 224)
        try:
            decoded = decode_image(data, max_pixels=self.config.max_pixels,
                                   draft_size=int(size if isinstance(size, int) else max(size)))  # fmt: skip
        except DecodeError as err:
            raise _upload_error(err) from err
        return encode_images(model, [model.transform(decoded.image)])

    def image_row(self, image_id: int) -> dict[str, Any]:
        """The catalog row of an indexed image; :class:`NotFound` for any other id."""
        row = self.catalog.image(int(image_id))
        if row["status"] != "indexed":
            raise NotFound(f"image {image_id} is {row['status']}, not indexed")
        return row

    def image(self, image_id: int) -> dict[str, Any]:
        row = self.image_row(image_id)
        tags = top_tags(self.catalog, self.catalog.latest_tag_run(), [row["id"]], DETAIL_TAGS).get(
            row["id"], []
        )
        keys = ("id", "uri", "status", "sha256", "size", "mtime", "width", "height")
        return {k: row[k] for k in keys} | {"tags": tags, "thumbnail": _thumbnail_url(row["id"])}

    def thumbnail(self, row: dict[str, Any], size: int) -> bytes:
        """JPEG bytes; at most RENDER_SLOTS renders at once (a large image decodes to 100s of MB)."""
        jpeg = self.thumbnails.cached(row["sha256"], size)
        self.metrics.thumbnails.labels("miss" if jpeg is None else "hit").inc()
        return jpeg if jpeg is not None else self._render(row, size)

    def _render(self, row: dict[str, Any], size: int) -> bytes:
        """Render in a daemon thread that holds a render slot until it ends; the request waits at most
        ``render_timeout_s`` in all (:class:`Overloaded` after that: the render goes on and is cached)."""
        limit = self.config.render_timeout_s
        deadline = time.monotonic() + limit
        if not self._render_slots.acquire(timeout=limit):
            raise Overloaded(f"all {RENDER_SLOTS} thumbnail render slots stayed busy for {limit:g} s")
        result: Future[bytes] = Future()

        def work() -> None:
            try:
                result.set_result(self.thumbnails.render(row, size))
            except BaseException as err:  # handed to the waiting request, if it still waits
                result.set_exception(err)
            finally:
                self._render_slots.release()

        threading.Thread(target=work, name="vistag-thumbnail", daemon=True).start()
        try:
            return result.result(timeout=max(deadline - time.monotonic(), 0.0))
        except TimeoutError as err:
            if result.done():  # the render's own error, not the wait's
                raise
            raise Overloaded(f"the thumbnail took longer than {limit:g} s to render") from err

    def check_size(self, size: int) -> int:
        if size not in self.config.thumbnail_sizes:
            raise InputError(f"size must be one of {', '.join(map(str, self.config.thumbnail_sizes))}")
        return size

    def labels(self) -> dict[str, Any]:
        run = self.catalog.latest_tag_run()
        return {"tag_run": run, "labels": label_counts(self.catalog, run)}

    def status(self) -> dict[str, Any]:
        """Counts, model and index (no home path or database URL), tag run, limits."""
        status = {k: v for k, v in self.archive.status().items() if k not in ("home", "database")}
        return status | {"tag_run": self.catalog.latest_tag_run(), "limits": self.config.limits(),
                         "writes_enabled": self.config.write_token is not None}  # fmt: skip

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
        if not self._write_lock.acquire(blocking=False):
            raise Busy("a tag run is already running")
        try:
            result = self.archive.tag(names, top=top)
        finally:
            self._write_lock.release()
        return {"run_id": result.run_id, "images": result.images, "labels": list(result.labels)}


def _hit(hit: Hit, tags: list[dict]) -> dict[str, Any]:
    return hit.to_dict() | {"tags": tags, "thumbnail": _thumbnail_url(hit.id)}


def _thumbnail_url(image_id: int) -> str:
    return f"/api/images/{image_id}/thumbnail"


def _upload_error(err: DecodeError) -> InputError:
    if err.reason.startswith("decompression bomb"):
        return PayloadTooLarge(f"image too large: {err.reason}")
    if err.reason.startswith("not a recognised image"):
        return UnsupportedMedia(f"not an image: {err.reason}")
    return InputError(f"unusable image: {err.reason}")


async def read_upload(request: Request, limit: int) -> bytes:
    """The bytes of the one file of a multipart/form-data body (field ``file``), kept in memory."""
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise UnsupportedMedia("send the image as multipart/form-data in a field named 'file'")
    parser = MultiPartParser(request.headers, request.stream(), max_files=1, max_fields=4)
    parser.spool_max_size = limit + MULTIPART_OVERHEAD  # the file part never spills to a temporary file
    try:
        form = await parser.parse()
    except MultiPartException as err:
        raise InputError(f"malformed multipart upload: {err.message}") from err
    except ClientDisconnect as err:
        raise InputError("the upload was interrupted") from err
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InputError("no file in the upload: send it in a form field named 'file'")
        data = await upload.read(limit + 1)
    finally:
        await form.close()
    if len(data) > limit:
        raise PayloadTooLarge(f"upload larger than {limit} bytes")
    return data


# -- HTTP edge: host check, body caps, security headers, request metrics --------------------------
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"content-security-policy", b"default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
     b"base-uri 'none'; frame-ancestors 'none'; form-action 'self'"),
]  # fmt: skip
UPLOAD_PATH = "/api/search/image"


class EdgeMiddleware:
    """Outermost ASGI layer: rejects foreign Host headers, oversize and slow bodies, adds security
    headers, and counts and times every request by route template (bounded label values)."""

    def __init__(self, app: ASGIApp, service: Service):
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [500]
        limit = self._body_limit(scope)
        body = BodyReceiver(receive, scope, limit, self.service.config.body_timeout_s)

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                # a body left unread (or half sent) must not keep the connection: close it after this
                close = [(b"connection", b"close")] if body.pending else []
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS, *close]}
            await send(message)

        try:
            problem = self._problem(scope, limit)
            if problem is not None:
                await error_response(http_status(problem), str(problem))(scope, receive, send_secured)
            else:
                await self.app(scope, body, send_secured)
        finally:
            route = _route_name(scope)
            self.service.metrics.observe_request(
                scope["method"], route, status[0], time.perf_counter() - start
            )

    def _body_limit(self, scope: Scope) -> int:
        config = self.service.config
        return (
            config.max_upload_bytes + MULTIPART_OVERHEAD
            if scope["path"] == UPLOAD_PATH
            else config.max_body_bytes
        )

    def _problem(self, scope: Scope, limit: int) -> VistagError | None:
        headers = dict(scope["headers"])
        allowed, host = self.service.config.allowed_hosts, headers.get(b"host", b"").decode("latin-1")
        if allowed is not None and _host_name(host.lower()) not in allowed:
            return InputError("this server does not answer for that Host name")
        length = headers.get(b"content-length", b"0")
        if not length.isdigit():
            return InputError("bad Content-Length")
        if int(length) > limit:
            return PayloadTooLarge(f"request body larger than {limit} bytes")
        return None


def _host_name(host: str) -> str:
    """'example.org' from 'example.org:8000', '::1' from '[::1]:8000'."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


class BodyReceiver:
    """``receive`` of one request whose body fails with 413 once it passes ``limit`` bytes (chunked
    or lying about its length) and with 408 (connection closed) unless it all arrives within
    ``seconds`` of the request's start. ``pending``: part of a body is still unread."""

    def __init__(self, receive: Receive, scope: Scope, limit: int, seconds: float):
        headers = dict(scope.get("headers", []))
        self.receive, self.limit, self.seconds = receive, limit, seconds
        self.deadline, self.seen = time.monotonic() + seconds, 0
        length = headers.get(b"content-length", b"0")
        self.pending = b"transfer-encoding" in headers or length not in (b"", b"0")

    async def __call__(self) -> Message:
        if not self.pending:  # later calls wait for a disconnect: no deadline
            return await self.receive()
        try:
            message = await asyncio.wait_for(self.receive(), max(self.deadline - time.monotonic(), 0.0))
        except TimeoutError as err:  # HTTPException: FastAPI lets it through body parsing unchanged
            raise HTTPException(408, f"the request body did not arrive within {self.seconds:g} s") from err
        self.pending = message["type"] == "http.request" and message.get("more_body", False)
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            if self.seen > self.limit:
                raise HTTPException(413, f"request body larger than {self.limit} bytes")
        return message


def _route_name(scope: Scope) -> str:
    path = getattr(scope.get("route"), "path", None)
    if path:
        return path
    return "/static" if scope["path"].startswith("/static/") else "unmatched"


# -- the app --------------------------------------------------------------------------------------
class TagOut(BaseModel):
    label: str
    score: float = Field(description="raw score of the tagging method (not comparable across methods)")
    confidence: float | None = Field(description="calibrated confidence in [0, 1]; null: the run stored none")
    rank: int
    method: str


class HitOut(BaseModel):
    id: int
    uri: str
    score: float = Field(description="cosine similarity")
    width: int | None
    height: int | None
    sha256: str | None
    tags: list[TagOut] = Field(description=f"the image's {HIT_TAGS} best labels of the latest tag run")
    thumbnail: str


class SearchOut(BaseModel):
    hits: list[HitOut]
    k: int
    index_version: str
    took_ms: float


class ImageOut(BaseModel):
    id: int
    uri: str
    status: str
    sha256: str | None
    size: int | None
    mtime: float | None
    width: int | None
    height: int | None
    tags: list[TagOut]
    thumbnail: str


class LabelOut(BaseModel):
    label: str
    count: int = Field(description=f"images with this label among their {HIT_TAGS} best")


class LabelsOut(BaseModel):
    tag_run: int | None
    labels: list[LabelOut]


class VectorIn(BaseModel):
    vector: list[float] = Field(min_length=1, max_length=8192, description="query embedding, index dimension")


class TagIn(BaseModel):
    labels: list[str] | str = Field(description="labels, as a list or a comma-separated string")
    top: int = Field(3, ge=1, le=50)


class TagRunOut(BaseModel):
    run_id: int
    images: int
    labels: list[str]


class ErrorOut(BaseModel):
    error: str


ERRORS = {code: {"model": ErrorOut} for code in (400, 404, 413, 503)}
UPLOAD_BODY = {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"], "properties": {"file": {"type": "string", "format": "binary"}}}}}}  # fmt: skip


def create_app(archive: Any, config: ServiceConfig) -> FastAPI:
    """The API and web page on one :class:`vistag.api.Archive`; see the module docstring."""
    from vistag import __version__

    service = Service(archive, config)
    app = FastAPI(
        title="vistag",
        version=__version__,
        description="Search and browse an indexed image archive.",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )  # fmt: skip (no CDN pages)
    app.state.service = service
    _add_error_handlers(app)
    _add_read_routes(app, service)
    _add_write_routes(app, service)
    _add_page_routes(app, service)
    app.add_middleware(EdgeMiddleware, service=service)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(VistagError)
    async def vistag_error(_: Request, err: VistagError) -> JSONResponse:
        auth = {"WWW-Authenticate": "Bearer"} if isinstance(err, Unauthorized) else None
        return error_response(http_status(err), str(err), auth)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, err: HTTPException) -> JSONResponse:
        return error_response(err.status_code, str(err.detail), err.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, err: RequestValidationError) -> JSONResponse:
        parts = [
            f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}" for e in err.errors()[:3]
        ]
        return error_response(400, "; ".join(parts))

    @app.exception_handler(Exception)
    async def internal(_: Request, err: Exception) -> JSONResponse:
        log.error("internal error", exc_info=err)
        return error_response(500, "internal server error")


async def _filters(  # async: pure parsing, no hop to the thread pool
    tag: Annotated[str | None, Query(max_length=200, description="label among the image's top tags")] = None,
    prefix: Annotated[str | None, Query(max_length=4096, description="uri prefix")] = None,
    since: Annotated[str | None, Query(max_length=40, description="mtime >= (ISO date or epoch s)")] = None,
    until: Annotated[str | None, Query(max_length=40, description="mtime <= (ISO date or epoch s)")] = None,
) -> Filters:
    return Filters.parse(tag, prefix, since, until)


FilterDep = Annotated[Filters, Depends(_filters)]
ImageId = Annotated[int, PathParam(ge=1, le=MAX_ID, description="catalog image id")]


def _add_read_routes(app: FastAPI, service: Service) -> None:
    config = service.config  # limits from the config: default-value style, evaluated right here

    def K(default: int) -> Any:  # noqa: N802
        return Query(default, ge=1, le=config.max_k, description="number of results")

    @app.get("/api/search", response_model=SearchOut, responses=ERRORS, summary="Text-to-image search")
    def search(
        filters: FilterDep, q: str = Query(min_length=1, max_length=config.max_query_chars), k: int = K(24)
    ) -> dict[str, Any]:
        return service.search_text(q, k, filters)

    @app.post("/api/search/image", response_model=SearchOut, responses=ERRORS | {415: {"model": ErrorOut}},
              openapi_extra={"requestBody": UPLOAD_BODY}, summary="Search by example image (never stored)")  # fmt: skip
    async def search_image(request: Request, filters: FilterDep, k: int = K(24)) -> dict[str, Any]:
        data = await read_upload(request, config.max_upload_bytes)
        return await run_in_threadpool(service.search_upload, data, k, filters)

    @app.post(
        "/api/search/vector",
        response_model=SearchOut,
        responses=ERRORS,
        summary="Search by a query embedding",
    )
    def search_vector(body: VectorIn, filters: FilterDep, k: int = K(10)) -> dict[str, Any]:
        return service.search_vector(body.vector, k, filters)

    @app.get("/api/similar/{image_id}", response_model=SearchOut, responses=ERRORS,
             summary="Images similar to an indexed image (itself first)")  # fmt: skip
    def similar(image_id: ImageId, filters: FilterDep, k: int = K(24)) -> dict[str, Any]:
        return service.similar(image_id, k, filters)

    @app.get(
        "/api/images/{image_id}",
        response_model=ImageOut,
        responses=ERRORS,
        summary="Metadata and tags of an image",
    )
    def image(image_id: ImageId) -> dict[str, Any]:
        return service.image(image_id)

    @app.get("/api/images/{image_id}/thumbnail", responses=ERRORS | {409: {"model": ErrorOut}},
             response_class=Response, summary="JPEG thumbnail (cached)")  # fmt: skip
    def thumbnail(
        image_id: ImageId, size: int = 256, if_none_match: Annotated[str | None, Header()] = None
    ) -> Response:
        row = service.image_row(image_id)
        etag = f'"{row["sha256"]}-{service.check_size(size)}"'
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if if_none_match == etag:
            return Response(status_code=304, headers=headers)
        return Response(service.thumbnail(row, size), media_type="image/jpeg", headers=headers)

    @app.get("/api/labels", response_model=LabelsOut, summary="Labels of the latest tag run")
    def labels() -> dict[str, Any]:
        return service.labels()

    @app.get("/api/status", summary="Counts, model, index version, limits")
    def status() -> dict[str, Any]:
        return service.status()

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", response_class=Response, summary="Prometheus metrics")
    def metrics() -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def _add_write_routes(app: FastAPI, service: Service) -> None:
    codes = ERRORS | {c: {"model": ErrorOut} for c in (401, 403, 409)}

    @app.post(
        "/api/tag",
        response_model=TagRunOut,
        responses=codes,
        summary="Zero-shot tag run (needs the write token)",
    )
    def tag(body: TagIn, authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        service.authorize(authorization)
        return service.tag(body.labels, body.top)


def _add_page_routes(app: FastAPI, service: Service) -> None:
    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")


# -- running it -----------------------------------------------------------------------------------
def listen(host: str = "127.0.0.1", port: int = 8000) -> socket.socket:
    """A bound TCP socket for ``host``:``port`` (port 0: any free port); :class:`InputError` if taken."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as err:
        raise InputError(f"cannot listen on {host}:{port}: {err.strerror or err}") from err
    return sock


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address to listen on) is reachable from this machine only."""
    try:
        return host in LOOPBACK_HOSTS or host.startswith("127.") or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warm_up(archive: Any) -> None:
    """Load the published index and its model now rather than on the first query."""
    try:
        archive.searcher.version()
        archive.searcher.model()
    except VistagError as err:
        log.warning("not ready for every query yet: %s", err)


def serve(archive: Any, config: ServiceConfig, host: str = "127.0.0.1", port: int = 8000, *,
          sock: socket.socket | None = None, verbose: bool = False) -> None:  # fmt: skip
    """Serve until SIGINT/SIGTERM (graceful: running requests finish). Blocks."""
    import uvicorn

    sock = sock or listen(host, port)
    warm_up(archive)
    uvicorn.Server(uvicorn_config(create_app(archive, config), verbose=verbose)).run(sockets=[sock])


def uvicorn_config(app: FastAPI, *, verbose: bool = False) -> Any:
    """The ``uvicorn.Config`` of an app from :func:`create_app`, with its service's connection limit."""
    import uvicorn

    return uvicorn.Config(app, log_level="info" if verbose else "warning", access_log=verbose,
                          server_header=False, proxy_headers=False, timeout_graceful_shutdown=10,
                          limit_concurrency=app.state.service.config.max_connections)  # fmt: skip
