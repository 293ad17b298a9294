"""Verify (1:1): a photo against another photo, or against an enrolled subject."""

from __future__ import annotations

from fastapi import APIRouter, Request

from facescore.v1 import score_pb2
from gateway import schemas
from gateway.dependencies import READ, Score, Settings
from gateway.problems import Problem
from gateway.uploads import photo_body_docs, read_photo_request

router = APIRouter(tags=["faces"], dependencies=[READ])
PHOTOS = ("image", "other_image")


def verify_request(photos: dict[str, bytes], body: schemas.VerifyJson) -> score_pb2.VerifyRequest:
    request = score_pb2.VerifyRequest(image=photos["image"])
    if "other_image" in photos:
        request.other_image = photos["other_image"]
    elif body.gallery and body.subject_id:
        request.subject.CopyFrom(
            score_pb2.SubjectRef(gallery=body.gallery, subject_id=body.subject_id)
        )
    else:
        raise Problem(
            422,
            "validation_error",
            "send other_image, or gallery and subject_id",
            {"errors": [{"field": "other_image", "message": "required"}]},
        )
    if body.threshold is not None:
        request.threshold = body.threshold
    return request


@router.post("/api/v1/verify", openapi_extra=photo_body_docs(schemas.VerifyJson, PHOTOS))
async def verify(request: Request, score: Score, settings: Settings) -> schemas.VerifyResponse:
    photos, body = await read_photo_request(
        request, settings.max_upload_bytes, schemas.VerifyJson, PHOTOS
    )
    reply = await score.verify(verify_request(photos, body))
    return schemas.VerifyResponse(
        similarity=reply.similarity,
        match=reply.match,
        threshold=reply.threshold,
        face=schemas.face(reply.face),
        other_face=schemas.face(reply.other_face) if reply.HasField("other_face") else None,
        matched_face_id=reply.matched_face_id or None,
    )
