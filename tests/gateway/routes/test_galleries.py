"""Gallery routes: create, list, delete, and names refused as documented."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from tests.conftest import ServiceProcess
from tests.gateway.rest import problem

StartService = Callable[..., ServiceProcess]


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
