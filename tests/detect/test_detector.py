"""The detector in process: one session, made by the shared factory, runs detection."""

from __future__ import annotations

from typing import Any

import cv2
import onnxruntime as ort
import pytest

from services.common.models import vectron_file
from services.detect.detector import FaceDetector
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
