"""How faces collections keep and index their vectors (SCORE_HNSW_M, SCORE_QUANTIZATION).

Embedded storage defaults to no graph and binary codes: every search scans the gallery's
1-bit codes and rescores the best candidates with the original vectors. The real engine is
checked here on 512-dimensional faces, as ArcFace gives them: a genuine match (a noisy copy
at cosine 0.45-0.8 of a stored face) must come first exactly as exact search puts it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError
from qdrant_client import AsyncQdrantClient, models

from services.score.settings import ScoreSettings
from services.score.storage import (
    EdgeEngine,
    IndexOptions,
    ModelIdentity,
    Point,
    ServerEngine,
    face_id,
    index_options,
    open_store,
)
from services.score.storage.edge import SHARD_DIR
from services.score.storage.engine import SCAN_ALWAYS_KB, CollectionSpec
from tests.score.vectors import unit

DIM = 512


@pytest.mark.parametrize(
    ("value", "expected"),
    [("binary", "binary"), ("int8", "int8"), ("none", "none"), ("true", "int8"), ("false", "none")],
)
def test_quantization_setting(monkeypatch: pytest.MonkeyPatch, value: str, expected: str) -> None:
    """true/false, from when the setting was an int8 flag, keep their meaning."""
    monkeypatch.setenv("SCORE_QUANTIZATION", value)
    assert ScoreSettings().quantization == expected


@pytest.mark.parametrize(("name", "value"), [("QUANTIZATION", "pq"), ("HNSW_M", "2")])
def test_bad_index_settings_are_refused(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(f"SCORE_{name}", value)
    with pytest.raises(ValidationError, match=name.lower()):
        ScoreSettings()


def test_unset_options_follow_the_backend(tmp_path: Path) -> None:
    embedded = index_options(ScoreSettings(data_dir=tmp_path))
    assert (embedded.hnsw_m, embedded.quantization) == (0, "binary")
    server = index_options(ScoreSettings(data_dir=tmp_path, qdrant_url="http://127.0.0.1:6333"))
    assert (server.hnsw_m, server.quantization) == (16, "none")
    # A graph asked for embedded walks the original vectors unless told otherwise.
    graph = index_options(ScoreSettings(data_dir=tmp_path, hnsw_m=32))
    assert (graph.hnsw_m, graph.quantization) == (32, "none")
    assert IndexOptions(hnsw_m=0, quantization="binary").quantization_for(64) == "none"


async def test_default_embedded_store_scans_binary_codes(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    faces = unit(rng.standard_normal((3000, DIM)), np.float32)
    few = unit(rng.standard_normal((6, DIM)), np.float32)
    store = await open_store(
        ScoreSettings(data_dir=tmp_path, index_threshold_kb=100, index_delay_s=3600),
        ModelIdentity("test", "0" * 64, DIM),
    )
    try:
        for gallery, rows in (("big", faces), ("few", few)):
            await store.create_gallery(gallery)
            points = [
                Point(
                    face_id(gallery, f"{gallery}{i}", f"{i:064x}", 0),
                    {"gallery": gallery, "subject_id": f"{gallery}{i}"},
                    row.tolist(),
                )
                for i, row in enumerate(rows)
            ]
            await store.engine.upsert(store.collection, points)
        engine = store.engine
        assert isinstance(engine, EdgeEngine)
        await engine.optimize(store.collection)  # the child process builds the codes
        assert await engine.indexed_vectors(store.collection) >= len(faces)
        written = json.loads(
            (tmp_path / "edge" / store.collection / SHARD_DIR / "edge_config.json").read_text()
        )
        assert written["hnsw_config"]["m"] == 0
        assert written["hnsw_config"]["full_scan_threshold"] == SCAN_ALWAYS_KB
        assert written["quantization_config"] == {
            "binary": {"always_ram": True, "encoding": "one_bit"}
        }

        sources = rng.integers(0, len(faces), 60)
        cosine = rng.uniform(0.45, 0.8, (60, 1))
        noise = unit(rng.standard_normal((60, DIM)), np.float32)
        noise = unit(
            noise - (noise * faces[sources]).sum(1, keepdims=True) * faces[sources], np.float32
        )
        queries = unit(cosine * faces[sources] + np.sqrt(1 - cosine**2) * noise, np.float32)
        exact = np.argmax(queries @ faces.T, axis=1)
        for query, best in zip(queries, exact, strict=True):
            hits = await store.search("big", query.tolist(), 5)
            assert hits[0].subject_id == f"big{best}"
            assert hits[0].similarity == pytest.approx(float(faces[best] @ query), abs=1e-4)
        # The small gallery beside them: its own faces only, in exact order.
        hits = await store.search("few", faces[0].tolist(), 3)
        order = np.argsort(-(few @ faces[0]))[:3]
        assert [h.subject_id for h in hits] == [f"few{i}" for i in order]
    finally:
        await store.close()


async def test_server_collection_gets_the_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """The collection a Qdrant server is asked for carries the graph and quantization
    settings. qdrant-client's local mode stands in for the server (no server runs here); it
    ignores index settings, so a spy on the client reads what was asked for."""
    client = AsyncQdrantClient(location=":memory:")
    asked: dict[str, Any] = {}
    create = client.create_collection

    async def spy(name: str, **kwargs: Any) -> bool:
        asked.update(kwargs)
        return await create(name, **kwargs)

    monkeypatch.setattr(client, "create_collection", spy)
    engine = ServerEngine(
        "http://127.0.0.1:9",
        None,
        1.0,
        index=IndexOptions(hnsw_m=0, quantization="binary"),
        client=client,
    )
    await engine.create("faces", CollectionSpec(DIM, "cosine", {}, {"gallery": True}))
    assert asked["hnsw_config"].m == 0
    assert asked["hnsw_config"].full_scan_threshold == SCAN_ALWAYS_KB
    assert isinstance(asked["quantization_config"], models.BinaryQuantization)
    await engine.create("small", CollectionSpec(64, "cosine", {}, {}))
    assert asked["quantization_config"] is None  # 64 bits say too little
