"""nginx in front of the gateway: the real nginx binary with the rendered config, on loopback
ports, proxying to the real stack (detect, embed, score, gateway)."""

from __future__ import annotations

import gzip
import http.server
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from nginx import render as nginx_render
from services.common.models import insightface_image
from tests.conftest import REPO, ServiceProcess, free_port, wait_until

WEB = REPO / "gateway" / "web"
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "permissions-policy": "camera=(self), microphone=(), geolocation=()",
}
REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")


def nginx_binary() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if found is None:
        pytest.fail(
            "nginx is not installed: these tests start the real nginx. Install it with "
            "`apt-get install nginx` (make test does so through scripts/system-deps.sh)."
        )
    return found


@dataclass
class Nginx:
    """One nginx process with a config rendered for its own prefix and ports."""

    prefix: Path
    http_port: int
    https_port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    def logs(self) -> str:
        parts = []
        for name in ("stderr.log", "error.log"):
            path = self.prefix / name
            if path.exists():
                parts.append(f"--- {name}\n{path.read_text(errors='replace')}")
        return "\n".join(parts)

    def access_log(self) -> list[dict[str, Any]]:
        lines = (self.prefix / "access.log").read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # fast shutdown
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


StartNginx = Callable[..., Nginx]


@pytest.fixture(scope="module")
def start_nginx(
    tmp_path_factory: pytest.TempPathFactory, gateway_service: ServiceProcess
) -> Iterator[StartNginx]:
    """Factory: render the config with these settings (upstream = the test gateway by
    default) into a fresh prefix, start nginx in the foreground, wait for /healthz."""
    binary = nginx_binary()
    started: list[Nginx] = []

    def start(**settings: Any) -> Nginx:
        prefix = tmp_path_factory.mktemp("nginx")
        http_port, https_port = free_port(), free_port()
        values: dict[str, Any] = {
            "http_port": http_port,
            "https_port": https_port,
            "listen_address": "127.0.0.1",
            "upstreams": (gateway_service.address,),
            "worker_processes": "1",
            "error_log": "error.log",
            "error_log_level": "info",
            "access_log": "access.log",
            # As root, workers would otherwise run as nobody, who cannot enter pytest's
            # private temp folder (the prefix holds the request-body temp files).
            "user": "root" if os.geteuid() == 0 else "",
            **settings,
        }
        (prefix / "nginx.conf").write_text(nginx_render.render(**values))
        stderr = (prefix / "stderr.log").open("wb")
        process = subprocess.Popen(
            [binary, "-p", f"{prefix}/", "-c", "nginx.conf", "-e", "stderr", "-g", "daemon off;"],
            stdout=stderr,
            stderr=subprocess.STDOUT,
        )
        stderr.close()
        server = Nginx(prefix, http_port, https_port, process)
        started.append(server)
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"nginx exited with {process.returncode}:\n{server.logs()}")
            try:
                if httpx.get(server.url + "/healthz", timeout=1).status_code == 200:
                    return server
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"nginx did not answer /healthz within 60 s:\n{server.logs()}")
            time.sleep(0.05)

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def proxy(start_nginx: StartNginx) -> Nginx:
    """The shipped configuration, with a rate limit the tests below cannot reach."""
    return start_nginx(rate_limit="100r/s", rate_limit_burst=200)


@pytest.fixture()
def client(proxy: Nginx) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=proxy.url, timeout=30) as http:
        yield http


def assert_security_headers(response: httpx.Response, *, https: bool = False) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, (name, response.headers)
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert REQUEST_ID.match(response.headers.get("x-request-id", "")), response.headers
    assert len(response.headers.get_list("x-request-id")) == 1
    assert response.headers["server"] == "nginx"  # server_tokens off: no version
    hsts = response.headers.get("strict-transport-security")
    if https:
        assert hsts is not None and hsts.startswith("max-age=")
    else:
        assert hsts is None


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["code"] == code
    assert body["type"].endswith("/" + code) and body["title"] and body["detail"]
    assert body["request_id"] == response.headers["x-request-id"]
    assert_security_headers(response)
    return body


# ---------------------------------------------------------------------------------------------
# The page and the API through nginx.


def test_healthz_is_answered_by_nginx(client: httpx.Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200 and response.text.strip() == "ok"
    assert_security_headers(response)


def test_page_is_served_with_security_headers(client: httpx.Client) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.content == (WEB / "index.html").read_bytes()
    assert '<script type="module" src="app.js"></script>' in page.text
    assert page.headers["cache-control"] == "no-cache" and page.headers.get("etag")
    assert_security_headers(page)
    csp = page.headers["content-security-policy"]
    assert "script-src 'self';" in csp and "unsafe-inline" not in csp
    for name in ("app.js", "style.css", "index.html"):
        asset = client.get("/" + name)
        assert asset.status_code == 200 and asset.content == (WEB / name).read_bytes()
        assert_security_headers(asset)
    assert client.get("/app.js").headers["content-type"] == "text/javascript; charset=utf-8"
    assert client.get("/style.css").headers["content-type"] == "text/css; charset=utf-8"


def test_page_fits_its_content_security_policy() -> None:
    # script-src/style-src 'self' without 'unsafe-inline': no inline code in the page.
    html = (WEB / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline <script>"
    assert "<style" not in html, "inline <style>"
    assert not re.search(r"\sstyle\s*=", html), "style attribute"
    assert not re.search(r"\son[a-z]+\s*=", html), "inline event handler"


def test_unknown_paths_are_not_the_page(client: httpx.Client) -> None:
    # No single-page fallback: only / is index.html.
    for path in ("/nope", "/galleries/staff", "/.env", "/index.html/x"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert_security_headers(response)
    # nginx's own redirects are relative (right behind a published port too).
    api = client.get("/api")
    assert api.status_code == 301 and api.headers["location"] == "/api/"


def test_api_is_proxied(client: httpx.Client, gateway_service: ServiceProcess) -> None:
    health = client.get("/api/health")
    assert health.status_code == 200
    assert health.headers["content-type"].startswith("application/json")
    direct = httpx.get(gateway_service.url + "/api/health", timeout=30).json()
    assert health.json()["status"] == "ok" and set(health.json()) == set(direct)
    assert_security_headers(health)

    version = client.get("/api/v1/version")
    assert version.status_code == 200 and version.json()["recognizer"]["name"]
    assert_security_headers(version)

    missing = client.get("/api/v1/galleries/no-such-gallery/subjects")
    assert missing.status_code == 404  # the gateway's own problem passes through unchanged
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["code"] == "gallery_not_found"
    assert_security_headers(missing)


class EchoHandler(http.server.BaseHTTPRequestHandler):
    """An upstream that answers with what it received: headers and its peer's port."""

    protocol_version = "HTTP/1.1"  # keeps connections open, as nginx's keepalive expects

    def do_GET(self) -> None:
        body = json.dumps(
            {
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "request_version": self.request_version,
                "peer_port": self.client_address[1],
                "path": self.path,
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Request-Id", "from-upstream")
        self.send_header("X-Frame-Options", "SAMEORIGIN")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture()
def echo_upstream() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), EchoHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(10)


def test_proxy_headers_and_upstream_keepalive(start_nginx: StartNginx, echo_upstream: str) -> None:
    server = start_nginx(upstreams=(echo_upstream,))
    with httpx.Client(base_url=server.url, timeout=30) as http:
        first = http.get(
            "/api/v1/echo?x=1", headers={"X-Forwarded-For": "6.6.6.6", "X-Request-Id": "forged"}
        )
        second = http.get("/api/v1/echo")
    seen = first.json()
    headers = seen["headers"]
    assert seen["path"] == "/api/v1/echo?x=1" and seen["request_version"] == "HTTP/1.1"
    assert headers["x-request-id"] == first.headers["x-request-id"] != "forged"
    assert first.headers.get_list("x-request-id") == [headers["x-request-id"]]
    assert first.headers.get_list("x-frame-options") == ["DENY"]  # nginx's, not upstream's
    assert headers["x-forwarded-for"] == "127.0.0.1"  # the peer, not what the client claimed
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == "127.0.0.1"
    assert headers["x-forwarded-port"] == str(server.http_port)
    assert headers["host"] == "127.0.0.1"
    assert "connection" not in headers or headers["connection"].lower() != "close"
    # One worker, keepalive to the upstream: the second request reuses the connection.
    assert second.json()["peer_port"] == seen["peer_port"]


def test_analyze_through_nginx(client: httpx.Client) -> None:
    photo = insightface_image("t1.jpg").read_bytes()
    response = client.post("/api/v1/analyze", files={"image": ("t1.jpg", photo, "image/jpeg")})
    assert response.status_code == 200, response.text
    assert len(response.json()["faces"]) == 6
    assert_security_headers(response)


def test_request_id_in_the_response_and_the_access_log(client: httpx.Client, proxy: Nginx) -> None:
    agent = f"nginx-test-{time.monotonic_ns()}"
    response = client.get("/api/v1/version", headers={"User-Agent": agent})
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]
    assert REQUEST_ID.match(request_id)
    # nginx hides the gateway's echo of the id and adds its own: the same value, once.
    assert response.headers.get_list("x-request-id") == [request_id]

    # nginx writes the entry once the request is finalised, which may follow the response.
    def logged() -> list[dict[str, Any]]:
        return [e for e in proxy.access_log() if e["user_agent"] == agent]

    wait_until("nginx to log the request", logged)
    entries = logged()
    assert len(entries) == 1, proxy.access_log()
    entry = entries[0]
    assert entry["request_id"] == request_id
    assert entry["method"] == "GET" and entry["uri"] == "/api/v1/version"
    assert entry["status"] == 200 and entry["bytes"] > 0
    assert entry["remote_addr"] == "127.0.0.1"
    assert isinstance(entry["request_time"], float)
    assert entry["upstream_response_time"] not in ("", "-")
    assert entry["time"]


def test_metrics_are_not_exposed(client: httpx.Client, gateway_service: ServiceProcess) -> None:
    # The gateway serves them (scraped inside the network); nginx does not pass them on.
    assert httpx.get(gateway_service.url + "/metrics/", timeout=30).status_code == 200
    for path in ("/metrics", "/metrics/", "/api/../metrics"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "# HELP" not in response.text and "# TYPE" not in response.text


def test_gzip_for_text(client: httpx.Client) -> None:
    script = client.get("/app.js", headers={"Accept-Encoding": "gzip"})
    assert script.status_code == 200
    assert script.headers["content-encoding"] == "gzip"
    assert "Accept-Encoding" in script.headers["vary"]
    assert script.content == (WEB / "app.js").read_bytes()  # httpx decoded it

    raw = client.get("/app.js", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in raw.headers

    with client.stream("GET", "/api/openapi.json", headers={"Accept-Encoding": "gzip"}) as api:
        assert api.headers["content-encoding"] == "gzip"
        assert json.loads(gzip.decompress(b"".join(api.iter_raw())))["openapi"]


def test_docs_assets_are_local_with_their_own_csp(client: httpx.Client) -> None:
    docs = client.get("/api/docs")
    assert docs.status_code == 200
    csp = docs.headers["content-security-policy"]
    # Swagger UI's bootstrap is an inline script: allowed on this page only; no CDN.
    assert "script-src 'self' 'unsafe-inline'" in csp and "http" not in csp
    assert_security_headers(docs)
    assets = re.findall(r'(?:src|href)="([^"]+)"', docs.text)
    assert assets, docs.text
    for asset in assets:
        assert asset.startswith("/"), f"/api/docs loads {asset} from another origin"
        assert client.get(asset).status_code == 200, asset
    assert client.get("/api/openapi.json").json()["openapi"]


# ---------------------------------------------------------------------------------------------
# Limits.


def test_body_over_the_limit_is_413_problem(start_nginx: StartNginx) -> None:
    server = start_nginx(client_max_body_size="1m")
    two_mb = os.urandom(2 * 1024 * 1024)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        declared = http.post("/api/v1/analyze", files={"image": ("big.jpg", two_mb, "image/jpeg")})
        body = assert_problem(declared, 413, "request_too_large")
        assert body["limit"] == 1024 * 1024

        def chunks() -> Iterator[bytes]:  # no Content-Length: nginx counts while reading
            for start in range(0, len(two_mb), 64 * 1024):
                yield two_mb[start : start + 64 * 1024]

        chunked = http.post(
            "/api/v1/analyze", content=chunks(), headers={"Content-Type": "image/jpeg"}
        )
        assert "content-length" not in chunked.request.headers
        assert_problem(chunked, 413, "request_too_large")

        # Under the limit it reaches the gateway.
        photo = insightface_image("t1.jpg").read_bytes()
        ok = http.post("/api/v1/analyze", files={"image": ("t1.jpg", photo, "image/jpeg")})
        assert ok.status_code == 200, ok.text


def test_burst_is_rate_limited_with_429_problem(start_nginx: StartNginx) -> None:
    server = start_nginx(rate_limit="1r/s", rate_limit_burst=5)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        began = time.monotonic()
        responses = [http.get("/api/v1/version") for _ in range(30)]
        elapsed = time.monotonic() - began
        statuses = [r.status_code for r in responses]
        assert statuses[0] == 200
        assert set(statuses) <= {200, 429}, statuses
        # At most the burst plus one per second that passed.
        assert statuses.count(200) <= 1 + 5 + int(elapsed) + 1, (statuses, elapsed)
        limited = next(r for r in responses if r.status_code == 429)
        assert_problem(limited, 429, "rate_limited")
        assert limited.headers["retry-after"] == "1"

        # Health checks, nginx's /healthz and the page are not limited.
        for _ in range(10):
            assert http.get("/api/health").status_code == 200
            assert http.get("/healthz").status_code == 200
            assert http.get("/").status_code == 200

    rejected = [e for e in server.access_log() if e["status"] == 429]
    assert len(rejected) == statuses.count(429)


def test_gateway_down_is_503_problem(start_nginx: StartNginx) -> None:
    server = start_nginx(upstreams=(f"127.0.0.1:{free_port()}",), retry_after=7)
    response = httpx.get(server.url + "/api/v1/version", timeout=30)
    body = assert_problem(response, 503, "dependency_unavailable")
    assert body["dependency"] == "gateway"
    assert response.headers["retry-after"] == "7"
    assert httpx.get(server.url + "/healthz", timeout=30).status_code == 200


# ---------------------------------------------------------------------------------------------
# TLS.


@pytest.fixture(scope="module")
def dev_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is not installed (apt-get install openssl); dev-cert.sh needs it")
    folder = tmp_path_factory.mktemp("certs")
    subprocess.run(
        ["bash", str(REPO / "scripts" / "dev-cert.sh"), str(folder)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return folder / "cert.pem", folder / "key.pem"


@pytest.fixture(scope="module")
def tls_proxy(start_nginx: StartNginx, dev_cert: tuple[Path, Path]) -> Nginx:
    cert, key = dev_cert
    return start_nginx(
        tls=True, tls_certificate=str(cert), tls_certificate_key=str(key), rate_limit="100r/s"
    )


def test_tls_serves_with_the_dev_certificate(tls_proxy: Nginx, dev_cert: tuple[Path, Path]) -> None:
    trust = ssl.create_default_context(cafile=str(dev_cert[0]))
    with httpx.Client(base_url=tls_proxy.https_url, verify=trust, timeout=30) as https:
        healthz = https.get("/healthz")
        assert healthz.status_code == 200 and healthz.text.strip() == "ok"
        assert_security_headers(healthz, https=True)
        page = https.get("/")
        assert page.status_code == 200 and "app.js" in page.text
        assert_security_headers(page, https=True)
        health = https.get("/api/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert_security_headers(health, https=True)
    with (
        httpx.Client(base_url=tls_proxy.https_url, timeout=30) as untrusting,
        pytest.raises(httpx.ConnectError),  # self-signed: only trusted when asked to
    ):
        untrusting.get("/healthz")


def test_tls_offers_http2_over_tls_1_2_and_1_3(
    tls_proxy: Nginx, dev_cert: tuple[Path, Path]
) -> None:
    for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        trust = ssl.create_default_context(cafile=str(dev_cert[0]))
        trust.minimum_version = trust.maximum_version = version
        trust.set_alpn_protocols(["h2", "http/1.1"])
        with (
            socket.create_connection(("127.0.0.1", tls_proxy.https_port), timeout=10) as raw,
            trust.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            assert tls.selected_alpn_protocol() == "h2"
            assert tls.version() == version.name.replace("_", ".")


def test_http_redirects_to_https_except_healthz(tls_proxy: Nginx) -> None:
    with httpx.Client(base_url=tls_proxy.url, timeout=30) as http:
        healthz = http.get("/healthz")
        assert healthz.status_code == 200 and healthz.text.strip() == "ok"
        for method, path in (
            ("GET", "/"),
            ("GET", "/api/v1/version?x=1"),
            ("POST", "/api/v1/analyze"),
        ):
            response = http.request(method, path)
            assert response.status_code in (301, 308), (method, path, response.status_code)
            assert response.headers["location"] == tls_proxy.https_url + path


# ---------------------------------------------------------------------------------------------
# The renderer (no nginx process needed for most).


def test_rendered_variants_pass_nginx_t(tmp_path: Path) -> None:
    binary = nginx_binary()
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["bash", str(REPO / "scripts" / "dev-cert.sh"), str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    variants: list[dict[str, Any]] = [
        {},
        {"rate_limit": "off", "access_log": "off", "daemon": "on"},
        {"upstreams": ("10.0.0.1:8000 weight=2", "127.0.0.1:8001 max_fails=3 fail_timeout=5s")},
        {"rate_limit": "30r/m", "client_max_body_size": "512k", "worker_processes": "auto"},
        {"tls": True, "tls_certificate": str(cert), "tls_certificate_key": str(key)},
        {
            "tls": True,
            "tls_certificate": str(cert),
            "tls_certificate_key": str(key),
            "hsts_max_age": 0,
            "public_https_port": 443,
            "temp_dir": str(tmp_path),
        },
    ]
    for index, variant in enumerate(variants):
        conf = tmp_path / f"nginx-{index}.conf"
        conf.write_text(nginx_render.render(**variant))
        result = subprocess.run(
            [binary, "-t", "-p", f"{tmp_path}/", "-c", conf.name, "-e", "stderr"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, (variant, result.stderr)
        assert "[warn]" not in result.stderr and "[emerg]" not in result.stderr, result.stderr


def test_render_settings_show_up_in_the_config() -> None:
    conf = nginx_render.render(
        http_port=9080,
        upstreams=("gw1:8000", "gw2:8000"),
        client_max_body_size="5m",
        rate_limit="7r/s",
        rate_limit_burst=11,
    )
    assert "listen 9080;" in conf
    assert re.search(
        r"upstream gateway \{\s+server gw1:8000;\s+server gw2:8000;\s+keepalive 32;", conf
    )
    assert "client_max_body_size 5m;" in conf and '"limit":5242880' in conf
    assert "rate=7r/s" in conf and "burst=11 nodelay" in conf
    assert "ssl" not in conf and "max-age=" not in conf  # HSTS only with TLS
    assert "{{" not in conf and not re.search(r"^daemon", conf, re.MULTILINE)

    tls = nginx_render.render(
        tls=True, tls_certificate="/c/cert.pem", tls_certificate_key="/c/key.pem", https_port=9443
    )
    assert "listen 9443 ssl http2;" in tls and "listen 8080;" in tls
    assert "return 308 https://$host:9443$request_uri;" in tls
    assert "max-age=63072000" in tls and "ssl_protocols TLSv1.2 TLSv1.3;" in tls
    public = nginx_render.render(
        tls=True, tls_certificate="/c", tls_certificate_key="/k", public_https_port=443
    )
    assert "return 308 https://$host$request_uri;" in public


@pytest.mark.parametrize(
    "settings",
    [
        {"upstreams": ("127.0.0.1:8000; evil",)},
        {"upstreams": ()},
        {"client_max_body_size": "20 m"},
        {"client_max_body_size": "0"},
        {"rate_limit": "10/s"},
        {"http_port": 0},
        {"tls": True},
        {"tls": True, "tls_certificate": "cert.pem", "tls_certificate_key": "/k.pem"},
        {"web_root": "gateway/web"},
        {"access_log": "/var/log/$host.log"},
        {"pid_path": 'a"b'},
        {"server_name": "x; include /etc/passwd"},
        {"daemon": "maybe"},
    ],
)
def test_render_rejects_bad_settings(settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="invalid nginx settings"):
        nginx_render.render(**settings)


def test_render_cli_and_environment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sub" / "nginx.conf"
    environ = {
        "NGINX_HTTP_PORT": "7080",
        "NGINX_UPSTREAMS": "a:1, b:2",
        "NGINX_RATE_LIMIT": "off",
        "NGINX_TLS": "off",
    }
    code = nginx_render.main(["--out", str(out), "--http-port", "7081"], environ)
    assert code == 0
    conf = out.read_text()
    assert "listen 7081;" in conf  # the flag wins over the environment
    assert "server a:1;" in conf and "server b:2;" in conf
    assert "limit_req" not in conf

    code = nginx_render.main(["--upstream", "c:3", "--upstream", "d:4"], {})
    printed = capsys.readouterr().out
    assert code == 0 and "server c:3;" in printed and "server d:4;" in printed

    assert nginx_render.main(["--out", str(out)], {"NGINX_HTTP_PORT": "x"}) == 2
    assert nginx_render.main(["--out", str(out)], {"NGINX_RATE_LIMIT": "lots"}) == 2
    assert "invalid nginx settings" in capsys.readouterr().err
