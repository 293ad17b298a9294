"""Settings shared by the services; each service subclasses them with its own env prefix."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MiB = 1024 * 1024
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL_DIR = REPO_ROOT / "public" / "models"

# Short names accepted in *_PROVIDERS, mapped to ONNX Runtime's provider names.
PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
}


class ServerSettings(BaseSettings):
    """gRPC server, metrics side port, logging."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", env_ignore_empty=True)

    host: str = Field("127.0.0.1", description="Address the gRPC server binds to.")
    port: int = Field(50051, description="gRPC port.")
    metrics_port: int = Field(
        9101, description="Side port serving /metrics (Prometheus) and /health (JSON); 0 = off."
    )
    max_message_bytes: int = Field(
        32 * MiB, description="Largest gRPC message accepted or sent, in bytes."
    )
    grace_period_s: float = Field(
        10.0, description="On SIGTERM, how long in-flight calls may take to finish."
    )
    max_connection_age_s: float = Field(
        30.0,
        gt=0,
        description="Connections close after about this long, so clients re-resolve DNS and "
        "find new replicas.",
    )
    max_call_s: float = Field(
        60.0,
        gt=0,
        description="Longest a call may run; a longer client deadline is cut to this. A "
        "connection closed for age lets its calls in flight run this long.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Lowest level logged: debug, info, warning or error."
    )
    log_format: Literal["json", "console"] = Field(
        "json", description="json for machines, console for people."
    )


class OnnxSettings(BaseSettings):
    """Where models come from and how ONNX Runtime runs them."""

    model_dir: Path = Field(
        DEFAULT_MODEL_DIR, description="Folder with manifest.toml and the ONNX files."
    )
    model_name: str | None = Field(
        None, description="Manifest entry to load; unset = the only one of this service's role."
    )
    providers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        description="Execution providers in priority order, comma-separated: cpu, cuda, tensorrt.",
    )
    allow_cpu_fallback: bool = Field(
        False, description="Start on the CPU when a requested GPU provider is unavailable."
    )
    intra_op_threads: int = Field(
        1, ge=0, description="ONNX Runtime intra-op threads; 0 = all cores."
    )
    inter_op_threads: int = Field(
        1, ge=0, description="ONNX Runtime inter-op threads; 0 = default."
    )

    @field_validator("providers", mode="before")
    @classmethod
    def _split_providers(cls, value: object) -> object:
        if isinstance(value, str):
            value = [p.strip() for p in value.split(",") if p.strip()]
        if isinstance(value, list):
            return [PROVIDER_ALIASES.get(str(p).lower(), str(p)) for p in value]
        return value


class ImageLimits(BaseSettings):
    """Limits checked before a photo is decoded."""

    max_image_bytes: int = Field(20 * MiB, gt=0, description="Largest encoded photo, in bytes.")
    max_image_pixels: int = Field(
        40_000_000,
        gt=0,
        description="Largest photo in pixels (width x height), read from the header.",
    )
    max_jpeg_scans: int = Field(
        100,
        ge=1,
        description="Most scans a JPEG may have, counted before decoding; progressive photos "
        "have about 10, a decompression bomb thousands.",
    )
