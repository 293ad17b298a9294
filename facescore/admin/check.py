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

Embedded storage is opened directly, so the score service must be stopped: score owns its
shards, and while it runs `check` refuses with one line saying so. A Qdrant server is
checked live.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facescore.admin.backup import AdminError
from services.common.errors import FaceScoreError
from services.score.settings import ScoreSettings
from services.score.storage import Engine, Point, layout, open_engine, scroll_all, where
from services.score.storage.layout import SubjectRecord, subject_point_id
from services.score.storage.legacy import legacy_store

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


async def _engine(settings: ScoreSettings) -> Engine:
    if (
        not settings.qdrant_url
        and not Path(where(settings)).is_dir()
        and legacy_store(settings.data_dir) is None  # converted when opened
    ):
        raise AdminError(f"no embedded storage in {where(settings)}: nothing to check")
    return await open_engine(settings)


async def inspect(engine: Engine, prefix: str) -> tuple[Findings, list[str]]:
    registry = layout.registry_collection(prefix)
    names = await engine.collections()
    if registry not in names:
        raise AdminError(f"no {registry} collection: score has not created its data here yet")
    faces_collections = sorted(n for n in names if layout.is_faces_collection(prefix, n))
    found = Findings()
    async for record in scroll_all(engine, registry, {"kind": "gallery"}):
        found.galleries.add(layout.gallery_record(record.payload).name)
    async for record in scroll_all(engine, registry, {"kind": "subject"}):
        subject = layout.subject_record(record.payload)
        found.subjects.add((subject.gallery, subject.subject_id))
    with_faces: Counter[Key] = Counter()
    for collection in faces_collections:
        async for point in scroll_all(engine, collection):
            payload = point.payload
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


async def repair(engine: Engine, prefix: str, found: Findings) -> None:
    registry = layout.registry_collection(prefix)
    for collection, ids in found.faces_without_gallery.items():
        await engine.delete(collection, ids)
    records: list[SubjectRecord] = [
        layout.subject_from_faces(gallery, subject, payloads)
        for (gallery, subject), payloads in found.faces_without_subject.items()
    ]
    if records:
        await engine.upsert(
            registry,
            [
                Point(subject_point_id(r.gallery, r.subject_id), layout.subject_payload(r), [0.0])
                for r in records
            ],
        )
    stale = [subject_point_id(g, s) for g, s in found.subjects_without_gallery]
    if stale:
        await engine.delete(registry, stale)


def check(settings: ScoreSettings, *, fix: bool = False, say: Say = print) -> int:
    """Report (and with `fix`, repair) what disagrees; the exit code for the command."""
    try:
        return asyncio.run(_check(settings, fix, say))
    except FaceScoreError as error:  # storage held by score, or unreachable: one line
        raise AdminError(error.message) from error


async def _check(settings: ScoreSettings, fix: bool, say: Say) -> int:
    prefix = settings.collection_prefix
    engine = await _engine(settings)
    try:
        found, collections = await inspect(engine, prefix)
        say(
            f"{where(settings)}: galleries {len(found.galleries)}, subjects "
            f"{len(found.subjects)}, faces {found.faces} in {len(collections)} collection(s)"
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
        await repair(engine, prefix, found)
        again, _ = await inspect(engine, prefix)
        if again.problems:  # written meanwhile (a live server): say so, do not loop
            say(f"{again.problems} problem(s) remain: run it again")
            return 1
        say("repaired")
        return 0
    finally:
        await engine.close()
