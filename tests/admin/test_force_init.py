"""SCORE_FORCE_INIT: an empty faces collection at start-up, only when confirmed by its name."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import grpc

from facescore.v1 import score_pb2, score_pb2_grpc
from services.common.models import vectron_file
from services.score.storage import EdgeEngine
from tests.admin.helpers import gallery_state, score_env
from tests.conftest import ServiceProcess

StartService = Callable[..., ServiceProcess]


def faces_in_storage(data_dir: Path, collection: str) -> int:
    async def count() -> int:
        engine = EdgeEngine(data_dir / "edge")
        try:
            return await engine.count(collection)
        finally:
            await engine.close()

    return asyncio.run(count())


def test_force_init_needs_the_collection_name(
    start_service: StartService,
    detect_service: ServiceProcess,
    embed_service: ServiceProcess,
    tmp_path: Path,
) -> None:
    env = score_env(detect_service, embed_service, tmp_path)
    score = start_service("score", **env)
    with grpc.insecure_channel(score.address) as channel:
        stub = score_pb2_grpc.ScoreServiceStub(channel)
        collection = stub.GetServiceInfo(score_pb2.GetServiceInfoRequest(), timeout=10).collection
        stub.CreateGallery(score_pb2.CreateGalleryRequest(name="staff"), timeout=10)
        stub.Enroll(
            score_pb2.EnrollRequest(
                gallery="staff", subject_id="yao", image=vectron_file("yaoming.jpg").read_bytes()
            ),
            timeout=30,
        )
    assert score.stop() == 0
    assert faces_in_storage(tmp_path, collection) == 1

    # Unconfirmed, or confirmed with another name: start-up fails, saying what to set.
    for confirm in (None, "faces"):
        extra = {"SCORE_FORCE_INIT": "true"}
        if confirm is not None:
            extra["SCORE_FORCE_INIT_CONFIRM"] = confirm
        refused = start_service("score", wait=False, **env, **extra)
        assert refused.process is not None
        assert refused.process.wait(60) == 1
        logs = refused.logs()
        assert f"SCORE_FORCE_INIT_CONFIRM={collection}" in logs
        assert "startup failed" in logs
        assert ("it is unset" if confirm is None else "it is 'faces'") in logs
        assert faces_in_storage(tmp_path, collection) == 1  # nothing deleted

    confirmed = start_service(
        "score", **env, SCORE_FORCE_INIT="true", SCORE_FORCE_INIT_CONFIRM=collection
    )
    assert gallery_state(confirmed) == {"staff": (0, {"yao": (0, [])})}
    assert "force_init: faces collection deleted" in confirmed.logs()
    assert '"deleted_faces": 1' in confirmed.logs()
    with grpc.insecure_channel(confirmed.address) as channel:
        stub = score_pb2_grpc.ScoreServiceStub(channel)
        reply = stub.Enroll(
            score_pb2.EnrollRequest(
                gallery="staff", subject_id="yao", image=vectron_file("yaoming.jpg").read_bytes()
            ),
            timeout=30,
        )
    assert reply.created  # the face was really gone
    assert confirmed.stop() == 0
