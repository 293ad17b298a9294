"""SCRFD face detection through insightface's model class."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort
from insightface.model_zoo.scrfd import SCRFD, distance2bbox, distance2kps

from services.common.align import norm_crop
from services.common.model_base import OnnxModel
from services.common.onnx import CPU, ShapeProfile
from services.detect.settings import DetectSettings

CROP_SIZE = 112
# SCRFD's coarsest feature stride: an input side is a multiple of it.
_STRIDE = 32


@dataclass(frozen=True)
class RawFace:
    box: np.ndarray  # x1, y1, x2, y2
    score: float
    landmarks: np.ndarray  # (5, 2)

    @property
    def area(self) -> float:
        return float((self.box[2] - self.box[0]) * (self.box[3] - self.box[1]))

    @property
    def shorter_side(self) -> float:
        return float(min(self.box[2] - self.box[0], self.box[3] - self.box[1]))


class FaceDetector(OnnxModel):
    """The manifest's detector: finds faces, largest first."""

    role = "detector"
    settings: DetectSettings

    def __init__(self, settings: DetectSettings) -> None:
        super().__init__(settings)
        self._model: _SCRFD | None = None
        self._photo_shaped = False

    def shape_profile(self, path: Path) -> ShapeProfile:
        side = self.settings.input_size
        return ShapeProfile(*[(1, 3, side, side)] * 3)

    def _wrap(self, path: Path, session: ort.InferenceSession) -> None:
        # static_shape_sessions=False: insightface would otherwise open a second, fixed-shape
        # session from the file, past this factory's providers and options.
        model = _SCRFD(model_file=str(path), session=session, static_shape_sessions=False)
        side = self.settings.input_size
        # ctx_id 0 keeps the configured providers; a negative id would force the CPU.
        model.prepare(
            0,
            input_size=(side, side),
            det_thresh=self.settings.score_threshold,
            nms_thresh=self.settings.nms_threshold,
        )
        self._model = model
        self._photo_shaped = photo_shaped(session.get_providers(), session.get_inputs()[0].shape)

    def warm_up(self) -> None:
        side = self.settings.input_size
        # The square, and the commonest photo shapes (4:3, 16:9, either way up) where the
        # input follows the photo: no call pays for the first run of its shape.
        shapes = [(side, side)]
        if self._photo_shaped:
            shapes += [(side, side * 3 // 4), (side * 3 // 4, side)]
            shapes += [(side, side * 9 // 16), (side * 9 // 16, side)]
        for height, width in shapes:
            blank = np.zeros((height, width, 3), np.uint8)
            for _ in range(2):
                self.detect(blank, self.settings.score_threshold)

    def _describe(self) -> dict[str, Any]:
        side = self.settings.input_size
        return {"input_width": side, "input_height": side}

    def detect(
        self,
        image_bgr: np.ndarray,
        score_threshold: float,
        max_faces: int = 0,
        min_face_size: float = 0,
    ) -> list[RawFace]:
        if self._model is None:
            raise RuntimeError("detector is not loaded")
        side = self.settings.input_size
        image = _fit_for_resize(image_bgr, side)
        size = input_shape(image.shape[:2], side) if self._photo_shaped else (side, side)
        with self.running():
            boxes, kpss = self._model.detect(
                image, input_size=size, max_num=0, det_thresh=score_threshold
            )
        faces = [
            RawFace(
                box=boxes[i, :4].astype(np.float32), score=float(boxes[i, 4]), landmarks=kpss[i]
            )
            for i in range(boxes.shape[0])
        ]
        faces = [f for f in faces if f.shorter_side >= min_face_size]
        faces.sort(key=lambda f: (-f.area, -f.score))
        return faces[:max_faces] if max_faces > 0 else faces


class _SCRFD(SCRFD):  # type: ignore[misc]  # insightface has no types
    """insightface's SCRFD, its input blob built by `input_blob`."""

    def _prepare_input_blob(self, img: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
        if img.shape[1::-1] != tuple(input_size) or getattr(self, "input_dtype", np.float32) != (
            np.float32
        ):
            return super()._prepare_input_blob(img, input_size)  # type: ignore[no-any-return]
        return input_blob(img, self.input_mean, self.input_std)

    def forward(
        self, img: np.ndarray, threshold: float
    ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """insightface's `forward`, each stride's boxes and landmarks decoded only at the
        anchors whose score clears `threshold`.

        The library scales and decodes the outputs of every anchor (16,800 at 640x640: two
        per cell of each stride's grid) and then keeps the few above the threshold. Decoding
        is per element, so picking the anchors first gives the same numbers, to the bit
        (tests/detect/test_detector.py), in a probe 0.15 against 0.42 ms of CPU per small
        bench photo.
        """
        input_size = (img.shape[1], img.shape[0])
        blob = self._prepare_input_blob(img, input_size)
        outputs = self._session_for_input_size(input_size).run(
            self.output_names, {self.input_name: blob}
        )
        if self.batched:
            outputs = [output[0] for output in outputs]
        height, width = blob.shape[2:]
        scores_list, boxes_list, kpss_list = [], [], []
        for index, stride in enumerate(self._feat_stride_fpn):
            scores = outputs[index]
            keep = np.where(scores >= threshold)[0]
            centers = self._anchor_centers(height // stride, width // stride, stride)[keep]
            scores_list.append(scores[keep])
            boxes_list.append(distance2bbox(centers, outputs[index + self.fmc][keep] * stride))
            if self.use_kps:
                kps = distance2kps(centers, outputs[index + 2 * self.fmc][keep] * stride)
                kpss_list.append(kps.reshape(len(keep), kps.shape[1] // 2, 2))
        return scores_list, boxes_list, kpss_list

    def _anchor_centers(self, height: int, width: int, stride: int) -> np.ndarray:
        """Each anchor's (x, y) on a stride's grid of height x width cells, row by row, every
        cell's point repeated once per anchor: the library's layout, kept in its cache."""
        key = (height, width, stride)
        centers = self.center_cache.get(key)
        if centers is None:
            xs, ys = np.meshgrid(np.arange(width), np.arange(height))
            grid = np.stack([xs, ys], axis=-1).astype(np.float32)
            centers = np.repeat((grid * stride).reshape(-1, 2), self._num_anchors, axis=0)
            if len(self.center_cache) < 100:
                self.center_cache[key] = centers
        return centers  # type: ignore[no-any-return]


def input_blob(image_bgr: np.ndarray, mean: float, std: float) -> np.ndarray:
    """The detector's input: (1, 3, H, W) float32 RGB, (pixel - mean) / std.

    The same numbers, to the bit (tests/detect/test_detector.py), as the
    cv2.dnn.blobFromImage(swapRB=True) insightface calls, for a fraction of its CPU: in one
    probe 0.4 ms against 1.5 ms at 640x608, and against 6.2 ms at 640x640, the input of every
    photo on a GPU.
    """
    height, width = image_bgr.shape[:2]
    blob = np.empty((1, 3, height, width), np.float32)
    for plane, channel in zip(blob[0], reversed(cv2.split(image_bgr)), strict=True):
        plane[...] = channel
    blob -= np.float32(mean)
    blob *= np.float32(1 / std)
    return blob


def photo_shaped(providers: list[str], model_input: list[int | str | None]) -> bool:
    """Whether a session on `providers` runs each photo at its own proportions.

    On the CPU it does (`input_shape`): a 4:3 photo padded to the square is a quarter zeros,
    and the model's time follows its input's area. GPU providers keep the one square shape,
    for which cuDNN picks its algorithms and TensorRT builds its engine once; a model file
    with a fixed input size keeps its own.
    """
    height, width = model_input[2:]
    return providers[0] == CPU and not (isinstance(height, int) or isinstance(width, int))


def input_shape(size: tuple[int, int], side: int) -> tuple[int, int]:
    """The detector input (width, height) for a photo of `size` (height, width): its longer
    side `side`, its shorter one the photo's proportion of that, rounded up to the stride.

    The photo is scaled into it as into the square (SCRFD keeps its proportions and pads the
    rest): the faces found are the square's, within a pixel
    (tests/detect/test_detector.py), for a 4:3 photo in three quarters of the model's time.
    """
    height, width = size
    longer, shorter = max(height, width), min(height, width)
    fitted = min(side, max(_STRIDE, math.ceil(side * shorter / longer / _STRIDE) * _STRIDE))
    return (side, fitted) if width >= height else (fitted, side)


def _fit_for_resize(image_bgr: np.ndarray, side: int) -> np.ndarray:
    """The image padded (right or bottom, so boxes keep their coordinates) until its shorter
    side stays at least one pixel when the longer one is scaled to `side`.

    SCRFD scales the longer side to the input size; a strip such as 1x5000 would shrink to
    zero pixels, which OpenCV refuses with an error.
    """
    height, width = image_bgr.shape[:2]
    need = -(-max(height, width) // side) + 1
    if min(height, width) >= need:
        return image_bgr
    pad_bottom = max(0, need - height) if height < width else 0
    pad_right = max(0, need - width) if width <= height else 0
    return np.pad(image_bgr, ((0, pad_bottom), (0, pad_right), (0, 0)))


def align(image_bgr: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The face warped onto ArcFace's 112x112 template."""
    return norm_crop(image_bgr, landmarks, CROP_SIZE)
