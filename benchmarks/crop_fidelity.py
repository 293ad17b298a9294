"""How close a face crop cut from a reduced JPEG decode comes to the full decode's.

detect decodes a 12 MP JPEG at 1/4 for the detector and cuts each face's 112x112 crop from
that decode when the crop is warped from enough pixels of it; otherwise from a finer decode
(services/detect/pipeline.py, `clears_bar`). This prints, for the faces of the sample
photos on 12 MP frames (at their full size and shrunk on a plain canvas, so that faces come in
many sizes), the embedding cosine between the crop from the 1/4 and the 1/2 decode and the
crop from the full decode, with the same landmarks, beside the source pixels the crop is
warped from at that scale. Run: `uv run python benchmarks/crop_fidelity.py`.
"""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt
from insightface.model_zoo.arcface_onnx import ArcFaceONNX
from PIL import Image
from rich.console import Console
from rich.table import Table

from facescore.devtools.phone_photos import phone_frame, sample_sources
from services.common.align import estimate_norm
from services.common.images import decode_image
from services.detect.detector import CROP_SIZE, FaceDetector, align
from services.detect.pipeline import clears_bar, magnification
from services.detect.settings import DetectSettings

MODELS = "public/models"
SHRINKS = (1.0, 0.8, 0.65, 0.5, 0.42, 0.36)
SCALES = (1 / 4, 1 / 2)
LIMITS = (64 * 1024 * 1024, 40_000_000)


def frames() -> list[tuple[str, bytes]]:
    """Each sample photo on a 12 MP frame, shrunk by each of SHRINKS onto a plain canvas."""
    photos = []
    for name, (path, _) in sample_sources().items():
        with Image.open(path) as source:
            frame = phone_frame(source)
        for shrink in SHRINKS:
            canvas = frame
            if shrink != 1.0:
                canvas = Image.new("RGB", frame.size, (90, 100, 110))
                small = frame.resize(
                    (int(frame.width * shrink), int(frame.height * shrink)),
                    Image.Resampling.LANCZOS,
                )
                canvas.paste(
                    small, ((frame.width - small.width) // 2, (frame.height - small.height) // 2)
                )
            buffer = io.BytesIO()
            canvas.save(buffer, "JPEG", quality=90)
            photos.append((f"{name} x{shrink}", buffer.getvalue()))
    return photos


def main() -> None:
    recognizer = ArcFaceONNX(model_file=f"{MODELS}/w600k_mbf.onnx")
    recognizer.prepare(-1)
    detector = FaceDetector(DetectSettings())
    detector.load()

    def vector(crop: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        v = recognizer.get_feat([crop])[0]
        return np.asarray(v / np.linalg.norm(v), np.float32)

    rows: list[tuple[float, str, float, list[float]]] = []
    for name, data in frames():
        full = decode_image(data, *LIMITS)
        reduced = {s: decode_image(data, *LIMITS, fit=1, min_scale=s) for s in SCALES}
        quarter = reduced[1 / 4]
        for face in detector.detect(quarter.bgr, 0.5):
            landmarks = face.landmarks / quarter.scale[0]
            reference = vector(align(full.bgr, landmarks))
            per_original = magnification(estimate_norm(landmarks, CROP_SIZE))
            cosines = [
                float(vector(align(reduced[s].bgr, landmarks * reduced[s].scale[0])) @ reference)
                for s in SCALES
            ]
            rows.append((CROP_SIZE / per_original, name, per_original, cosines))

    table = Table(title="crop from a reduced decode against the full decode's: embedding cosine")
    for column in ("photo", "source px at 1/4", "cosine 1/4", "source px at 1/2", "cosine 1/2"):
        table.add_column(
            column, justify="left" if column == "photo" else "right", no_wrap=column == "photo"
        )
    for px, name, per_original, cosines in sorted(rows):
        cells = [name]
        for scale, cosine in zip(SCALES, cosines, strict=True):
            allowed = clears_bar(per_original, scale)
            cells += [f"{px * scale:.1f}" + ("" if allowed else " (finer)"), f"{cosine:.4f}"]
        table.add_row(*cells)
    Console().print(table)
    for index, scale in enumerate(SCALES):
        kept = [r[3][index] for r in rows if clears_bar(r[2], scale)]
        if kept:
            print(
                f"1/{round(1 / scale)}: {len(kept)} faces within its bar, cosine "
                f"{min(kept):.4f}-{max(kept):.4f}"
            )


if __name__ == "__main__":
    main()
