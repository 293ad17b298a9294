"""Settings shared by the services; each service subclasses them with its own env prefix."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MiB = 1024 * 1024
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL_DIR = REPO_ROOT / "public" / "models"

# Short names accepted in *_PROVIDERS, mapped to ONNX Runtime's provider names. ROCm has no
# alias: ONNX Runtime dropped ROCMExecutionProvider (AMD GPUs run through migraphx).
PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
}


def provider_name(value: str) -> str:
    """ONNX Runtime's name for an alias or a full provider name; unknown names are refused.

    Checked against every provider this ONNX Runtime release knows (built in or not), so a
    typo fails the settings, while a real provider this build lacks fails at start-up with
    what to install.
    """
    # Imported here: score's and the gateway's images carry no ONNX Runtime, and only the
    # inference services' settings name providers.
    import onnxruntime as ort

    name = PROVIDER_ALIASES.get(value.strip().lower(), value.strip())
    if name not in ort.get_all_providers():
        raise ValueError(
            f"unknown execution provider {value!r}: use one of "
            f"{', '.join(PROVIDER_ALIASES)} or a full name ONNX Runtime {ort.__version__} "
            "knows (onnxruntime.get_all_providers())"
        )
    return name


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
        description="Execution providers in priority order, comma-separated: cpu, cuda, tensorrt, "
        "openvino, migraphx, coreml, or a full ONNX Runtime provider name.",
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
    vectorize_prelu: bool = Field(
        True,
        description="On the CPU alone, run each PRelu of slopes <= 1 as Max(x, slope * x), "
        "the same outputs to the bit: ONNX Runtime's PRelu kernel runs one element at a time.",
    )

    device_id: int = Field(
        0,
        ge=0,
        description="GPU the CUDA and TensorRT providers run on (index as the process sees them).",
    )
    gpu_mem_limit_mb: int = Field(
        0,
        ge=0,
        description="Most GPU memory the CUDA provider's arena takes, in MiB; 0 = no limit.",
    )
    arena_extend_strategy: Literal["same_as_requested", "next_power_of_two"] = Field(
        "same_as_requested",
        description="How the CUDA arena grows: same_as_requested (tight; the shapes are few and "
        "warmed up) or next_power_of_two (ONNX Runtime's default).",
    )
    cudnn_conv_algo_search: Literal["exhaustive", "heuristic", "default"] = Field(
        "exhaustive",
        description="cuDNN convolution search: exhaustive finds the fastest kernels once per "
        "input shape, at warm-up; heuristic starts faster.",
    )
    trt_engine_cache_dir: Path | None = Field(
        None,
        description="Writable folder where TensorRT keeps built engines; unset = rebuilt at "
        "every start (minutes).",
    )
    trt_fp16: bool = Field(False, description="Let TensorRT run layers in fp16.")

    @field_validator("providers", mode="before")
    @classmethod
    def _split_providers(cls, value: object) -> object:
        if isinstance(value, str):
            value = [p for p in value.split(",") if p.strip()]
        if isinstance(value, list):
            return [provider_name(str(p)) for p in value]
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
