"""`facescore admin backup` while score runs on embedded storage and enrollments go on: score
takes the snapshot (its Snapshot call), the backup holds one point in time of the writes,
and restored (offline) it serves that state. Real detect, embed and score processes, the
real engine, the CLI as its own process."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from facescore.v1 import score_pb2, score_pb2_grpc
from services.common.models import vectron_file
from tests.admin.helpers import Subjects, facescore, gallery_state, score_env
from tests.conftest import ServiceProcess, free_port

StartService = Callable[..., ServiceProcess]
SUBJECTS = 4
DELETE_EVERY = 7  # every 7th write deletes a subject (two writes: its faces, its record)


class Writer(threading.Thread):
    """Enrolls new photos (and now and then deletes a subject), one call after another, and
    records the gallery's state after each: the backup must equal one of them."""

    def __init__(self, address: str) -> None:
        super().__init__(daemon=True)
        self.address = address
        self.states: list[Subjects] = [{}]
        self.warm = threading.Event()  # a few writes made
        self.stop = threading.Event()  # make one more write, then end
        self.error: BaseException | None = None

    def run(self) -> None:
        photo = vectron_file("yaoming.jpg").read_bytes()
        faces: dict[str, list[str]] = {}
        try:
            with grpc.insecure_channel(self.address) as channel:
                stub = score_pb2_grpc.ScoreServiceStub(channel)
                step = 0
                while True:
                    last = self.stop.is_set()
                    step += 1
                    subject = f"p{step % SUBJECTS}"
                    if step % DELETE_EVERY == 0 and subject in faces:
                        stub.DeleteSubject(
                            score_pb2.DeleteSubjectRequest(gallery="live", subject_id=subject),
                            timeout=60,
                        )
                        del faces[subject]
                    else:
                        # New bytes after the JPEG's end: a new photo, a new face.
                        request = score_pb2.EnrollRequest(
                            gallery="live", subject_id=subject, image=photo + b"\0" * step
                        )
                        reply = stub.Enroll(request, timeout=60)
                        assert reply.created
                        faces.setdefault(subject, []).append(reply.face_id)
                    self.states.append({s: (len(f), sorted(f)) for s, f in faces.items()})
                    if step == 3:
                        self.warm.set()
                    if last:
                        return
        except BaseException as error:
            self.error = error
            self.warm.set()


def test_backup_while_enrolling_holds_one_point_in_time(
    start_service: StartService,
    detect_service: ServiceProcess,
    embed_service: ServiceProcess,
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    score = start_service("score", **score_env(detect_service, embed_service, data))
    with grpc.insecure_channel(score.address) as channel:
        stub = score_pb2_grpc.ScoreServiceStub(channel)
        stub.CreateGallery(score_pb2.CreateGalleryRequest(name="live"), timeout=30)
        # The Snapshot call itself: a named folder under DATA_DIR/snapshots, never reused.
        taken = stub.Snapshot(score_pb2.SnapshotRequest(name="mine"), timeout=60)
        assert (taken.folder, taken.galleries, taken.faces) == ("snapshots/mine", 1, 0)
        copy = data / "snapshots" / "mine"
        assert sorted(p.name for p in copy.iterdir()) == list(taken.collections)
        assert all((copy / name / "collection.json").is_file() for name in taken.collections)
        assert taken.bytes == sum(p.stat().st_size for p in copy.rglob("*") if p.is_file())
        for name, code in (("mine", "ALREADY_EXISTS"), ("../up", "INVALID_ARGUMENT")):
            with pytest.raises(grpc.RpcError) as refused_call:
                stub.Snapshot(score_pb2.SnapshotRequest(name=name), timeout=60)
            assert refused_call.value.code().name == code, name
        shutil.rmtree(data / "snapshots" / "mine")

    # Not the score that holds the storage: refused in one line, nothing written.
    nobody = f"127.0.0.1:{free_port()}"
    refused = facescore(
        "admin", "backup", tmp_path / "nowhere", "--score", nobody, SCORE_DATA_DIR=str(data)
    )
    assert refused.returncode == 1
    assert f"score at {nobody} made no snapshot (UNAVAILABLE" in refused.stderr
    assert "--score" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]

    writer = Writer(score.address)
    writer.start()
    assert writer.warm.wait(120) and writer.error is None, writer.error
    acked_before = len(writer.states) - 1
    backup = tmp_path / "backup"
    done = facescore("admin", "backup", backup, "--score", score.address, SCORE_DATA_DIR=str(data))
    writer.stop.set()
    writer.join(120)
    assert writer.error is None, writer.error
    assert done.returncode == 0, done.stdout + done.stderr
    assert "snapshot taken by the running score service" in done.stdout
    assert list((data / "snapshots").iterdir()) == []  # score's copy, taken away
    manifest = json.loads((backup / "manifest.json").read_text())
    assert manifest["mode"] == "embedded" and manifest["live"]["score"] == score.address
    assert sum(n.endswith("/collection.json") for n in manifest["files"]) == 2

    # Restored into a fresh DATA_DIR (offline): consistent, and one of the writer's states.
    fresh = tmp_path / "fresh"
    restored = facescore("admin", "restore", backup, SCORE_DATA_DIR=str(fresh))
    assert restored.returncode == 0, restored.stderr
    checked = facescore("admin", "check", SCORE_DATA_DIR=str(fresh))
    assert checked.returncode == 0 and "consistent" in checked.stdout, checked.stdout
    again = start_service("score", **score_env(detect_service, embed_service, fresh))
    faces, subjects = gallery_state(again)["live"]
    assert again.stop() == 0
    assert subjects in writer.states, (subjects, writer.states)
    point = writer.states.index(subjects)
    print(
        f"\nwrites: {acked_before} before the backup, {len(writer.states) - 1} in all; "
        f"the backup holds the state after write {point}"
    )
    # At or after the writes acknowledged before the backup began; before the last write,
    # which began after the backup ended.
    assert acked_before <= point < len(writer.states) - 1, (acked_before, point)
    assert faces == sum(n for n, _ in subjects.values())
    live = manifest["live"]
    assert (live["faces"], live["subjects"], live["galleries"]) == (faces, len(subjects), 1)
    assert gallery_state(score)["live"][1] == writer.states[-1]
