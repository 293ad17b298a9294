"""Renders nginx/nginx.conf.template into the nginx configuration used everywhere.

    python -m nginx.render --out data/nginx/nginx.conf --upstream 127.0.0.1:8000
    NGINX_TLS=on NGINX_TLS_CERTIFICATE=/certs/cert.pem ... python -m nginx.render --out -

Every setting is a field of `Settings`; on the command line it is `--field-name`, in the
environment `NGINX_FIELD_NAME` (a flag wins over the environment, which wins over the
default). `render(**settings)` does the same from Python. Only the standard library is used,
so the renderer runs with any Python 3.11+, inside or outside the project's environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import sys
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "nginx.conf.template"
WEB_ROOT = HERE.parent / "gateway" / "web"
ENV_PREFIX = "NGINX_"

# The page: only this origin; photos are shown from blob: URLs, the camera preview too.
CSP = (
    "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
    "style-src 'self'; script-src 'self'; connect-src 'self'; object-src 'none'; "
    "frame-ancestors 'none'; base-uri 'self'; form-action 'self'"
)
# Swagger UI at /api/docs: FastAPI's page bootstraps it with an inline <script>, and the
# UI sets inline styles; its JS, CSS and images are the gateway's own (/api/docs-static).
DOCS_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self' 'unsafe-inline'; connect-src 'self'; object-src 'none'; "
    "frame-ancestors 'none'; base-uri 'self'; form-action 'self'"
)

_SIZE = re.compile(r"^([1-9][0-9]*)([kKmMgG]?)$")
_RATE = re.compile(r"^([1-9][0-9]*)r/([sm])$")
_HOST_PORT = r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}"
_UPSTREAM = re.compile(
    rf"^(?:{_HOST_PORT}|unix:/[^\s;{{}}\"'$\\]+)"
    r"(?:\s+(?:(?:weight|max_fails|max_conns)=[0-9]+|fail_timeout=[0-9]+[smh]?|backup|down))*$"
)
_LISTEN_ADDRESS = re.compile(r"^(?:|[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])$")
_SERVER_NAME = re.compile(r"^[A-Za-z0-9_.*-]+(?: [A-Za-z0-9_.*-]+)*$")
_USER = re.compile(r"^(?:|[A-Za-z0-9_.-]+(?: [A-Za-z0-9_.-]+)?)$")
_UNSAFE_PATH = re.compile(r"[\"'\\${};\x00-\x1f\x7f]")
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
_SECTION = re.compile(
    r"^[ \t]*\{\{([#^])(\w+)\}\}[ \t]*\n(.*?)^[ \t]*\{\{/\2\}\}[ \t]*\n", re.MULTILINE | re.DOTALL
)
_LEVELS = ("debug", "info", "notice", "warn", "error", "crit", "alert", "emerg")


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


@dataclass(frozen=True)
class Settings:
    """Everything the configuration depends on. Relative paths are under nginx's -p prefix."""

    http_port: int = field(default=8080, metadata=_doc("Plain HTTP port."))
    https_port: int = field(default=8443, metadata=_doc("HTTPS port (with tls)."))
    public_https_port: int = field(
        default=0,
        metadata=_doc(
            "HTTPS port clients see, used in the HTTP to HTTPS redirect, when a container "
            "port is published under another number; 0 = https_port."
        ),
    )
    listen_address: str = field(
        default="", metadata=_doc("Address to listen on, e.g. 127.0.0.1 or [::]; empty = all IPv4.")
    )
    server_name: str = field(default="_", metadata=_doc("server_name; _ = any host."))
    upstreams: tuple[str, ...] = field(
        default=("127.0.0.1:8000",),
        metadata=_doc(
            "Gateway instances, HOST:PORT or unix:/path, optionally with nginx server "
            "parameters (weight=2 max_fails=3 fail_timeout=10s backup); comma-separated in "
            "the environment, --upstream repeated on the command line."
        ),
    )
    upstream_keepalive: int = field(
        default=32, metadata=_doc("Idle keepalive connections to the gateway, per worker.")
    )
    web_root: str = field(
        default=str(WEB_ROOT), metadata=_doc("Absolute path of the page's files (gateway/web).")
    )
    client_max_body_size: str = field(
        default="20m",
        metadata=_doc(
            "Largest request body (nginx size: 20m, 512k); larger gets 413 request_too_large. "
            "Keep it at least GATEWAY_MAX_UPLOAD_BYTES."
        ),
    )
    rate_limit: str = field(
        default="10r/s",
        metadata=_doc("Requests per client address on /api (N r/s or N r/m); off = no limit."),
    )
    rate_limit_burst: int = field(
        default=20, metadata=_doc("Requests above the rate served at once before 429.")
    )
    retry_after: int = field(
        default=5, metadata=_doc("Retry-After (s) of nginx's 503 when no gateway answers.")
    )
    tls: bool = field(default=False, metadata=_doc("Serve HTTPS; HTTP then only redirects."))
    tls_certificate: str = field(
        default="", metadata=_doc("Absolute path of the PEM certificate (chain) for tls.")
    )
    tls_certificate_key: str = field(
        default="", metadata=_doc("Absolute path of the PEM private key for tls.")
    )
    hsts_max_age: int = field(
        default=63072000,
        metadata=_doc("Strict-Transport-Security max-age (s) over HTTPS; 0 = no header."),
    )
    proxy_connect_timeout: int = field(default=5, metadata=_doc("Connect to the gateway (s)."))
    proxy_send_timeout: int = field(default=60, metadata=_doc("Send to the gateway (s)."))
    proxy_read_timeout: int = field(
        default=60, metadata=_doc("Wait for the gateway (s); keep above GATEWAY_DEADLINE_S.")
    )
    pid_path: str = field(default="nginx.pid", metadata=_doc("pid file."))
    error_log: str = field(default="stderr", metadata=_doc("Error log: stderr or a file path."))
    error_log_level: str = field(default="warn", metadata=_doc("Lowest error log level."))
    access_log: str = field(
        default="/dev/stdout", metadata=_doc("JSON access log: a file path, or off.")
    )
    temp_dir: str = field(
        default="",
        metadata=_doc("Existing folder for nginx's temporary files; empty = the prefix."),
    )
    daemon: str = field(
        default="",
        metadata=_doc(
            "on or off; empty = no daemon directive, so that nginx -g 'daemon off;' (as the "
            "official image runs it) is allowed; nginx's own default is on."
        ),
    )
    worker_processes: str = field(default="auto", metadata=_doc("auto or a number."))
    worker_connections: int = field(default=1024, metadata=_doc("Connections per worker."))
    user: str = field(
        default="",
        metadata=_doc("Worker user (and group) when started as root; empty = nginx's default."),
    )

    def __post_init__(self) -> None:
        errors = _check(self)
        if errors:
            raise ValueError("invalid nginx settings: " + "; ".join(errors))


def _check(s: Settings) -> list[str]:
    errors: list[str] = []

    def need(ok: object, message: str) -> None:
        if not ok:
            errors.append(message)

    for name in ("http_port", "https_port"):
        need(1 <= getattr(s, name) <= 65535, f"{name} must be 1-65535")
    need(0 <= s.public_https_port <= 65535, "public_https_port must be 0-65535")
    need(s.http_port != s.https_port or not s.tls, "http_port and https_port must differ")
    need(_LISTEN_ADDRESS.match(s.listen_address), f"bad listen_address {s.listen_address!r}")
    need(_SERVER_NAME.match(s.server_name), f"bad server_name {s.server_name!r}")
    need(s.upstreams, "upstreams must name at least one gateway")
    for upstream in s.upstreams:
        need(_UPSTREAM.match(upstream), f"bad upstream {upstream!r} (HOST:PORT [params])")
    need(s.upstream_keepalive >= 1, "upstream_keepalive must be at least 1")
    need(_SIZE.match(s.client_max_body_size), "client_max_body_size must be like 20m or 512k")
    need(
        s.rate_limit == "off" or _RATE.match(s.rate_limit), "rate_limit must be N r/s, N r/m or off"
    )
    need(s.rate_limit_burst >= 0, "rate_limit_burst must be at least 0")
    need(s.retry_after >= 1, "retry_after must be at least 1")
    need(s.hsts_max_age >= 0, "hsts_max_age must be at least 0")
    for name in ("proxy_connect_timeout", "proxy_send_timeout", "proxy_read_timeout"):
        need(getattr(s, name) >= 1, f"{name} must be at least 1 second")
    need(s.worker_connections >= 16, "worker_connections must be at least 16")
    need(
        s.worker_processes == "auto"
        or (s.worker_processes.isdigit() and int(s.worker_processes) >= 1),
        "worker_processes must be auto or a positive number",
    )
    need(s.daemon in ("", "on", "off"), "daemon must be on, off or empty")
    need(s.error_log_level in _LEVELS, f"error_log_level must be one of {', '.join(_LEVELS)}")
    need(_USER.match(s.user), f"bad user {s.user!r}")
    paths = {
        "web_root": s.web_root,
        "pid_path": s.pid_path,
        "error_log": s.error_log,
        "access_log": s.access_log,
        "temp_dir": s.temp_dir,
        "tls_certificate": s.tls_certificate,
        "tls_certificate_key": s.tls_certificate_key,
    }
    for name, value in paths.items():
        need(not _UNSAFE_PATH.search(value), f"{name} has a character nginx would misread")
    need(Path(s.web_root).is_absolute(), "web_root must be an absolute path")
    need(s.pid_path, "pid_path must not be empty")
    need(s.error_log, "error_log must not be empty")
    need(s.access_log, "access_log must not be empty (off turns it off)")
    if s.tls:
        for name in ("tls_certificate", "tls_certificate_key"):
            value = getattr(s, name)
            need(value and Path(value).is_absolute(), f"tls needs {name} as an absolute path")
    return errors


def size_in_bytes(size: str) -> int:
    """An nginx size (20m, 512k, 1g, 4096) in bytes."""
    match = _SIZE.match(size)
    if not match:
        raise ValueError(f"not an nginx size: {size!r}")
    factor = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match.group(2).lower()]
    return int(match.group(1)) * factor


def retry_after_of(rate: str) -> int:
    """Seconds until the limiter admits the next request at this rate (at least 1)."""
    match = _RATE.match(rate)
    if not match:
        return 1
    per = 1 if match.group(2) == "s" else 60
    return max(1, math.ceil(per / int(match.group(1))))


def context(s: Settings) -> dict[str, str | bool]:
    """The template's values: strings for {{name}}, truthiness for sections."""
    listen = f"{s.listen_address}:" if s.listen_address else ""
    public_https = s.public_https_port or s.https_port
    temp_dir = s.temp_dir.rstrip("/") + "/" if s.temp_dir else ""
    return {
        "user": s.user,
        "worker_processes": s.worker_processes,
        "worker_connections": str(s.worker_connections),
        "daemon": s.daemon,
        "pid_path": s.pid_path,
        "error_log": s.error_log,
        "error_log_level": s.error_log_level,
        "access_log": s.access_log,
        "access_log_on": s.access_log != "off",
        "temp_dir": temp_dir,
        "upstream_servers": "\n".join(f"server {u};" for u in s.upstreams),
        "upstream_keepalive": str(s.upstream_keepalive),
        "rate_limit_on": s.rate_limit != "off",
        "rate_limit": s.rate_limit,
        "rate_limit_burst": str(s.rate_limit_burst),
        "rate_limit_retry_after": str(retry_after_of(s.rate_limit)),
        "retry_after": str(s.retry_after),
        "csp": CSP,
        "docs_csp": DOCS_CSP,
        "hsts_on": s.tls and s.hsts_max_age > 0,
        "hsts_max_age": str(s.hsts_max_age),
        "proxy_connect_timeout": str(s.proxy_connect_timeout),
        "proxy_send_timeout": str(s.proxy_send_timeout),
        "proxy_read_timeout": str(s.proxy_read_timeout),
        "client_max_body_size": s.client_max_body_size,
        "body_limit_bytes": str(size_in_bytes(s.client_max_body_size)),
        "tls": s.tls,
        "tls_certificate": s.tls_certificate,
        "tls_certificate_key": s.tls_certificate_key,
        "http_listen": f"{listen}{s.http_port}",
        "https_listen": f"{listen}{s.https_port}",
        "https_port_suffix": "" if public_https == 443 else f":{public_https}",
        "server_name": s.server_name,
        "web_root": s.web_root,
    }


def fill(template: str, values: Mapping[str, str | bool]) -> str:
    """Mustache-like: sections on their own lines, then {{name}} (a value on its own line
    that spans several lines keeps the placeholder's indentation on each)."""

    def section(match: re.Match[str]) -> str:
        kind, name, body = match.groups()
        if name not in values:
            raise KeyError(f"template section {name!r} has no value")
        keep = bool(values[name]) == (kind == "#")
        return _SECTION.sub(section, body) if keep else ""

    text = _SECTION.sub(section, template)

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise KeyError(f"template value {name!r} has no value")
        raw = values[name]
        if isinstance(raw, bool):
            raise KeyError(f"template value {name!r} is a section, not a value")
        line_start = text.rfind("\n", 0, match.start()) + 1
        indent = text[line_start : match.start()]
        return raw.replace("\n", "\n" + indent) if indent.isspace() else raw

    rendered = _PLACEHOLDER.sub(value, text)
    leftover = re.search(r"\{\{[#^/]?\w+\}\}", rendered)
    if leftover:
        raise ValueError(f"template tag left unrendered: {leftover.group(0)}")
    return rendered


def render(template: Path | None = None, **settings: Any) -> str:
    """The nginx configuration for these settings (the `Settings` fields; others fail)."""
    return render_settings(Settings(**settings), template)


def render_settings(settings: Settings, template: Path | None = None) -> str:
    return fill((template or TEMPLATE).read_text(), context(settings))


# ---------------------------------------------------------------------------------------------
# Command line and environment.


def _types() -> dict[str, Any]:
    return typing.get_type_hints(Settings)


def _parse(name: str, kind: Any, raw: str) -> Any:
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"{name}: not a boolean: {raw!r}")
    if kind is int:
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"{name}: not a whole number: {raw!r}") from None
    if kind == tuple[str, ...]:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    return raw


def settings_from(
    environ: Mapping[str, str], overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Settings from NGINX_* variables, then explicit overrides (already typed)."""
    values: dict[str, Any] = {}
    for name, kind in _types().items():
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is not None and raw != "":
            values[name] = _parse(ENV_PREFIX + name.upper(), kind, raw)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return Settings(**values)


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(
        prog="python -m nginx.render",
        description="Render the facescore nginx configuration. Each option can also be set "
        f"as an environment variable {ENV_PREFIX}<OPTION> (e.g. {ENV_PREFIX}HTTP_PORT).",
    )
    cli.add_argument("--out", default="-", help="where to write the config; - = stdout")
    cli.add_argument("--template", type=Path, default=TEMPLATE, help="template to render")
    types = _types()
    for f in dataclasses.fields(Settings):
        kind = types[f.name]
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f"{f.metadata.get('doc', '')} (default: {default!r})"
        if kind is bool:
            cli.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, help=help_text
            )
        elif f.name == "upstreams":
            cli.add_argument(
                "--upstream", dest=f.name, action="append", metavar="ADDR", help=help_text
            )
        else:
            cli.add_argument(flag, dest=f.name, type=kind, help=help_text)
    return cli


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = parser().parse_args(argv)
    overrides = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(Settings) if f.name != "upstreams"
    }
    if args.upstreams:
        overrides["upstreams"] = tuple(
            part.strip() for item in args.upstreams for part in item.split(",") if part.strip()
        )
    try:
        settings = settings_from(os.environ if environ is None else environ, overrides)
        text = render_settings(settings, args.template)
    except (ValueError, KeyError) as error:
        print(f"nginx.render: {error}", file=sys.stderr)
        return 2
    if args.out == "-":
        sys.stdout.write(text)
    else:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial")
        partial.write_text(text)
        partial.replace(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
