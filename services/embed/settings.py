"""Embed service settings: environment variables prefixed EMBED_."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import OnnxSettings, ServerSettings


class EmbedSettings(ServerSettings, OnnxSettings):
    model_config = SettingsConfigDict(
        env_prefix="EMBED_", env_file=".env", extra="ignore", env_ignore_empty=True
    )

    port: int = Field(50052, description="gRPC port.")
    metrics_port: int = Field(9102, description="Side port for /metrics and /health; 0 = off.")
    max_batch: int = Field(32, ge=1, le=1024, description="Most crops in one model run.")
    max_batch_delay_ms: float = Field(
        2.0, ge=0, description="How long the first crop of a batch waits for company."
    )
    max_queue: int = Field(
        512,
        ge=1,
        description="Crops waiting for a model run; beyond it calls get RESOURCE_EXHAUSTED.",
    )
    workers: int = Field(
        2,
        ge=1,
        description="Batches run at once (threads over one session): a second lets embed use "
        "a core that detect leaves idle; batches form while they run, and on the CPU each "
        "worker takes its share of the crops waiting.",
    )
    max_crops_per_request: int = Field(128, ge=1, description="Most crops in one Embed call.")
