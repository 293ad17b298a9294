"""Admin test helpers: a folder of photos to enroll, the CLI as a process, gallery state."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import grpc
from PIL import Image

from facescore.v1 import score_pb2, score_pb2_grpc
from services.common.models import insightface_image, vectron_file
from tests.conftest import REPO, ServiceProcess

# Boxes around single faces of the shipped group photos (SCRFD-500M finds one face in each).
T1_FACE_A = (376, 179, 659, 502)
T1_FACE_B = (0, 170, 258, 487)
GDP_FACE_C = (78, 0, 244, 168)

GOOD_PHOTOS = 7  # yao 3, t1-a 2, t1-b 1, gdp-c 1
GOOD_SUBJECTS = {"yao": 3, "t1-a": 2, "t1-b": 1, "gdp-c": 1}
SKIPPED = 5  # yao/.hidden.jpg, yao/more/, .DS_Store, README.txt, .trash/


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def build_good_photos(root: Path) -> Path:
    """Four subjects, seven photos, each holding exactly one face."""
    yao_bytes = vectron_file("yaoming.jpg").read_bytes()
    yao = Image.open(io.BytesIO(yao_bytes))
    t1 = Image.open(insightface_image("t1.jpg")).convert("RGB")
    gdp = Image.open(vectron_file("gdp.jpg")).convert("RGB")
    _write(root / "yao" / "yaoming.jpg", yao_bytes)
    _write(root / "yao" / "yaoming-q70.jpg", _jpeg(yao, quality=70))
    buffer = io.BytesIO()
    yao.crop((10, 10, yao.width - 10, yao.height - 10)).save(buffer, "PNG")
    _write(root / "yao" / "yaoming-crop.png", buffer.getvalue())
    face_a = t1.crop(T1_FACE_A)
    _write(root / "t1-a" / "face.jpg", _jpeg(face_a))
    mirrored = face_a.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    _write(root / "t1-a" / "face-mirrored.jpg", _jpeg(mirrored))
    _write(root / "t1-b" / "face.jpg", _jpeg(t1.crop(T1_FACE_B)))
    _write(root / "gdp-c" / "face.jpg", _jpeg(gdp.crop(GDP_FACE_C)))
    return root


def build_photo_folder(root: Path) -> Path:
    """The good photos, photos that fail for known reasons, and entries to skip."""
    build_good_photos(root)
    yao_bytes = vectron_file("yaoming.jpg").read_bytes()
    # Failures: two group photos (multiple_faces), a wall (no_face), a cut-off JPEG.
    _write(root / "group" / "t1.jpg", insightface_image("t1.jpg").read_bytes())
    _write(root / "group" / "gdp.jpg", vectron_file("gdp.jpg").read_bytes())
    _write(root / "nobody" / "wall.jpg", _jpeg(Image.new("RGB", (400, 300), (120, 160, 200))))
    _write(root / "broken" / "yaoming.jpg", yao_bytes[: len(yao_bytes) // 2])
    # Skipped: hidden files and folders, a folder inside a subject, a file at the top.
    _write(root / "yao" / ".hidden.jpg", yao_bytes)
    (root / "yao" / "more").mkdir()
    _write(root / ".DS_Store", b"\x00\x00\x00\x01Bud1")
    _write(root / "README.txt", b"photos of the team\n")
    _write(root / ".trash" / "old.jpg", yao_bytes)
    return root


def cli_env(**overrides: str) -> dict[str, str]:
    """The environment for a facescore command: no Qdrant server or Redis unless given."""
    env = {**os.environ, "SCORE_QDRANT_URL": "", "SCORE_QDRANT_API_KEY": "", "SCORE_REDIS_URL": ""}
    env.update(overrides)
    return env


def facescore(
    *args: str | Path, timeout: float = 300, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run `facescore ARGS` as its own process, as an operator does."""
    return subprocess.run(
        [sys.executable, "-m", "facescore.cli", *map(str, args)],
        cwd=REPO,
        env=cli_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def counts(summary: str) -> dict[str, int]:
    """The enrolled / already there / failed figures of an enroll summary."""
    found = {}
    for label in ("enrolled", "already there", "failed"):
        match = re.search(rf"^  {label} +(\d+)$", summary, re.M)
        assert match, f"no {label!r} line in:\n{summary}"
        found[label] = int(match.group(1))
    return found


Subjects = dict[str, tuple[int, list[str]]]


def gallery_state(service: ServiceProcess) -> dict[str, tuple[int, Subjects]]:
    """Gallery -> (face count, subject -> (face count, face ids)), as the score API reports."""
    state: dict[str, tuple[int, Subjects]] = {}
    with grpc.insecure_channel(service.address) as channel:
        stub = score_pb2_grpc.ScoreServiceStub(channel)
        galleries = stub.ListGalleries(score_pb2.ListGalleriesRequest(), timeout=10).galleries
        for gallery in galleries:
            listing = stub.ListSubjects(
                score_pb2.ListSubjectsRequest(gallery=gallery.name, page_size=1000), timeout=10
            )
            subjects: Subjects = {}
            for subject in listing.subjects:
                request = score_pb2.GetSubjectRequest(
                    gallery=gallery.name, subject_id=subject.subject_id
                )
                full = stub.GetSubject(request, timeout=10)
                subjects[subject.subject_id] = (full.face_count, sorted(full.face_ids))
            state[gallery.name] = (gallery.face_count, subjects)
    return state


def face_counts(subjects: Subjects) -> dict[str, int]:
    return {subject: faces for subject, (faces, _) in subjects.items()}


def score_env(detect: ServiceProcess, embed: ServiceProcess, data_dir: Path) -> dict[str, str]:
    return {
        "SCORE_DETECT_TARGET": f"dns:///{detect.address}",
        "SCORE_EMBED_TARGET": f"dns:///{embed.address}",
        "SCORE_DATA_DIR": str(data_dir),
        "SCORE_QDRANT_URL": "",
        "SCORE_REDIS_URL": "",
    }
