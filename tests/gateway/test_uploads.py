"""Photo requests: hostile fields and metadata get 4xx problems."""

from __future__ import annotations

import base64
from collections.abc import Callable

import httpx

from tests.conftest import ServiceProcess
from tests.gateway.rest import Photo, problem, upload

StartService = Callable[..., ServiceProcess]


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
