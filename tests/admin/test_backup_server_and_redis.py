"""`admin backup` / `admin restore` with a Qdrant server and with Redis.

Server mode runs against a FAKE Qdrant HTTP server (tests/admin/fake_qdrant.py): the Qdrant
server binary is not available here. Redis is a real redis-server
(facescore/devtools/redis_server.py).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from facescore.admin.backup import AdminError, backup, restore
from facescore.devtools.redis_server import RedisServer
from services.score.settings import ScoreSettings
from services.score.storage import CollectionSpec, EdgeEngine, Point
from services.score.storage.layout import gallery_point_id
from tests.admin.fake_qdrant import FakeQdrant, RunningFake

FACES = "faces_w600k_mbf_81ffd4b788d5"
REGISTRY = "faces_registry"
SHA = "81ffd4b788d5c2cb5d9bf25056b7e793bf64322d7796eceff9db6c0272a0e998"

pytestmark = pytest.mark.filterwarnings("ignore:Api key is used with an insecure connection")


def settings(**values: object) -> ScoreSettings:
    base: dict[str, object] = {"qdrant_url": None, "qdrant_api_key": None, "redis_url": None}
    return ScoreSettings(**{**base, **values})  # type: ignore[arg-type]


@pytest.fixture()
def fake_qdrant() -> Iterator[FakeQdrant]:
    fake = FakeQdrant(
        api_key="k3y",
        collections={
            FACES: b"faces snapshot \x00\x01" * 10_000,
            REGISTRY: b"registry snapshot",
            "someone_else": b"not ours",
        },
        metadata={FACES: {"model_name": "w600k_mbf", "model_sha256": SHA, "dim": 512}},
    )
    running = RunningFake(fake)
    yield fake
    running.stop()


def server_settings(fake: FakeQdrant, key: str | None = None) -> ScoreSettings:
    return settings(qdrant_url=fake.url, qdrant_api_key=SecretStr(key or fake.api_key))


def test_server_mode_snapshots_round_trip(fake_qdrant: FakeQdrant, tmp_path: Path) -> None:
    said: list[str] = []
    dest = tmp_path / "backup"
    manifest = backup(server_settings(fake_qdrant), dest, say=said.append)
    assert manifest["mode"] == "server"
    assert [c["name"] for c in manifest["collections"]] == [REGISTRY, FACES]  # not someone_else
    assert manifest["models"] == [
        {"collection": FACES, "model_name": "w600k_mbf", "model_sha256": SHA, "dim": 512}
    ]
    for name in (FACES, REGISTRY):
        file = f"snapshots/{name}.snapshot"
        content = fake_qdrant.collections[name]
        assert (dest / file).read_bytes() == content
        assert manifest["files"][file]["sha256"] == hashlib.sha256(content).hexdigest()
    assert json.loads((dest / "manifest.json").read_text()) == manifest
    # The snapshots were made, downloaded, then deleted on the server.
    assert sorted(name for name, _ in fake_qdrant.deleted_snapshots) == [REGISTRY, FACES]
    assert fake_qdrant.snapshots == {}
    assert not any("someone_else/snapshots" in r for r in fake_qdrant.requests)

    # The collections exist: restore wants --yes and uploads nothing without it.
    with pytest.raises(AdminError, match=r"already holds data .*--yes"):
        restore(server_settings(fake_qdrant), dest)
    assert fake_qdrant.uploads == []

    # A damaged snapshot is refused before anything is uploaded.
    damaged = tmp_path / "damaged"
    shutil.copytree(dest, damaged)
    (damaged / f"snapshots/{FACES}.snapshot").write_bytes(b"faces snapshot \x00\x02")
    with pytest.raises(AdminError, match=rf"snapshots/{FACES}.snapshot: .* bytes, the manifest"):
        restore(server_settings(fake_qdrant), damaged, yes=True)
    assert fake_qdrant.uploads == []

    saved = dict(fake_qdrant.collections)
    fake_qdrant.collections.clear()
    restore(server_settings(fake_qdrant), dest, say=said.append)
    uploads = {u.collection: u for u in fake_qdrant.uploads}
    assert sorted(uploads) == [REGISTRY, FACES]
    for name, upload in uploads.items():
        assert upload.content == saved[name]
        assert upload.params["priority"] == "snapshot"
        assert upload.params["checksum"] == hashlib.sha256(saved[name]).hexdigest()
    assert f"collection {FACES} restored from its snapshot" in said

    restore(server_settings(fake_qdrant), dest, yes=True)  # replaces them again
    assert len(fake_qdrant.uploads) == 4


def test_server_mode_errors_are_clear(fake_qdrant: FakeQdrant, tmp_path: Path) -> None:
    with pytest.raises(AdminError, match=r"Qdrant at http://127\.0\.0\.1:\d+ failed: .*401"):
        backup(server_settings(fake_qdrant, key="wrong"), tmp_path / "b1")
    assert not (tmp_path / "b1").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no partial folder left behind
    fake_qdrant.collections = {"someone_else": b"x"}
    with pytest.raises(AdminError, match=r"nothing to back up: .* no collection named faces_"):
        backup(server_settings(fake_qdrant), tmp_path / "b2")
    # A server backup cannot go into an embedded DATA_DIR, nor the other way round.
    fake_qdrant.collections = {REGISTRY: b"r"}
    backup(server_settings(fake_qdrant), tmp_path / "b3")
    with pytest.raises(AdminError, match=r"set SCORE_QDRANT_URL"):
        restore(settings(data_dir=tmp_path / "data"), tmp_path / "b3")
    assert not (tmp_path / "data").exists()


def make_embedded_storage(data_dir: Path) -> None:
    async def write() -> None:
        engine = EdgeEngine(data_dir / "edge")
        await engine.create(REGISTRY, CollectionSpec(1, "dot", {}, {"kind": False}))
        point = Point(gallery_point_id("g"), {"kind": "gallery", "gallery": "g"}, [0.0])
        await engine.upsert(REGISTRY, [point])
        await engine.close()

    asyncio.run(write())


def count_registry(data_dir: Path) -> int:
    async def count() -> int:
        engine = EdgeEngine(data_dir / "edge")
        try:
            return await engine.count(REGISTRY)
        finally:
            await engine.close()

    return asyncio.run(count())


def test_redis_keys_are_dumped_and_restored(tmp_path: Path) -> None:
    with RedisServer(password="p@ss word") as server:
        redis = server.client()
        redis.set("facescore:analysis:v1:aaaa:1111", b"\x00analysis one", px=3_600_000)
        redis.set("facescore:analysis:v1:bbbb:2222", b"analysis two")
        redis.set("other:key", b"not ours")
        data = tmp_path / "data"
        make_embedded_storage(data)
        with_redis = settings(data_dir=data, redis_url=SecretStr(server.url))
        dest = tmp_path / "backup"
        manifest = backup(with_redis, dest, say=lambda _: None)
        assert manifest["redis"]["keys"] == 2 and manifest["redis"]["skipped"] is False
        assert "p@ss" not in (dest / "manifest.json").read_text()
        lines = [json.loads(line) for line in (dest / "redis.jsonl").read_text().splitlines()]
        keys = sorted(base64.b64decode(line["key"]).decode() for line in lines)
        assert keys == ["facescore:analysis:v1:aaaa:1111", "facescore:analysis:v1:bbbb:2222"]
        assert "redis.jsonl" in manifest["files"]

        skipped = backup(with_redis, tmp_path / "no-redis", include_redis=False, say=print)
        assert skipped["redis"]["skipped"] is True
        assert not (tmp_path / "no-redis" / "redis.jsonl").exists()

        # Restoring into a fresh DATA_DIR while Redis still holds facescore keys: --yes needed.
        fresh = tmp_path / "fresh"
        target = settings(data_dir=fresh, redis_url=SecretStr(server.url))
        with pytest.raises(AdminError, match=r"Redis already holds data .*2 facescore:"):
            restore(target, dest)
        assert not fresh.exists()

        # A damaged Redis dump is refused like any other file.
        damaged = tmp_path / "damaged"
        shutil.copytree(dest, damaged)
        with (damaged / "redis.jsonl").open("a") as handle:
            handle.write("\n")
        with pytest.raises(AdminError, match=r"redis.jsonl: .* bytes, the manifest says"):
            restore(target, damaged, yes=True)

        redis.flushall()
        redis.set("other:key", b"still here")
        restore(target, dest, say=print)
        assert redis.get("facescore:analysis:v1:aaaa:1111") == b"\x00analysis one"
        assert 3_500_000 < redis.pttl("facescore:analysis:v1:aaaa:1111") <= 3_600_000
        assert redis.get("facescore:analysis:v1:bbbb:2222") == b"analysis two"
        assert redis.pttl("facescore:analysis:v1:bbbb:2222") == -1
        assert redis.get("other:key") == b"still here"
        assert count_registry(fresh) == 1

        # Without SCORE_REDIS_URL the saved keys are skipped, with a note.
        said: list[str] = []
        restore(settings(data_dir=tmp_path / "third"), dest, say=said.append)
        assert any("SCORE_REDIS_URL is unset" in line for line in said)

        # A Redis that is down fails the backup, with the way out.
        server.stop()
        with pytest.raises(AdminError, match=r"Redis at redis://127\.0\.0\.1:.* --skip-redis"):
            backup(with_redis, tmp_path / "down", say=lambda _: None)
        assert not (tmp_path / "down").exists()
