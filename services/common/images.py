"""Turn untrusted photo bytes into a BGR array, refusing what is empty, too big, foreign or broken.

Limits are checked from the header, before any pixel is decoded, so a small file that claims
a huge image never allocates it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pillow_heif
from PIL import Image, ImageOps, UnidentifiedImageError

from services.common.errors import FaceScoreError, Reason

pillow_heif.register_heif_opener()

# Our own max_pixels check runs before every decode and replaces Pillow's process-wide bomb
# guard, which would otherwise refuse (or warn about) images our configured limit allows.
Image.MAX_IMAGE_PIXELS = None

# Only these plugins ever parse request bytes: Pillow's rarer parsers (EPS, PSD, FITS, ...) are
# attack surface we have no use for.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "HEIF", "AVIF")

# Multi-picture JPEGs, as some cameras write them, are plain JPEGs to a client.
_FORMAT_ALIASES = {"MPO": "JPEG"}

_WIDE_GRAY_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


@dataclass(frozen=True, eq=False)  # eq would compare arrays elementwise and fail.
class DecodedImage:
    bgr: npt.NDArray[np.uint8]  # HxWx3 uint8, C-contiguous, BGR, EXIF orientation applied.
    format: str  # Pillow's name for the format: JPEG, PNG, WEBP, GIF, BMP, TIFF, HEIF, AVIF.
    sha256: str  # Hex SHA-256 of the encoded bytes.

    @property
    def width(self) -> int:
        return int(self.bgr.shape[1])

    @property
    def height(self) -> int:
        return int(self.bgr.shape[0])


def decode_image(data: bytes, max_bytes: int, max_pixels: int) -> DecodedImage:
    """Decode a photo from its content alone; every refusal is a FaceScoreError with a Reason."""
    if not data:
        raise FaceScoreError(Reason.EMPTY_IMAGE, "the image is empty")
    if len(data) > max_bytes:
        raise FaceScoreError(
            Reason.IMAGE_TOO_LARGE,
            f"the image is {len(data)} bytes, more than the limit of {max_bytes}",
            metadata={"limit": str(max_bytes), "actual": str(len(data))},
        )
    sha256 = hashlib.sha256(data).hexdigest()

    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        raise _unidentified(data) from None
    except MemoryError:
        raise
    except Exception as exc:  # Plugins raise many undocumented types on hostile input.
        raise _corrupt(_sniff(data, allowed=True) or "unknown", exc) from exc

    with image:
        fmt = _FORMAT_ALIASES.get(image.format or "", image.format or "unknown")
        width, height = image.size
        if width * height > max_pixels:
            raise FaceScoreError(
                Reason.IMAGE_TOO_MANY_PIXELS,
                f"the image is {width}x{height} = {width * height} pixels, "
                f"more than the limit of {max_pixels}",
                metadata={
                    "limit": str(max_pixels),
                    "actual": str(width * height),
                    "width": str(width),
                    "height": str(height),
                },
            )
        try:
            image.load()
            _apply_orientation(image)
            bgr = _to_bgr(image)
        except MemoryError:
            raise
        except Exception as exc:
            raise _corrupt(fmt, exc) from exc
    return DecodedImage(bgr=bgr, format=fmt, sha256=sha256)


def _apply_orientation(image: Image.Image) -> None:
    # A mangled EXIF block does not spoil the pixels; show them as stored rather than refuse.
    with contextlib.suppress(Exception):
        ImageOps.exif_transpose(image, in_place=True)


def _to_bgr(image: Image.Image) -> npt.NDArray[np.uint8]:
    if image.mode in _WIDE_GRAY_MODES:
        # Pillow's own conversion to 8 bits clips at 255, which turns a 16-bit photo white.
        wide = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
        gray = ((wide + 128) // 257).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, np.newaxis], 3, axis=2))
    if image.has_transparency_data:
        # Transparent areas become white, as a browser shows them on a default page, rather than
        # the black a plain drop of the alpha channel would leave.
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image.convert("RGBA"))
    rgb = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    return np.ascontiguousarray(rgb[:, :, ::-1])


def _sniff(data: bytes, *, allowed: bool) -> str | None:
    """The first format, allowed or not, whose signature the bytes carry; parses nothing.

    For refused formats the name is only a hint for the client: a few signatures are loose
    (an uncompressed TGA, which has none, passes for CUR).
    """
    Image.init()
    names = ALLOWED_FORMATS if allowed else [n for n in Image.OPEN if n not in ALLOWED_FORMATS]
    prefix = data[:16]
    for name in names:
        accept = Image.OPEN[name][1] if name in Image.OPEN else None
        if accept is None:
            continue
        # Some signature checks assume a full 16-byte prefix and raise on shorter input.
        with contextlib.suppress(Exception):
            if accept(prefix) is True:
                return name
    return None


def _unidentified(data: bytes) -> FaceScoreError:
    supported = _sniff(data, allowed=True)
    if supported is not None:
        # The signature of a format we accept, yet no plugin could read the header: damage.
        return FaceScoreError(
            Reason.CORRUPT_IMAGE,
            f"the {supported} image is damaged",
            metadata={"format": supported},
        )
    other = _sniff(data, allowed=False)
    return FaceScoreError(
        Reason.UNSUPPORTED_IMAGE_FORMAT,
        f"unsupported image format{f' {other}' if other else ''}; "
        f"accepted: {', '.join(ALLOWED_FORMATS)}",
        metadata={"format": other or "unknown"},
    )


def _corrupt(fmt: str, exc: Exception) -> FaceScoreError:
    return FaceScoreError(
        Reason.CORRUPT_IMAGE,
        f"the {fmt} image could not be decoded: {exc}",
        metadata={"format": fmt},
    )
