"""`facescore admin check [--repair]`: the gallery data agrees with itself.

Qdrant has no transactions, so score writes a face and its subject record, or deletes them,
one after the other. One score process orders these writes with a lock per gallery; an
interrupted delete, or enrollments and deletes of one subject through two score replicas at
once, can still leave:

- faces of a gallery that no longer exists (they would come back if it were created again);
- faces whose subject has no record (identify finds them; subject listings do not);
- subject records of a gallery that no longer exists.

`check` reports them and exits 1; `--repair` deletes the first and the last, and writes the
missing subject records (from the faces' own metadata), then exits 0. Subjects without any
face are listed but left alone: deleting a subject's last face keeps the subject.

Embedded Qdrant is opened directly, so the score service must be stopped (qdrant-client
refuses a second client on the same folder); a Qdrant server is checked live.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from qdrant_client import QdrantClient, models

from facescore.admin.backup import AdminError
from services.score.gallery import match_filter, now_ms, qdrant_options, subject_point_id
from services.score.settings import ScoreSettings

Say = Callable[[str], None]
Key = tuple[str, str]  # (gallery, subject id)


@dataclass
class Findings:
    galleries: set[str] = field(default_factory=set)
    subjects: set[Key] = field(default_factory=set)
    # collection -> point ids, per problem.
    faces_without_gallery: dict[str, list[Any]] = field(default_factory=dict)
    faces_without_subject: dict[Key, list[dict[str, Any]]] = field(default_factory=dict)
    subjects_without_gallery: list[Key] = field(default_factory=list)
    subjects_without_faces: list[Key] = field(default_factory=list)
    faces: int = 0

    @property
    def problems(self) -> int:
        return (
            sum(map(len, self.faces_without_gallery.values()))
            + len(self.faces_without_subject)
            + len(self.subjects_without_gallery)
        )


@contextlib.contextmanager
def _client(settings: ScoreSettings) -> Iterator[QdrantClient]:
    if not settings.qdrant_url and not (settings.data_dir / "qdrant").is_dir():
        raise AdminError(
            f"no embedded Qdrant data in {settings.data_dir / 'qdrant'}: nothing to check"
        )
    try:
        client = QdrantClient(**qdrant_options(settings))
    except RuntimeError as error:  # qdrant-client: "already accessed by another instance"
        raise AdminError(
            f"{settings.data_dir / 'qdrant'} is in use: stop the score service that uses this "
            f"SCORE_DATA_DIR first ({error})"
        ) from error
    try:
        yield client
    finally:
        client.close()


def _scroll(client: QdrantClient, collection: str, **fields: str) -> Iterator[models.Record]:
    offset: Any = None
    while True:
        points, offset = client.scroll(
            collection,
            scroll_filter=match_filter(**fields),
            limit=1024,
            offset=offset,
            with_payload=True,
        )
        yield from points
        if offset is None:
            return


def inspect(client: QdrantClient, prefix: str) -> tuple[Findings, list[str]]:
    registry = f"{prefix}_registry"
    names = [c.name for c in client.get_collections().collections]
    if registry not in names:
        raise AdminError(f"no {registry} collection: score has not created its data here yet")
    faces_collections = sorted(n for n in names if n.startswith(f"{prefix}_") and n != registry)
    found = Findings()
    for record in _scroll(client, registry, kind="gallery"):
        found.galleries.add(str((record.payload or {})["gallery"]))
    for record in _scroll(client, registry, kind="subject"):
        payload = record.payload or {}
        found.subjects.add((str(payload["gallery"]), str(payload["subject_id"])))
    with_faces: Counter[Key] = Counter()
    for collection in faces_collections:
        for point in _scroll(client, collection):
            payload = point.payload or {}
            key = (str(payload.get("gallery", "")), str(payload.get("subject_id", "")))
            found.faces += 1
            with_faces[key] += 1
            if key[0] not in found.galleries:
                found.faces_without_gallery.setdefault(collection, []).append(point.id)
            elif key not in found.subjects:
                found.faces_without_subject.setdefault(key, []).append(payload)
    found.subjects_without_gallery = sorted(
        k for k in found.subjects if k[0] not in found.galleries
    )
    found.subjects_without_faces = sorted(
        k for k in found.subjects if k[0] in found.galleries and not with_faces[k]
    )
    return found, faces_collections


def repair(client: QdrantClient, prefix: str, found: Findings) -> None:
    registry = f"{prefix}_registry"
    for collection, ids in found.faces_without_gallery.items():
        client.delete(collection, models.PointIdsList(points=ids), wait=True)
    records = []
    for (gallery, subject), payloads in found.faces_without_subject.items():
        newest = max(payloads, key=lambda p: int(p.get("created", 0)))
        payload = {
            "kind": "subject",
            "gallery": gallery,
            "subject_id": subject,
            "metadata_json": str(newest.get("metadata_json", "")),
            "created": min(int(p.get("created", 0)) for p in payloads) or now_ms(),
        }
        records.append(
            models.PointStruct(id=subject_point_id(gallery, subject), vector=[0.0], payload=payload)
        )
    if records:
        client.upsert(registry, records, wait=True)
    stale = [subject_point_id(g, s) for g, s in found.subjects_without_gallery]
    if stale:
        client.delete(registry, models.PointIdsList(points=stale), wait=True)


def check(settings: ScoreSettings, *, fix: bool = False, say: Say = print) -> int:
    """Report (and with `fix`, repair) what disagrees; the exit code for the command."""
    prefix = settings.collection_prefix
    where = settings.qdrant_url or str(settings.data_dir / "qdrant")
    with _client(settings) as client:
        found, collections = inspect(client, prefix)
        say(
            f"{where}: galleries {len(found.galleries)}, subjects {len(found.subjects)}, "
            f"faces {found.faces} in {len(collections)} collection(s)"
        )
        lost = sum(map(len, found.faces_without_gallery.values()))
        lines = [
            (lost, "face(s) of galleries that no longer exist", "deleted"),
            (
                sum(map(len, found.faces_without_subject.values())),
                f"face(s) of {len(found.faces_without_subject)} subject(s) without a record",
                "records written",
            ),
            (
                len(found.subjects_without_gallery),
                "subject record(s) of galleries that no longer exist",
                "deleted",
            ),
        ]
        for count, what, done in lines:
            if count:
                say(f"  {count} {what}" + (f": {done}" if fix else ""))
        if found.subjects_without_faces:
            shown = ", ".join(f"{g}/{s}" for g, s in found.subjects_without_faces[:5])
            more = len(found.subjects_without_faces) - 5
            say(
                f"  {len(found.subjects_without_faces)} subject(s) without faces (kept: "
                f"their last face was deleted): {shown}" + (f" and {more} more" if more > 0 else "")
            )
        if not found.problems:
            say("consistent")
            return 0
        if not fix:
            say("run `facescore admin check --repair` to repair")
            return 1
        repair(client, prefix, found)
        again, _ = inspect(client, prefix)
        if again.problems:  # written meanwhile (a live server): say so, do not loop
            say(f"{again.problems} problem(s) remain: run it again")
            return 1
        say("repaired")
        return 0
