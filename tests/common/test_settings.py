"""Provider names in the settings: aliases, full names, and typos refused."""

from __future__ import annotations

import onnxruntime as ort
import pytest
from pydantic import ValidationError

from services.common.settings import PROVIDER_ALIASES, OnnxSettings
from services.detect.settings import DetectSettings


@pytest.mark.parametrize("alias", sorted(PROVIDER_ALIASES))
def test_every_alias_names_a_provider_onnx_runtime_knows(alias: str) -> None:
    assert PROVIDER_ALIASES[alias] in ort.get_all_providers()
    assert OnnxSettings(providers=[alias]).providers == [PROVIDER_ALIASES[alias]]
    assert OnnxSettings(providers=[alias.upper()]).providers == [PROVIDER_ALIASES[alias]]


def test_full_names_and_lists_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DETECT_PROVIDERS", " cuda, CPUExecutionProvider ")
    assert DetectSettings().providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.mark.parametrize("name", ["cdua", "rocm", "ROCMExecutionProvider", "gpu", "CudaProvider"])
def test_unknown_providers_fail_the_settings(name: str) -> None:
    with pytest.raises(ValidationError) as raised:
        OnnxSettings(providers=[name])
    assert f"unknown execution provider {name!r}" in str(raised.value)
    assert "cpu, cuda, tensorrt" in str(raised.value)
