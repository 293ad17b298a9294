"""Storage on a Qdrant server (SCORE_QDRANT_URL), through qdrant-client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import grpc
import httpx
from qdrant_client import AsyncQdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from services.common.errors import FaceScoreError, Reason
from services.score.storage.engine import (
    CollectionSpec,
    Exclude,
    IndexOptions,
    Point,
    Scored,
    SearchTuning,
    Where,
)


def server_filter(where: Where | None, exclude: Exclude = None) -> models.Filter | None:
    must: list[Any] = [
        models.FieldCondition(key=k, match=models.MatchValue(value=v))
        for k, v in (where or {}).items()
    ]
    must_not: list[Any] = []
    if exclude and exclude[1]:
        must_not.append(
            models.FieldCondition(key=exclude[0], match=models.MatchAny(any=list(exclude[1])))
        )
    if not must and not must_not:
        return None
    return models.Filter(must=must or None, must_not=must_not or None)


GRAPH_THRESHOLD_KB = 10_000  # Qdrant's default full-scan threshold


def _quantization(
    index: IndexOptions, spec: CollectionSpec
) -> models.ScalarQuantization | models.BinaryQuantization | None:
    kind = index.quantization_for(spec.size)
    if kind == "none":
        return None
    if kind == "int8":
        return models.ScalarQuantization(
            scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8, always_ram=True)
        )
    return models.BinaryQuantization(binary=models.BinaryQuantizationConfig(always_ram=True))


class ServerEngine:
    mode = "server"

    def __init__(
        self,
        url: str,
        api_key: str | None,
        timeout_s: float,
        *,
        tuning: SearchTuning | None = None,
        index: IndexOptions | None = None,
        client: AsyncQdrantClient | None = None,
    ) -> None:
        self.url = url
        self.client = client or AsyncQdrantClient(
            url=url, api_key=api_key, timeout=int(max(1, timeout_s))
        )
        self.tuning = tuning or SearchTuning()
        self.index = index or IndexOptions()

    @asynccontextmanager
    async def _qdrant(self) -> AsyncIterator[None]:
        """Qdrant trouble becomes dependency_unavailable; our own errors pass through."""
        try:
            yield
        except FaceScoreError:
            raise
        except (
            ResponseHandlingException,
            UnexpectedResponse,
            httpx.HTTPError,
            grpc.RpcError,
            OSError,
            TimeoutError,
        ) as error:
            raise FaceScoreError(
                Reason.DEPENDENCY_UNAVAILABLE,
                f"qdrant is unavailable: {error}",
                grpc.StatusCode.UNAVAILABLE,
                metadata={"dependency": "qdrant"},
            ) from error

    async def close(self) -> None:
        await self.client.close()

    async def ping(self) -> None:
        async with self._qdrant():
            await self.client.get_collections()

    async def flush(self) -> None:
        """The server persists every acknowledged write itself."""

    async def collections(self) -> list[str]:
        async with self._qdrant():
            found = await self.client.get_collections()
        return sorted(c.name for c in found.collections)

    async def spec(self, name: str) -> CollectionSpec | None:
        async with self._qdrant():
            if not await self.client.collection_exists(name):
                return None
            info = await self.client.get_collection(name)
        vectors = info.config.params.vectors
        if not isinstance(vectors, models.VectorParams):
            return CollectionSpec(0, "cosine", dict(info.config.metadata or {}))
        cosine = vectors.distance == models.Distance.COSINE
        return CollectionSpec(
            vectors.size, "cosine" if cosine else "dot", dict(info.config.metadata or {})
        )

    async def create(self, name: str, spec: CollectionSpec) -> None:
        cosine = spec.distance == "cosine"
        index = self.index
        async with self._qdrant():
            await self.client.create_collection(
                name,
                vectors_config=models.VectorParams(
                    size=spec.size,
                    distance=models.Distance.COSINE if cosine else models.Distance.DOT,
                    on_disk=index.on_disk if cosine else None,
                ),
                hnsw_config=models.HnswConfigDiff(
                    m=index.hnsw_m,
                    ef_construct=index.hnsw_ef_construct,
                    on_disk=index.on_disk,
                    payload_m=index.hnsw_m,
                    full_scan_threshold=index.full_scan_threshold_kb(GRAPH_THRESHOLD_KB),
                )
                if cosine
                else None,
                quantization_config=_quantization(index, spec),
                on_disk_payload=index.on_disk if cosine else None,
                metadata=spec.metadata or None,
            )
            for field, tenant in spec.indexes.items():
                await self.client.create_payload_index(
                    name,
                    field,
                    models.KeywordIndexParams(
                        type=models.KeywordIndexType.KEYWORD, is_tenant=tenant or None
                    ),
                )

    async def drop(self, name: str) -> None:
        async with self._qdrant():
            await self.client.delete_collection(name)

    async def upsert(self, name: str, points: Sequence[Point]) -> None:
        structs = [
            models.PointStruct(id=p.id, vector=list(p.vector or []), payload=p.payload)
            for p in points
        ]
        async with self._qdrant():
            await self.client.upsert(name, structs, wait=True)

    async def retrieve(
        self, name: str, ids: Sequence[str], *, with_vector: bool = False
    ) -> list[Point]:
        async with self._qdrant():
            records = await self.client.retrieve(
                name, list(ids), with_payload=True, with_vectors=with_vector
            )
        return [_point(r, with_vector) for r in records]

    async def delete(self, name: str, ids: Sequence[str]) -> None:
        async with self._qdrant():
            await self.client.delete(name, models.PointIdsList(points=list(ids)), wait=True)

    async def delete_where(self, name: str, where: Where) -> None:
        selector = server_filter(where)
        assert selector is not None, "delete_where needs a filter"
        async with self._qdrant():
            await self.client.delete(name, selector, wait=True)

    async def count(self, name: str, where: Where | None = None, *, estimate: bool = False) -> int:
        async with self._qdrant():
            result = await self.client.count(
                name, count_filter=server_filter(where), exact=not estimate
            )
        return int(result.count)

    async def scroll(
        self,
        name: str,
        where: Where | None,
        limit: int,
        offset: str | None,
        *,
        with_vector: bool = False,
    ) -> tuple[list[Point], str | None]:
        async with self._qdrant():
            records, next_offset = await self.client.scroll(
                name,
                scroll_filter=server_filter(where),
                limit=limit,
                offset=offset,
                with_payload=True,
                with_vectors=with_vector,
            )
        points = [_point(r, with_vector) for r in records]
        return points, (str(next_offset) if next_offset is not None else None)

    async def query(
        self,
        name: str,
        vector: Sequence[float],
        limit: int,
        where: Where | None,
        exclude: Exclude = None,
        payload: Sequence[str] = (),
    ) -> list[Scored]:
        tuning = self.tuning
        params = models.SearchParams(
            hnsw_ef=tuning.hnsw_ef,
            exact=tuning.exact,
            quantization=models.QuantizationSearchParams(
                rescore=True, oversampling=tuning.oversampling
            )
            if tuning.oversampling
            else None,
        )
        async with self._qdrant():
            result = await self.client.query_points(
                name,
                query=list(vector),
                limit=limit,
                query_filter=server_filter(where, exclude),
                with_payload=list(payload) if payload else False,
                search_params=params,
            )
        return [Scored(str(p.id), float(p.score), dict(p.payload or {})) for p in result.points]


def _point(record: models.Record, with_vector: bool) -> Point:
    vector: Any = record.vector if with_vector else None
    if isinstance(vector, dict):
        vector = vector.get("")
    return Point(
        str(record.id),
        dict(record.payload or {}),
        [float(x) for x in vector] if isinstance(vector, list) else None,
    )
