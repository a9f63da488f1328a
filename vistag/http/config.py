"""Configuration, errors and status codes of the HTTP service."""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fastapi.responses import JSONResponse

from core.errors import (
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
from query.search import MAX_K

STATIC = Path(__file__).parent / "static"
ENV_WRITE_TOKEN = "VISTAG_WRITE_TOKEN"
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
HIT_TAGS = 3  # tags shown with each hit, and the ranks the tag filter accepts ("among its top 3")
DETAIL_TAGS = 10
FACETS = 50  # keywords and tags the facets endpoint lists, each
MAX_SOURCE_BYTES = 256 * 1024 * 1024  # largest catalog file read for a thumbnail
MULTIPART_OVERHEAD = 64 * 1024
MIN_TOKEN_CHARS = 16
MAX_ID = 2**63 - 1
RENDER_SLOTS = 2  # thumbnails rendered at once
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
FAISS_THREADS = 1  # OpenMP threads per FAISS search of a request (see Service._search)


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
    PayloadTooLarge: 413,
    UnsupportedMedia: 415,
    InputError: 400,
    NotFound: 404,
    Unauthorized: 401,
    WritesDisabled: 403,
    Busy: 409,
    LockHeld: 409,
    FileChanged: 409,
    Overloaded: 503,
    IndexNotFound: 503,
    EmptyCorpus: 503,
    ModelLoadError: 503,
    ModelMismatch: 503,
    CatalogError: 503,
    ShardFormatError: 500,
    VistagError: 500,
}


def http_status(err: VistagError) -> int:
    """The status code of the most specific class of ``err`` in :data:`HTTP_STATUS`."""
    return next(HTTP_STATUS[c] for c in type(err).__mro__ if c in HTTP_STATUS)


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address to listen on) is reachable from this machine only."""
    try:
        return host in LOOPBACK_HOSTS or host.startswith("127.") or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
