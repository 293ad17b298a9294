"""The detector in process: one session, made by the shared factory, runs detection."""

from __future__ import annotations

import functools
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from insightface.model_zoo.scrfd import SCRFD

from services.common.models import insightface_image, vectron_file
from services.detect import detector as detector_module
from services.detect.detector import FaceDetector, input_blob, input_shape, photo_shaped
from services.detect.settings import DetectSettings


def test_scrfd_runs_the_factorys_session_and_no_other(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[ort.InferenceSession] = []
    real_init = ort.InferenceSession.__init__

    def counting_init(self: ort.InferenceSession, *args: Any, **kwargs: Any) -> None:
        opened.append(self)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(ort.InferenceSession, "__init__", counting_init)
    detector = FaceDetector(DetectSettings())
    detector.load()
    detector.warm_up()
    faces = detector.detect(cv2.imread(str(vectron_file("players.jpg"))), 0.5)
    assert len(faces) == 22
    # insightface's SCRFD would open a second, fixed-shape session past the factory.
    assert opened == [detector.session]
    assert detector.session._enable_fallback is False


@pytest.mark.parametrize(
    ("size", "shape"),
    [
        ((3024, 4032), (640, 480)),  # a 4:3 phone photo
        ((4032, 3024), (480, 640)),  # the same, upright
        ((1080, 1920), (640, 384)),  # 16:9: 360 rounded up to the stride
        ((500, 500), (640, 640)),
        ((1, 5000), (640, 32)),  # a strip keeps one stride
    ],
)
def test_the_input_follows_the_photos_proportions(
    size: tuple[int, int], shape: tuple[int, int]
) -> None:
    assert input_shape(size, 640) == shape


def test_the_cpu_runs_a_photo_at_its_proportions_and_finds_the_squares_faces(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A photo runs at its proportions (t1 at 640x448), not padded to 640x640: the same
    faces, their boxes and landmarks within a pixel."""
    detector = FaceDetector(DetectSettings())
    detector.load()
    square = FaceDetector(DetectSettings())
    square.load()
    square._photo_shaped = False  # the square input, as GPU providers run it
    shapes: list[tuple[int, ...]] = []
    real_run = detector.session.run

    def spy(outputs: Any, feeds: dict[str, np.ndarray], *args: Any) -> Any:
        shapes.append(next(iter(feeds.values())).shape)
        return real_run(outputs, feeds, *args)

    monkeypatch.setattr(detector.session, "run", spy)
    photo = cv2.imread(str(insightface_image("t1.jpg")))  # 1280x886, six faces
    # The photo, and its left part upright (600x886, three of the faces).
    for image, faces in ((photo, 6), (np.ascontiguousarray(photo[:, :600]), 3)):
        shapes.clear()
        ours, theirs = detector.detect(image, 0.5), square.detect(image, 0.5)
        expected = input_shape(image.shape[:2], 640)
        assert shapes == [(1, 3, expected[1], expected[0])] and expected != (640, 640)
        assert len(ours) == len(theirs) == faces
        for mine, reference in zip(ours, theirs, strict=True):
            # Within a pixel: a face near the padded edge sees the model's own zero padding
            # where the square showed it black pixels.
            assert np.abs(mine.box - reference.box).max() < 1.0
            assert np.abs(mine.landmarks - reference.landmarks).max() < 1.0
            assert abs(mine.score - reference.score) < 0.01


def test_only_the_cpu_runs_photos_at_their_proportions() -> None:
    """No GPU here: the providers are named as a CUDA or TensorRT session reports them."""
    dynamic: list[int | str | None] = ["?", 3, "?", "?"]
    assert photo_shaped(["CPUExecutionProvider"], dynamic)
    assert not photo_shaped(["CUDAExecutionProvider", "CPUExecutionProvider"], dynamic)
    assert not photo_shaped(
        ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"], dynamic
    )
    # A model file exported at a fixed size runs at that size.
    assert not photo_shaped(["CPUExecutionProvider"], [1, 3, 640, 640])
    # The shipped detector, on this machine's CPU.
    detector = FaceDetector(DetectSettings())
    detector.load()
    assert photo_shaped(detector.providers, detector.session.get_inputs()[0].shape)


@pytest.mark.parametrize(
    "shape",
    [(640, 640), (608, 640), (640, 608), (480, 640), (640, 384), (37, 53)],
)
def test_the_input_blob_is_opencvs_to_the_bit(shape: tuple[int, int]) -> None:
    image = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), np.uint8)
    expected = cv2.dnn.blobFromImage(image, 1 / 128, shape[::-1], (127.5,) * 3, swapRB=True)
    blob = input_blob(image, 127.5, 128.0)
    assert blob.dtype == np.float32 and blob.flags.c_contiguous
    np.testing.assert_array_equal(blob, expected)


def test_insightface_builds_the_detectors_input_with_input_blob(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The detector's input comes through insightface's `_prepare_input_blob` hook: a version
    that stopped calling it would fail here, not run slower unseen. The faces are the ones
    insightface's own blob gives, to the bit."""
    detector = FaceDetector(DetectSettings())
    detector.load()
    shapes: list[tuple[int, ...]] = []

    def counted(image: np.ndarray, mean: float, std: float) -> np.ndarray:
        shapes.append(image.shape)
        return input_blob(image, mean, std)

    monkeypatch.setattr(detector_module, "input_blob", counted)
    photo = cv2.imread(str(insightface_image("t1.jpg")))
    ours = detector.detect(photo, 0.5)
    assert shapes == [(448, 640, 3)]
    model = detector._model
    monkeypatch.setattr(
        model, "_prepare_input_blob", functools.partial(SCRFD._prepare_input_blob, model)
    )
    theirs = detector.detect(photo, 0.5)
    assert len(shapes) == 1 and len(ours) == len(theirs) == 6
    for mine, reference in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(mine.box, reference.box)
        np.testing.assert_array_equal(mine.landmarks, reference.landmarks)
        assert mine.score == reference.score


@pytest.mark.parametrize(
    ("threshold", "at_least", "at_most"), [(0.5, 6, 200), (0.02, 200, 20_000), (1.01, 0, 0)]
)
@pytest.mark.parametrize("photo", ["t1.jpg", "players.jpg"])
def test_the_detectors_outputs_are_decoded_as_insightface_decodes_them(
    photo: str, threshold: float, at_least: int, at_most: int
) -> None:
    """`_SCRFD.forward` decodes only the anchors above the threshold; every stride's scores,
    boxes and landmarks equal the library's, which decodes every anchor, to the bit: a few
    anchors kept, hundreds, and none. Each model builds its own anchor centers."""
    detector = FaceDetector(DetectSettings())
    detector.load()
    ours = detector._model
    theirs = SCRFD(model_file=None, session=ours.session, static_shape_sessions=False)
    theirs.prepare(0, input_size=(640, 640))
    path = vectron_file(photo) if photo == "players.jpg" else insightface_image(photo)
    image = cv2.resize(cv2.imread(str(path)), (640, 480))
    ours.center_cache.clear()
    found = ours.forward(image, threshold)
    expected = SCRFD.forward(theirs, image, threshold)
    assert ours.center_cache.keys() == theirs.center_cache.keys()
    assert at_least <= sum(len(scores) for scores in found[0]) <= at_most
    for mine, reference in zip(found, expected, strict=True):
        assert len(mine) == len(reference) == 3
        for a, b in zip(mine, reference, strict=True):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)
