"""What facescore stores, in one place: collection names, point ids, payloads, records.

Faces live in one collection per embedding model, galleries as tenants inside it (the
`gallery` keyword index is the tenant index). A small registry collection holds one record per
gallery and per subject (name, metadata, created time); face counts always come from the faces.
Every backend, `facescore admin check` and `facescore admin migrate` read and write through here.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Namespace of the deterministic point ids (UUIDv5): a retried write lands on the same point.
ID_NAMESPACE = uuid.UUID("6f1c1f6e-2b0e-5d2c-9a39-7a0f3c4b8e11")
_SEP = "\x1f"
REGISTRY_SUFFIX = "registry"
# Payload indexes: field -> is_tenant. `gallery` partitions the faces (Qdrant's tenant index).
FACE_INDEXES = {"gallery": True, "subject_id": False}
REGISTRY_INDEXES = {"kind": False, "gallery": False}
REGISTRY_DIM = 1  # registry points are records; Qdrant needs a vector, this is a placeholder


@dataclass(frozen=True)
class ModelIdentity:
    name: str
    sha256: str
    dim: int

    @property
    def model_id(self) -> str:
        return f"{self.name}@{self.sha256}"

    def metadata(self) -> dict[str, Any]:
        """Stamped on the faces collection: a collection never mixes models."""
        return {"model_name": self.name, "model_sha256": self.sha256, "dim": self.dim}


@dataclass(frozen=True)
class Hit:
    subject_id: str
    similarity: float
    face_id: str


@dataclass(frozen=True)
class GalleryRecord:
    name: str
    created_unix_ms: int


@dataclass(frozen=True)
class SubjectRecord:
    gallery: str
    subject_id: str
    metadata_json: str
    created_unix_ms: int


def now_ms() -> int:
    return int(time.time() * 1000)


def faces_collection(prefix: str, identity: ModelIdentity) -> str:
    return f"{prefix}_{identity.name}_{identity.sha256[:12]}"


def registry_collection(prefix: str) -> str:
    return f"{prefix}_{REGISTRY_SUFFIX}"


def is_faces_collection(prefix: str, name: str) -> bool:
    return name.startswith(f"{prefix}_") and name != registry_collection(prefix)


def face_id(gallery: str, subject_id: str, image_sha256: str, face_index: int) -> str:
    return str(
        uuid.uuid5(ID_NAMESPACE, _SEP.join((gallery, subject_id, image_sha256, str(face_index))))
    )


def gallery_point_id(gallery: str) -> str:
    return str(uuid.uuid5(ID_NAMESPACE, _SEP.join(("gallery", gallery))))


def subject_point_id(gallery: str, subject_id: str) -> str:
    return str(uuid.uuid5(ID_NAMESPACE, _SEP.join(("subject", gallery, subject_id))))


def face_payload(
    identity: ModelIdentity,
    gallery: str,
    subject_id: str,
    point_id: str,
    metadata_json: str,
    **details: Any,
) -> dict[str, Any]:
    """A face's payload: who it is, which model made it, and the details Enroll knows."""
    return {
        "gallery": gallery,
        "subject_id": subject_id,
        "face_id": point_id,
        "model_name": identity.name,
        "model_sha256": identity.sha256,
        **details,
        "created": details.get("created", now_ms()),
        "metadata_json": metadata_json,
    }


def gallery_payload(record: GalleryRecord) -> dict[str, Any]:
    return {"kind": "gallery", "gallery": record.name, "created": record.created_unix_ms}


def subject_payload(record: SubjectRecord) -> dict[str, Any]:
    return {
        "kind": "subject",
        "gallery": record.gallery,
        "subject_id": record.subject_id,
        "metadata_json": record.metadata_json,
        "created": record.created_unix_ms,
    }


def gallery_record(payload: Mapping[str, Any]) -> GalleryRecord:
    return GalleryRecord(str(payload["gallery"]), int(payload.get("created", 0)))


def subject_record(payload: Mapping[str, Any]) -> SubjectRecord:
    return SubjectRecord(
        gallery=str(payload["gallery"]),
        subject_id=str(payload["subject_id"]),
        metadata_json=str(payload.get("metadata_json", "")),
        created_unix_ms=int(payload.get("created", 0)),
    )


def subject_from_faces(
    gallery: str, subject_id: str, payloads: Sequence[Mapping[str, Any]]
) -> SubjectRecord:
    """A lost subject record, rebuilt from its faces: the first face's time, the newest's
    metadata (what `admin check --repair` writes)."""
    newest = max(payloads, key=lambda p: int(p.get("created", 0)))
    first = min(int(p.get("created", 0)) for p in payloads)
    return SubjectRecord(
        gallery, subject_id, str(newest.get("metadata_json", "")), first or now_ms()
    )
