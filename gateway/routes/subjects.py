"""Subjects of a gallery and their faces: list, get, enroll, delete."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from facescore.v1 import score_pb2
from gateway import schemas
from gateway.dependencies import READ, WRITE, Score, Settings
from gateway.uploads import photo_body_docs, read_photo_request

router = APIRouter(tags=["subjects"])
SUBJECT = "/api/v1/galleries/{gallery}/subjects/{subject_id}"
GATES = ("min_face_size", "min_sharpness", "min_detection_score", "max_abs_yaw")


@router.get("/api/v1/galleries/{gallery}/subjects", dependencies=[READ])
async def list_subjects(
    score: Score,
    gallery: str,
    page_size: Annotated[int, Query(ge=1, le=1000)] = 100,
    page_token: str = "",
) -> schemas.SubjectList:
    reply = await score.list_subjects(
        score_pb2.ListSubjectsRequest(gallery=gallery, page_size=page_size, page_token=page_token)
    )
    return schemas.SubjectList(
        subjects=[schemas.subject(s) for s in reply.subjects],
        next_page_token=reply.next_page_token or None,
    )


@router.get(SUBJECT, dependencies=[READ])
async def get_subject(score: Score, gallery: str, subject_id: str) -> schemas.Subject:
    reply = await score.get_subject(gallery, subject_id)
    return schemas.subject(reply, with_faces=True)


@router.delete(SUBJECT, dependencies=[WRITE])
async def delete_subject(score: Score, gallery: str, subject_id: str) -> schemas.Deleted:
    reply = await score.delete_subject(gallery, subject_id)
    return schemas.Deleted(deleted_faces=reply.deleted_faces)


def enroll_request(
    gallery: str, subject_id: str, image: bytes, body: schemas.EnrollJson
) -> score_pb2.EnrollRequest:
    request = score_pb2.EnrollRequest(
        gallery=gallery,
        subject_id=subject_id,
        image=image,
        gates=score_pb2.QualityGates(
            **{k: v for k in GATES if (v := getattr(body, k)) is not None}
        ),
        metadata_json=json.dumps(body.metadata) if body.metadata is not None else "",
        face_selection=(
            score_pb2.FACE_SELECTION_LARGEST
            if body.face_selection == "largest"
            else score_pb2.FACE_SELECTION_REQUIRE_SINGLE
        ),
    )
    if body.face_index is not None:
        request.face_index = body.face_index
    return request


@router.post(
    SUBJECT + "/faces",
    status_code=201,
    dependencies=[WRITE],
    openapi_extra=photo_body_docs(schemas.EnrollJson, ("image",)),
)
async def enroll(
    request: Request, score: Score, settings: Settings, gallery: str, subject_id: str
) -> schemas.EnrollResponse:
    photos, body = await read_photo_request(
        request, settings.max_upload_bytes, schemas.EnrollJson, ("image",)
    )
    reply = await score.enroll(enroll_request(gallery, subject_id, photos["image"], body))
    return schemas.EnrollResponse(
        face_id=reply.face_id,
        created=reply.created,
        face=schemas.face(reply.face),
        image=schemas.image(reply.image),
    )


@router.delete("/api/v1/galleries/{gallery}/faces/{face_id}", status_code=204, dependencies=[WRITE])
async def delete_face(score: Score, gallery: str, face_id: str) -> Response:
    await score.delete_face(gallery, face_id)
    return Response(status_code=204)
