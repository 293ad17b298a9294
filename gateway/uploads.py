"""Photos in requests: multipart uploads or base64 in JSON, size-limited before parsing."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import AsyncGenerator
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from gateway.problems import Problem

M = TypeVar("M", bound=BaseModel)


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Problem(
            413, "request_too_large", f"the request is larger than {limit} bytes", {"limit": limit}
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Problem(
                413,
                "request_too_large",
                f"the request is larger than {limit} bytes",
                {"limit": limit},
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def _once(body: bytes) -> AsyncGenerator[bytes, None]:
    yield body


def _decode_base64(name: str, value: object) -> bytes:
    if not isinstance(value, str):
        raise Problem(
            422,
            "validation_error",
            f"{name} must be a base64 string",
            {"errors": [{"field": name, "message": "expected a base64 string"}]},
        )
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise Problem(
            400, "invalid_argument", f"{name} is not valid base64", {"field": name}
        ) from None


async def read_photo_request(
    request: Request, limit: int, model: type[M], files: tuple[str, ...]
) -> tuple[dict[str, bytes], M]:
    """The photos named in `files` and the other fields, validated by `model`.

    Multipart: files as parts, other fields as text parts (JSON objects as JSON text).
    JSON: each photo as `<name>_base64`, other fields as JSON values.
    """
    body = await read_body(request, limit)
    content_type = request.headers.get("content-type", "")
    photos: dict[str, bytes] = {}
    fields: dict[str, Any] = {}
    if content_type.startswith("multipart/form-data"):
        try:
            form = await MultiPartParser(request.headers, _once(body), max_part_size=limit).parse()
        except MultiPartException as error:
            raise Problem(400, "invalid_argument", f"malformed multipart body: {error}") from None
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key in files:
                    photos[key] = await value.read()
            elif key in files:
                photos[key] = value.encode()
            else:
                fields[key] = value
        if "metadata" in fields:
            try:
                fields["metadata"] = json.loads(fields["metadata"])
            except ValueError:
                raise Problem(400, "invalid_metadata", "metadata is not JSON") from None
        # The photos came as parts; the model's base64 fields only describe the JSON form.
        fields.update({f"{name}_base64": "" for name in files})
    elif content_type.startswith("application/json"):
        try:
            data = json.loads(body)
        except ValueError:
            raise Problem(400, "invalid_argument", "the body is not JSON") from None
        if not isinstance(data, dict):
            raise Problem(400, "invalid_argument", "the body must be a JSON object")
        for name in files:
            if data.get(f"{name}_base64") is not None:
                photos[name] = _decode_base64(f"{name}_base64", data[f"{name}_base64"])
        fields = data
    else:
        raise Problem(415, "unsupported_media_type", "send multipart/form-data or application/json")
    if fields.get("metadata") is not None and not isinstance(fields["metadata"], dict):
        raise Problem(400, "invalid_metadata", "metadata must be a JSON object")
    if files[0] not in photos:
        raise Problem(
            422,
            "validation_error",
            f"the photo `{files[0]}` is missing",
            {"errors": [{"field": files[0], "message": "required"}]},
        )
    try:
        parsed = model.model_validate(fields)
    except ValidationError as error:
        errors = [
            {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]}
            for e in error.errors()
        ]
        raise Problem(
            422, "validation_error", "the request is not valid", {"errors": errors}
        ) from None
    return photos, parsed


def photo_body_docs(model: type[BaseModel], files: tuple[str, ...]) -> dict[str, Any]:
    """openapi_extra documenting both encodings of a photo request."""
    json_schema = model.model_json_schema()
    multipart: dict[str, Any] = {
        "type": "object",
        "properties": {
            **{name: {"type": "string", "format": "binary"} for name in files},
            **{
                k: v
                for k, v in json_schema.get("properties", {}).items()
                if not k.endswith("_base64")
            },
        },
        "required": [files[0]],
    }
    if "metadata" in multipart["properties"]:
        multipart["properties"]["metadata"] = {
            "type": "string",
            "description": "A JSON object, as text.",
        }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": multipart},
                "application/json": {"schema": json_schema},
            },
        }
    }
