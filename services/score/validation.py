"""Checks of request fields: names, metadata, quality gates."""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import uuid
from typing import Any

from facescore.v1 import common_pb2, score_pb2
from services.common.errors import FaceScoreError, Reason
from services.common.json_values import MAX_METADATA_DEPTH, json_issue, unique_keys
from services.score.settings import ScoreSettings

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_SUBJECT_ID = 128
_TOKEN_SEP = "\x1f"


def _plain_name(name: str, what: str, field: str) -> str:
    """1-64 letters, digits, '_', '.', '-', starting with a letter or digit: safe as a
    payload value and as one path segment."""
    if not _NAME.fullmatch(name):
        raise FaceScoreError(
            Reason.INVALID_ARGUMENT,
            f"{what} must be 1-64 characters: letters, digits, '_', '.', '-', "
            "starting with a letter or digit",
            metadata={"field": field},
        )
    return name


def gallery_name(name: str) -> str:
    return _plain_name(name, "gallery", "gallery")


def snapshot_name(name: str) -> str:
    """A folder name under DATA_DIR/snapshots: one path segment, nothing hidden."""
    return _plain_name(name, "a snapshot name", "name")


def subject_id(value: str) -> str:
    """Any printable id that can also be one segment of a REST path.

    No '/', and not '.' or '..': URL normalisation (browsers, proxies) would make such an
    id address another resource, so a subject stored under it could not be read or deleted
    through the gateway.
    """
    if (
        not value
        or len(value) > MAX_SUBJECT_ID
        or not value.isprintable()
        or value != value.strip()
        or "/" in value
        or value in (".", "..")
    ):
        raise FaceScoreError(
            Reason.INVALID_ARGUMENT,
            f"subject_id must be 1-{MAX_SUBJECT_ID} printable characters, no surrounding "
            "spaces, no '/', and not '.' or '..'",
            metadata={"field": "subject_id"},
        )
    return value


def metadata_json(value: str, max_bytes: int) -> str:
    """The metadata as canonical JSON ("" when none); it must be a JSON object.

    Refused, since they could not be read back as JSON by every client: duplicate keys (one
    value would be dropped silently), NaN and infinities, lone surrogates (not UTF-8), and
    nesting deeper than MAX_METADATA_DEPTH.
    """
    if not value:
        return ""
    if len(value.encode()) > max_bytes:
        raise FaceScoreError(
            Reason.INVALID_METADATA,
            f"metadata is larger than {max_bytes} bytes",
            metadata={"limit": str(max_bytes)},
        )
    try:
        parsed = json.loads(
            value,
            object_pairs_hook=unique_keys,
            parse_constant=_no_constant,
            parse_float=_finite_float,
        )
    except RecursionError:
        raise _too_deep() from None
    except ValueError as error:
        raise FaceScoreError(Reason.INVALID_METADATA, f"metadata is not JSON: {error}") from None
    if not isinstance(parsed, dict):
        raise FaceScoreError(Reason.INVALID_METADATA, "metadata must be a JSON object")
    issue = json_issue(parsed)
    if issue == "too_deep":
        raise _too_deep()
    if issue == "lone_surrogate":
        raise FaceScoreError(
            Reason.INVALID_METADATA, "metadata holds a lone surrogate (\\ud800-\\udfff)"
        )
    return json.dumps(parsed, sort_keys=True, separators=(",", ":"))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text[:20]} is too large for a JSON number")
    return number


def _too_deep() -> FaceScoreError:
    return FaceScoreError(
        Reason.INVALID_METADATA,
        f"metadata is nested deeper than {MAX_METADATA_DEPTH} levels",
        metadata={"limit": str(MAX_METADATA_DEPTH)},
    )


def threshold(request_value: float | None, default: float) -> float:
    if request_value is None:
        return default
    if not -1.0 <= request_value <= 1.0:
        raise FaceScoreError(
            Reason.INVALID_ARGUMENT,
            "threshold is a cosine similarity between -1 and 1",
            metadata={"field": "threshold"},
        )
    return request_value


def face_selection(value: int) -> int:
    if value not in score_pb2.FaceSelection.values():
        raise FaceScoreError(
            Reason.INVALID_ARGUMENT,
            f"face_selection {value} is not one of {', '.join(score_pb2.FaceSelection.keys())}",
            metadata={"field": "face_selection"},
        )
    return value


def page_token(token: str, gallery: str) -> str | None:
    """The Qdrant offset inside a next_page_token this service gave for `gallery`."""
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        owner, _, offset = (
            base64.urlsafe_b64decode(padded.encode("ascii")).decode().partition(_TOKEN_SEP)
        )
        offset = str(uuid.UUID(offset))
    except (ValueError, binascii.Error, UnicodeError):
        raise FaceScoreError(
            Reason.INVALID_ARGUMENT,
            "page_token is not a next_page_token of ListSubjects",
            metadata={"field": "page_token"},
        ) from None
    if owner != gallery:
        raise FaceScoreError(
            Reason.INVALID_ARGUMENT,
            "page_token belongs to another gallery's listing",
            metadata={"field": "page_token"},
        )
    return offset


def next_page_token(offset: str | None, gallery: str) -> str:
    """An opaque token: the gallery it lists and the offset to go on from."""
    if offset is None:
        return ""
    raw = f"{gallery}{_TOKEN_SEP}{offset}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def quality_gates(gates: score_pb2.QualityGates) -> score_pb2.QualityGates:
    """Gates set in the request must be finite numbers >= 0 (a NaN gate would pass any face)."""
    for field, limit in gates.ListFields():
        if not (math.isfinite(limit) and limit >= 0):
            raise FaceScoreError(
                Reason.INVALID_ARGUMENT,
                f"gates.{field.name} must be a finite number >= 0",
                metadata={"field": f"gates.{field.name}"},
            )
    return gates


def check_gates(
    face: common_pb2.FaceQuality,
    score: float,
    gates: score_pb2.QualityGates,
    settings: ScoreSettings,
) -> None:
    """Raise face_quality_too_low naming the first gate the face fails."""
    limits = {
        "min_face_size": gates.min_face_size
        if gates.HasField("min_face_size")
        else settings.min_face_size,
        "min_sharpness": gates.min_sharpness
        if gates.HasField("min_sharpness")
        else settings.min_sharpness,
        "min_detection_score": (
            gates.min_detection_score
            if gates.HasField("min_detection_score")
            else settings.min_detection_score
        ),
        "max_abs_yaw": gates.max_abs_yaw if gates.HasField("max_abs_yaw") else settings.max_abs_yaw,
    }
    values = {
        "min_face_size": face.face_size_px,
        "min_sharpness": face.sharpness,
        "min_detection_score": score,
        "max_abs_yaw": abs(face.yaw),
    }
    for gate, limit in limits.items():
        value = values[gate]
        failed = value > limit if gate.startswith("max_") else value < limit
        if failed:
            raise FaceScoreError(
                Reason.FACE_QUALITY_TOO_LOW,
                f"face fails the {gate} gate: {value:.3g} against {limit:.3g}",
                metadata={"gate": gate, "value": f"{value:.6g}", "limit": f"{limit:.6g}"},
            )
