"""The storage interface: named collections of points, as both backends offer them.

`EdgeEngine` (embedded: Qdrant's engine in-process, qdrant-edge-py) and `ServerEngine` (a
Qdrant server through qdrant-client) implement it; the gallery store, `admin check` and
`admin migrate` use nothing else. Filters are equality on payload fields (`where`), and, for
search, a field whose value must not be one of a list (`exclude`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Where = Mapping[str, str]
Exclude = tuple[str, Sequence[str]] | None
Distance = Literal["cosine", "dot"]
Quantization = Literal["none", "int8", "binary"]
BINARY_MIN_DIM = 128
SCAN_ALWAYS_KB = 2**40  # a full-scan threshold no collection reaches: the planner always scans


@dataclass(frozen=True)
class CollectionSpec:
    size: int
    distance: Distance
    metadata: dict[str, Any] = field(default_factory=dict)
    indexes: dict[str, bool] = field(default_factory=dict)  # keyword field -> is_tenant


@dataclass(frozen=True)
class Point:
    id: str
    payload: dict[str, Any]
    vector: list[float] | None = None


@dataclass(frozen=True)
class Scored:
    id: str
    score: float
    payload: dict[str, Any]


@dataclass(frozen=True)
class SearchTuning:
    """How a nearest-neighbour query searches (SCORE_SEARCH_*): HNSW width, exactness, and
    the quantized first pass with rescoring by the original vectors."""

    hnsw_ef: int | None = None
    exact: bool = False
    oversampling: float | None = None


@dataclass(frozen=True)
class IndexOptions:
    """How a new collection keeps and indexes its vectors (SCORE_HNSW_M,
    SCORE_HNSW_EF_CONSTRUCT, SCORE_QUANTIZATION, SCORE_ON_DISK).

    hnsw_m 0 builds no graph: every search scans its gallery's quantized vectors and rescores
    the best candidates with the originals. Binary codes (64 bytes a face) make that scan
    faster than a graph walk with the same recall up to about a million faces on random-like
    embeddings, where graphs need a wide ef (docs/benchmarks.md); a graph starts to pay on a
    server's larger collections.
    """

    hnsw_m: int = 16
    hnsw_ef_construct: int = 100
    quantization: Quantization = "none"
    on_disk: bool = False

    def quantization_for(self, size: int) -> Quantization:
        """The quantization a collection of `size`-dimensional vectors gets: binary codes of
        fewer than BINARY_MIN_DIM dimensions say too little to pick candidates by."""
        if size <= 1 or (self.quantization == "binary" and size < BINARY_MIN_DIM):
            return "none"
        return self.quantization

    def full_scan_threshold_kb(self, graph_threshold_kb: int) -> int:
        """Filtered searches over fewer KB of vectors than this scan instead of walking the
        graph; without a graph, every search scans."""
        return graph_threshold_kb if self.hnsw_m else SCAN_ALWAYS_KB


class Engine(Protocol):
    mode: str  # "embedded" or "server"

    async def close(self) -> None: ...
    async def ping(self) -> None: ...
    async def collections(self) -> list[str]: ...
    async def spec(self, name: str) -> CollectionSpec | None: ...
    async def create(self, name: str, spec: CollectionSpec) -> None: ...
    async def drop(self, name: str) -> None: ...
    async def upsert(self, name: str, points: Sequence[Point]) -> None: ...
    async def retrieve(
        self, name: str, ids: Sequence[str], *, with_vector: bool = False
    ) -> list[Point]: ...
    async def delete(self, name: str, ids: Sequence[str]) -> None: ...
    async def delete_where(self, name: str, where: Where) -> None: ...
    async def count(
        self, name: str, where: Where | None = None, *, estimate: bool = False
    ) -> int: ...
    async def scroll(
        self,
        name: str,
        where: Where | None,
        limit: int,
        offset: str | None,
        *,
        with_vector: bool = False,
    ) -> tuple[list[Point], str | None]: ...
    async def query(
        self,
        name: str,
        vector: Sequence[float],
        limit: int,
        where: Where | None,
        exclude: Exclude = None,
        payload: Sequence[str] = (),
    ) -> list[Scored]: ...
    async def flush(self) -> None: ...
