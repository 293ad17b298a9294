"""Detect service settings: environment variables prefixed DETECT_."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ImageLimits, OnnxSettings, ServerSettings


class DetectSettings(ServerSettings, OnnxSettings, ImageLimits):
    model_config = SettingsConfigDict(
        env_prefix="DETECT_", env_file=".env", extra="ignore", env_ignore_empty=True
    )

    port: int = Field(50051, description="gRPC port.")
    metrics_port: int = Field(9101, description="Side port for /metrics and /health; 0 = off.")
    input_size: int = Field(
        640,
        ge=32,
        le=2048,
        description="Detector input side (multiple of 32); on the CPU the photo's shorter side "
        "gets its proportion of it, rounded up to 32 (a 4:3 photo runs at 640x480).",
    )
    score_threshold: float = Field(0.5, gt=0, lt=1, description="Minimum detection score.")
    nms_threshold: float = Field(0.4, gt=0, lt=1, description="IoU above which boxes merge.")
    max_faces: int = Field(100, ge=1, description="Most faces returned per photo, largest first.")
    min_face_size: int = Field(
        0, ge=0, description="Faces whose shorter box side is below this many pixels are dropped."
    )
    workers: int = Field(
        2,
        ge=1,
        description="Photos detected in parallel (threads over one session): a second lets "
        "detect use a core that embed leaves idle.",
    )
    opencv_threads: int = Field(
        1,
        ge=0,
        description="OpenCV's threads in detect's process, for the detector's resizes and the "
        "faces' crops; 1 keeps each photo's work on its worker's thread: with photos in flight "
        "on every core, OpenCV's own threads only add switching (about 1 ms of CPU a small "
        "photo). 0 = OpenCV's default, a thread per core.",
    )
    decode_workers: int = Field(
        2, ge=1, description="Processes decoding photos; a decode over its budget ends its own."
    )
    inline_decode_pixels: int = Field(
        4_000_000,
        ge=0,
        description="Photos up to this many pixels are decoded in the detecting thread (their "
        "decode is bounded by pixels and JPEG scans); larger ones in the decode workers.",
    )
    decode_ahead: bool = Field(
        True,
        description="A large JPEG alone in detect, on a machine with a core to spare, is also "
        "decoded at 1/2 on that core while the detector runs, for its small "
        "faces' crops (t1 at 12 MP about 14 ms sooner); false: small faces' regions are "
        "decoded after the detector.",
    )
    decode_cpu_s: float = Field(
        5.0,
        gt=0,
        description="CPU seconds one photo's decode may use before it is refused (whole "
        "seconds are enforced, rounded up).",
    )
