"""Checks of request fields: names, metadata, quality gates."""

from __future__ import annotations

import json
import re

from facescore.v1 import common_pb2, score_pb2
from services.common.errors import FaceScoreError, Reason
from services.score.settings import ScoreSettings

_GALLERY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_SUBJECT_ID = 128


def gallery_name(name: str) -> str:
    if not _GALLERY.fullmatch(name):
        raise FaceScoreError(
            Reason.INVALID_ARGUMENT,
            "gallery must be 1-64 characters: letters, digits, '_', '.', '-', "
            "starting with a letter or digit",
            metadata={"field": "gallery"},
        )
    return name


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
    """The metadata as canonical JSON ("" when none); it must be a JSON object."""
    if not value:
        return ""
    if len(value.encode()) > max_bytes:
        raise FaceScoreError(
            Reason.INVALID_METADATA,
            f"metadata is larger than {max_bytes} bytes",
            metadata={"limit": str(max_bytes)},
        )
    try:
        parsed = json.loads(value)
    except ValueError as error:
        raise FaceScoreError(Reason.INVALID_METADATA, f"metadata is not JSON: {error}") from None
    if not isinstance(parsed, dict):
        raise FaceScoreError(Reason.INVALID_METADATA, "metadata must be a JSON object")
    return json.dumps(parsed, sort_keys=True, separators=(",", ":"))


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
