"""The JSON shapes of the API (its OpenAPI schema)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from vistag.http.config import HIT_TAGS, MAX_ID

GROUP_ID = r"^(exact|near|similar)-[0-9a-f]{10}$"


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


class PlaceOut(BaseModel):
    id: int
    uri: str


class CorrectionOut(BaseModel):
    id: int
    sha256: str = Field(
        description="the corrected content: the correction follows it through moves and copies"
    )
    label: str
    verdict: Literal["yes", "no"] = Field(
        description="yes: the image has the label (confirmed); no: rejected"
    )
    source: Literal["person", "keywords"]
    uri: str | None = Field(description="where the image was when corrected")
    created: float = Field(description="seconds since the epoch")
    withdrawn: float | None = Field(description="when withdrawn or replaced; null: active")
    images: list[PlaceOut] = Field(description="the indexed images with this content now")


class ImageOut(BaseModel):
    id: int
    uri: str
    status: str
    sha256: str | None
    size: int | None
    mtime: float | None
    width: int | None
    height: int | None
    taken: float | None = Field(
        description="EXIF date taken, seconds since the epoch (a time without an offset read as UTC)"
    )
    camera: str | None = Field(description="camera make and model")
    lens: str | None
    lat: float | None = Field(description="GPS latitude, decimal degrees (south negative)")
    lon: float | None = Field(description="GPS longitude, decimal degrees (west negative)")
    keywords: list[str] = Field(description="keywords people gave it (embedded or in its XMP sidecar)")
    tags: list[TagOut]
    corrections: list[CorrectionOut] = Field(description="the active corrections of the image's content")
    thumbnail: str


class CorrectionsOut(BaseModel):
    corrections: list[CorrectionOut] = Field(description="newest first")


class CorrectionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str = Field(min_length=1, max_length=200)
    verdict: Literal["yes", "no"] = Field(description="yes: confirm the label; no: reject it")


class CorrectionAddedOut(BaseModel):
    id: int = Field(description="the correction's id (DELETE /api/corrections/{id} withdraws it)")
    state: Literal["added", "replaced", "unchanged"]
    image: int
    uri: str
    label: str
    verdict: Literal["yes", "no"]
    source: Literal["person", "keywords"]


class WithdrawnOut(BaseModel):
    id: int
    withdrawn: bool = Field(description="false: it was withdrawn already")


class LabelOut(BaseModel):
    label: str
    count: int = Field(description=f"images with this label among their {HIT_TAGS} best")


class LabelsOut(BaseModel):
    tag_run: int | None
    labels: list[LabelOut]


class FacetOut(BaseModel):
    value: str
    count: int = Field(description="indexed images that have it")


class TakenRangeOut(BaseModel):
    min: float | None = Field(description="earliest date taken (else modified), seconds since the epoch")
    max: float | None = Field(description="latest date taken (else modified), seconds since the epoch")


class FacetsOut(BaseModel):
    tag_run: int | None
    keywords: list[FacetOut] = Field(description="the most common keywords, most images first")
    tags: list[FacetOut] = Field(description=f"labels of the latest tag run among images' {HIT_TAGS} best")
    cameras: list[FacetOut] = Field(description="the most common cameras (make and model), most images first")
    taken: TakenRangeOut


class VectorIn(BaseModel):
    vector: list[float] = Field(min_length=1, max_length=8192, description="query embedding, index dimension")


class TagIn(BaseModel):
    labels: list[str] | str = Field(description="labels, as a list or a comma-separated string")
    top: int = Field(3, ge=1, le=50)


class TagRunOut(BaseModel):
    run_id: int
    images: int
    labels: list[str]


class DuplicateMemberOut(BaseModel):
    id: int
    uri: str
    width: int | None
    height: int | None
    size: int | None = Field(description="file size in bytes")
    taken: float | None = Field(description="EXIF date taken, seconds since the epoch")
    mtime: float | None
    sha256: str | None
    phash: str | None = Field(description="64-bit perceptual hash, hex; null: not hashed yet")
    thumbnail: str


class DuplicateGroupOut(BaseModel):
    id: str = Field(description="kind and a digest of the group's contents (stable while they are)")
    kind: Literal["exact", "near", "similar"]
    members: list[DuplicateMemberOut]
    keep: int = Field(description="id of the suggested member to keep")
    why: str
    contents: list[str] = Field(description="sha256 of each distinct content")


class DuplicateThresholdsOut(BaseModel):
    near_bits: int
    crop_bits: int
    near_cosine: float | None = Field(description="null: unused (the model's cosines tell nothing apart)")
    similar_cosine: float | None
    agree_cosine: float | None = Field(
        description="what hash-only near copies must reach too; null: hashes decide alone"
    )
    within_s: float


class DuplicatesOut(BaseModel):
    groups: list[DuplicateGroupOut] = Field(description="largest first; resolved groups are not listed")
    thresholds: DuplicateThresholdsOut
    unhashed: int = Field(description="indexed images without a perceptual hash")


class ResolveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a move_to is refused, not ignored: moving is the CLI's

    group: str = Field(max_length=20, pattern=GROUP_ID, description="a group id from GET /api/duplicates")
    keep: int | None = Field(None, ge=1, le=MAX_ID, description="the member to keep (an image id)")
    not_duplicates: bool = Field(False, description="the group's pictures are not duplicates")
    threshold: int | None = Field(None, ge=0, le=64, description="the threshold the group was listed with")


class ResolveOut(BaseModel):
    group: str
    decision: int


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
