"""The outermost ASGI layer: Host check, body size and time limits, security headers, request metrics."""

from __future__ import annotations

import asyncio
import time

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import (
    InputError,
    VistagError,
)
from vistag.http.config import MULTIPART_OVERHEAD, PayloadTooLarge, error_response, http_status
from vistag.http.service import Service

# -- HTTP edge: host check, body caps, security headers, request metrics --------------------------
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
        b"base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    ),
]
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
