"""The HTTP query service: a JSON API with an OpenAPI schema, Prometheus metrics, and the web page.

``create_app(archive, config)`` builds a FastAPI app around one :class:`vistag.api.Archive`,
shared by every request thread; its Searcher follows the CURRENT pointer on each query, so a newly
published index version is served without a restart. ``serve`` runs the app on uvicorn.

Errors: library code raises typed :class:`core.errors.VistagError`; :data:`HTTP_STATUS` maps each
type to a status code in one place, and every error body is ``{"error": message}``.

Safety: files are read only for catalog rows looked up by integer id, never from a path in the
request, and only from a regular file whose bytes still hash to the row's sha256; renders and
request bodies have time limits; k, query length, request bodies, uploads (bytes and pixels),
metric label values and open connections are bounded; uploads stay in memory and are never stored;
writes need ``Authorization: Bearer TOKEN`` and are off without a configured token; a
loopback-bound server answers only loopback host names and its own address (DNS rebinding).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from core.errors import (
    VistagError,
)
from vistag.http.config import ServiceConfig, Unauthorized, error_response, http_status
from vistag.http.edge import EdgeMiddleware
from vistag.http.routes import add_correction_routes, add_page_routes, add_read_routes, add_write_routes
from vistag.http.service import Service

log = logging.getLogger(__name__)


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
    )  # docs_url and redoc_url off: those pages load from a CDN
    app.state.service = service
    _add_error_handlers(app)
    add_read_routes(app, service)
    add_write_routes(app, service)
    add_correction_routes(app, service)
    add_page_routes(app, service)
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
