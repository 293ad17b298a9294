"""`facescore admin backup DEST` and `facescore admin restore SRC`: score's data, kept safe.

What is backed up depends on how score runs (the SCORE_* settings):

- Embedded storage (SCORE_QDRANT_URL unset): a copy of DATA_DIR/edge, the engine's shards.
  score owns its shards (their WAL locks). While it runs, this command asks it for a
  snapshot (its Snapshot call, at `score_target`): score holds writes back, flushes every
  shard, copies them to DATA_DIR/snapshots/<name> and lets writes go on; this command copies
  that folder into DEST and deletes it. So it must run where score's DATA_DIR is mounted (in
  compose, a container sharing score's volume). When no score runs, it holds every shard
  itself, flushed, while it copies them.
- Qdrant server (SCORE_QDRANT_URL set): a snapshot of every facescore collection (the faces
  collections and the registry, all named SCORE_COLLECTION_PREFIX_*), made through the
  Qdrant API, downloaded, then deleted on the server.
- Redis (SCORE_REDIS_URL set): every facescore:* key, as DUMP payloads with their TTLs.

DEST is a new folder holding the data and a manifest.json (created time, mode, facescore
version, the models the collections were made for, and the sha256 and size of every file).
It is written under a temporary name and renamed when complete: a DEST that exists is whole.

Restore checks every file against the manifest before it touches anything, refuses a
target that already holds data unless told --yes, and then:

- embedded (offline: score must be stopped, a running one is refused in one line): copies
  the files to a sibling of DATA_DIR/edge, then swaps the folders with
  renames. The replaced data is KEPT as DATA_DIR/edge.before-restore-<time> (delete it
  once the restored service looks right); nothing is deleted. A backup of the previous
  embedded store (qdrant-client's local mode, DATA_DIR/qdrant) goes back to DATA_DIR/qdrant,
  which score converts to the engine's shards when it starts.
- server: uploads each snapshot (POST /collections/{name}/snapshots/upload?priority=snapshot,
  with the sha256 for Qdrant to check), which replaces the collection of that name.
- Redis: RESTORE ... REPLACE of every saved key; other keys are left alone.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

import grpc
import httpx

from facescore.v1 import score_pb2, score_pb2_grpc
from services.score.redis_target import RedisTarget, redacted
from services.score.settings import ScoreSettings
from services.score.storage import StorageInUse
from services.score.storage.edge import held

MANIFEST = "manifest.json"
FORMAT = 1
QDRANT_DIR = "edge"  # the embedded engine's shards, DATA_DIR/edge/<collection>/
LEGACY_DIR = "qdrant"  # qdrant-client's local mode (backups made before); converted at start
SPEC_FILE = "collection.json"  # one per embedded collection, written when it is created
SNAPSHOT_DIR = "snapshots"
REDIS_FILE = "redis.jsonl"
REDIS_PATTERN = "facescore:*"
META_FILE = "meta.json"  # qdrant-client local mode's list of collections
SNAPSHOT_TIMEOUT_S = 600.0
SCORE_SNAPSHOTS = "snapshots"  # score's Snapshot writes DATA_DIR/snapshots/<name>
CHUNK = 1 << 20

Say = Callable[[str], None]


class AdminError(Exception):
    """A refusal or a failure, with a message for the operator (exit status 1)."""


# Files and checksums.


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    with target.open("rb") as handle:
        os.fsync(handle.fileno())


def _entry(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "size": path.stat().st_size}


def _safe_relative(name: str) -> PurePosixPath:
    """A manifest path that stays inside the backup (a crafted manifest cannot escape it)."""
    path = PurePosixPath(name)
    allowed_top = (
        path.parts[:1] in ((QDRANT_DIR,), (LEGACY_DIR,), (SNAPSHOT_DIR,)) and len(path.parts) > 1
    )
    if (
        path.is_absolute()
        or ".." in path.parts
        or "\\" in name
        or not (allowed_top or name == REDIS_FILE)
    ):
        raise AdminError(f"the manifest names an unexpected path {name!r}; refusing the backup")
    return path


def _facescore_version() -> str:
    try:
        return importlib.metadata.version("facescore")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _now() -> tuple[str, str]:
    """ISO time for the manifest and a compact stamp for folder names."""
    now = dt.datetime.now(dt.UTC)
    return now.isoformat(timespec="seconds"), now.strftime("%Y%m%dT%H%M%SZ")


# The embedded storage, held.


@contextlib.contextmanager
def storage_lock(storage: Path) -> Iterator[None]:
    """Hold every shard of the embedded storage (their WAL locks), flushed; refuse with one
    line when a score service holds it. score owns its shards: an embedded restore is an
    offline operation, and a score service cannot start while one runs."""
    try:
        with held(storage):
            yield
    except StorageInUse as error:
        raise AdminError(
            f"{storage} is held by the score service running on this SCORE_DATA_DIR: stop it "
            "first (embedded storage is restored offline)"
        ) from error


def _copy_tree(source: Path, target: Path) -> None:
    for path in sorted(source.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        _copy(path, target / path.relative_to(source))


def _score_snapshot(target: str, say: Say) -> score_pb2.SnapshotResponse:
    """Ask the running score service for a snapshot of its embedded storage."""
    _, stamp = _now()
    name = f"backup-{stamp}-{os.getpid()}"
    say(f"score holds the embedded storage: asking score at {target} for a snapshot")
    with grpc.insecure_channel(target) as channel:
        stub = score_pb2_grpc.ScoreServiceStub(channel)
        try:
            reply: score_pb2.SnapshotResponse = stub.Snapshot(
                score_pb2.SnapshotRequest(name=name), timeout=SNAPSHOT_TIMEOUT_S
            )
        except grpc.RpcError as error:
            code, details = error.code(), error.details()
            hint = ""
            if code == grpc.StatusCode.UNAVAILABLE:
                hint = (
                    ": is this the score service that holds the storage? Pass --score ADDRESS "
                    "(or set FACESCORE_SCORE_TARGET)"
                )
            elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
                hint = (
                    f": score finishes the copy in {SCORE_SNAPSHOTS}/{name} of its DATA_DIR "
                    "(delete it); raise score's SCORE_MAX_CALL_S for a store this large"
                )
            raise AdminError(
                f"score at {target} made no snapshot ({code.name}: {details}){hint}"
            ) from error
    return reply


def _snapshot_folder(data_dir: Path, folder: str) -> Path:
    """score's snapshot, found in this command's DATA_DIR (score answers it relative to its)."""
    relative = PurePosixPath(folder)
    if relative.is_absolute() or ".." in relative.parts or relative.parts[:1] != (SCORE_SNAPSHOTS,):
        raise AdminError(f"score answered an unexpected snapshot folder {folder!r}")
    path = data_dir.joinpath(*relative.parts)
    if not path.is_dir():
        raise AdminError(
            f"score wrote its snapshot to {folder} in its DATA_DIR, but {path} is not here: "
            "run this command where score's SCORE_DATA_DIR is mounted"
        )
    return path


def _embedded_collections(storage: Path) -> dict[str, dict[str, Any]]:
    """Collection name -> its spec (size, distance, metadata), from each collection.json
    (or, in a store of qdrant-client's local mode, from its meta.json)."""
    if (storage / META_FILE).is_file():
        try:
            meta = json.loads((storage / META_FILE).read_text())
        except (OSError, ValueError):
            return {}
        collections = meta.get("collections") if isinstance(meta, dict) else None
        return collections if isinstance(collections, dict) else {}
    found = {}
    for spec in sorted(storage.glob(f"*/{SPEC_FILE}")):
        with contextlib.suppress(OSError, ValueError):
            found[spec.parent.name] = json.loads(spec.read_text())
    return found


def _model_of(name: str, metadata: Any) -> dict[str, Any] | None:
    """The model a faces collection was made for (score stamps it in the collection metadata)."""
    if not isinstance(metadata, dict) or "model_name" not in metadata:
        return None
    return {
        "collection": name,
        "model_name": metadata.get("model_name"),
        "model_sha256": metadata.get("model_sha256"),
        "dim": metadata.get("dim"),
    }


def _storage_has_data(storage: Path) -> list[str]:
    """What an existing embedded storage holds (collections, else stray files); [] if empty."""
    if not storage.exists():
        return []
    collections = sorted(_embedded_collections(storage))
    if collections:
        return [f"collection {name}" for name in collections]
    return sorted(str(p.relative_to(storage)) for p in storage.rglob("*") if p.is_file())


# Qdrant server.


class _Server:
    """qdrant-client for the snapshot calls, httpx for the snapshot files themselves."""

    def __init__(self, settings: ScoreSettings) -> None:
        from qdrant_client import QdrantClient

        assert settings.qdrant_url
        key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        self.url = settings.qdrant_url
        self.client = QdrantClient(
            url=settings.qdrant_url,
            api_key=key,
            timeout=int(SNAPSHOT_TIMEOUT_S),
            check_compatibility=False,
        )
        # The REST address qdrant-client itself uses (it adds port 6333 to a URL without one).
        base = str(getattr(self.client._client, "rest_uri", settings.qdrant_url))
        self.http = httpx.Client(
            base_url=base.rstrip("/"),
            headers={"api-key": key} if key else {},
            timeout=httpx.Timeout(SNAPSHOT_TIMEOUT_S, connect=settings.qdrant_timeout_s),
        )

    def close(self) -> None:
        self.http.close()
        self.client.close()

    def collections(self, prefix: str) -> list[str]:
        names = [c.name for c in self.client.get_collections().collections]
        return sorted(n for n in names if n.startswith(f"{prefix}_"))

    def metadata(self, name: str) -> Any:
        # Raw JSON, read leniently: only the metadata stamped by score is wanted.
        reply = self.http.get(f"/collections/{quote(name, safe='')}")
        if reply.status_code != 200:
            return None
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            return reply.json()["result"]["config"].get("metadata")
        return None

    def download_snapshot(self, name: str, target: Path, say: Say) -> dict[str, Any]:
        snapshot = self.client.create_snapshot(name, wait=True)
        if snapshot is None:
            raise AdminError(f"Qdrant made no snapshot of collection {name}")
        try:
            path = f"/collections/{quote(name, safe='')}/snapshots/{quote(snapshot.name, safe='')}"
            target.parent.mkdir(parents=True, exist_ok=True)
            with self.http.stream("GET", path) as reply:
                if reply.status_code != 200:
                    reply.read()
                    raise AdminError(
                        f"downloading snapshot {snapshot.name} of {name} failed: "
                        f"HTTP {reply.status_code} {reply.text[:300]}"
                    )
                with target.open("wb") as handle:
                    for chunk in reply.iter_bytes(CHUNK):
                        handle.write(chunk)
                    handle.flush()
                    os.fsync(handle.fileno())
            sha256 = sha256_file(target)
            if snapshot.checksum and snapshot.checksum != sha256:
                raise AdminError(
                    f"snapshot {snapshot.name} of {name} arrived damaged: sha256 {sha256}, "
                    f"Qdrant says {snapshot.checksum}"
                )
        finally:
            try:
                self.client.delete_snapshot(name, snapshot.name, wait=True)
            except Exception as error:  # the backup is still good; say what is left behind
                say(f"note: could not delete snapshot {snapshot.name} of {name} on Qdrant: {error}")
        return {"name": name, "snapshot": snapshot.name, "created": snapshot.creation_time}

    def exists(self, name: str) -> bool:
        return bool(self.client.collection_exists(name))

    def upload_snapshot(self, name: str, source: Path, sha256: str) -> None:
        with source.open("rb") as handle:
            reply = self.http.post(
                f"/collections/{quote(name, safe='')}/snapshots/upload",
                params={"priority": "snapshot", "wait": "true", "checksum": sha256},
                files={"snapshot": (source.name, handle, "application/octet-stream")},
            )
        if reply.status_code != 200:
            raise AdminError(
                f"Qdrant refused the snapshot of {name}: HTTP {reply.status_code} "
                f"{reply.text[:500]}"
            )


@contextlib.contextmanager
def _server(settings: ScoreSettings) -> Iterator[_Server]:
    server = _Server(settings)
    try:
        yield server
    except AdminError:
        raise
    except Exception as error:
        raise AdminError(
            f"Qdrant at {redacted(server.url)} failed: {type(error).__name__}: {error}"
        ) from error
    finally:
        server.close()


# Redis.


def _redis_target(settings: ScoreSettings) -> RedisTarget:
    target = settings.redis_target()
    assert target is not None, "only called with SCORE_REDIS_URL set"
    return target


def _redis(settings: ScoreSettings) -> Any:
    return _redis_target(settings).sync_client(socket_timeout=30, socket_connect_timeout=5)


@contextlib.contextmanager
def _redis_errors(settings: ScoreSettings, hint: str) -> Iterator[None]:
    import redis

    assert settings.redis_url is not None
    try:
        yield
    except (redis.RedisError, OSError) as error:
        where = _redis_target(settings).describe()
        raise AdminError(f"Redis at {where} failed: {error}{hint}") from error


def _batches(items: Iterable[bytes], size: int) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _dump_redis(settings: ScoreSettings, target: Path) -> int:
    """Every facescore:* key as a JSON line: key, DUMP payload (base64) and PTTL."""
    client = _redis(settings)
    written = 0
    with target.open("w") as handle:
        for keys in _batches(client.scan_iter(match=REDIS_PATTERN, count=1000), 500):
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.dump(key)
                pipe.pttl(key)
            replies = pipe.execute()
            for index, key in enumerate(keys):
                payload, pttl = replies[2 * index], replies[2 * index + 1]
                if payload is None:  # expired since the scan
                    continue
                record = {
                    "key": base64.b64encode(key).decode(),
                    "pttl": int(pttl),
                    "dump": base64.b64encode(payload).decode(),
                }
                handle.write(json.dumps(record) + "\n")
                written += 1
        handle.flush()
        os.fsync(handle.fileno())
    client.close()
    return written


def _redis_keys_present(settings: ScoreSettings) -> int:
    client = _redis(settings)
    count = sum(1 for _ in client.scan_iter(match=REDIS_PATTERN, count=1000))
    client.close()
    return count


def _restore_redis(settings: ScoreSettings, source: Path) -> int:
    client = _redis(settings)
    restored = 0
    with source.open() as handle:
        pipe = client.pipeline(transaction=False)
        for line in handle:
            if not line.strip():
                continue
            record = json.loads(line)
            pttl = int(record["pttl"])
            pipe.restore(
                base64.b64decode(record["key"]),
                pttl if pttl > 0 else 0,  # 0: no expiry (PTTL -1)
                base64.b64decode(record["dump"]),
                replace=True,
            )
            restored += 1
            if len(pipe) >= 500:
                pipe.execute()
        pipe.execute()
    client.close()
    return restored


# Backup.


def backup(
    settings: ScoreSettings,
    dest: Path,
    *,
    include_redis: bool = True,
    score_target: str = "127.0.0.1:50053",
    say: Say = print,
) -> dict[str, Any]:
    """Write a backup of score's data to the new folder `dest`; returns the manifest.
    `score_target` is the score service asked for a snapshot when it holds the embedded
    storage."""
    dest = dest.absolute()
    if dest.exists():
        raise AdminError(f"{dest} already exists; back up into a new folder")
    if not dest.parent.is_dir():
        raise AdminError(f"{dest.parent} does not exist")
    created, stamp = _now()
    staging = dest.parent / f".{dest.name}.partial-{stamp}-{os.getpid()}"
    staging.mkdir()
    try:
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "created": created,
            "facescore_version": _facescore_version(),
            "collection_prefix": settings.collection_prefix,
        }
        if settings.qdrant_url:
            manifest.update(_backup_server(settings, staging, say))
        else:
            manifest.update(_backup_embedded(settings, staging, score_target, say))
        manifest["redis"] = _backup_redis(settings, staging, include_redis, say)
        manifest["files"] = {
            path.relative_to(staging).as_posix(): _entry(path)
            for path in sorted(staging.rglob("*"))
            if path.is_file()
        }
        manifest_path = staging / MANIFEST
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
        with manifest_path.open("rb") as handle:
            os.fsync(handle.fileno())
        os.rename(staging, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    size = sum(entry["size"] for entry in manifest["files"].values())
    say(f"backup written to {dest}: {len(manifest['files'])} file(s), {size} bytes")
    return manifest


def _backup_embedded(
    settings: ScoreSettings, staging: Path, score_target: str, say: Say
) -> dict[str, Any]:
    data_dir = settings.data_dir.absolute()
    storage = data_dir / QDRANT_DIR
    if not _embedded_collections(storage):
        raise AdminError(
            f"nothing to back up: {storage} holds no embedded collections. "
            "Is SCORE_DATA_DIR right? For a Qdrant server, set SCORE_QDRANT_URL."
        )
    live: dict[str, Any] | None = None
    try:
        with held(storage):
            _copy_tree(storage, staging / QDRANT_DIR)
    except StorageInUse:
        shutil.rmtree(staging / QDRANT_DIR, ignore_errors=True)
        snapshot = _score_snapshot(score_target, say)
        folder = _snapshot_folder(data_dir, snapshot.folder)
        try:
            _copy_tree(folder, staging / QDRANT_DIR)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        live = {
            "score": score_target,
            "faces": snapshot.faces,
            "subjects": snapshot.subjects,
            "galleries": snapshot.galleries,
        }
    collections = _embedded_collections(staging / QDRANT_DIR)
    how = "snapshot taken by the running score service" if live else "score not running"
    say(f"copied embedded storage from {storage} ({how}): {', '.join(sorted(collections))}")
    models = [_model_of(n, c.get("metadata")) for n, c in sorted(collections.items())]
    return {
        "mode": "embedded",
        "source": str(storage),
        "live": live,
        "collections": [{"name": name} for name in sorted(collections)],
        "models": [m for m in models if m],
    }


def _backup_server(settings: ScoreSettings, staging: Path, say: Say) -> dict[str, Any]:
    with _server(settings) as server:
        names = server.collections(settings.collection_prefix)
        if not names:
            raise AdminError(
                f"nothing to back up: Qdrant at {redacted(server.url)} has no collection "
                f"named {settings.collection_prefix}_*"
            )
        collections = []
        models = []
        for name in names:
            file = f"{SNAPSHOT_DIR}/{name}.snapshot"
            record = server.download_snapshot(name, staging / file, say)
            collections.append({**record, "file": file})
            if (model := _model_of(name, server.metadata(name))) is not None:
                models.append(model)
            say(f"snapshot of {name} downloaded")
    return {
        "mode": "server",
        "source": redacted(settings.qdrant_url or ""),
        "collections": collections,
        "models": models,
    }


def _backup_redis(
    settings: ScoreSettings, staging: Path, include: bool, say: Say
) -> dict[str, Any] | None:
    if settings.redis_url is None:
        return None
    where = _redis_target(settings).describe()
    if not include:
        say(f"Redis at {where} skipped (--skip-redis); the analysis cache refills by itself")
        return {"source": where, "skipped": True}
    hint = "; the cache can be rebuilt: pass --skip-redis to back up without it"
    with _redis_errors(settings, hint):
        keys = _dump_redis(settings, staging / REDIS_FILE)
    say(f"Redis at {where}: {keys} {REDIS_PATTERN} key(s) saved")
    return {"source": where, "skipped": False, "keys": keys, "file": REDIS_FILE}


# Restore.


def read_manifest(src: Path) -> dict[str, Any]:
    path = src / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise AdminError(f"{src} is not a facescore backup: it has no {MANIFEST}") from error
    except (OSError, ValueError) as error:
        raise AdminError(f"cannot read {path}: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise AdminError(f"{path} is not a facescore backup manifest of format {FORMAT}")
    if manifest.get("mode") not in ("embedded", "server") or not isinstance(
        manifest.get("files"), dict
    ):
        raise AdminError(f"{path} is incomplete (no mode or no files)")
    return manifest


def verify(src: Path, manifest: dict[str, Any]) -> None:
    """Every file the manifest lists, present with its size and sha256; AdminError otherwise."""
    problems = []
    for name, entry in sorted(manifest["files"].items()):
        relative = _safe_relative(name)
        path = src.joinpath(*relative.parts)
        if path.is_symlink() or not path.is_file():
            problems.append(f"{name}: missing")
            continue
        if path.stat().st_size != entry.get("size"):
            problems.append(
                f"{name}: {path.stat().st_size} bytes, the manifest says {entry.get('size')}"
            )
            continue
        found = sha256_file(path)
        if found != entry.get("sha256"):
            problems.append(f"{name}: sha256 {found}, the manifest says {entry.get('sha256')}")
    if problems:
        raise AdminError(
            f"the backup {src} is damaged; nothing was restored:\n  " + "\n  ".join(problems)
        )


def restore(settings: ScoreSettings, src: Path, *, yes: bool = False, say: Say = print) -> None:
    """Restore the backup in `src` into what the settings point at (see the module doc)."""
    src = src.absolute()
    manifest = read_manifest(src)
    mode = manifest["mode"]
    if mode == "embedded" and settings.qdrant_url:
        raise AdminError(
            "this backup is a copy of the embedded storage (DATA_DIR) but SCORE_QDRANT_URL "
            "is set; unset it to restore into SCORE_DATA_DIR"
        )
    if mode == "server" and not settings.qdrant_url:
        raise AdminError(
            "this backup holds Qdrant server snapshots; set SCORE_QDRANT_URL (and "
            "SCORE_QDRANT_API_KEY) to the Qdrant server to restore them into"
        )
    files = manifest["files"]
    if mode == "embedded" and not any(
        name.endswith(f"/{SPEC_FILE}") or name == f"{LEGACY_DIR}/{META_FILE}" for name in files
    ):
        raise AdminError(f"the backup {src} holds no embedded collection ({SPEC_FILE})")
    if mode == "server":
        for collection in manifest.get("collections", []):
            if collection.get("file") not in files:
                raise AdminError(f"the backup {src} lacks the snapshot of {collection.get('name')}")
    verify(src, manifest)
    say(f"backup {src} verified: {len(files)} file(s) match the manifest")

    redis_saved = manifest.get("redis") or {}
    restore_redis = bool(redis_saved.get("file")) and settings.redis_url is not None
    if redis_saved.get("file") and settings.redis_url is None:
        say("note: the backup holds Redis keys but SCORE_REDIS_URL is unset; they are skipped")

    if mode == "embedded":
        _restore_embedded(settings, src, manifest, yes, restore_redis, say)
    else:
        _restore_server(settings, src, manifest, yes, restore_redis, say)
    if restore_redis:
        with _redis_errors(settings, "; the Qdrant data was restored, only the cache was not"):
            restored = _restore_redis(settings, src / REDIS_FILE)
        say(f"Redis: {restored} key(s) restored")


def _refuse_redis_data(settings: ScoreSettings, yes: bool, restore_redis: bool) -> list[str]:
    if not restore_redis or yes:
        return []
    with _redis_errors(settings, ""):
        present = _redis_keys_present(settings)
    return [f"{present} {REDIS_PATTERN} key(s)"] if present else []


def _refuse(target: str, found: list[str]) -> AdminError:
    shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
    return AdminError(
        f"{target} already holds data ({shown}); nothing was restored. Pass --yes to replace it."
    )


def _restore_embedded(
    settings: ScoreSettings,
    src: Path,
    manifest: dict[str, Any],
    yes: bool,
    restore_redis: bool,
    say: Say,
) -> None:
    data_dir = settings.data_dir.absolute()
    # A backup of qdrant-client's local mode goes back to DATA_DIR/qdrant: score converts it
    # to the engine's shards when it starts.
    top = LEGACY_DIR if f"{LEGACY_DIR}/{META_FILE}" in manifest["files"] else QDRANT_DIR
    storage = data_dir / top
    found = _storage_has_data(storage)
    if found and not yes:
        raise _refuse(str(storage), found)
    redis_found = _refuse_redis_data(settings, yes, restore_redis)
    if redis_found:
        raise _refuse("Redis", redis_found)
    _, stamp = _now()
    data_dir.mkdir(parents=True, exist_ok=True)
    lock: contextlib.AbstractContextManager[None] = (
        storage_lock(storage)
        if storage.exists() and top == QDRANT_DIR
        else contextlib.nullcontext()
    )
    kept: Path | None = None
    with lock:
        staging = data_dir / f".{top}.restore-{stamp}-{os.getpid()}"
        try:
            staging.mkdir()
            for name, entry in manifest["files"].items():
                relative = _safe_relative(name)
                if relative.parts[0] != top:
                    continue
                target = staging.joinpath(*relative.parts[1:])
                _copy(src.joinpath(*relative.parts), target)
                if sha256_file(target) != entry["sha256"]:
                    raise AdminError(f"copying {name} into {staging} damaged it; nothing restored")
            if storage.exists():
                kept = data_dir / f"{top}.before-restore-{stamp}"
                os.rename(storage, kept)
            try:
                os.rename(staging, storage)
            except OSError:
                if kept is not None:
                    os.rename(kept, storage)
                raise
            _fsync_dir(data_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    names = ", ".join(c["name"] for c in manifest.get("collections", [])) or "no collections"
    say(f"restored {storage} ({names}) from the backup of {manifest.get('created')}")
    if kept is not None:
        say(f"the data it replaced is kept in {kept}; delete it once the service looks right")


def _restore_server(
    settings: ScoreSettings,
    src: Path,
    manifest: dict[str, Any],
    yes: bool,
    restore_redis: bool,
    say: Say,
) -> None:
    collections = manifest.get("collections", [])
    with _server(settings) as server:
        found = [f"collection {c['name']}" for c in collections if server.exists(c["name"])]
        if found and not yes:
            raise _refuse(f"Qdrant at {redacted(server.url)}", found)
        redis_found = _refuse_redis_data(settings, yes, restore_redis)
        if redis_found:
            raise _refuse("Redis", redis_found)
        for collection in collections:
            relative = _safe_relative(collection["file"])
            sha256 = manifest["files"][collection["file"]]["sha256"]
            server.upload_snapshot(collection["name"], src.joinpath(*relative.parts), sha256)
            say(f"collection {collection['name']} restored from its snapshot")
