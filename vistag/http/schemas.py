"""The JSON shapes of the API (its OpenAPI schema)."""

from __future__ import annotations

import logging

from pydantic import BaseModel, Field

from vistag.http.config import HIT_TAGS

log = logging.getLogger(__name__)


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
UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {"file": {"type": "string", "format": "binary"}},
            }
        }
    },
}
