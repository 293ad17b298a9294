"""Analysis routes: analyze with either encoding of a photo."""

from __future__ import annotations

import base64
from collections.abc import Callable

import httpx

from tests.conftest import ServiceProcess
from tests.gateway.rest import Photo, upload

StartService = Callable[..., ServiceProcess]


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
