"""The REST gateway: thin routes that parse, call the score service once, and map errors."""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import json
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar

import grpc
import structlog
from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from prometheus_client import make_asgi_app
from starlette.exceptions import HTTPException as StarletteHTTPException

from facescore.v1 import score_pb2, score_pb2_grpc
from gateway import metrics, schemas
from gateway.auth import Authenticator, Scope, load_keys
from gateway.problems import (
    Problem,
    from_rpc_error,
    handle_http_exception,
    handle_problem,
    handle_validation_error,
)
from gateway.settings import GatewaySettings
from gateway.uploads import photo_body_docs, read_photo_request
from services.common.channels import open_channel
from services.common.logging import REQUEST_ID_HEADER, request_id_from

log = structlog.get_logger(__name__)
T = TypeVar("T")
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": schemas.Problem, "content": {"application/problem+json": {}}}
    for status in (400, 401, 403, 404, 409, 413, 415, 422, 503)
}


def utf8_path(request: Request) -> None:
    """Refuse a path whose percent-escapes are not UTF-8 (`%FF`).

    The server decodes them with replacement characters: a subject enrolled under such a
    path would be stored under an id the client never sent.
    """
    raw = request.scope.get("raw_path")
    if raw is None:
        return
    try:
        urllib.parse.unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise Problem(
            400,
            "invalid_argument",
            "the path is not UTF-8 once percent-decoded",
            {"field": "path"},
        ) from None


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    auth = Authenticator(load_keys(settings))
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not auth.enabled:
            log.warning(
                "API keys are off: anyone who reaches this gateway can read and change "
                "galleries; set GATEWAY_API_KEYS or GATEWAY_API_KEYS_FILE"
            )
        channel = open_channel(settings.score_target, 64 * 1024 * 1024)
        state["score"] = score_pb2_grpc.ScoreServiceStub(channel)
        yield
        await channel.close()

    app = FastAPI(
        title="facescore",
        version=importlib.metadata.version("facescore"),
        description="Face detection, enrollment, identification and verification.",
        docs_url=None,
        openapi_url="/api/openapi.json",
        redoc_url=None,
        lifespan=lifespan,
        responses=PROBLEM_RESPONSES,
        dependencies=[Depends(utf8_path)],
    )
    app.add_exception_handler(Problem, handle_problem)
    app.add_exception_handler(StarletteHTTPException, handle_http_exception)
    app.add_exception_handler(RequestValidationError, handle_validation_error)

    @app.middleware("http")
    async def request_id(request: Request, call_next: Any) -> Response:
        rid = request_id_from([(REQUEST_ID_HEADER, request.headers.get(REQUEST_ID_HEADER))])
        structlog.contextvars.bind_contextvars(request_id=rid)
        started = time.perf_counter()
        status = 500  # unless call_next answers: an error no handler turned into a response
        try:
            response: Response = await call_next(request)
            status = response.status_code
        finally:
            elapsed = time.perf_counter() - started
            route = metrics.observe(request, status, elapsed)
            quiet = route in metrics.QUIET_ROUTES and status < 400
            (log.debug if quiet else log.info)(
                "request done",
                method=request.method,
                path=request.url.path,
                status=status,
                ms=round(elapsed * 1000, 2),
            )
            structlog.contextvars.unbind_contextvars("request_id")
        response.headers[REQUEST_ID_HEADER] = rid
        return response

    async def call(rpc: Awaitable[T]) -> T:
        try:
            return await rpc
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error, settings.retry_after_s) from None

    def stub() -> score_pb2_grpc.ScoreServiceStub:
        stub_: score_pb2_grpc.ScoreServiceStub = state["score"]
        return stub_

    def rid_metadata(request: Request) -> tuple[tuple[str, str], ...]:
        rid = structlog.contextvars.get_contextvars().get("request_id", "")
        return ((REQUEST_ID_HEADER, str(rid)),)

    def scope(required: Scope) -> Any:
        def check(request: Request) -> None:
            auth.check(request, required)

        return Depends(check)

    read, write, admin = scope(Scope.READ), scope(Scope.WRITE), scope(Scope.ADMIN)
    kw = {"timeout": settings.deadline_s}

    @app.get("/api/v1/version", dependencies=[read], tags=["service"])
    async def version(request: Request) -> schemas.VersionResponse:
        info = await call(
            stub().GetServiceInfo(
                score_pb2.GetServiceInfoRequest(), metadata=rid_metadata(request), **kw
            )
        )
        return schemas.VersionResponse(
            version=app.version,
            detector=schemas.model(info.detector),
            recognizer=schemas.model(info.recognizer),
            collection=info.collection,
            threshold=info.default_threshold,
        )

    @app.post(
        "/api/v1/analyze",
        dependencies=[read],
        tags=["faces"],
        openapi_extra=photo_body_docs(schemas.AnalyzeJson, ("image",)),
    )
    async def analyze(
        request: Request, include_embeddings: bool = False
    ) -> schemas.AnalyzeResponse:
        photos, _ = await read_photo_request(
            request, settings.max_upload_bytes, schemas.AnalyzeJson, ("image",)
        )
        reply = await call(
            stub().Analyze(
                score_pb2.AnalyzeRequest(
                    image=photos["image"], include_embeddings=include_embeddings
                ),
                metadata=rid_metadata(request),
                **kw,
            )
        )
        return schemas.AnalyzeResponse(
            image=schemas.image(reply.image),
            faces=[schemas.face(f) for f in reply.faces],
            cached=reply.cached,
        )

    @app.get("/api/v1/galleries", dependencies=[read], tags=["galleries"])
    async def list_galleries(request: Request) -> schemas.GalleryList:
        reply = await call(
            stub().ListGalleries(
                score_pb2.ListGalleriesRequest(), metadata=rid_metadata(request), **kw
            )
        )
        return schemas.GalleryList(
            galleries=[
                schemas.Gallery(
                    name=g.name, face_count=g.face_count, created_at=schemas.when(g.created_unix_ms)
                )
                for g in reply.galleries
            ]
        )

    @app.post("/api/v1/galleries", status_code=201, dependencies=[admin], tags=["galleries"])
    async def create_gallery(request: Request, body: schemas.CreateGallery) -> schemas.Gallery:
        reply = await call(
            stub().CreateGallery(
                score_pb2.CreateGalleryRequest(name=body.name), metadata=rid_metadata(request), **kw
            )
        )
        return schemas.Gallery(
            name=reply.name, face_count=0, created_at=schemas.when(reply.created_unix_ms)
        )

    @app.delete("/api/v1/galleries/{gallery}", dependencies=[admin], tags=["galleries"])
    async def delete_gallery(request: Request, gallery: str) -> schemas.Deleted:
        reply = await call(
            stub().DeleteGallery(
                score_pb2.DeleteGalleryRequest(name=gallery), metadata=rid_metadata(request), **kw
            )
        )
        return schemas.Deleted(deleted_faces=reply.deleted_faces)

    @app.get("/api/v1/galleries/{gallery}/subjects", dependencies=[read], tags=["subjects"])
    async def list_subjects(
        request: Request,
        gallery: str,
        page_size: Annotated[int, Query(ge=1, le=1000)] = 100,
        page_token: str = "",
    ) -> schemas.SubjectList:
        reply = await call(
            stub().ListSubjects(
                score_pb2.ListSubjectsRequest(
                    gallery=gallery, page_size=page_size, page_token=page_token
                ),
                metadata=rid_metadata(request),
                **kw,
            )
        )
        return schemas.SubjectList(
            subjects=[schemas.subject(s) for s in reply.subjects],
            next_page_token=reply.next_page_token or None,
        )

    @app.get(
        "/api/v1/galleries/{gallery}/subjects/{subject_id}", dependencies=[read], tags=["subjects"]
    )
    async def get_subject(request: Request, gallery: str, subject_id: str) -> schemas.Subject:
        reply = await call(
            stub().GetSubject(
                score_pb2.GetSubjectRequest(gallery=gallery, subject_id=subject_id),
                metadata=rid_metadata(request),
                **kw,
            )
        )
        return schemas.subject(reply, with_faces=True)

    @app.delete(
        "/api/v1/galleries/{gallery}/subjects/{subject_id}", dependencies=[write], tags=["subjects"]
    )
    async def delete_subject(request: Request, gallery: str, subject_id: str) -> schemas.Deleted:
        reply = await call(
            stub().DeleteSubject(
                score_pb2.DeleteSubjectRequest(gallery=gallery, subject_id=subject_id),
                metadata=rid_metadata(request),
                **kw,
            )
        )
        return schemas.Deleted(deleted_faces=reply.deleted_faces)

    @app.post(
        "/api/v1/galleries/{gallery}/subjects/{subject_id}/faces",
        status_code=201,
        dependencies=[write],
        tags=["subjects"],
        openapi_extra=photo_body_docs(schemas.EnrollJson, ("image",)),
    )
    async def enroll(request: Request, gallery: str, subject_id: str) -> schemas.EnrollResponse:
        photos, body = await read_photo_request(
            request, settings.max_upload_bytes, schemas.EnrollJson, ("image",)
        )
        gates = score_pb2.QualityGates(
            **{
                k: v
                for k in ("min_face_size", "min_sharpness", "min_detection_score", "max_abs_yaw")
                if (v := getattr(body, k)) is not None
            }
        )
        enroll_request = score_pb2.EnrollRequest(
            gallery=gallery,
            subject_id=subject_id,
            image=photos["image"],
            gates=gates,
            metadata_json=json.dumps(body.metadata) if body.metadata is not None else "",
            face_selection=(
                score_pb2.FACE_SELECTION_LARGEST
                if body.face_selection == "largest"
                else score_pb2.FACE_SELECTION_REQUIRE_SINGLE
            ),
        )
        if body.face_index is not None:
            enroll_request.face_index = body.face_index
        reply = await call(stub().Enroll(enroll_request, metadata=rid_metadata(request), **kw))
        return schemas.EnrollResponse(
            face_id=reply.face_id,
            created=reply.created,
            face=schemas.face(reply.face),
            image=schemas.image(reply.image),
        )

    @app.delete(
        "/api/v1/galleries/{gallery}/faces/{face_id}",
        status_code=204,
        dependencies=[write],
        tags=["subjects"],
    )
    async def delete_face(request: Request, gallery: str, face_id: str) -> Response:
        await call(
            stub().DeleteFace(
                score_pb2.DeleteFaceRequest(gallery=gallery, face_id=face_id),
                metadata=rid_metadata(request),
                **kw,
            )
        )
        return Response(status_code=204)

    @app.post(
        "/api/v1/galleries/{gallery}/identify",
        dependencies=[read],
        tags=["faces"],
        openapi_extra=photo_body_docs(schemas.IdentifyJson, ("image",)),
    )
    async def identify(request: Request, gallery: str) -> schemas.IdentifyResponse:
        photos, body = await read_photo_request(
            request, settings.max_upload_bytes, schemas.IdentifyJson, ("image",)
        )
        identify_request = score_pb2.IdentifyRequest(
            gallery=gallery, image=photos["image"], top_k=body.top_k or 0
        )
        if body.threshold is not None:
            identify_request.threshold = body.threshold
        reply = await call(stub().Identify(identify_request, metadata=rid_metadata(request), **kw))
        return schemas.IdentifyResponse(
            image=schemas.image(reply.image),
            threshold=reply.threshold,
            faces=[
                schemas.IdentifiedFace(
                    face=schemas.face(f.face),
                    subject_id=f.subject_id or None,
                    unknown=f.unknown,
                    candidates=[
                        schemas.Candidate(
                            subject_id=c.subject_id,
                            similarity=c.similarity,
                            face_id=c.face_id,
                            match=c.match,
                        )
                        for c in f.candidates
                    ],
                )
                for f in reply.faces
            ],
        )

    @app.post(
        "/api/v1/verify",
        dependencies=[read],
        tags=["faces"],
        openapi_extra=photo_body_docs(schemas.VerifyJson, ("image", "other_image")),
    )
    async def verify(request: Request) -> schemas.VerifyResponse:
        photos, body = await read_photo_request(
            request, settings.max_upload_bytes, schemas.VerifyJson, ("image", "other_image")
        )
        verify_request = score_pb2.VerifyRequest(image=photos["image"])
        if "other_image" in photos:
            verify_request.other_image = photos["other_image"]
        elif body.gallery and body.subject_id:
            verify_request.subject.CopyFrom(
                score_pb2.SubjectRef(gallery=body.gallery, subject_id=body.subject_id)
            )
        else:
            raise Problem(
                422,
                "validation_error",
                "send other_image, or gallery and subject_id",
                {"errors": [{"field": "other_image", "message": "required"}]},
            )
        if body.threshold is not None:
            verify_request.threshold = body.threshold
        reply = await call(stub().Verify(verify_request, metadata=rid_metadata(request), **kw))
        return schemas.VerifyResponse(
            similarity=reply.similarity,
            match=reply.match,
            threshold=reply.threshold,
            face=schemas.face(reply.face),
            other_face=schemas.face(reply.other_face) if reply.HasField("other_face") else None,
            matched_face_id=reply.matched_face_id or None,
        )

    @app.get("/api/health", tags=["service"], responses={503: {"model": schemas.HealthResponse}})
    async def health(request: Request, response: Response) -> schemas.HealthResponse:
        try:
            report = await stub().GetHealth(score_pb2.GetHealthRequest(), timeout=3)
            states = {
                d.name: schemas.DependencyState(ok=d.ok, detail=d.detail)
                for d in report.dependencies
            }
            ok = report.ok
        except grpc.aio.AioRpcError as error:
            states = {"score": schemas.DependencyState(ok=False, detail=error.code().name)}
            ok = False
        if not ok:
            response.status_code = 503
        return schemas.HealthResponse(status="ok" if ok else "degraded", dependencies=states)

    @app.get("/api/docs", include_in_schema=False)
    async def docs() -> Response:
        # Swagger UI 5 (it reads OpenAPI 3.1) from the installed fastapi-offline package:
        # the docs work offline, with no CDN.
        return get_swagger_ui_html(
            openapi_url="/api/openapi.json",
            title="facescore API",
            swagger_js_url="/api/docs-static/swagger-ui-bundle.js",
            swagger_css_url="/api/docs-static/swagger-ui.css",
            swagger_favicon_url="/api/docs-static/favicon.png",
        )

    docs_static = importlib.resources.files("fastapi_offline") / "static"
    app.mount("/api/docs-static", StaticFiles(directory=str(docs_static)), name="docs-static")
    app.mount("/metrics", make_asgi_app())
    if settings.web_dir.is_dir():
        app.mount("/", StaticFiles(directory=settings.web_dir, html=True), name="web")
    return app
