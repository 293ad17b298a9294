"""Where score keeps galleries: one storage interface (engine.py), two backends (edge.py for
the embedded engine, server.py for a Qdrant server), one layout (layout.py), the gallery
store over them (store.py) and identify's search (search.py)."""

from __future__ import annotations

from services.score.settings import ScoreSettings
from services.score.storage.edge import EdgeEngine, StorageInUse
from services.score.storage.engine import (
    CollectionSpec,
    Engine,
    IndexOptions,
    Point,
    Scored,
    SearchTuning,
)
from services.score.storage.layout import (
    GalleryRecord,
    Hit,
    ModelIdentity,
    SubjectRecord,
    face_id,
    now_ms,
)
from services.score.storage.legacy import convert_local_mode
from services.score.storage.server import ServerEngine
from services.score.storage.store import GalleryStore, scroll_all

EDGE_DIR = "edge"

__all__ = [
    "CollectionSpec",
    "EdgeEngine",
    "Engine",
    "GalleryRecord",
    "GalleryStore",
    "Hit",
    "IndexOptions",
    "ModelIdentity",
    "Point",
    "Scored",
    "SearchTuning",
    "ServerEngine",
    "StorageInUse",
    "SubjectRecord",
    "edge_root",
    "face_id",
    "index_options",
    "now_ms",
    "open_engine",
    "open_store",
    "scroll_all",
    "where",
]


def edge_root(settings: ScoreSettings) -> str:
    return str(settings.data_dir / EDGE_DIR)


def where(settings: ScoreSettings) -> str:
    """Where the data lives, for messages: the server's URL or the embedded folder."""
    return settings.qdrant_url or edge_root(settings)


def tuning(settings: ScoreSettings) -> SearchTuning:
    return SearchTuning(
        hnsw_ef=settings.search_hnsw_ef,
        exact=settings.search_exact,
        oversampling=settings.search_oversampling,
    )


def index_options(settings: ScoreSettings) -> IndexOptions:
    """SCORE_HNSW_M and SCORE_QUANTIZATION, unset ones by backend: embedded scans binary
    codes without a graph; a server walks an HNSW graph of the original vectors."""
    m = settings.hnsw_m if settings.hnsw_m is not None else (16 if settings.qdrant_url else 0)
    return IndexOptions(
        hnsw_m=m,
        hnsw_ef_construct=settings.hnsw_ef_construct,
        quantization=settings.quantization or ("none" if m else "binary"),
        on_disk=settings.on_disk,
    )


async def open_engine(settings: ScoreSettings) -> Engine:
    """The engine SCORE_QDRANT_URL asks for: a Qdrant server, else the embedded engine under
    DATA_DIR/edge (converting a store left by qdrant-client's local mode first, once)."""
    if settings.qdrant_url:
        key = settings.qdrant_api_key
        return ServerEngine(
            settings.qdrant_url,
            key.get_secret_value() if key else None,
            settings.qdrant_timeout_s,
            tuning=tuning(settings),
            index=index_options(settings),
        )
    engine = EdgeEngine(
        settings.data_dir / EDGE_DIR,
        tuning=tuning(settings),
        index=index_options(settings),
        indexing_threshold_kb=settings.index_threshold_kb,
        index_delay_s=settings.index_delay_s,
    )
    await convert_local_mode(settings.data_dir, engine)
    return engine


async def open_store(settings: ScoreSettings, identity: ModelIdentity) -> GalleryStore:
    engine = await open_engine(settings)
    store = GalleryStore(settings, identity, engine)
    try:
        await store.open()
    except BaseException:
        await engine.close()
        raise
    return store
