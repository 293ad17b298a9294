"""Phone-like photos made from the shipped sample photos: 12 MP, JPEG or HEIC, EXIF-rotated.

People send 4032x3024 photos straight from their phones, not the small crops the models are
tested on. These are generated when a test or benchmark runs (nothing binary is committed):
each sample photo is scaled to cover a 12 MP frame, so its faces grow with it, from one
face (yaoming) to a team (players).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import pillow_heif
from PIL import Image, ImageOps

from services.common.models import insightface_image, vectron_file

PHONE_SIZE = (4032, 3024)
# Phones store an HEIC photo as a grid of 512x512 HEVC tiles, which libheif decodes on
# several threads (pillow-heif's DECODE_THREADS, 4 by default); one HEVC image of 12 MP
# decodes on one thread.
HEIC_TILE = 512
# EXIF orientation 6: the sensor's landscape pixels, shown turned 90 degrees clockwise, as
# phones store portrait photos.
ROTATED_90 = 6

pillow_heif.register_heif_opener()


@dataclass(frozen=True)
class PhonePhoto:
    name: str  # source photo and format, e.g. "t1.jpg as JPEG"
    data: bytes
    faces: int  # faces in the source photo


def sample_sources() -> dict[str, tuple[Path, int]]:
    """The shipped sample photos and how many faces the detector finds in each."""
    return {
        "yaoming.jpg": (vectron_file("yaoming.jpg"), 1),
        "gdp.jpg": (vectron_file("gdp.jpg"), 5),
        "t1.jpg": (insightface_image("t1.jpg"), 6),
        "players.jpg": (vectron_file("players.jpg"), 22),
    }


def phone_frame(source: Image.Image, size: tuple[int, int] = PHONE_SIZE) -> Image.Image:
    """`source` scaled and centre-cropped to fill `size`, in the orientation of `source`."""
    if (source.width > source.height) != (size[0] > size[1]):
        size = (size[1], size[0])
    return ImageOps.fit(source.convert("RGB"), size, Image.Resampling.LANCZOS)


def encode(image: Image.Image, fmt: str, orientation: int = 1, quality: int = 90) -> bytes:
    """`image` as a camera would store it: turned back to the sensor's frame when
    `orientation` says so, with that orientation in its EXIF; an HEIC larger than a tile
    as a grid of `HEIC_TILE` tiles."""
    stored = image
    exif = Image.Exif()
    if orientation == ROTATED_90:
        stored = image.transpose(Image.Transpose.ROTATE_90)
        exif[0x0112] = ROTATED_90
    buffer = io.BytesIO()
    tiles = {"tile_size": HEIC_TILE} if fmt == "HEIF" else {}
    stored.save(buffer, fmt, quality=quality, exif=exif.tobytes(), **tiles)
    return buffer.getvalue()


def phone_photos(
    formats: tuple[str, ...] = ("JPEG", "HEIF"), size: tuple[int, int] = PHONE_SIZE
) -> list[PhonePhoto]:
    """Every sample photo at 12 MP (or `size`) in each format, portrait photos stored
    EXIF-rotated. The same frames at 800x600 are the like-for-like small photos: the same
    faces, fewer pixels."""
    photos = []
    for name, (path, faces) in sample_sources().items():
        with Image.open(path) as source:
            frame = phone_frame(source, size)
        orientation = ROTATED_90 if frame.height > frame.width else 1
        for fmt in formats:
            data = encode(frame, fmt, orientation)
            photos.append(PhonePhoto(f"{name} as {fmt}", data, faces))
    return photos
