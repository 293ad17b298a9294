"""Typed request and response bodies: the OpenAPI document is generated from these."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from facescore.v1 import common_pb2, score_pb2
from services.common.json_values import json_issue

MAX_INT32 = 2**31 - 1  # the proto's int32 fields


class Point(BaseModel):
    x: float
    y: float


class Box(BaseModel):
    x1: float
    y1: float
    x2: float
    y2: float


class Quality(BaseModel):
    face_size_px: float
    inter_eye_px: float
    sharpness: float
    yaw: float
    pitch: float
    roll: float
    brightness: float


class Face(BaseModel):
    index: int = Field(description="Position in the photo, largest face first.")
    box: Box
    detection_score: float
    landmarks: list[Point] = Field(description="Eyes, nose tip, mouth corners.")
    quality: Quality
    embedding: list[float] | None = None


class ImageInfo(BaseModel):
    width: int
    height: int
    format: str
    sha256: str


class AnalyzeResponse(BaseModel):
    image: ImageInfo
    faces: list[Face]
    cached: bool


class ModelInfo(BaseModel):
    name: str
    sha256: str
    providers: list[str]


class VersionResponse(BaseModel):
    version: str
    detector: ModelInfo
    recognizer: ModelInfo
    collection: str
    threshold: float


class Gallery(BaseModel):
    name: str
    face_count: int
    created_at: datetime | None


class GalleryList(BaseModel):
    galleries: list[Gallery]


class CreateGallery(BaseModel):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class Deleted(BaseModel):
    deleted_faces: int


class Subject(BaseModel):
    subject_id: str
    face_count: int
    metadata: dict[str, Any]
    created_at: datetime | None
    face_ids: list[str] | None = None


class SubjectList(BaseModel):
    subjects: list[Subject]
    next_page_token: str | None


class EnrollResponse(BaseModel):
    face_id: str
    created: bool = Field(description="False when this face was already enrolled.")
    face: Face
    image: ImageInfo


class Candidate(BaseModel):
    subject_id: str
    similarity: float
    face_id: str
    match: bool


class IdentifiedFace(BaseModel):
    face: Face
    subject_id: str | None
    unknown: bool
    candidates: list[Candidate]


class IdentifyResponse(BaseModel):
    image: ImageInfo
    threshold: float
    faces: list[IdentifiedFace]


class VerifyResponse(BaseModel):
    similarity: float
    match: bool
    threshold: float
    face: Face
    other_face: Face | None
    matched_face_id: str | None


class DependencyState(BaseModel):
    ok: bool
    detail: str


class LiveResponse(BaseModel):
    status: Literal["ok"]


class HealthResponse(BaseModel):
    status: Literal["ok", "degraded"]
    dependencies: dict[str, DependencyState]


class Problem(BaseModel):
    """application/problem+json (RFC 9457)."""

    type: str
    title: str
    status: int
    detail: str
    code: str = Field(description="Stable, machine-readable reason.")


# Request bodies of the photo endpoints, documented for both encodings.


class AnalyzeJson(BaseModel):
    image_base64: str


class EnrollJson(BaseModel):
    image_base64: str
    face_index: int | None = Field(None, ge=0, le=MAX_INT32)
    face_selection: Literal["single", "largest"] = "single"
    metadata: dict[str, Any] | None = None
    min_face_size: float | None = Field(None, ge=0)
    min_sharpness: float | None = Field(None, ge=0)
    min_detection_score: float | None = Field(None, ge=0, le=1)
    max_abs_yaw: float | None = Field(None, ge=0, le=90)


class IdentifyJson(BaseModel):
    image_base64: str
    top_k: int | None = Field(None, ge=1, le=100)
    threshold: float | None = Field(None, ge=-1, le=1)


class VerifyJson(BaseModel):
    image_base64: str
    other_image_base64: str | None = None
    gallery: str | None = None
    subject_id: str | None = None
    threshold: float | None = Field(None, ge=-1, le=1)


# Conversions from the gRPC messages.


def when(unix_ms: int) -> datetime | None:
    return datetime.fromtimestamp(unix_ms / 1000, UTC) if unix_ms else None


def metadata(text: str) -> dict[str, Any]:
    """Stored metadata, or {} where it cannot be sent as JSON.

    Score refuses such metadata now; what was stored before it did (lone surrogates, deep
    nesting) must not fail every listing of its gallery.
    """
    if not text:
        return {}
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        return {}
    if not isinstance(parsed, dict) or json_issue(parsed) is not None:
        return {}
    return parsed


def image(info: common_pb2.ImageInfo) -> ImageInfo:
    return ImageInfo(width=info.width, height=info.height, format=info.format, sha256=info.sha256)


def face(f: score_pb2.AnalyzedFace) -> Face:
    q = f.quality
    return Face(
        index=f.index,
        box=Box(x1=f.box.x1, y1=f.box.y1, x2=f.box.x2, y2=f.box.y2),
        detection_score=f.detection_score,
        landmarks=[Point(x=p.x, y=p.y) for p in f.landmarks],
        quality=Quality(
            face_size_px=q.face_size_px,
            inter_eye_px=q.inter_eye_px,
            sharpness=q.sharpness,
            yaw=q.yaw,
            pitch=q.pitch,
            roll=q.roll,
            brightness=q.brightness,
        ),
        embedding=list(f.embedding) or None,
    )


def model(info: common_pb2.ModelInfo) -> ModelInfo:
    return ModelInfo(name=info.name, sha256=info.sha256, providers=list(info.providers))


def subject(s: score_pb2.Subject, with_faces: bool = False) -> Subject:
    return Subject(
        subject_id=s.subject_id,
        face_count=s.face_count,
        metadata=metadata(s.metadata_json),
        created_at=when(s.created_unix_ms),
        face_ids=list(s.face_ids) if with_faces else None,
    )


def gallery(g: score_pb2.Gallery) -> Gallery:
    return Gallery(name=g.name, face_count=g.face_count, created_at=when(g.created_unix_ms))


def identified_face(f: score_pb2.IdentifiedFace) -> IdentifiedFace:
    return IdentifiedFace(
        face=face(f.face),
        subject_id=f.subject_id or None,
        unknown=f.unknown,
        candidates=[
            Candidate(
                subject_id=c.subject_id, similarity=c.similarity, face_id=c.face_id, match=c.match
            )
            for c in f.candidates
        ],
    )
