"""Photos in requests: multipart uploads or base64 in JSON, size-limited before parsing."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import AsyncGenerator
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from gateway.problems import Problem
from services.common.json_values import unique_keys

M = TypeVar("M", bound=BaseModel)
_WHITESPACE = re.compile(r"\s+")
_DATA_URL = re.compile(r"data:[^,;]*(;[^,;]*)*;base64,", re.IGNORECASE)


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


class _RawPartParser(MultiPartParser):
    """Keeps the bytes of text parts (those without a filename) in `texts`.

    Starlette decodes them as UTF-8, falling back to Latin-1 without a word: a photo sent as
    a text part (`curl -F image=<photo.jpg`) would be mangled, and metadata that is not
    UTF-8 silently changed.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.texts: list[tuple[str, bytes]] = []

    def on_part_end(self) -> None:
        part = self._current_part
        if part.file is None:
            self.texts.append((part.field_name, bytes(part.data)))
        else:
            super().on_part_end()


def _decode_base64(name: str, value: object) -> bytes:
    """Standard or URL-safe alphabet, padding optional, whitespace and line breaks ignored,
    and a `data:<type>;base64,` prefix allowed (what a browser's FileReader gives)."""
    if not isinstance(value, str):
        raise Problem(
            422,
            "validation_error",
            f"{name} must be a base64 string",
            {"errors": [{"field": name, "message": "expected a base64 string"}]},
        )
    text = _WHITESPACE.sub("", value)
    if prefix := _DATA_URL.match(text):
        text = text[prefix.end() :]
    if "-" in text or "_" in text:
        text = text.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise Problem(
            400, "invalid_argument", f"{name} is not valid base64", {"field": name}
        ) from None


def _duplicate(key: str) -> Problem:
    return Problem(
        422,
        "validation_error",
        f"the field `{key}` is given more than once",
        {"errors": [{"field": key, "message": "given more than once"}]},
    )


def _json(text: str | bytes, code: str, detail: str) -> Any:
    """Parsed JSON; a key given twice is refused (one of its values would be lost)."""
    try:
        return json.loads(text, object_pairs_hook=unique_keys)
    except RecursionError:
        raise Problem(400, code, f"{detail}: nested too deeply") from None
    except ValueError as error:
        raise Problem(400, code, f"{detail}: {error}") from None


async def _read_multipart(
    request: Request, body: bytes, limit: int, files: tuple[str, ...]
) -> tuple[dict[str, bytes], dict[str, Any]]:
    parser = _RawPartParser(request.headers, _once(body), max_part_size=limit)
    try:
        form = await parser.parse()
    except MultiPartException as error:
        raise Problem(400, "invalid_argument", f"malformed multipart body: {error}") from None
    photos: dict[str, bytes] = {}
    fields: dict[str, Any] = {}
    for key, upload in form.multi_items():
        if key in photos:
            raise _duplicate(key)
        if isinstance(upload, UploadFile) and key in files:
            photos[key] = await upload.read()
    for key, data in parser.texts:
        if key in photos or key in fields:
            raise _duplicate(key)
        if key in files:
            photos[key] = data
            continue
        try:
            fields[key] = data.decode("utf-8")
        except UnicodeDecodeError:
            code = "invalid_metadata" if key == "metadata" else "invalid_argument"
            raise Problem(
                400, code, f"the field `{key}` is not UTF-8 text", {"field": key}
            ) from None
    if "metadata" in fields:
        fields["metadata"] = _json(fields["metadata"], "invalid_metadata", "metadata is not JSON")
    # The photos came as parts; the model's base64 fields only describe the JSON form.
    fields.update({f"{name}_base64": "" for name in files})
    return photos, fields


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
        photos, fields = await _read_multipart(request, body, limit, files)
        strict = False  # text parts: numbers arrive as text
    elif content_type.startswith("application/json"):
        data = _json(body, "invalid_argument", "the body is not JSON")
        if not isinstance(data, dict):
            raise Problem(400, "invalid_argument", "the body must be a JSON object")
        for name in files:
            if data.get(f"{name}_base64") is not None:
                photos[name] = _decode_base64(f"{name}_base64", data[f"{name}_base64"])
        fields = data
        strict = True  # JSON has types: "0.5" is not a number, true is not 1
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
        parsed = model.model_validate(fields, strict=strict)
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
