"""One seam for the services' ONNX models: pick, verify, open a session, warm up, predict.

A model class says only what differs: its manifest role, how it wraps the session
(insightface's pre- and post-processing), its warm-up inputs and its extra ModelInfo fields.
Providers and session options live apart, in services/common/onnx.py, so that a new
accelerator touches one file.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import grpc
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from facescore.v1 import common_pb2
from services.common.errors import FaceScoreError, Reason
from services.common.models import ModelSpec, select_model, verify_model
from services.common.onnx import ShapeProfile, create_session
from services.common.settings import OnnxSettings

# What ONNX Runtime raises when a run fails inside a provider (a GPU fault, memory), as
# opposed to a malformed input, which the services refuse before it reaches the model.
RUN_FAILURES = (
    ort_errors.Fail,
    ort_errors.RuntimeException,
    ort_errors.EPFail,
    ort_errors.DeviceReset,
    ort_errors.EngineError,
)


class OnnxModel(ABC):
    """A manifest model run by one ONNX Runtime session made by the shared factory."""

    #: The manifest role this class loads ("detector" or "recognizer").
    role: ClassVar[str]

    def __init__(self, settings: OnnxSettings) -> None:
        self.settings = settings
        self.spec: ModelSpec = select_model(settings.model_dir, self.role, settings.model_name)
        self._session: ort.InferenceSession | None = None
        #: Why the model can no longer run (set by its first failed run), else None.
        self.failure: str | None = None

    @property
    def session(self) -> ort.InferenceSession:
        if self._session is None:
            raise RuntimeError(f"{self.role} is not loaded")
        return self._session

    @property
    def providers(self) -> list[str]:
        """The providers the session runs on now, asked of the session each time."""
        return list(self._session.get_providers()) if self._session is not None else []

    def load(self) -> None:
        """Verify the file against the manifest, open its session, wrap it."""
        path = verify_model(self.settings.model_dir, self.spec)
        session = create_session(path, self.settings, self.shape_profile(path))
        self._wrap(path, session)
        self._session = session

    @contextmanager
    def running(self) -> Iterator[None]:
        """Wrap every model run: a provider failure is final and says so to every caller.

        Run-time fallback to the CPU is disabled, so a failing GPU does not quietly carry on
        on the CPU; the reason ``model_failed`` turns the service NOT_SERVING.
        """
        if self.failure is not None:
            raise self._failed()
        try:
            yield
        except RUN_FAILURES as error:
            self.failure = (
                f"{self.role} {self.spec.name} failed on {', '.join(self.providers)}: "
                f"{error}; restart the service"
            )
            raise self._failed() from error

    def _failed(self) -> FaceScoreError:
        return FaceScoreError(Reason.MODEL_FAILED, self.failure or "", grpc.StatusCode.UNAVAILABLE)

    def model_info(self) -> common_pb2.ModelInfo:
        return common_pb2.ModelInfo(
            name=self.spec.name,
            sha256=self.spec.sha256,
            role=self.spec.role,
            providers=self.providers,
            **self._describe(),
        )

    @abstractmethod
    def shape_profile(self, path: Path) -> ShapeProfile:
        """The input shapes the service will run (for TensorRT's optimisation profile)."""

    @abstractmethod
    def _wrap(self, path: Path, session: ort.InferenceSession) -> None:
        """Build the pre- and post-processing around the session."""

    @abstractmethod
    def warm_up(self) -> None:
        """Run every input shape once, so that no call pays for a first run."""

    @abstractmethod
    def _describe(self) -> dict[str, Any]:
        """ModelInfo fields of this kind of model (input size, embedding dimension)."""
