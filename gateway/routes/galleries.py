"""Galleries: list, create, delete."""

from __future__ import annotations

from fastapi import APIRouter

from gateway import schemas
from gateway.dependencies import ADMIN, READ, Score

router = APIRouter(tags=["galleries"])


@router.get("/api/v1/galleries", dependencies=[READ])
async def list_galleries(score: Score) -> schemas.GalleryList:
    reply = await score.list_galleries()
    return schemas.GalleryList(galleries=[schemas.gallery(g) for g in reply.galleries])


@router.post("/api/v1/galleries", status_code=201, dependencies=[ADMIN])
async def create_gallery(score: Score, body: schemas.CreateGallery) -> schemas.Gallery:
    reply = await score.create_gallery(body.name)
    return schemas.gallery(reply)


@router.delete("/api/v1/galleries/{gallery}", dependencies=[ADMIN])
async def delete_gallery(score: Score, gallery: str) -> schemas.Deleted:
    reply = await score.delete_gallery(gallery)
    return schemas.Deleted(deleted_faces=reply.deleted_faces)
