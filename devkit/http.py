"""A small HTTP client on ``http.client`` (sends paths exactly as written: no dot-segment clean-up)."""

from __future__ import annotations

import http.client
import json
import socket
from dataclasses import dataclass
from typing import Any

REQUEST_TIMEOUT_S = 30


@dataclass(frozen=True)
class Reply:
    """An HTTP response: status, headers (lower-case names) and the whole body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http_request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = REQUEST_TIMEOUT_S,
) -> Reply:
    """Send one request to 127.0.0.1:``port`` on a new connection; return the whole reply."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        conn.close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
