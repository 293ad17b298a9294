"""REST contract tests through httpx against the running stack: detect, embed, score, gateway."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Callable

import httpx
import pytest
from PIL import Image

from gateway.problems import STATUS_OF_REASON
from services.common.errors import Reason
from tests.conftest import ServiceProcess, free_port
from tests.gateway.rest import counter, problem, upload

Photo = Callable[[str], bytes]
StartService = Callable[..., ServiceProcess]
_names = iter(range(10_000))


@pytest.fixture()
def gallery(api: httpx.Client) -> str:
    name = f"rest{next(_names)}-{int(time.time() * 1000) % 100000}"
    assert api.post("/api/v1/galleries", json={"name": name}).status_code == 201
    return name


def blank_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (320, 240), (128, 128, 128)).save(buffer, "PNG")
    return buffer.getvalue()


def test_version_and_docs(api: httpx.Client) -> None:
    version = api.get("/api/v1/version").json()
    assert version["recognizer"]["name"] == "w600k_mbf" and version["threshold"] == pytest.approx(
        0.4
    )
    assert version["detector"]["providers"] == ["CPUExecutionProvider"]
    spec = api.get("/api/openapi.json").json()
    assert "/api/v1/galleries/{gallery}/identify" in spec["paths"]
    docs = api.get("/api/docs")
    assert docs.status_code == 200 and "/api/docs-static/swagger-ui-bundle.js" in docs.text
    assert "cdn" not in docs.text.lower()
    assert api.get("/api/docs-static/swagger-ui-bundle.js").status_code == 200


def test_analyze_multipart_and_base64(api: httpx.Client, photo: Photo) -> None:
    multipart = api.post("/api/v1/analyze", files=upload(photo("t1.jpg"))).json()
    assert len(multipart["faces"]) == 6 and multipart["image"]["format"] == "JPEG"
    face = multipart["faces"][0]
    assert len(face["landmarks"]) == 5 and set(face["quality"]) >= {"yaw", "sharpness"}
    assert face["embedding"] is None
    encoded = base64.b64encode(photo("t1.jpg")).decode()
    as_json = api.post(
        "/api/v1/analyze", params={"include_embeddings": "true"}, json={"image_base64": encoded}
    ).json()
    assert [f["box"] for f in as_json["faces"]] == [f["box"] for f in multipart["faces"]]
    assert len(as_json["faces"][0]["embedding"]) == 512


def test_gallery_lifecycle(api: httpx.Client, gallery: str) -> None:
    listed = api.get("/api/v1/galleries").json()["galleries"]
    assert any(g["name"] == gallery and g["face_count"] == 0 and g["created_at"] for g in listed)
    problem(api.post("/api/v1/galleries", json={"name": gallery}), 409, "gallery_exists")
    for bad in ("no spaces", "", "x" * 65, "-dash-first"):
        refused = problem(
            api.post("/api/v1/galleries", json={"name": bad}), 400, "invalid_argument"
        )
        assert refused["field"] == "name"
    problem(api.post("/api/v1/galleries", json={"name": 7}), 422, "validation_error")
    problem(api.delete("/api/v1/galleries/no%20spaces"), 400, "invalid_argument")
    assert api.delete(f"/api/v1/galleries/{gallery}").json() == {"deleted_faces": 0}
    problem(api.delete(f"/api/v1/galleries/{gallery}"), 404, "gallery_not_found")


def test_enroll_identify_verify_and_delete(api: httpx.Client, gallery: str, photo: Photo) -> None:
    base = f"/api/v1/galleries/{gallery}"
    enrolled = api.post(
        f"{base}/subjects/yao/faces",
        files=upload(photo("yaoming.jpg")),
        data={"metadata": '{"team": "rockets"}'},
    )
    assert enrolled.status_code == 201 and enrolled.json()["created"] is True
    again = api.post(
        f"{base}/subjects/yao/faces",
        json={"image_base64": base64.b64encode(photo("yaoming.jpg")).decode()},
    )
    assert again.status_code == 201 and again.json()["created"] is False
    assert again.json()["face_id"] == enrolled.json()["face_id"]
    chosen = api.post(
        f"{base}/subjects/third/faces", files=upload(photo("t1.jpg")), data={"face_index": "2"}
    )
    assert chosen.json()["face"]["index"] == 2

    identified = api.post(f"{base}/identify", files=upload(photo("players.jpg"))).json()
    assert len(identified["faces"]) == 22
    assert [f["subject_id"] for f in identified["faces"] if not f["unknown"]] == ["yao"]
    best = next(f for f in identified["faces"] if not f["unknown"])
    assert best["candidates"][0]["similarity"] >= 0.5 and best["candidates"][0]["match"]

    subject = api.get(f"{base}/subjects/yao").json()
    assert subject["metadata"] == {"team": "rockets"} and subject["face_count"] == 1
    subjects = api.get(f"{base}/subjects", params={"page_size": 1}).json()
    assert len(subjects["subjects"]) == 1 and subjects["next_page_token"]

    pair = api.post(
        "/api/v1/verify",
        files={**upload(photo("yaoming.jpg")), **upload(photo("t1.jpg"), "other_image")},
    ).json()
    assert pair["match"] is False and pair["other_face"] is not None
    against = api.post(
        "/api/v1/verify",
        files=upload(photo("yaoming.jpg")),
        data={"gallery": gallery, "subject_id": "yao"},
    ).json()
    assert against["match"] is True and against["matched_face_id"] == subject["face_ids"][0]

    assert api.delete(f"{base}/faces/{chosen.json()['face_id']}").status_code == 204
    problem(api.delete(f"{base}/faces/{chosen.json()['face_id']}"), 404, "face_not_found")
    assert api.delete(f"{base}/subjects/yao").json() == {"deleted_faces": 1}
    problem(api.get(f"{base}/subjects/yao"), 404, "subject_not_found")


def test_user_mistakes_get_4xx_problems(api: httpx.Client, gallery: str, photo: Photo) -> None:
    base = f"/api/v1/galleries/{gallery}"
    enroll = f"{base}/subjects/x/faces"
    problem(api.post(enroll, files=upload(blank_png())), 400, "no_face")
    body = problem(api.post(enroll, files=upload(photo("t1.jpg"))), 400, "multiple_faces")
    assert body["faces"] == "6"
    gate = problem(
        api.post(enroll, files=upload(photo("yaoming.jpg")), data={"min_face_size": "5000"}),
        400,
        "face_quality_too_low",
    )
    assert gate["gate"] == "min_face_size"
    problem(
        api.post(enroll, files=upload(photo("yaoming.jpg")), data={"metadata": "[1]"}),
        400,
        "invalid_metadata",
    )
    problem(
        api.post(enroll, files=upload(photo("yaoming.jpg")), data={"metadata": "{x"}),
        400,
        "invalid_metadata",
    )
    problem(api.post(enroll, files=upload(b"")), 400, "empty_image")
    problem(api.post(enroll, files=upload(photo("t1.jpg")[:4000])), 400, "corrupt_image")
    problem(
        api.post(enroll, files=upload(b"just some text, no photo" * 8)),
        415,
        "unsupported_image_format",
    )
    problem(api.post(enroll, json={"image_base64": "***"}), 400, "invalid_argument")
    # ".." percent-encoded reaches the gateway as a subject id no path could address.
    dots = problem(
        api.post(f"{base}/subjects/%2E%2E/faces", files=upload(photo("yaoming.jpg"))),
        400,
        "invalid_argument",
    )
    assert dots["field"] == "subject_id"
    problem(api.post(enroll, json={"face_index": 1}), 422, "validation_error")
    problem(
        api.post(enroll, content=b"raw", headers={"content-type": "text/plain"}),
        415,
        "unsupported_media_type",
    )
    problem(
        api.post(enroll, files=upload(photo("yaoming.jpg")), data={"face_index": "-1"}),
        422,
        "validation_error",
    )
    problem(
        api.post(f"{base}/identify", files=upload(photo("yaoming.jpg")), data={"threshold": "7"}),
        422,
        "validation_error",
    )
    problem(
        api.post("/api/v1/galleries/missing/identify", files=upload(photo("yaoming.jpg"))),
        404,
        "gallery_not_found",
    )
    problem(api.post("/api/v1/verify", files=upload(photo("yaoming.jpg"))), 422, "validation_error")
    problem(api.get(f"{base}/subjects", params={"page_size": 0}), 422, "validation_error")
    problem(api.get("/api/v1/nothing-here"), 404, "not_found")
    problem(api.put("/api/v1/galleries"), 405, "method_not_allowed")
    big = b"\xff" * (21 * 1024 * 1024)
    problem(api.post("/api/v1/analyze", files=upload(big)), 413, "request_too_large")


def test_hostile_fields_get_4xx_problems(api: httpx.Client, gallery: str, photo: Photo) -> None:
    base = f"/api/v1/galleries/{gallery}"
    enroll = f"{base}/subjects/x/faces"
    encoded = base64.b64encode(photo("yaoming.jpg")).decode()
    # Values an int32 field cannot hold, and JSON values of the wrong type.
    problem(
        api.post(enroll, json={"image_base64": encoded, "face_index": 2**31}),
        422,
        "validation_error",
    )
    for wrong in ({"threshold": "0.5"}, {"top_k": True}):
        problem(
            api.post(f"{base}/identify", json={"image_base64": encoded, **wrong}),
            422,
            "validation_error",
        )
    # Metadata that is not UTF-8, nested without end, or JSON cannot carry back.
    for metadata in (b'{"a": "\xff"}', b'{"a": ' + b"[" * 2000 + b"]" * 2000 + b"}"):
        problem(
            api.post(enroll, files={**upload(photo("yaoming.jpg")), "metadata": (None, metadata)}),
            400,
            "invalid_metadata",
        )
    for metadata in ('{"a": NaN}', '{"a": "\\ud800"}', '{"a": 1, "a": 2}'):
        problem(
            api.post(enroll, files=upload(photo("yaoming.jpg")), data={"metadata": metadata}),
            400,
            "invalid_metadata",
        )
    assert api.get(f"{base}/subjects").status_code == 200
    # A field given twice is ambiguous.
    twice = [("image", ("a.jpg", photo("yaoming.jpg"), "image/jpeg"))] * 2
    problem(api.post("/api/v1/analyze", files=twice), 422, "validation_error")
    # A path that is not UTF-8 would be stored under replacement characters.
    bad = problem(
        api.post(f"{base}/subjects/%FF/faces", files=upload(photo("yaoming.jpg"))),
        400,
        "invalid_argument",
    )
    assert bad["field"] == "path"
    token = problem(
        api.get(f"{base}/subjects", params={"page_token": "garbage"}), 400, "invalid_argument"
    )
    assert token["field"] == "page_token"


def test_photos_in_every_common_encoding(api: httpx.Client, photo: Photo) -> None:
    data = photo("yaoming.jpg")
    standard = base64.b64encode(data).decode()
    for encoded in (
        base64.encodebytes(data).decode(),  # MIME: lines of 76 characters
        base64.urlsafe_b64encode(data).decode().rstrip("="),
        "data:image/jpeg;base64," + standard,
    ):
        reply = api.post("/api/v1/analyze", json={"image_base64": encoded})
        assert reply.status_code == 200, reply.text
        assert len(reply.json()["faces"]) == 1
    # curl -F image=<photo.jpg sends the photo as a text part: its bytes must survive.
    as_text = api.post("/api/v1/analyze", files={"image": (None, data)})
    assert as_text.status_code == 200, as_text.text
    assert len(as_text.json()["faces"]) == 1


def test_every_reason_has_a_status_and_user_mistakes_are_4xx() -> None:
    assert set(STATUS_OF_REASON) == {str(r) for r in Reason}
    ours = {Reason.INTERNAL, Reason.EMBEDDING_MODEL_MISMATCH}
    for reason, status in STATUS_OF_REASON.items():
        assert (status >= 500) == (Reason(reason) in ours or status in (503, 504)), reason


def test_health_and_metrics(api: httpx.Client) -> None:
    health = api.get("/api/health")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok"
    assert {"score", "detect", "embed", "qdrant", "cache"} <= set(body["dependencies"])
    assert "X-Request-Id" in health.headers or "x-request-id" in health.headers
    metrics = api.get("/metrics/")
    assert metrics.status_code == 200 and "python_info" in metrics.text


def test_request_metrics_by_route_status_and_code(
    api: httpx.Client, gateway_service: ServiceProcess, score_for_gateway: ServiceProcess
) -> None:
    route = "/api/v1/galleries/{gallery}/subjects"
    missing = {"route": route, "method": "GET", "status": "404", "code": "gallery_not_found"}
    listed = {"route": "/api/v1/galleries", "method": "GET", "status": "200", "code": ""}
    before = api.get("/metrics/").text
    for _ in range(3):
        problem(api.get("/api/v1/galleries/nowhere-metrics/subjects"), 404, "gallery_not_found")
    assert api.get("/api/v1/galleries").status_code == 200
    problem(api.get("/api/v1/made-up-path-7f3a"), 404, "not_found")
    for _ in range(3):
        assert api.get("/api/health").status_code == 200
    after = api.get("/metrics/").text
    total = "facescore_http_requests_total"
    assert counter(after, total, **missing) - counter(before, total, **missing) == 3
    assert counter(after, total, **listed) - counter(before, total, **listed) == 1
    assert counter(after, "facescore_http_request_seconds_count", route=route, method="GET") >= 3
    # Made-up paths share one label: clients cannot grow the label set.
    assert "made-up-path-7f3a" not in after
    assert counter(after, total, route="unmatched", method="GET", status="404", code="not_found")
    # Successful probes are counted but not logged at info level; failures are.
    logs = gateway_service.logs()
    assert '"path": "/api/v1/galleries/nowhere-metrics/subjects"' in logs
    assert '"path": "/api/health"' not in logs
    score_logs = score_for_gateway.logs()
    assert "/facescore.v1.ScoreService/ListGalleries" in score_logs
    assert "/facescore.v1.ScoreService/GetHealth" not in score_logs
    assert "/grpc.health.v1.Health/Check" not in score_logs


def test_api_keys_and_scopes(
    start_service: StartService, score_for_gateway: ServiceProcess, photo: Photo
) -> None:
    keys = (
        "reader:r-secret:read,admin:sha256:"
        + __import__("hashlib").sha256(b"a-secret").hexdigest()
        + ":read+write+admin"
    )
    service = start_service(
        "gateway", GATEWAY_SCORE_TARGET=f"dns:///{score_for_gateway.address}", GATEWAY_API_KEYS=keys
    )
    with httpx.Client(base_url=service.url, timeout=30) as api:
        problem(api.get("/api/v1/galleries"), 401, "missing_api_key")
        problem(api.get("/api/v1/galleries", headers={"X-API-Key": "nope"}), 401, "invalid_api_key")
        assert api.get("/api/v1/galleries", headers={"X-API-Key": "r-secret"}).status_code == 200
        problem(
            api.post("/api/v1/galleries", json={"name": "k1"}, headers={"X-API-Key": "r-secret"}),
            403,
            "insufficient_scope",
        )
        created = api.post(
            "/api/v1/galleries",
            json={"name": f"k{time.time_ns() % 10**6}"},
            headers={"X-API-Key": "a-secret"},
        )
        assert created.status_code == 201
        assert api.get("/api/health").status_code == 200  # probes need no key
    assert "API keys are off" not in service.logs()


def test_score_down_is_503_with_retry_after(start_service: StartService) -> None:
    service = start_service(
        "gateway", wait=False, GATEWAY_SCORE_TARGET=f"dns:///127.0.0.1:{free_port()}"
    )
    deadline = time.monotonic() + 30
    with httpx.Client(base_url=service.url, timeout=30) as api:
        while True:
            try:
                health = api.get("/api/health")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert health.status_code == 503 and health.json()["status"] == "degraded"
        down = problem(api.get("/api/v1/galleries"), 503, "dependency_unavailable")
        assert down["dependency"] == "score"
        assert api.get("/api/v1/galleries").headers["retry-after"].isdigit()
    assert "API keys are off" in service.logs()
