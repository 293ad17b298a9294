"""The detect service over gRPC on loopback, with the real SCRFD model and sample photos."""

from __future__ import annotations

import io
import json
import urllib.request
from collections.abc import Callable

import cv2
import grpc
import numpy as np
import pytest
from insightface.model_zoo.scrfd import SCRFD
from PIL import Image

from facescore.v1 import common_pb2, detect_pb2, detect_pb2_grpc
from services.common.errors import reason_of
from services.common.models import file_sha256, select_model, vectron_file
from services.common.settings import DEFAULT_MODEL_DIR
from services.detect.server import DetectService
from services.detect.settings import DetectSettings
from tests.conftest import ServiceProcess
from tests.pngs import dense_bomb

EXPECTED_FACES = {"t1.jpg": 6, "players.jpg": 22, "gdp.jpg": 5, "yaoming.jpg": 1}


def detect(service: ServiceProcess, image: bytes, **options: object) -> detect_pb2.DetectResponse:
    with grpc.insecure_channel(service.address) as channel:
        stub = detect_pb2_grpc.DetectServiceStub(channel)
        return stub.Detect(detect_pb2.DetectRequest(image=image, **options), timeout=30)


def boxes_of(response: detect_pb2.DetectResponse) -> np.ndarray:
    return np.array([[f.box.x1, f.box.y1, f.box.x2, f.box.y2] for f in response.faces])


@pytest.mark.parametrize(("name", "count"), EXPECTED_FACES.items())
def test_counts_faces_in_sample_photos(
    detect_service: ServiceProcess, photo: Callable[[str], bytes], name: str, count: int
) -> None:
    response = detect(detect_service, photo(name))
    assert len(response.faces) == count
    assert response.image.format == "JPEG"
    assert response.model.role == "detector"


def test_faces_are_largest_first_with_landmarks_and_quality(
    detect_service: ServiceProcess, photo: Callable[[str], bytes]
) -> None:
    response = detect(detect_service, photo("players.jpg"))
    areas = [(f.box.x2 - f.box.x1) * (f.box.y2 - f.box.y1) for f in response.faces]
    assert areas == sorted(areas, reverse=True)
    for face in response.faces:
        assert len(face.landmarks) == 5
        box = face.box
        assert all(box.x1 <= p.x <= box.x2 and box.y1 <= p.y <= box.y2 for p in face.landmarks)
        q = face.quality
        assert q.face_size_px == pytest.approx(min(box.x2 - box.x1, box.y2 - box.y1), rel=1e-5)
        assert 0 < q.inter_eye_px < q.face_size_px
        assert q.sharpness > 0
        assert 0 < q.brightness < 1
        assert abs(q.roll) < 45 and abs(q.yaw) < 90 and abs(q.pitch) < 90
        assert not face.HasField("crop")


def test_same_input_gives_same_output(
    detect_service: ServiceProcess, photo: Callable[[str], bytes]
) -> None:
    first = detect(detect_service, photo("t1.jpg"), include_crops=True)
    second = detect(detect_service, photo("t1.jpg"), include_crops=True)
    assert first == second


def test_aligned_crops_on_request(
    detect_service: ServiceProcess, photo: Callable[[str], bytes]
) -> None:
    response = detect(detect_service, photo("t1.jpg"), include_crops=True)
    for face in response.faces:
        assert (face.crop.width, face.crop.height) == (112, 112)
        assert len(face.crop.bgr) == 112 * 112 * 3


def test_matches_plain_insightface_within_one_pixel(
    detect_service: ServiceProcess, photo: Callable[[str], bytes]
) -> None:
    reference = SCRFD(model_file=str(vectron_file("scrfd_500m_bnkps.onnx")))
    reference.prepare(0, input_size=(640, 640))
    for name in EXPECTED_FACES:
        data = photo(name)
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        ref_boxes, _ = reference.detect(image, input_size=(640, 640))
        ours = boxes_of(detect(detect_service, data))
        assert len(ours) == len(ref_boxes)
        for box in ref_boxes[:, :4]:
            assert np.abs(ours - box).max(axis=1).min() <= 1.0, name


def test_exif_rotated_photo_gives_the_same_faces(
    detect_service: ServiceProcess, photo: Callable[[str], bytes]
) -> None:
    original = Image.open(io.BytesIO(photo("t1.jpg")))
    # Stored rotated, with EXIF orientation 6 telling viewers to turn it back upright.
    stored = original.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    upright = detect(detect_service, photo("t1.jpg"))
    rotated = detect(detect_service, buffer.getvalue())
    assert (rotated.image.width, rotated.image.height) == original.size
    assert len(rotated.faces) == 6
    assert np.abs(boxes_of(rotated) - boxes_of(upright)).max() < 4


def test_request_overrides(detect_service: ServiceProcess, photo: Callable[[str], bytes]) -> None:
    everyone = detect(detect_service, photo("players.jpg"))
    three = detect(detect_service, photo("players.jpg"), max_faces=3)
    assert list(three.faces) == list(everyone.faces[:3])
    cutoff = everyone.faces[5].quality.face_size_px + 0.01
    big = detect(detect_service, photo("players.jpg"), min_face_size=int(np.ceil(cutoff)))
    assert 0 < len(big.faces) <= 5
    strict = detect(detect_service, photo("players.jpg"), score_threshold=0.8)
    assert len(strict.faces) < len(everyone.faces)
    assert all(f.score >= 0.8 for f in strict.faces)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"score_threshold": 1.5}, "score_threshold"),
        ({"max_faces": 0}, "max_faces"),
        ({"min_face_size": -1}, "min_face_size"),
    ],
)
def test_bad_overrides_are_invalid_argument(
    detect_service: ServiceProcess,
    photo: Callable[[str], bytes],
    options: dict[str, object],
    field: str,
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        detect(detect_service, photo("yaoming.jpg"), **options)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(raised.value) == "invalid_argument"
    assert field in (raised.value.details() or "")


def _peak_rss_kib(service: ServiceProcess) -> int:
    assert service.process is not None
    with open(f"/proc/{service.process.pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "empty_image"),
        (b"hello, this is not a photo at all" * 10, "unsupported_image_format"),
        (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n" * 4, "unsupported_image_format"),
    ],
)
def test_rejections_carry_their_reason(
    detect_service: ServiceProcess, payload: bytes, reason: str
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        detect(detect_service, payload)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(raised.value) == reason


def test_truncated_photo_is_corrupt(
    detect_service: ServiceProcess, photo: Callable[[str], bytes]
) -> None:
    data = photo("t1.jpg")
    with pytest.raises(grpc.RpcError) as raised:
        detect(detect_service, data[: len(data) // 2])
    assert reason_of(raised.value) == "corrupt_image"


def test_pixel_bomb_is_refused_without_allocating(detect_service: ServiceProcess) -> None:
    before = _peak_rss_kib(detect_service)
    with pytest.raises(grpc.RpcError) as raised:
        detect(detect_service, dense_bomb(20_000))  # 1.6 GB once decoded to BGR
    assert reason_of(raised.value) == "image_too_many_pixels"
    assert _peak_rss_kib(detect_service) - before < 100 * 1024


def test_configured_limits_travel_as_reasons(
    start_service: Callable[..., ServiceProcess], photo: Callable[[str], bytes]
) -> None:
    service = start_service(
        "detect", DETECT_MAX_IMAGE_BYTES="50000", DETECT_MAX_IMAGE_PIXELS="60000"
    )
    with pytest.raises(grpc.RpcError) as too_big:
        detect(service, photo("t1.jpg"))
    assert reason_of(too_big.value) == "image_too_large"
    with pytest.raises(grpc.RpcError) as too_many:
        detect(service, photo("yaoming.jpg"))  # 21 kB, but 233x287 = 66,871 pixels
    assert reason_of(too_many.value) == "image_too_many_pixels"


def test_model_identity_in_rpc_and_health_details(detect_service: ServiceProcess) -> None:
    with grpc.insecure_channel(detect_service.address) as channel:
        info = detect_pb2_grpc.DetectServiceStub(channel).GetModelInfo(
            common_pb2.GetModelInfoRequest(), timeout=5
        )
    spec = select_model(DEFAULT_MODEL_DIR, "detector")
    # The identity is the manifest's, and the file served is the one the manifest names.
    assert (info.name, info.sha256) == (spec.name, spec.sha256)
    assert file_sha256(spec.path(DEFAULT_MODEL_DIR)) == spec.sha256
    assert info.providers == ["CPUExecutionProvider"]
    with urllib.request.urlopen(detect_service.metrics_url + "/health", timeout=5) as reply:
        details = json.load(reply)
    assert details["status"] == "SERVING"
    assert details["model"]["sha256"] == info.sha256
    assert details["providers"] == ["CPUExecutionProvider"]


def test_opencv_runs_on_the_threads_configured() -> None:
    """One OpenCV thread by default (each photo's resizes and crops on its worker's thread);
    0 gives OpenCV's own default back."""
    before = cv2.getNumThreads()
    cv2.setNumThreads(-1)
    default = cv2.getNumThreads()
    try:
        for configured, expected in ((None, 1), (3, 3), (0, default)):
            cv2.setNumThreads(5)
            settings = (
                DetectSettings()
                if configured is None
                else DetectSettings(opencv_threads=configured)
            )
            DetectService(settings)
            assert cv2.getNumThreads() == expected
    finally:
        cv2.setNumThreads(before)
