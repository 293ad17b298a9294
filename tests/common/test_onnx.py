"""The session factory: provider options from settings, no fallback, clear GPU errors.

No GPU is lent to this machine: the CUDA and TensorRT options are checked as the factory
hands them to ONNX Runtime, and sessions are opened on the CPU build that is installed.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx as onnx_format
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from benchmarks.bench_inference import face_blobs
from services.common import onnx
from services.common.models import insightface_image, select_model
from services.common.onnx import (
    CUDA,
    TENSORRT,
    ProviderUnavailableError,
    ShapeProfile,
    create_session,
    cuda_library_problem,
    provider_options,
)
from services.common.settings import DEFAULT_MODEL_DIR, OnnxSettings

RECOGNIZER = select_model(DEFAULT_MODEL_DIR, "recognizer").path(DEFAULT_MODEL_DIR)
PROFILE = ShapeProfile((1, 3, 112, 112), (32, 3, 112, 112), (32, 3, 112, 112))


def test_cuda_options_have_documented_defaults() -> None:
    options = provider_options(CUDA, OnnxSettings(), RECOGNIZER, PROFILE)
    assert options == {
        "device_id": "0",
        "arena_extend_strategy": "kSameAsRequested",
        "cudnn_conv_algo_search": "EXHAUSTIVE",
    }


def test_cuda_options_follow_the_settings() -> None:
    settings = OnnxSettings(
        device_id=2,
        gpu_mem_limit_mb=512,
        arena_extend_strategy="next_power_of_two",
        cudnn_conv_algo_search="heuristic",
    )
    assert provider_options(CUDA, settings, RECOGNIZER, None) == {
        "device_id": "2",
        "arena_extend_strategy": "kNextPowerOfTwo",
        "cudnn_conv_algo_search": "HEURISTIC",
        "gpu_mem_limit": str(512 * 1024 * 1024),
    }


def test_tensorrt_gets_cache_fp16_and_the_models_shape_profile(tmp_path: Path) -> None:
    settings = OnnxSettings(device_id=1, trt_engine_cache_dir=tmp_path, trt_fp16=True)
    options = provider_options(TENSORRT, settings, RECOGNIZER, PROFILE)
    assert options == {
        "device_id": "1",
        "trt_fp16_enable": "True",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(tmp_path),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(tmp_path),
        # The input name is the file's own.
        "trt_profile_min_shapes": "input.1:1x3x112x112",
        "trt_profile_opt_shapes": "input.1:32x3x112x112",
        "trt_profile_max_shapes": "input.1:32x3x112x112",
    }


def test_tensorrt_without_a_cache_dir_builds_each_start() -> None:
    options = provider_options(TENSORRT, OnnxSettings(), RECOGNIZER, None)
    assert options == {"device_id": "0", "trt_fp16_enable": "False"}


def test_cpu_takes_onnx_runtime_defaults() -> None:
    assert provider_options("CPUExecutionProvider", OnnxSettings(), RECOGNIZER, PROFILE) == {}


def test_sessions_never_fall_back_at_run_time() -> None:
    session = create_session(RECOGNIZER, OnnxSettings())
    # ORT's wrapper reruns a failed call on the CPU unless this flag is off.
    assert session._enable_fallback is False
    assert session.get_providers() == ["CPUExecutionProvider"]


@pytest.mark.skipif(CUDA in ort.get_available_providers(), reason="this check is for CPU builds")
def test_cuda_on_a_cpu_build_names_what_to_install() -> None:
    problem = cuda_library_problem()
    assert problem is not None and "install onnxruntime-gpu" in problem
    with pytest.raises(ProviderUnavailableError) as raised:
        create_session(RECOGNIZER, OnnxSettings(providers=["cuda"]))
    assert "CUDAExecutionProvider requested but not usable" in str(raised.value)
    assert problem in str(raised.value)


def test_missing_cuda_libraries_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    # onnxruntime-gpu is not installed here: a real shared library of the CPU build stands in
    # for its CUDA provider library, and this machine has no cuDNN and no NVIDIA driver.
    stand_in = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_shared.so"
    monkeypatch.setattr(onnx, "cuda_provider_library", lambda: stand_in)
    for_the_build = cuda_library_problem(driver=False)
    assert for_the_build is not None
    assert "libcudnn.so.9: cannot open shared object file" in for_the_build
    assert "libcuda.so.1" not in for_the_build  # the driver comes with the GPU, at run time
    at_start = cuda_library_problem()
    assert at_start is not None and "libcuda.so.1: cannot open shared object file" in at_start


def test_tensorrt_missing_says_the_image_does_not_ship_it() -> None:
    with pytest.raises(ProviderUnavailableError, match="does not ship"):
        create_session(RECOGNIZER, OnnxSettings(providers=["tensorrt"]))


def test_the_recognizer_runs_prelu_vectorized_with_the_same_embeddings_to_the_bit() -> None:
    rewritten = onnx.vectorized_prelu(RECOGNIZER)
    assert rewritten is not None
    graph, count = rewritten
    model = onnx_format.load_from_string(graph)
    ops = Counter(node.op_type for node in model.graph.node)
    original = Counter(node.op_type for node in onnx_format.load(str(RECOGNIZER)).graph.node)
    assert original["PRelu"] == count == 34
    assert ops["PRelu"] == 0 and ops["Max"] == count and ops["Mul"] == original["Mul"] + count

    # The six faces of t1.jpg, found by the real detector and aligned as insightface does.
    faces = np.concatenate(face_blobs([insightface_image("t1.jpg").read_bytes()]))
    assert len(faces) == 6
    served = create_session(RECOGNIZER, OnnxSettings())
    as_written = create_session(RECOGNIZER, OnnxSettings(vectorize_prelu=False))
    name = served.get_inputs()[0].name
    for batch in (faces[:1], faces):  # batch 1 and a batch of six
        ours, theirs = (s.run(None, {name: batch})[0] for s in (served, as_written))
        assert ours.shape == (len(batch), 512)
        assert np.array_equal(ours, theirs)


def _prelu_model(path: Path, slopes: list[float]) -> Path:
    """A one-node model: PRelu over (1, channels, 4, 4) with a constant slope per channel."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, len(slopes), 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, len(slopes), 4, 4])
    slope = numpy_helper.from_array(np.array(slopes, np.float32).reshape(-1, 1, 1), "slope")
    graph = helper.make_graph(
        [helper.make_node("PRelu", ["x", "slope"], ["y"], "act")], "g", [x], [y], [slope]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx_format.save(model, str(path))
    return path


def test_prelu_of_negative_slopes_and_slopes_up_to_one_matches_onnx_runtimes(
    tmp_path: Path,
) -> None:
    path = _prelu_model(tmp_path / "prelu.onnx", [-0.8, 0.0, 0.25, 1.0])
    x = np.random.default_rng(0).standard_normal((1, 4, 4, 4)).astype(np.float32)
    x[0, :, 0, 0] = 0.0  # zeros take either branch
    served = create_session(path, OnnxSettings()).run(None, {"x": x})[0]
    as_written = create_session(path, OnnxSettings(vectorize_prelu=False)).run(None, {"x": x})[0]
    assert np.array_equal(served, as_written)
    assert onnx.vectorized_prelu(path) is not None


def test_a_slope_above_one_keeps_onnx_runtimes_prelu(tmp_path: Path) -> None:
    # max(x, s * x) would give s * x for positive x when s > 1: such a node is left alone.
    assert onnx.vectorized_prelu(_prelu_model(tmp_path / "steep.onnx", [0.5, 1.5])) is None
    detector_file = select_model(DEFAULT_MODEL_DIR, "detector").path(DEFAULT_MODEL_DIR)
    assert onnx.vectorized_prelu(detector_file) is None  # SCRFD's activations are Relu
