"""Turn untrusted photo bytes into a BGR array, refusing what is empty, too big, foreign or broken.

Limits are checked from the header, before any pixel is decoded, so a small file that claims
a huge image never allocates it, and a JPEG's scans are counted first, so a small file that
repeats a scan thousands of times never runs them. A photo can be decoded at a reduced scale
(`fit`): libjpeg's DCT scaling makes a 12 MP JPEG several times cheaper at 1/4 scale. Regions
wanted at full size are cut from a JPEG losslessly (libturbojpeg) and only they are decoded.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pillow_heif
import structlog
import turbojpeg
from PIL import Image, UnidentifiedImageError

from services.common.errors import FaceScoreError, Reason

pillow_heif.register_heif_opener()

log = structlog.get_logger(__name__)

# PyTurboJPEG reports libturbojpeg's warnings (damaged or truncated data) as Python warnings
# and returns what it decoded: raised instead, so that Pillow decodes the photo, or refuses it
# with a reason. A filter on PyTurboJPEG's own module, set once: a catch_warnings() around
# each call would change the filters of every thread while it runs (pyproject.toml sets the
# same filter for the tests, whose warning capture replaces the filters per test).
warnings.filterwarnings("error", category=UserWarning, module=r"turbojpeg\Z")

# Our own max_pixels check runs before every decode and replaces Pillow's process-wide bomb
# guard, which would otherwise refuse (or warn about) images our configured limit allows.
Image.MAX_IMAGE_PIXELS = None

# Only these plugins ever parse request bytes: Pillow's rarer parsers (EPS, PSD, FITS, ...) are
# attack surface we have no use for.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "HEIF", "AVIF")

# Multi-picture JPEGs, as some cameras write them, are plain JPEGs to a client.
_FORMAT_ALIASES = {"MPO": "JPEG"}

_WIDE_GRAY_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})

# A baseline JPEG has one scan per image, a progressive one about ten (up to ~20 with
# optimised scripts). Each scan of a progressive JPEG is a pass over every coefficient of the
# image, so a file repeating a small scan thousands of times costs minutes, not milliseconds.
DEFAULT_MAX_JPEG_SCANS = 100

# The scales Pillow's draft asks libjpeg for: powers of two only, which libjpeg decodes
# cheaply (its 3/4 scale costs about as much as the full size).
JPEG_SCALES = (1 / 8, 1 / 4, 1 / 2, 1.0)


@dataclass(frozen=True, eq=False)  # eq would compare arrays elementwise and fail.
class DecodedImage:
    bgr: npt.NDArray[np.uint8]  # HxWx3 uint8, C-contiguous, BGR, EXIF orientation applied.
    format: str  # Pillow's name for the format: JPEG, PNG, WEBP, GIF, BMP, TIFF, HEIF, AVIF.
    sha256: str  # Hex SHA-256 of the encoded bytes.
    # The photo's own size, EXIF orientation applied; bgr is smaller when decoded with `fit`.
    original_size: tuple[int, int] = (0, 0)

    @property
    def width(self) -> int:
        return int(self.bgr.shape[1])

    @property
    def height(self) -> int:
        return int(self.bgr.shape[0])

    @property
    def original_width(self) -> int:
        return self.original_size[0] or self.width

    @property
    def original_height(self) -> int:
        return self.original_size[1] or self.height

    @property
    def scale(self) -> tuple[float, float]:
        """Decoded pixels per original pixel, across and down."""
        return self.width / self.original_width, self.height / self.original_height


def decode_image(
    data: bytes,
    max_bytes: int,
    max_pixels: int,
    *,
    max_jpeg_scans: int = DEFAULT_MAX_JPEG_SCANS,
    fit: int | None = None,
    min_scale: float = 0.0,
) -> DecodedImage:
    """Decode a photo from its content alone; every refusal is a FaceScoreError with a Reason.

    With `fit`, a JPEG is decoded by DCT scaling at the smallest scale whose longer side
    still has `fit` pixels, and at least `min_scale` of the original; other formats, whose
    decoders cannot scale, are decoded at full size (see `shrink`).
    """

    def turned(bgr: npt.NDArray[np.uint8] | None, turn: Image.Transpose | None) -> Any:
        return None if bgr is None else _turned(bgr, turn)

    bgr, fmt, sha256, original = _decode(
        data,
        max_bytes,
        max_pixels,
        max_jpeg_scans,
        fit,
        min_scale,
        lambda image, *_: _to_bgr(image),
        jpeg=lambda stored, turn, n: turned(_jpeg_bgr(data, stored, n), turn),
        heif=lambda size, turn: turned(_heif_bgr(data, size), turn),
    )
    return DecodedImage(bgr=bgr, format=fmt, sha256=sha256, original_size=original)


Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in the photo's own pixels


def decode_boxes(
    data: bytes,
    max_bytes: int,
    max_pixels: int,
    boxes: list[Box],
    *,
    max_jpeg_scans: int = DEFAULT_MAX_JPEG_SCANS,
    min_scale: float = 0.0,
) -> tuple[tuple[float, float], list[tuple[npt.NDArray[np.uint8], tuple[int, int]]]]:
    """The pixels inside `boxes` of a decode of at least `min_scale` (a JPEG's smallest DCT
    scale that reaches it), refused as `decode_image` refuses.

    Returns the scale decoded (decoded pixels per original pixel, across and down) and, per
    box, its BGR pixels and the decoded position of their top-left corner. Only the boxes are
    turned by the EXIF orientation: turning a whole 12 MP portrait photo costs about as much
    as its decode. A JPEG goes to libturbojpeg where it can: at full size the boxes are cut
    out of the compressed photo and only they are decoded; reduced, the photo is decoded
    straight to BGR. Otherwise Pillow decodes it and only the boxes are converted to BGR (on a
    12 MP photo that conversion costs more than the decode).
    """

    def cut_from(
        size: tuple[int, int],
        stored_bgr: Callable[[tuple[int, int, int, int]], npt.NDArray[np.uint8]],
        original: tuple[int, int],
        turn: Image.Transpose | None,
    ) -> Any:
        """The boxes of a decode of `size` (as stored), `stored_bgr(rect)` giving the BGR
        pixels of one of its stored rectangles."""
        shown = _turned_size(size, turn)
        scale = (shown[0] / original[0], shown[1] / original[1])
        regions = []
        for box in boxes:
            left, top, right, bottom = box_pixels(box, scale, shown)
            if right > left and bottom > top:
                rect = _stored_rect((left, top, right, bottom), turn, shown)
                pixels = _turned(stored_bgr(rect), turn)
            else:
                pixels = np.zeros((bottom - top, right - left, 3), np.uint8)
            regions.append((pixels, (left, top)))
        return scale, regions

    def cut(image: Image.Image, original: tuple[int, int], turn: Image.Transpose | None) -> Any:
        return cut_from(image.size, lambda rect: _to_bgr(image.crop(rect)), original, turn)

    def cut_turbo(stored: tuple[int, int], turn: Image.Transpose | None, denominator: int) -> Any:
        if denominator == 1:
            regions = _jpeg_regions(data, stored, turn, boxes)
            return None if regions is None else ((1.0, 1.0), regions)
        # Reduced: the whole photo straight to BGR, which costs less than Pillow's decode of
        # it to RGB, then the boxes sliced out.
        bgr = _jpeg_bgr(data, stored, denominator)
        if bgr is None:
            return None
        original = _turned_size(stored, turn)

        def sliced(rect: tuple[int, int, int, int]) -> npt.NDArray[np.uint8]:
            return np.ascontiguousarray(bgr[rect[1] : rect[3], rect[0] : rect[2]])

        return cut_from((bgr.shape[1], bgr.shape[0]), sliced, original, turn)

    cut_out, *_ = _decode(
        data,
        max_bytes,
        max_pixels,
        max_jpeg_scans,
        1,
        min_scale,
        cut,
        turn_pixels=False,
        jpeg=cut_turbo,
        hashed=False,
    )
    scale, regions = cut_out
    return scale, regions


# Pixels kept around a region cut losslessly, past the rectangle asked for: a cut JPEG's edge
# rows and columns are upsampled from fewer chroma neighbours than the whole photo's, so they
# differ; one MCU (at most 16 pixels) further in, the pixels are the whole decode's.
_CUT_EDGE = 16


@functools.cache
def _turbojpeg() -> turbojpeg.TurboJPEG | None:
    """libturbojpeg through PyTurboJPEG; None, said once, where the system lacks the library."""
    try:
        return turbojpeg.TurboJPEG()
    except (OSError, RuntimeError) as exc:
        log.warning(
            "libturbojpeg_missing",
            detail="faces that need a full-size decode are cut from a whole decode, slower; "
            "install libturbojpeg (Debian: libturbojpeg0)",
            error=str(exc),
        )
        return None


def _jpeg_bgr(data: bytes, stored: tuple[int, int], denominator: int) -> Any:
    """A JPEG decoded at 1/`denominator` straight to BGR by libturbojpeg, as stored (not
    turned): the pixels Pillow's draft and load give, without their RGB-to-BGR pass (up to
    4 ms of a 12 MP photo's 26-35 at 1/4). None where libturbojpeg is missing, the colour
    space is not YCbCr or grey, or libturbojpeg warns (damaged data): Pillow then decodes, or
    refuses."""
    found = _turbo_header(data, stored)
    if found is None:
        return None
    try:
        return found[0].decode(
            data,
            turbojpeg.TJPF_BGR,
            scaling_factor=None if denominator == 1 else (1, denominator),
            flags=turbojpeg.TJFLAG_STOPONWARNING,
        )
    except (OSError, UserWarning):
        return None


def _heif_bgr(data: bytes, size: tuple[int, int]) -> Any:
    """An HEIF photo's primary image decoded by libheif straight to 8-bit BGR, its HEIF
    transforms applied as Pillow's opener applies them: the pixels Pillow gives, without its
    copy of them and the RGB-to-BGR pass after it (about 35 ms of a 12 MP photo). None where
    libheif fails or answers another size or channel count: Pillow then decodes, or refuses."""
    try:
        bgr = np.asarray(pillow_heif.open_heif(data, convert_hdr_to_8bit=True, bgr_mode=True))
    except Exception:  # libheif's errors on damaged data: Pillow's decode gives the reason.
        return None
    if bgr.dtype != np.uint8 or bgr.shape != (size[1], size[0], 3):
        return None
    return bgr


def _turbo_header(data: bytes, stored: tuple[int, int]) -> tuple[turbojpeg.TurboJPEG, int] | None:
    """libturbojpeg and the JPEG's chroma subsampling, where libturbojpeg can decode the JPEG
    to BGR: the library is there, reads the header without a warning, agrees with Pillow on
    the size and finds YCbCr or grey (not CMYK)."""
    jpeg = _turbojpeg()
    if jpeg is None:
        return None
    try:
        width, height, subsampling, colorspace = jpeg.decode_header(data)
    except (OSError, UserWarning):
        return None
    if (width, height) != stored or colorspace not in _TURBO_COLORSPACES:
        return None
    return jpeg, subsampling


_TURBO_COLORSPACES = (turbojpeg.TJCS_YCbCr, turbojpeg.TJCS_GRAY)


def _jpeg_regions(
    data: bytes, stored: tuple[int, int], turn: Image.Transpose | None, boxes: list[Box]
) -> list[tuple[npt.NDArray[np.uint8], tuple[int, int]]] | None:
    """`boxes` of a JPEG at full size, as `decode_boxes` gives them, without decoding the
    rest: each box, widened to whole MCUs and an edge, is cut from the compressed photo
    (libturbojpeg's lossless crop, which reads the coefficients but runs no inverse DCT,
    upsampling or colour conversion) and only the cuts are decoded. A 12 MP photo's five faces
    cost 54 ms of CPU this way against 81 for Pillow's whole decode (same process, median of
    nine, on the slower machine of 2026-12-01).

    None where it cannot apply (no libturbojpeg, a colour space other than YCbCr or grey, a
    header that disagrees with Pillow's, a transform libturbojpeg refuses): the caller decodes
    the whole photo.
    """
    found = _turbo_header(data, stored)
    if found is None:
        return None
    jpeg, subsampling = found
    width, height = stored
    mcu_w, mcu_h = turbojpeg.tjMCUWidth[subsampling], turbojpeg.tjMCUHeight[subsampling]
    shown = _turned_size(stored, turn)
    wanted = []  # per box: its upright rectangle, its stored one, and the cut around that
    for box in boxes:
        rect = box_pixels(box, (1.0, 1.0), shown)
        left, top, right, bottom = _stored_rect(rect, turn, shown)
        x0 = max(0, left - _CUT_EDGE) // mcu_w * mcu_w
        y0 = max(0, top - _CUT_EDGE) // mcu_h * mcu_h
        x1, y1 = min(width, right + _CUT_EDGE), min(height, bottom + _CUT_EDGE)
        wanted.append((rect, (left, top, right, bottom), (x0, y0, x1 - x0, y1 - y0)))
    cuttable = [
        i for i, (rect, _, _) in enumerate(wanted) if rect[2] > rect[0] and rect[3] > rect[1]
    ]
    try:
        cuts = jpeg.crop_multiple(data, [wanted[i][2] for i in cuttable]) if cuttable else []
        flags = turbojpeg.TJFLAG_STOPONWARNING
        decoded = dict(
            zip(
                cuttable,
                (jpeg.decode(cut, turbojpeg.TJPF_BGR, flags=flags) for cut in cuts),
                strict=True,
            )
        )
    except (OSError, UserWarning) as exc:
        log.info("jpeg_lossless_cut_refused", error=str(exc))
        return None
    regions = []
    for i, (rect, (left, top, right, bottom), (x0, y0, _, _)) in enumerate(wanted):
        if i not in decoded:
            pixels = np.zeros((rect[3] - rect[1], rect[2] - rect[0], 3), np.uint8)
        else:
            pixels = _turned(decoded[i][top - y0 : bottom - y0, left - x0 : right - x0], turn)
        regions.append((np.ascontiguousarray(pixels), rect[:2]))
    return regions


def box_pixels(
    box: Box, scale: tuple[float, float], size: tuple[int, int]
) -> tuple[int, int, int, int]:
    """`box` in the pixels of a decode at `scale` of `size` (width, height): left, top, right,
    bottom, rounded outwards and kept inside the decode."""
    (sx, sy), (width, height) = scale, size
    x1, y1, x2, y2 = box
    left, top = max(0, int(x1 * sx)), max(0, int(y1 * sy))
    right, bottom = min(width, math.ceil(x2 * sx)), min(height, math.ceil(y2 * sy))
    return left, top, max(left, right), max(top, bottom)


def _decode(
    data: bytes,
    max_bytes: int,
    max_pixels: int,
    max_jpeg_scans: int,
    fit: int | None,
    min_scale: float,
    convert: Callable[[Image.Image, tuple[int, int], Image.Transpose | None], Any],
    *,
    turn_pixels: bool = True,
    jpeg: Callable[[tuple[int, int], Image.Transpose | None, int], Any] | None = None,
    heif: Callable[[tuple[int, int], Image.Transpose | None], Any] | None = None,
    hashed: bool = True,
) -> tuple[Any, str, str, tuple[int, int]]:
    """`convert(image, original size, turn)` of the loaded photo, with its format, SHA-256
    and original size (EXIF orientation applied); refusals raise FaceScoreError.

    With `turn_pixels` the image is turned by its EXIF orientation and `turn` is None;
    without, the image comes as stored and `turn` is the transpose that shows it.
    `jpeg(stored size, turn, n)`, for a JPEG to be decoded at 1/n of its size (the DCT scale
    Pillow's draft would pick), may answer in place of Pillow's decode, with the photo as
    `convert` would give it; None from it, and Pillow decodes the photo. `heif(size, turn)`
    may answer likewise for an HEIF photo without alpha. Without `hashed`
    the SHA-256 is left empty (a second decode of bytes already hashed)."""
    if not data:
        raise FaceScoreError(Reason.EMPTY_IMAGE, "the image is empty")
    if len(data) > max_bytes:
        raise FaceScoreError(
            Reason.IMAGE_TOO_LARGE,
            f"the image is {len(data)} bytes, more than the limit of {max_bytes}",
            metadata={"limit": str(max_bytes), "actual": str(len(data))},
        )
    sha256 = hashlib.sha256(data).hexdigest() if hashed else ""

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
        if fmt == "JPEG":
            _check_jpeg_scans(data, max_jpeg_scans)
        factor = _reduction(width, height, fit, min_scale)
        try:
            answered, turn = None, None
            if fmt == "JPEG" and jpeg is not None:
                turn = _orientation(image)
                answered = jpeg((width, height), turn, _dct_denominator(width, height, factor))
            elif fmt == "HEIF" and heif is not None and image.mode == "RGB":
                turn = _orientation(image)
                answered = heif((width, height), turn)
            if answered is not None:
                return answered, fmt, sha256, _turned_size((width, height), turn)
            if fmt == "JPEG" and factor > 1:
                image.draft(image.mode, (math.ceil(width / factor), math.ceil(height / factor)))
            image.load()
            turn = _orientation(image)
            original = _turned_size((width, height), turn)
            if turn is not None and turn_pixels:
                converted = convert(image.transpose(turn), original, None)
            else:
                converted = convert(image, original, turn)
        except MemoryError:
            raise
        except FaceScoreError:
            raise
        except Exception as exc:
            raise _corrupt(fmt, exc) from exc
    return converted, fmt, sha256, original


def header_pixels(data: bytes) -> int | None:
    """Width x height from the header alone; None when no allowed format can read it."""
    try:
        with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as image:
            return int(image.width * image.height)
    except Exception:  # The decode proper refuses it with a reason.
        return None


def shrink(decoded: DecodedImage, fit: int) -> DecodedImage:
    """`decoded` reduced by a whole factor, its longer side keeping at least `fit` pixels.

    A box filter, which anti-aliases as DCT scaling does, for formats decoded at full size:
    OpenCV's area interpolation, to the size Pillow's reduce gives (a partial block at the edge
    is one pixel), within one level of its pixels in about half its time (9.5 against 17 ms
    for a 12 MP photo reduced six times, which Pillow also copied in and out).
    """
    factor = int(max(decoded.width, decoded.height) / fit)
    if factor < 2:
        return decoded
    size = (-(-decoded.width // factor), -(-decoded.height // factor))
    reduced = cv2.resize(decoded.bgr, size, interpolation=cv2.INTER_AREA)
    return DecodedImage(
        bgr=np.ascontiguousarray(reduced),
        format=decoded.format,
        sha256=decoded.sha256,
        original_size=(decoded.original_width, decoded.original_height),
    )


def _dct_denominator(width: int, height: int, factor: float) -> int:
    """n of the DCT scale 1/n (1, 2, 4 or 8) Pillow's draft picks to reduce by `factor`."""
    if factor <= 1:
        return 1
    most = min(width // math.ceil(width / factor), height // math.ceil(height / factor))
    return max(n for n in (1, 2, 4, 8) if n <= max(1, most))


def _reduction(width: int, height: int, fit: int | None, min_scale: float) -> float:
    """How many times smaller than stored the decode may be: 1 = full size."""
    if fit is None:
        return 1.0
    by_fit = max(width, height) / fit
    by_scale = 1 / min_scale if min_scale > 0 else by_fit
    return max(1.0, min(by_fit, by_scale))


# EXIF orientation -> the transpose that shows the stored pixels upright, as Pillow's
# ImageOps.exif_transpose turns them.
_TURNS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_SIDES = frozenset(
    {
        Image.Transpose.TRANSPOSE,
        Image.Transpose.ROTATE_270,
        Image.Transpose.TRANSVERSE,
        Image.Transpose.ROTATE_90,
    }
)


def _orientation(image: Image.Image) -> Image.Transpose | None:
    """The transpose the EXIF orientation asks for; None for upright or unreadable EXIF (a
    mangled EXIF block does not spoil the pixels: they are shown as stored)."""
    try:
        return _TURNS.get(int(image.getexif().get(0x0112, 1)))
    except Exception:
        return None


def _turned_size(size: tuple[int, int], turn: Image.Transpose | None) -> tuple[int, int]:
    return (size[1], size[0]) if turn in _SWAPS_SIDES else size


# Each transpose as OpenCV's one pass over the pixels: Pillow's transpose of an array, with
# its copies in and out, cost 2.7 against 0.4 ms for a 12 MP photo's 1/4 decode.
_CV2_TURNS: dict[Image.Transpose, Callable[[npt.NDArray[np.uint8]], Any]] = {
    Image.Transpose.FLIP_LEFT_RIGHT: lambda bgr: cv2.flip(bgr, 1),
    Image.Transpose.FLIP_TOP_BOTTOM: lambda bgr: cv2.flip(bgr, 0),
    Image.Transpose.ROTATE_90: lambda bgr: cv2.rotate(bgr, cv2.ROTATE_90_COUNTERCLOCKWISE),
    Image.Transpose.ROTATE_180: lambda bgr: cv2.rotate(bgr, cv2.ROTATE_180),
    Image.Transpose.ROTATE_270: lambda bgr: cv2.rotate(bgr, cv2.ROTATE_90_CLOCKWISE),
    Image.Transpose.TRANSPOSE: cv2.transpose,
    Image.Transpose.TRANSVERSE: lambda bgr: cv2.rotate(cv2.transpose(bgr), cv2.ROTATE_180),
}


def _turned(bgr: npt.NDArray[np.uint8], turn: Image.Transpose | None) -> npt.NDArray[np.uint8]:
    """BGR pixels turned by `turn`, pixel for pixel as Pillow's transpose turns them."""
    if turn is None:
        return bgr
    return np.ascontiguousarray(_CV2_TURNS[turn](bgr))


def _stored_rect(
    rect: tuple[int, int, int, int], turn: Image.Transpose | None, shown: tuple[int, int]
) -> tuple[int, int, int, int]:
    """`rect` (left, top, right, bottom) of the upright image of size `shown`: the same
    pixels in the stored image, which `turn` shows upright."""
    left, top, right, bottom = rect
    width, height = shown
    T = Image.Transpose
    return {
        None: rect,
        T.FLIP_LEFT_RIGHT: (width - right, top, width - left, bottom),
        T.ROTATE_180: (width - right, height - bottom, width - left, height - top),
        T.FLIP_TOP_BOTTOM: (left, height - bottom, right, height - top),
        T.TRANSPOSE: (top, left, bottom, right),
        T.ROTATE_270: (top, width - right, bottom, width - left),
        T.TRANSVERSE: (height - bottom, width - right, height - top, width - left),
        T.ROTATE_90: (height - bottom, left, height - top, right),
    }[turn]


# After a scan header, entropy-coded data runs until the next marker: 0xFF followed by a byte
# other than 0x00 (a stuffed 0xFF), 0xFF (fill) or a restart marker (0xD0-0xD7).
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xff\xd0-\xd7]")
_SOS, _EOI = 0xDA, 0xD9
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


def jpeg_scan_count(data: bytes, stop_after: int) -> int:
    """Scans (SOS segments) of the first image in a JPEG, counted from its markers alone.

    Stops counting past `stop_after`. Damaged structure ends the count early: the decoder
    then says what is wrong.
    """
    pos, scans = 2, 0
    while pos + 4 <= len(data) and scans <= stop_after:
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker == _EOI:
            break
        if marker in _STANDALONE:
            pos += 2
            continue
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == _SOS:
            scans += 1
            found = _NEXT_MARKER.search(data, pos)
            if found is None:
                break
            pos = found.start()
    return scans


def _check_jpeg_scans(data: bytes, limit: int) -> None:
    scans = jpeg_scan_count(data, limit)
    if scans > limit:
        raise FaceScoreError(
            Reason.IMAGE_TOO_COMPLEX,
            f"the JPEG has more than {limit} scans; photos have at most a few dozen",
            metadata={"limit": str(limit), "measure": "jpeg_scans"},
        )


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
    # OpenCV's swap is 2.4x faster than copying numpy's reversed view (53 against 129 ms CPU for
    # a 12 MP photo, where it cost more than the decode itself).
    return np.asarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), np.uint8)


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
