"""Helpers of the REST tests: problem answers, uploads, metric samples."""

from __future__ import annotations

import io
from collections.abc import Callable

import httpx
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

Photo = Callable[[str], bytes]


def problem(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, object] = response.json()
    assert body["code"] == code and body["status"] == status
    assert body["type"] and body["title"] and body["detail"]
    return body


def upload(image: bytes, name: str = "image") -> dict[str, tuple[str, bytes, str]]:
    # The file name and declared type are deliberately wrong: content is what counts.
    return {name: ("photo.txt", image, "application/octet-stream")}


def counter(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a Prometheus text exposition, 0 when absent."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def blank_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (320, 240), (128, 128, 128)).save(buffer, "PNG")
    return buffer.getvalue()
