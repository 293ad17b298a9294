"""Subject and face routes, with identify and verify against what was enrolled."""

from __future__ import annotations

import base64
from collections.abc import Callable

import httpx

from tests.conftest import ServiceProcess
from tests.gateway.rest import Photo, blank_png, problem, upload

StartService = Callable[..., ServiceProcess]


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
