"""schemathesis against the served OpenAPI document: every generated request gets an answer
the document describes (status code, content type, headers, body) and none gets a 5xx.

Random bytes are never a face and random names never a gallery, so half the valid cases get
a real photo and an existing gallery: their success bodies are checked too.
"""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Callable

import httpx
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.schemas import APIOperation

from tests.conftest import ServiceProcess

CHECKS = [
    not_a_server_error,
    negative_data_rejection,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Examples per route and mode; more for a longer hunt: FACESCORE_FUZZ_EXAMPLES=300.
EXAMPLES = int(os.environ.get("FACESCORE_FUZZ_EXAMPLES", "60"))


def with_real_resources(case: schemathesis.Case, photo: bytes, gallery: str) -> None:
    """The case with a photo of one enrolled face and the gallery and subject that hold it
    (never deleted: DELETE cases keep their random names)."""
    if case.method.upper() != "DELETE":
        for name, value in (("gallery", gallery), ("subject_id", "ada")):
            if name in (case.path_parameters or {}):
                case.path_parameters[name] = value
    if not isinstance(case.body, dict):
        return
    encoded = base64.b64encode(photo).decode()
    real: dict[str, object] = {
        "image_base64": encoded,
        "other_image_base64": encoded,
        "gallery": gallery,
        "subject_id": "ada",
    }
    if (case.media_type or "").startswith("multipart/"):
        # Raw bytes go in file parts only: a JSON body whose extra keys happen to be named
        # "image" keeps its drawn values (bytes are not JSON).
        real.update(image=photo, other_image=photo)
    case.body.update({name: value for name, value in real.items() if name in case.body})
    if case.path == "/api/v1/verify" and not {"other_image", "other_image_base64"} & set(case.body):
        case.body.update(gallery=gallery, subject_id="ada")


def fuzz(
    operation: APIOperation, session: requests.Session, photo: bytes, gallery: str
) -> set[int]:
    """Runs the operation's cases through every check; the statuses it answered."""
    answered: set[int] = set()
    cases = st.one_of(
        st.tuples(operation.as_strategy(), st.booleans()),
        st.tuples(operation.as_strategy(GenerationMode.NEGATIVE), st.just(False)),
    )

    @given(drawn=cases)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        # The same cases every run: a route's 2xx (asserted below) must not hang on luck.
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    def run(drawn: tuple[schemathesis.Case, bool]) -> None:
        case, real = drawn
        if real:
            with_real_resources(case, photo, gallery)
        response = case.call_and_validate(session=session, checks=CHECKS, timeout=30)
        answered.add(response.status_code)

    run()
    return answered


def test_every_answer_matches_the_openapi_document(
    gateway_service: ServiceProcess, photo: Callable[[str], bytes]
) -> None:
    face = photo("yaoming.jpg")
    gallery = f"fuzz-{uuid.uuid4().hex[:12]}"
    base = f"/api/v1/galleries/{gallery}"
    with httpx.Client(base_url=gateway_service.url, timeout=30) as api:
        assert api.post("/api/v1/galleries", json={"name": gallery}).status_code == 201
        enrolled = api.post(f"{base}/subjects/ada/faces", files={"image": ("a.jpg", face)})
        assert enrolled.status_code == 201, enrolled.text
    schema = schemathesis.openapi.from_url(f"{gateway_service.url}/api/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    with requests.Session() as session:
        answered = {op.label: fuzz(op, session, face, gallery) for op in operations}
    # Success bodies were checked too: every route but the deletions answered a 2xx.
    missed = [
        label
        for label, statuses in answered.items()
        if not label.startswith("DELETE") and not any(200 <= s < 300 for s in statuses)
    ]
    assert not missed, answered
