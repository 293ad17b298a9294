"""ONNX Runtime sessions: the one factory for every model session.

Providers come from the settings with their options (device, memory arena, cuDNN search,
TensorRT engine cache, fp16 and shape profile), and nothing falls back to the CPU silently:
a provider that cannot load stops the start, and run-time fallback is disabled.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort
import structlog

from services.common.settings import OnnxSettings

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
log = structlog.get_logger(__name__)

_ARENA = {"same_as_requested": "kSameAsRequested", "next_power_of_two": "kNextPowerOfTwo"}
_CUDNN_SEARCH = {"exhaustive": "EXHAUSTIVE", "heuristic": "HEURISTIC", "default": "DEFAULT"}


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


def _input_name(path: Path) -> str:
    import onnx

    return str(onnx.load(str(path), load_external_data=False).graph.input[0].name)


def vectorized_prelu(path: Path) -> tuple[bytes, int] | None:
    """The model with each PRelu whose slopes are constants of at most 1 written as
    Max(x, slope * x), serialized, and how many were rewritten; None when none can be.

    ONNX Runtime's CPU kernel for PRelu with a slope per channel runs one element at a
    time and branches on its sign, which the processor mispredicts about half the time;
    Mul and Max run vectorized. For a slope s <= 1, max(x, s * x) is x where x >= 0 and
    s * x where x < 0: the same product PRelu computes, so the outputs are the same to the
    bit. The recognizer (MobileFaceNet, 34 PRelu) spends a quarter to a third less CPU per face.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    constants = {i.name: i for i in graph.initializer}
    nodes = []
    rewritten = 0
    for node in graph.node:
        slope = constants.get(node.input[1]) if node.op_type == "PRelu" else None
        if slope is None or float(numpy_helper.to_array(slope).max(initial=0.0)) > 1.0:
            nodes.append(node)
            continue
        scaled = f"{node.output[0]}/slope_x"
        nodes.append(helper.make_node("Mul", list(node.input), [scaled], f"{node.name}/mul"))
        nodes.append(
            helper.make_node("Max", [node.input[0], scaled], list(node.output), f"{node.name}/max")
        )
        rewritten += 1
    if not rewritten:
        return None
    del graph.node[:]
    graph.node.extend(nodes)
    return model.SerializeToString(), rewritten


class ProviderUnavailableError(RuntimeError):
    """A requested execution provider cannot run here and CPU fallback is not allowed."""


# What onnxruntime-gpu 1.31 (uv.lock) links (CUDA 13) and opens by itself (cuDNN 9). The
# driver's libcuda.so.1 is mounted by the NVIDIA container toolkit only at run time.
CUDA_LIBRARIES = (
    "libcudart.so.13",
    "libcublasLt.so.13",
    "libcublas.so.13",
    "libcurand.so.10",
    "libcudnn.so.9",
)
DRIVER_LIBRARY = "libcuda.so.1"


def cuda_provider_library() -> Path:
    return Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"


def cuda_library_problem(driver: bool = True) -> str | None:
    """Why ONNX Runtime's CUDA provider cannot load here, or None when its libraries load.

    ONNX Runtime only logs a provider that fails to load and carries on without it; this
    names the missing library instead. No GPU is needed: loading a library does not touch
    the device. `driver=False` leaves out the driver's library, for image builds.
    """
    library = cuda_provider_library()
    if not library.is_file():
        return (
            f"this onnxruntime build ({ort.__version__}) has no CUDA provider: "
            "install onnxruntime-gpu (`make sync ORT=gpu`, or the runtime-gpu image)"
        )
    names = [*CUDA_LIBRARIES, *((DRIVER_LIBRARY, str(library)) if driver else ())]
    missing = []
    for name in names:
        try:
            ctypes.CDLL(name)
        except OSError as error:
            missing.append(str(error))
    if missing:
        return "the CUDA provider's libraries do not load: " + "; ".join(missing)
    return None


def _check(requested: list[str], active: list[str], allow_cpu_fallback: bool) -> None:
    missing = [p for p in requested if p not in active]
    if not missing:
        return
    if not allow_cpu_fallback:
        hint = "install the GPU build (`make sync ORT=gpu`) and drivers"
        if TENSORRT in missing:
            hint = (
                "TensorRT needs its own libraries (libnvinfer 10), which the runtime-gpu image "
                "does not ship; use cuda, or install TensorRT"
            )
        raise ProviderUnavailableError(
            f"execution provider(s) {', '.join(missing)} requested but not usable here "
            f"(ONNX Runtime offers: {', '.join(ort.get_available_providers())}); {hint}, "
            "or set *_ALLOW_CPU_FALLBACK=true"
        )
    log.warning("execution provider unavailable, running on the CPU", missing=missing)


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def provider_options(
    provider: str, settings: OnnxSettings, path: Path, shapes: ShapeProfile | None
) -> dict[str, str]:
    """The options one provider gets; providers not named here take ONNX Runtime's defaults."""
    if provider == CUDA:
        options = {
            "device_id": str(settings.device_id),
            "arena_extend_strategy": _ARENA[settings.arena_extend_strategy],
            "cudnn_conv_algo_search": _CUDNN_SEARCH[settings.cudnn_conv_algo_search],
        }
        if settings.gpu_mem_limit_mb:
            options["gpu_mem_limit"] = str(settings.gpu_mem_limit_mb * 1024 * 1024)
        return options
    if provider == TENSORRT:
        options = {
            "device_id": str(settings.device_id),
            "trt_fp16_enable": str(settings.trt_fp16),
        }
        if settings.trt_engine_cache_dir is not None:
            cache = str(settings.trt_engine_cache_dir)
            options |= {
                "trt_engine_cache_enable": "True",
                "trt_engine_cache_path": cache,
                "trt_timing_cache_enable": "True",
                "trt_timing_cache_path": cache,
            }
        if shapes is not None:
            # One engine for every shape the service runs, instead of one per new shape.
            name = _input_name(path)
            options |= {
                "trt_profile_min_shapes": f"{name}:{_dims(shapes.min)}",
                "trt_profile_opt_shapes": f"{name}:{_dims(shapes.opt)}",
                "trt_profile_max_shapes": f"{name}:{_dims(shapes.max)}",
            }
        return options
    return {}


def create_session(
    path: Path, settings: OnnxSettings, shapes: ShapeProfile | None = None
) -> ort.InferenceSession:
    """Open one model with the configured providers, their options and thread counts."""
    requested = list(settings.providers) or [CPU]
    # Checked before ORT tries, which would print an "EP Error" and retry on the next provider.
    problem = cuda_library_problem() if CUDA in requested else None
    if problem is not None and not settings.allow_cpu_fallback:
        raise ProviderUnavailableError(f"{CUDA} requested but not usable here: {problem}")
    available = ort.get_available_providers()
    usable = [p for p in requested if p in available]
    _check(requested, usable, settings.allow_cpu_fallback)
    if CPU not in usable:
        # Nodes a GPU provider cannot run are placed on the CPU; that is placement, not fallback.
        usable.append(CPU)
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = settings.inter_op_threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    model: str | bytes = str(path)
    if usable == [CPU] and settings.vectorize_prelu and (faster := vectorized_prelu(path)):
        model = faster[0]
    session = ort.InferenceSession(
        model,
        sess_options=options,
        providers=usable,
        provider_options=[provider_options(p, settings, path, shapes) for p in usable],
    )
    # ORT drops a provider whose libraries fail to load with only a log line; catch that here.
    _check(requested, list(session.get_providers()), settings.allow_cpu_fallback)
    # Otherwise ORT's wrapper reruns a failed call on the CPU and stays there, unannounced.
    session.disable_fallback()
    return session
