"""One photo through detect: decode at the scale the detector needs, detect, crop each face.

A 12 MP phone photo is decoded at the smallest DCT scale that still fills the detector's input
(1/4 for a 4032x3024 JPEG and a 640 input), several times cheaper than a full decode. A face
whose aligned 112x112 crop would come from too few pixels at that scale (max_magnification)
is cropped from a finer decode of just its region, in the decode worker, which sends back only
the 112x112 crop. Boxes and landmarks are in the original photo's pixels, EXIF orientation
applied.

When a large JPEG is the only photo in detect and the machine has a core to spare, the
decode worker decodes the whole photo at 1/2 on that core while the detector runs
(`decode_ahead`), and small faces are cropped from that decode, not from a cut made after the
detector (about as costly). With other photos in flight, or the cores busy (embed batching
other photos' faces), only the faces that need it are decoded finer, after the detector: a
photo whose faces need no finer decode would waste the decode ahead, on a core other work
needed.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from facescore.v1 import common_pb2, detect_pb2
from services.common.align import estimate_norm, warp
from services.common.decode_workers import (
    DecodeLimits,
    DecodeSession,
    DecodeWorkers,
    decode_crops,
    decode_finer,
    decode_for_detection,
)
from services.common.images import JPEG_SCALES, DecodedImage, decode_image, header_pixels
from services.common.load import spare_cores
from services.common.metrics import DECODES_AHEAD
from services.detect.detector import CROP_SIZE, FaceDetector, RawFace
from services.detect.quality import face_quality

T = TypeVar("T")

# Corners of the aligned crop, to find the source pixels it is warped from.
_CROP_CORNERS = np.array(
    [[0, 0, 1], [CROP_SIZE, 0, 1], [0, CROP_SIZE, 1], [CROP_SIZE, CROP_SIZE, 1]], np.float64
)
# Crop pixels per source pixel, at most, by the scale of the decode a crop is warped from.
# Below 1/2, from at least 150 source pixels: on 12 MP photos decoded at 1/4 (libjpeg's 2x2
# reduced inverse DCT), crops from 112 pixels (1.0) gave embeddings within 0.988-0.995 cosine
# of the full decode's, from 150 within 0.99, from 224 (0.5) within 0.996. At 1/2 and finer,
# from 112 (the 4x4 inverse DCT keeps more detail): the 46 faces of benchmarks/
# crop_fidelity.py cropped from 112 pixels or more of a 1/2 decode came within 0.990-0.9997.
# Each step finer costs more decode.
COARSE_MAGNIFICATION = 0.75
FINE_MAGNIFICATION = 1.0
FINE_SCALE = 0.5
# Cores left over now, counting the threads runnable (this one, which the detector takes
# over, included), for a decode ahead: none runnable beside this thread leaves one core spare,
# one beside it, none. At one photo at a time a thread of gRPC's or the decode worker's own
# is often still runnable at that moment (in 60 % of the readings of a probe), so one is
# allowed; at concurrency 4, embed's two batch threads and this one leave -1.
AHEAD_SPARE_CORES = 0
# Pixels around a crop's source rectangle, for the warp's bilinear neighbours.
_MARGIN = 2


@dataclass(frozen=True)
class DetectOptions:
    threshold: float
    max_faces: int
    min_size: int
    include_crops: bool


@dataclass(frozen=True)
class Face:
    box: np.ndarray  # x1, y1, x2, y2 in original pixels
    score: float
    landmarks: np.ndarray  # (5, 2) in original pixels
    crop: np.ndarray | None  # 112x112 BGR; None until cut from a finer decode


class DetectPipeline:
    def __init__(
        self,
        detector: FaceDetector,
        decoders: DecodeWorkers,
        model_threads: Executor,
        limits: DecodeLimits,
        fit: int,
        inline_pixels: int,
        decode_ahead: bool = True,
        spare: Callable[[], int | None] = spare_cores,
    ) -> None:
        self.detector = detector
        self.decoders = decoders
        self.model_threads = model_threads
        self.limits = limits
        self.fit = fit
        self.inline_pixels = inline_pixels
        self.decode_ahead = decode_ahead
        self._spare = spare
        self._in_flight = 0  # photos in this pipeline now, this one included

    async def run(self, data: bytes, options: DetectOptions) -> detect_pb2.DetectResponse:
        self._in_flight += 1
        try:
            return await self._run(data, options)
        finally:
            self._in_flight -= 1

    async def _run(self, data: bytes, options: DetectOptions) -> detect_pb2.DetectResponse:
        pixels = header_pixels(data)
        if pixels is not None and pixels <= self.inline_pixels:
            # Small photos: with the scan limit their decode is short (pixels x scans), not
            # worth a trip to a decode worker, and full size is what the detector needs.
            return await self._in_thread(self._inline, data, options)
        async with self.decoders.session() as decoder:
            image = await decoder.call(decode_for_detection, data, self.limits, self.fit)
            ahead = self._ahead(image)
            if ahead:
                decoder.start(decode_finer, self.limits, FINE_SCALE)
            faces = await self._in_thread(self._find, image, options)
            fine = [i for i, face in enumerate(faces) if face.crop is None]
            if fine:
                faces = await self._crop_finer(decoder, image, faces, fine, ahead)
            elif ahead:
                DECODES_AHEAD.labels(outcome="unused").inc()
        return await self._in_thread(self._response, image, faces, options.include_crops)

    def _ahead(self, image: DecodedImage) -> bool:
        """Whether to decode the photo at FINE_SCALE while the detector runs: a JPEG decoded
        coarser for the detector, alone in detect, on a machine with a core to spare
        (AHEAD_SPARE_CORES)."""
        if not (
            self.decode_ahead
            and self._in_flight == 1
            and image.format == "JPEG"
            and max(image.scale) < FINE_SCALE
        ):
            return False
        spare = self._spare()
        if spare is not None and spare < AHEAD_SPARE_CORES:
            DECODES_AHEAD.labels(outcome="machine_busy").inc()
            return False
        return True

    async def _in_thread(self, function: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        # copy_context: the worker thread logs with this call's request id.
        return await loop.run_in_executor(
            self.model_threads, contextvars.copy_context().run, function, *args
        )

    def _inline(self, data: bytes, options: DetectOptions) -> detect_pb2.DetectResponse:
        image = decode_image(
            data,
            self.limits.max_bytes,
            self.limits.max_pixels,
            max_jpeg_scans=self.limits.max_jpeg_scans,
        )
        return self._response(image, self._find(image, options), options.include_crops)

    def _find(self, image: DecodedImage, options: DetectOptions) -> list[Face]:
        """Faces in original pixels; crops cut here when the decode is fine enough for them."""
        sx, sy = image.scale
        raw = self.detector.detect(
            image.bgr, options.threshold, options.max_faces, options.min_size * min(sx, sy)
        )
        return [_face_of(face, image) for face in raw]

    async def _crop_finer(
        self,
        decoder: DecodeSession,
        image: DecodedImage,
        faces: list[Face],
        fine: list[int],
        ahead: bool = False,
    ) -> list[Face]:
        transforms = [estimate_norm(faces[i].landmarks, CROP_SIZE) for i in fine]
        scale = finer_scale(max(magnification(m) for m in transforms))
        if ahead:
            # Finer still, the crops come from a cut at that scale; the decode ahead is unused.
            DECODES_AHEAD.labels(outcome="used" if scale <= FINE_SCALE else "too_coarse").inc()
        rects = [_source_rect(m, image) for m in transforms]
        landmarks = [faces[i].landmarks for i in fine]
        crops = await decoder.call(decode_crops, self.limits, scale, rects, landmarks, CROP_SIZE)
        done = list(faces)
        for i, crop in zip(fine, crops, strict=True):
            done[i] = Face(faces[i].box, faces[i].score, faces[i].landmarks, crop)
        return done

    def _response(
        self, image: DecodedImage, faces: list[Face], include_crops: bool
    ) -> detect_pb2.DetectResponse:
        response = detect_pb2.DetectResponse(
            image=common_pb2.ImageInfo(
                width=image.original_width,
                height=image.original_height,
                format=image.format,
                sha256=image.sha256,
            ),
            model=self.detector.model_info(),
        )
        for face in faces:
            assert face.crop is not None  # every crop is cut by now
            added = response.faces.add(
                box=common_pb2.BoundingBox(
                    x1=float(face.box[0]),
                    y1=float(face.box[1]),
                    x2=float(face.box[2]),
                    y2=float(face.box[3]),
                ),
                score=face.score,
                landmarks=[common_pb2.Point(x=float(x), y=float(y)) for x, y in face.landmarks],
                quality=face_quality(face.box, face.landmarks, face.crop),
            )
            if include_crops:
                added.crop.CopyFrom(
                    common_pb2.AlignedCrop(
                        width=face.crop.shape[1], height=face.crop.shape[0], bgr=face.crop.tobytes()
                    )
                )
        return response


def _face_of(raw: RawFace, image: DecodedImage) -> Face:
    """`raw` in original pixels, its crop cut at once unless it needs a finer decode.

    A photo decoded at full size is cropped as it is, however small its faces.
    """
    sx, sy = image.scale
    to_original = np.array([sx, sy], np.float32)
    box = (raw.box.reshape(2, 2) / to_original).reshape(4)
    landmarks = raw.landmarks / to_original
    transform = estimate_norm(raw.landmarks, CROP_SIZE)
    if image.scale == (1.0, 1.0) or magnification(transform) <= max_magnification(min(sx, sy)):
        crop: np.ndarray | None = warp(image.bgr, transform, CROP_SIZE)
    else:
        crop = None
    return Face(box.astype(np.float32), raw.score, landmarks.astype(np.float32), crop)


def max_magnification(scale: float) -> float:
    """Crop pixels per source pixel allowed for crops from a decode at `scale`."""
    return FINE_MAGNIFICATION if scale >= FINE_SCALE else COARSE_MAGNIFICATION


def clears_bar(per_original: float, scale: float) -> bool:
    """Whether a crop of `per_original` crop pixels per original pixel is warped from enough
    pixels of a decode at `scale`."""
    return per_original / scale <= max_magnification(scale)


def finer_scale(per_original: float) -> float:
    """The smallest of libjpeg's power-of-two scales at which a crop of `per_original` crop
    pixels per original pixel is warped from enough source pixels."""
    return next((s for s in JPEG_SCALES if clears_bar(per_original, s)), JPEG_SCALES[-1])


def magnification(transform: np.ndarray) -> float:
    """Crop pixels per source pixel of a similarity transform: above 1, the crop is upsampled."""
    return float(np.sqrt(abs(np.linalg.det(transform[:, :2]))))


def _source_rect(transform: np.ndarray, image: DecodedImage) -> tuple[float, float, float, float]:
    """The original pixels a crop is warped from (transform maps original pixels to the crop)."""
    full = np.vstack([transform, [0, 0, 1]])
    corners = (np.linalg.inv(full) @ _CROP_CORNERS.T)[:2].T
    (x1, y1), (x2, y2) = corners.min(axis=0), corners.max(axis=0)
    return (
        max(0.0, float(x1) - _MARGIN),
        max(0.0, float(y1) - _MARGIN),
        min(float(image.original_width), float(x2) + _MARGIN),
        min(float(image.original_height), float(y2) + _MARGIN),
    )
