"""What is in a photo: its faces (analyze), and who they are in a gallery (identify)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from facescore.v1 import score_pb2
from gateway import schemas
from gateway.dependencies import READ, Score, Settings
from gateway.uploads import photo_body_docs, read_photo_request

router = APIRouter(tags=["faces"], dependencies=[READ])


@router.post("/api/v1/analyze", openapi_extra=photo_body_docs(schemas.AnalyzeJson, ("image",)))
async def analyze(
    request: Request, score: Score, settings: Settings, include_embeddings: bool = False
) -> schemas.AnalyzeResponse:
    photos, _ = await read_photo_request(
        request, settings.max_upload_bytes, schemas.AnalyzeJson, ("image",)
    )
    reply = await score.analyze(
        score_pb2.AnalyzeRequest(image=photos["image"], include_embeddings=include_embeddings),
    )
    return schemas.AnalyzeResponse(
        image=schemas.image(reply.image),
        faces=[schemas.face(f) for f in reply.faces],
        cached=reply.cached,
    )


@router.post(
    "/api/v1/galleries/{gallery}/identify",
    openapi_extra=photo_body_docs(schemas.IdentifyJson, ("image",)),
)
async def identify(
    request: Request, score: Score, settings: Settings, gallery: str
) -> schemas.IdentifyResponse:
    photos, body = await read_photo_request(
        request, settings.max_upload_bytes, schemas.IdentifyJson, ("image",)
    )
    identify_request = score_pb2.IdentifyRequest(
        gallery=gallery, image=photos["image"], top_k=body.top_k or 0
    )
    if body.threshold is not None:
        identify_request.threshold = body.threshold
    reply = await score.identify(identify_request)
    return schemas.IdentifyResponse(
        image=schemas.image(reply.image),
        threshold=reply.threshold,
        faces=[schemas.identified_face(f) for f in reply.faces],
    )
