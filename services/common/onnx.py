"""ONNX Runtime sessions: providers, thread counts, and no silent fallback to the CPU."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort
import structlog

from services.common.settings import OnnxSettings

CPU = "CPUExecutionProvider"
log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ShapeProfile:
    """The smallest, most common and largest shape of a model's first input."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


def input_dims(path: Path) -> list[int | str]:
    """The first input's dimensions as the file declares them (names for symbolic ones)."""
    import onnx  # The graph only; the weights are not needed.

    graph = onnx.load(str(path), load_external_data=False).graph
    dims = graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]


class ProviderUnavailableError(RuntimeError):
    """A requested execution provider cannot run here and CPU fallback is not allowed."""


def _check(requested: list[str], active: list[str], allow_cpu_fallback: bool) -> None:
    missing = [p for p in requested if p not in active]
    if not missing:
        return
    if not allow_cpu_fallback:
        raise ProviderUnavailableError(
            f"execution provider(s) {', '.join(missing)} requested but not usable here "
            f"(ONNX Runtime offers: {', '.join(ort.get_available_providers())}); install the "
            "GPU build (`make sync ORT=gpu`) and drivers, or set *_ALLOW_CPU_FALLBACK=true"
        )
    log.warning("execution provider unavailable, running on the CPU", missing=missing)


def create_session(
    path: Path, settings: OnnxSettings, shapes: ShapeProfile | None = None
) -> ort.InferenceSession:
    """Open one model with the configured providers and thread counts."""
    requested = list(settings.providers) or [CPU]
    available = ort.get_available_providers()
    usable = [p for p in requested if p in available]
    _check(requested, usable, settings.allow_cpu_fallback)
    if CPU not in usable:
        usable.append(CPU)
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = settings.inter_op_threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=options, providers=usable)
    # ORT drops a provider whose libraries fail to load with only a log line; catch that here.
    _check(requested, list(session.get_providers()), settings.allow_cpu_fallback)
    return session
