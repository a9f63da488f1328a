"""The HTTP service and web page on an archive (FastAPI on uvicorn): :func:`create_app` builds the
app, :func:`serve` runs it. Modules: ``config`` (limits, errors, status codes), ``filters``
(request parameters to search filters), ``service`` (the operations), ``routes`` and ``schemas``
(the API), ``duplicates`` (duplicate review: cached listings, decisions), ``edge`` (host check,
body limits, security headers, metrics), ``thumbnails``, ``metrics``, ``server`` and ``static/``
(the page)."""

from vistag.http.app import create_app
from vistag.http.config import ServiceConfig
from vistag.http.server import listen, serve

__all__ = ["ServiceConfig", "create_app", "listen", "serve"]
