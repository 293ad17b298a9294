"""Gateway settings: environment variables prefixed GATEWAY_."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.settings import MiB

WEB_DIR = Path(__file__).resolve().parent / "web"


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_", env_file=".env", extra="ignore", env_ignore_empty=True
    )

    host: str = Field("127.0.0.1", description="Address the HTTP server binds to.")
    port: int = Field(8000, description="HTTP port.")
    score_target: str = Field(
        "dns:///127.0.0.1:50053", description="gRPC target of the score service."
    )
    api_keys: SecretStr | None = Field(
        None,
        description="API keys as NAME:KEY:SCOPES, comma-separated; KEY may be sha256:<hex>; "
        "SCOPES joined by '+' from read, write, admin. Unset (and no file) = auth off.",
    )
    api_keys_file: Path | None = Field(
        None, description="File with one NAME:KEY:SCOPES entry per line (# comments)."
    )
    max_upload_bytes: int = Field(
        20 * MiB, gt=0, description="Largest request body; larger gets 413 request_too_large."
    )
    deadline_s: float = Field(30.0, gt=0, description="Deadline of each call to score.")
    retry_after_s: int = Field(
        5, ge=1, description="Retry-After sent with 503 dependency_unavailable."
    )
    forwarded_allow_ips: str = Field(
        "127.0.0.1",
        description="Proxies trusted for X-Forwarded-For/Proto (comma-separated, * = any): "
        "the nginx in front.",
    )
    web_dir: Path = Field(WEB_DIR, description="Static files of the web page, served at /.")
    log_level: str = Field("info", description="Lowest level logged: debug, info, warning, error.")
    log_format: str = Field("json", description="json for machines, console for people.")
