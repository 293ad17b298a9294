"""Score service settings: environment variables prefixed SCORE_."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import REPO_ROOT, MiB, ServerSettings
from services.score.redis_target import RedisTarget, sentinel_addresses


class ScoreSettings(ServerSettings):
    model_config = SettingsConfigDict(
        env_prefix="SCORE_", env_file=".env", extra="ignore", env_ignore_empty=True
    )

    port: int = Field(50053, description="gRPC port.")
    metrics_port: int = Field(9103, description="Side port for /metrics and /health; 0 = off.")
    detect_target: str = Field(
        "dns:///127.0.0.1:50051",
        description="gRPC target of the detect service; dns:/// spreads calls over all replicas.",
    )
    embed_target: str = Field("dns:///127.0.0.1:50052", description="gRPC target of embed.")
    default_deadline_s: float = Field(
        10.0, gt=0, description="Deadline for a call that arrives without one."
    )
    data_dir: Path = Field(
        REPO_ROOT / "data", description="Embedded Qdrant's storage (DATA_DIR/edge)."
    )
    qdrant_url: str | None = Field(
        None, description="Qdrant server URL; unset = embedded Qdrant under DATA_DIR."
    )
    qdrant_api_key: SecretStr | None = Field(None, description="Qdrant server API key.")
    qdrant_timeout_s: float = Field(5.0, gt=0, description="Timeout of one Qdrant request.")
    collection_prefix: str = Field(
        "faces", description="Collection name = prefix + model name + model sha256 prefix."
    )
    force_init: bool = Field(
        False,
        description="Recreate an empty faces collection at start-up, deleting every enrolled "
        "face; needs FORCE_INIT_CONFIRM. Acts at every start-up while set: unset it after.",
    )
    force_init_confirm: str | None = Field(
        None,
        description="For FORCE_INIT: the faces collection's name (GetServiceInfo, /health); "
        "start-up fails when FORCE_INIT is set and this differs.",
    )
    hnsw_m: int | None = Field(
        None,
        ge=0,
        description="HNSW graph degree of new faces collections; 0 = no graph: every search "
        "scans its gallery's quantized vectors and rescores the best. Unset: 0 embedded "
        "(measured faster at full recall up to a million faces, docs/benchmarks.md), 16 on a "
        "Qdrant server.",
    )
    hnsw_ef_construct: int = Field(100, ge=4, description="HNSW build-time search width.")
    on_disk: bool = Field(
        False, description="Keep the original vectors and the HNSW index on disk (memory-mapped)."
    )
    quantization: Literal["none", "int8", "binary"] | None = Field(
        None,
        description="Quantized copy of new faces collections' vectors that searches scan or "
        "walk first, rescoring with the originals: binary (1 bit a dimension, for scanning), "
        "int8 (for a graph) or none. Unset: binary without a graph, none with one.",
    )
    search_hnsw_ef: int = Field(
        1024,
        ge=4,
        description="HNSW search width: wider finds more true matches, slower. The default is "
        "the narrowest that kept top-1 recall at 99.5% on random vectors (docs/benchmarks.md).",
    )
    search_exact: bool = Field(
        False, description="Score every face of the gallery with its original vector."
    )
    search_oversampling: float = Field(
        2.0, ge=1, description="With quantization: candidates fetched per result, rescored."
    )
    index_threshold_kb: int = Field(
        20_000,
        ge=1,
        description="Embedded: vectors (KB) a segment holds before its HNSW index is built; "
        "filtered searches over fewer than this many KB scan exactly.",
    )
    index_delay_s: float = Field(
        2.0, gt=0, description="Embedded: quiet time after writes before indexes are built."
    )
    redis_url: SecretStr | None = Field(
        None,
        description="redis:// or rediss:// URL (password included); unset = in-process cache. "
        "With REDIS_SENTINELS set, its host is the master's name as the Sentinels know it.",
    )
    redis_sentinels: str = Field(
        "",
        description="Redis Sentinels, host:port,host:port: the cache asks them for the current "
        "master of REDIS_URL's host and follows failovers. Empty = REDIS_URL is the server.",
    )
    redis_sentinel_password: SecretStr | None = Field(
        None, description="Password of the Sentinels themselves, when they require one."
    )
    cache_ttl_s: int = Field(86_400, ge=1, description="How long a photo's analysis is cached.")
    cache_max_bytes: int = Field(
        64 * MiB, ge=0, description="In-process cache size when REDIS_URL is unset; 0 = off."
    )
    redis_timeout_s: float = Field(
        0.25, gt=0, description="Socket timeout for Redis; a slow Redis must not stall calls."
    )
    redis_retry_s: float = Field(
        5.0, gt=0, description="While Redis is down, how often the connection is retried."
    )
    threshold: float = Field(
        0.40, gt=-1, lt=1, description="Cosine similarity at or above which faces match."
    )
    gallery_metrics_interval_s: float = Field(
        30.0, gt=0, description="How often the facescore_gallery_faces gauge is refreshed."
    )
    top_k: int = Field(5, ge=1, le=100, description="Subjects returned per face by Identify.")
    max_metadata_bytes: int = Field(
        4096, ge=2, description="Largest metadata JSON accepted with an enrollment."
    )
    min_face_size: float = Field(
        32.0, ge=0, description="Enroll gate: shorter side of the face box, in pixels."
    )
    min_sharpness: float = Field(
        0.0, ge=0, description="Enroll gate: Laplacian variance of the crop."
    )
    min_detection_score: float = Field(0.6, ge=0, le=1, description="Enroll gate: detection score.")
    max_abs_yaw: float = Field(60.0, ge=0, le=90, description="Enroll gate: |yaw| in degrees.")

    @field_validator("hnsw_m")
    @classmethod
    def _graph_degree(cls, value: int | None) -> int | None:
        if value is not None and 0 < value < 4:
            raise ValueError("HNSW_M is 0 (no graph) or at least 4")
        return value

    @field_validator("quantization", mode="before")
    @classmethod
    def _quantization_flag(cls, value: object) -> object:
        """SCORE_QUANTIZATION was a flag for int8: true/false still mean int8/none."""
        flags = {"true": "int8", "1": "int8", "yes": "int8", "false": "none", "0": "none"}
        if isinstance(value, bool):
            return "int8" if value else "none"
        return flags.get(str(value).strip().lower(), value) if value is not None else None

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinels_are_addresses(cls, value: str) -> str:
        sentinel_addresses(value)  # raises ValueError naming the bad entry
        return value

    @model_validator(mode="after")
    def _sentinels_need_a_master(self) -> Self:
        if self.redis_sentinels.strip():
            url = self.redis_url.get_secret_value() if self.redis_url else ""
            if not urlsplit(url).hostname:
                raise ValueError(
                    "SCORE_REDIS_SENTINELS needs SCORE_REDIS_URL naming the master as its host, "
                    "for example redis://:PASSWORD@mymaster/0"
                )
        return self

    def redis_target(self) -> RedisTarget | None:
        """Where the analysis cache lives; None for the in-process cache (no SCORE_REDIS_URL)."""
        if self.redis_url is None:
            return None
        password = self.redis_sentinel_password
        return RedisTarget(
            self.redis_url.get_secret_value(),
            tuple(sentinel_addresses(self.redis_sentinels)),
            password.get_secret_value() if password else None,
        )
