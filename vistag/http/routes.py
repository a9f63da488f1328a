"""The routes of the API and the page."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import (
    CONTENT_TYPE_LATEST,
)
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from core.errors import (
    InputError,
)
from indexer.catalog import ImageFilter
from query.filters import parse_filter
from vistag.http.config import HIT_TAGS, MAX_ID, MULTIPART_OVERHEAD, STATIC, PayloadTooLarge, UnsupportedMedia
from vistag.http.schemas import (
    ERRORS,
    UPLOAD_BODY,
    CorrectionAddedOut,
    CorrectionIn,
    CorrectionsOut,
    DuplicatesOut,
    ErrorOut,
    FacetsOut,
    ImageOut,
    LabelsOut,
    ResolveIn,
    ResolveOut,
    SearchOut,
    TagIn,
    TagRunOut,
    VectorIn,
    WithdrawnOut,
)
from vistag.http.service import Service


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


async def _filters(  # async: pure parsing, no hop to the thread pool
    tag: Annotated[str | None, Query(max_length=200, description="label among the image's top tags")] = None,
    prefix: Annotated[str | None, Query(max_length=4096, description="uri prefix")] = None,
    since: Annotated[str | None, Query(max_length=40, description="taken >= (ISO date or epoch s)")] = None,
    until: Annotated[str | None, Query(max_length=40, description="taken <= (ISO date or epoch s)")] = None,
    camera: Annotated[str | None, Query(max_length=200, description="camera make and model contain")] = None,
    near: Annotated[str | None, Query(max_length=80, description="LAT,LON,KM: within KM km")] = None,
    keyword: Annotated[str | None, Query(max_length=200, description="a keyword the image was given")] = None,
) -> ImageFilter:
    return parse_filter(tag, prefix, since, until, HIT_TAGS, camera=camera, near=near, keyword=keyword)


FilterDep = Annotated[ImageFilter, Depends(_filters)]


class Hits(Response):
    """A search's or a listing's JSON, serialised by orjson as it is: the service builds it in the
    shape of the schema the route declares (:class:`~vistag.http.schemas.SearchOut`,
    :class:`~vistag.http.schemas.DuplicatesOut`); validating it again took longer than the search."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


ImageId = Annotated[int, PathParam(ge=1, le=MAX_ID, description="catalog image id")]
CorrectionId = Annotated[int, PathParam(ge=1, le=MAX_ID, description="correction id")]


def add_read_routes(app: FastAPI, service: Service) -> None:
    config = service.config  # limits from the config: default-value style, evaluated right here

    def K(default: int) -> Any:  # noqa: N802
        return Query(default, ge=1, le=config.max_k, description="number of results")

    @app.get("/api/search", response_model=SearchOut, responses=ERRORS, summary="Text-to-image search")
    def search(
        filters: FilterDep, q: str = Query(min_length=1, max_length=config.max_query_chars), k: int = K(24)
    ) -> Response:
        return Hits(service.search_text(q, k, filters))

    @app.post(
        "/api/search/image",
        response_model=SearchOut,
        responses=ERRORS | {415: {"model": ErrorOut}},
        openapi_extra={"requestBody": UPLOAD_BODY},
        summary="Search by example image (never stored)",
    )
    async def search_image(request: Request, filters: FilterDep, k: int = K(24)) -> Response:
        data = await read_upload(request, config.max_upload_bytes)
        return Hits(await run_in_threadpool(service.search_upload, data, k, filters))

    @app.post(
        "/api/search/vector",
        response_model=SearchOut,
        responses=ERRORS,
        summary="Search by a query embedding",
    )
    def search_vector(body: VectorIn, filters: FilterDep, k: int = K(10)) -> Response:
        return Hits(service.search_vector(body.vector, k, filters))

    @app.get(
        "/api/similar/{image_id}",
        response_model=SearchOut,
        responses=ERRORS,
        summary="Images similar to an indexed image (itself first)",
    )
    def similar(image_id: ImageId, filters: FilterDep, k: int = K(24)) -> Response:
        return Hits(service.similar(image_id, k, filters))

    @app.get(
        "/api/images/{image_id}",
        response_model=ImageOut,
        responses=ERRORS,
        summary="Metadata and tags of an image",
    )
    def image(image_id: ImageId) -> dict[str, Any]:
        return service.image(image_id)

    @app.get(
        "/api/images/{image_id}/thumbnail",
        responses=ERRORS | {409: {"model": ErrorOut}},
        response_class=Response,
        summary="JPEG thumbnail (cached)",
    )
    def thumbnail(
        image_id: ImageId, size: int = 256, if_none_match: Annotated[str | None, Header()] = None
    ) -> Response:
        row = service.image_row(image_id)
        etag = f'"{row["sha256"]}-{service.check_size(size)}"'
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if if_none_match == etag:
            return Response(status_code=304, headers=headers)
        return Response(service.thumbnail(row, size), media_type="image/jpeg", headers=headers)

    @app.get(
        "/api/duplicates",
        response_model=DuplicatesOut,
        responses=ERRORS,
        summary="Duplicate groups: exact copies, near copies, similar shots (cached)",
    )
    def duplicates(  # sync: the first listing of a large archive takes seconds, in the thread pool
        kind: Literal["all", "exact", "near", "similar"] = "all",
        threshold: int | None = Query(
            None, ge=0, le=64, description="largest hash distance of near copies, bits"
        ),
    ) -> Response:
        return Hits(service.duplicates(kind, threshold))

    @app.get("/api/corrections", response_model=CorrectionsOut, summary="Confirmed and rejected labels")
    def corrections(
        label: str | None = Query(None, max_length=200, description="only this label's (any case)"),
        limit: int = Query(1000, ge=1, le=10000, description="at most this many, newest first"),
    ) -> dict[str, Any]:
        return service.corrections(label, limit)

    @app.get("/api/labels", response_model=LabelsOut, summary="Labels of the latest tag run")
    def labels() -> dict[str, Any]:
        return service.labels()

    @app.get(
        "/api/facets",
        response_model=FacetsOut,
        summary="Common keywords, tags and cameras, range of dates taken",
    )
    def facets() -> dict[str, Any]:
        return service.facets()

    @app.get("/api/status", summary="Counts, model, index version, limits")
    def status() -> dict[str, Any]:
        return service.status()

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", response_class=Response, summary="Prometheus metrics")
    def metrics() -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)


# what a write can answer beyond ERRORS: no or a wrong token, and another writer holding the catalog
WRITE_ERRORS = ERRORS | {c: {"model": ErrorOut} for c in (401, 403, 409)}


def add_write_routes(app: FastAPI, service: Service) -> None:
    codes = WRITE_ERRORS

    @app.post(
        "/api/tag",
        response_model=TagRunOut,
        responses=codes,
        summary="Zero-shot tag run (needs the write token)",
    )
    def tag(body: TagIn, authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        service.authorize(authorization)
        return service.tag(body.labels, body.top)

    @app.post(
        "/api/duplicates/resolve",
        response_model=ResolveOut,
        responses=codes,
        summary="Remember a decision about a duplicate group (needs the write token; moves no file)",
    )
    def resolve_duplicates(
        body: ResolveIn, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        service.authorize(authorization)
        return service.resolve_duplicates(body.group, body.keep, body.not_duplicates, body.threshold)


def add_correction_routes(app: FastAPI, service: Service) -> None:
    codes = WRITE_ERRORS  # 409: a busy catalog (LockHeld)

    @app.post(
        "/api/images/{image_id}/corrections",
        response_model=CorrectionAddedOut,
        responses=codes,
        summary="Confirm (yes) or reject (no) a label for an image's content (needs the write token)",
    )
    def correct(
        image_id: ImageId, body: CorrectionIn, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        service.authorize(authorization)
        return service.correct(image_id, body.label, body.verdict)

    @app.delete(
        "/api/corrections/{correction_id}",
        response_model=WithdrawnOut,
        responses=codes,
        summary="Withdraw a correction (needs the write token)",
    )
    def withdraw(
        correction_id: CorrectionId, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        service.authorize(authorization)
        return service.withdraw(correction_id)


def add_page_routes(app: FastAPI, service: Service) -> None:
    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
