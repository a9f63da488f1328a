"""Running the app: a listening socket, the model warmed up, uvicorn with the service's limits."""

from __future__ import annotations

import logging
import socket
from typing import Any

from fastapi import FastAPI

from core.errors import (
    InputError,
    VistagError,
)
from vistag.http.app import create_app
from vistag.http.config import ServiceConfig

log = logging.getLogger(__name__)


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


def warm_up(searcher: Any) -> None:
    """Load the published index and its model into ``searcher`` (the service's: the one that answers
    queries) now rather than on the first query."""
    try:
        searcher.version()
        searcher.model()
    except VistagError as err:
        log.warning("not ready for every query yet: %s", err)


def serve(
    archive: Any,
    config: ServiceConfig,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    sock: socket.socket | None = None,
    verbose: bool = False,
) -> None:
    """Serve until SIGINT/SIGTERM (graceful: running requests finish). Blocks."""
    import uvicorn

    sock = sock or listen(host, port)
    app = create_app(archive, config)
    warm_up(app.state.service.searcher)
    uvicorn.Server(uvicorn_config(app, verbose=verbose)).run(sockets=[sock])


def uvicorn_config(app: FastAPI, *, verbose: bool = False) -> Any:
    """The ``uvicorn.Config`` of an app from :func:`create_app`, with its service's connection limit."""
    import uvicorn

    return uvicorn.Config(
        app,
        log_level="info" if verbose else "warning",
        access_log=verbose,
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=10,
        limit_concurrency=app.state.service.config.max_connections,
    )
