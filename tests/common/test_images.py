"""decode_image: every accepted format, every refusal reason, and no allocation for a bomb."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import resource
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image, ImageFile, features

from services.common import images
from services.common.errors import FaceScoreError, Reason
from services.common.images import (
    DEFAULT_MAX_JPEG_SCANS,
    DecodedImage,
    _to_bgr,
    box_pixels,
    decode_boxes,
    decode_image,
    jpeg_scan_count,
    shrink,
)
from tests.pngs import dense_bomb, png_from_chunks

MAX_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 40_000_000
EXIF_ORIENTATION = 0x0112


def _t1_path() -> Path:
    spec = importlib.util.find_spec("insightface")
    assert spec is not None and spec.submodule_search_locations
    return Path(spec.submodule_search_locations[0]) / "data" / "images" / "t1.jpg"


T1_JPEG = _t1_path().read_bytes()


@pytest.fixture(scope="module")
def t1_small() -> Image.Image:
    """t1.jpg at a size that keeps the encoders quick; even sides suit HEIF's chroma planes."""
    with Image.open(io.BytesIO(T1_JPEG)) as image:
        return image.convert("RGB").resize((640, 442))


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def decode(data: bytes, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS) -> DecodedImage:
    decoded = decode_image(data, max_bytes, max_pixels)
    assert decoded.sha256 == hashlib.sha256(data).hexdigest()
    assert decoded.bgr.dtype == np.uint8
    assert decoded.bgr.ndim == 3 and decoded.bgr.shape[2] == 3
    assert decoded.bgr.flags["C_CONTIGUOUS"]
    assert (decoded.height, decoded.width) == decoded.bgr.shape[:2]
    return decoded


def refusal(
    data: bytes, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS
) -> FaceScoreError:
    with pytest.raises(FaceScoreError) as caught:
        decode_image(data, max_bytes, max_pixels)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in caught.value.metadata.items())
    return caught.value


def as_rgb(decoded: DecodedImage) -> npt.NDArray[np.int16]:
    return decoded.bgr[:, :, ::-1].astype(np.int16)


def mean_abs_diff(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB.


# Accepted formats.


def test_jpeg_matches_pillow_pixels_in_bgr_order() -> None:
    decoded = decode(T1_JPEG)
    with Image.open(io.BytesIO(T1_JPEG)) as image:
        rgb = np.asarray(image.convert("RGB"))
    assert decoded.format == "JPEG"
    assert decoded.bgr.shape == (*rgb.shape[:2], 3)
    np.testing.assert_array_equal(decoded.bgr, rgb[:, :, ::-1])


@pytest.mark.parametrize(
    ("fmt", "options"),
    [
        ("PNG", {}),
        ("BMP", {}),
        ("TIFF", {}),
        ("TIFF", {"compression": "tiff_lzw"}),
        ("WEBP", {"lossless": True}),
    ],
)
def test_lossless_formats_round_trip_exactly(
    t1_small: Image.Image, fmt: str, options: dict[str, Any]
) -> None:
    decoded = decode(encode(t1_small, fmt, **options))
    assert decoded.format == fmt
    np.testing.assert_array_equal(as_rgb(decoded), np.asarray(t1_small))


@pytest.mark.parametrize(("fmt", "options"), [("WEBP", {"quality": 90}), ("JPEG", {"quality": 90})])
def test_lossy_formats_stay_close(t1_small: Image.Image, fmt: str, options: dict[str, Any]) -> None:
    decoded = decode(encode(t1_small, fmt, **options))
    assert decoded.format == fmt
    assert decoded.bgr.shape == (442, 640, 3)
    assert mean_abs_diff(as_rgb(decoded), np.asarray(t1_small)) < 4


def test_heif_encoded_by_pillow_heif(t1_small: Image.Image) -> None:
    import pillow_heif

    # Fails, rather than skips, when this build of pillow-heif cannot write HEIF.
    assert pillow_heif.libheif_info()["HEIF"], "pillow-heif was built without an HEVC encoder"
    heif = pillow_heif.from_pillow(t1_small)
    buffer = io.BytesIO()
    heif.save(buffer, format="HEIF", quality=90)
    data = buffer.getvalue()
    assert data[4:12] == b"ftypheic"

    decoded = decode(data)
    assert decoded.format == "HEIF"
    assert decoded.bgr.shape == (442, 640, 3)
    assert mean_abs_diff(as_rgb(decoded), np.asarray(t1_small)) < 4


@pytest.mark.skipif(not features.check("avif"), reason="this Pillow has no AVIF codec")
def test_avif(t1_small: Image.Image) -> None:
    decoded = decode(encode(t1_small, "AVIF", quality=90))
    assert decoded.format == "AVIF"
    assert mean_abs_diff(as_rgb(decoded), np.asarray(t1_small)) < 4


def test_16_bit_grayscale_png_is_scaled_not_saturated(t1_small: Image.Image) -> None:
    gray8 = np.asarray(t1_small.convert("L"))
    gray16 = gray8.astype(np.uint16) * 257  # 0..255 -> 0..65535
    image16 = Image.fromarray(gray16)
    assert image16.mode == "I;16"
    data = encode(image16, "PNG")
    with Image.open(io.BytesIO(data)) as reopened:
        assert reopened.mode.startswith("I")  # Pillow really opens it as 16-bit.

    decoded = decode(data)
    assert decoded.format == "PNG"
    b, g, r = (decoded.bgr[:, :, c] for c in range(3))
    np.testing.assert_array_equal(b, g)
    np.testing.assert_array_equal(g, r)
    assert abs(float(b.mean()) - float(gray8.mean())) < 2
    assert mean_abs_diff(b, gray8) < 1
    assert float(b.mean()) < 200  # Clipping would have made nearly every pixel 255.


def test_16_bit_levels_map_to_8_bit_levels() -> None:
    levels = np.array([[0, 257, 128 * 257, 65535, 255]], dtype=np.uint16)
    decoded = decode(encode(Image.fromarray(levels), "PNG"))
    assert decoded.bgr[0, :, 0].tolist() == [0, 1, 128, 255, 1]


def test_transparent_pixels_are_composited_over_white(t1_small: Image.Image) -> None:
    rgba = t1_small.convert("RGBA")
    alpha = np.full((442, 640), 255, dtype=np.uint8)
    alpha[:, :200] = 0
    alpha[:, 200:400] = 128
    rgba.putalpha(Image.fromarray(alpha))
    decoded = decode(encode(rgba, "PNG"))
    got = as_rgb(decoded)
    original = np.asarray(t1_small).astype(np.float64)

    assert (got[:, :200] == 255).all()
    half = (original[:, 200:400] * 128 + 255 * 127) / 255
    assert np.abs(got[:, 200:400] - half).max() <= 1
    np.testing.assert_array_equal(got[:, 400:], original[:, 400:])


def test_grayscale_with_alpha_png(t1_small: Image.Image) -> None:
    gray = t1_small.convert("L")
    alpha = np.zeros((442, 640), dtype=np.uint8)
    alpha[:, :320] = 255  # Left half opaque, right half transparent.
    la = Image.merge("LA", (gray, Image.fromarray(alpha)))
    decoded = decode(encode(la, "PNG"))
    np.testing.assert_array_equal(decoded.bgr[:, :320, 0], np.asarray(gray)[:, :320])
    assert (decoded.bgr[:, 320:] == 255).all()


def test_grayscale_png_fills_all_three_channels(t1_small: Image.Image) -> None:
    gray = np.asarray(t1_small.convert("L"))
    decoded = decode(encode(t1_small.convert("L"), "PNG"))
    for channel in range(3):
        np.testing.assert_array_equal(decoded.bgr[:, :, channel], gray)


def test_palette_png(t1_small: Image.Image) -> None:
    palette = t1_small.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    decoded = decode(encode(palette, "PNG"))
    np.testing.assert_array_equal(as_rgb(decoded), np.asarray(palette.convert("RGB")))


def test_palette_png_transparent_index_is_white() -> None:
    palette = Image.new("P", (8, 4), 0)
    palette.putpalette([0, 0, 255, 255, 0, 0] + [0] * (256 * 3 - 6))
    palette.paste(1, (4, 0, 8, 4))
    decoded = decode(encode(palette, "PNG", transparency=0))
    assert (decoded.bgr[:, :4] == 255).all()
    assert (decoded.bgr[:, 4:] == (0, 0, 255)).all()  # Red, in BGR order.


def test_cmyk_jpeg(t1_small: Image.Image) -> None:
    decoded = decode(encode(t1_small.convert("CMYK"), "JPEG", quality=95))
    assert decoded.format == "JPEG"
    assert mean_abs_diff(as_rgb(decoded), np.asarray(t1_small.convert("CMYK").convert("RGB"))) < 4


def test_animated_gif_gives_its_first_frame() -> None:
    red = Image.new("RGB", (64, 48), (255, 0, 0))
    blue = Image.new("RGB", (64, 48), (0, 0, 255))
    data = encode(red, "GIF", save_all=True, append_images=[blue], duration=100, loop=0)
    with Image.open(io.BytesIO(data)) as gif:
        assert getattr(gif, "n_frames", 1) == 2

    decoded = decode(data)
    assert decoded.format == "GIF"
    assert decoded.bgr.shape == (48, 64, 3)
    assert (decoded.bgr == (0, 0, 255)).all()


# EXIF orientation: pixels stored rotated plus a tag that undoes it display the original.


@pytest.mark.parametrize(
    ("fmt", "orientation", "stored_as", "tolerance"),
    [
        ("JPEG", 6, Image.Transpose.ROTATE_90, 3.0),
        ("JPEG", 8, Image.Transpose.ROTATE_270, 3.0),
        ("JPEG", 3, Image.Transpose.ROTATE_180, 3.0),
        ("PNG", 6, Image.Transpose.ROTATE_90, 0.0),
        ("PNG", 8, Image.Transpose.ROTATE_270, 0.0),
        ("WEBP", 6, Image.Transpose.ROTATE_90, 3.0),
        # pillow-heif turns the EXIF tag into an irot box and libheif applies it while
        # decoding, resetting the tag: this checks the rotation is not applied twice.
        ("HEIF", 6, Image.Transpose.ROTATE_90, 3.0),
        ("HEIF", 8, Image.Transpose.ROTATE_270, 3.0),
    ],
)
def test_exif_orientation_is_applied(
    t1_small: Image.Image, fmt: str, orientation: int, stored_as: Image.Transpose, tolerance: float
) -> None:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    options: dict[str, Any] = {"exif": exif.tobytes()}
    if fmt != "PNG":
        options["quality"] = 95
    stored = t1_small.transpose(stored_as)

    decoded = decode(encode(stored, fmt, **options))
    assert decoded.bgr.shape == (442, 640, 3)
    assert mean_abs_diff(as_rgb(decoded), np.asarray(t1_small)) <= tolerance


# Refusals.


def test_empty() -> None:
    error = refusal(b"")
    assert error.reason is Reason.EMPTY_IMAGE


def test_too_many_bytes_is_checked_before_anything_is_parsed() -> None:
    error = refusal(T1_JPEG, max_bytes=len(T1_JPEG) - 1)
    assert error.reason is Reason.IMAGE_TOO_LARGE
    assert error.metadata == {"limit": str(len(T1_JPEG) - 1), "actual": str(len(T1_JPEG))}
    # Bytes that are no image at all still get the size answer first.
    assert refusal(b"x" * 101, max_bytes=100).reason is Reason.IMAGE_TOO_LARGE
    assert decode(T1_JPEG, max_bytes=len(T1_JPEG)).format == "JPEG"


def test_too_many_pixels() -> None:
    pixels = 1280 * 886
    error = refusal(T1_JPEG, max_pixels=pixels - 1)
    assert error.reason is Reason.IMAGE_TOO_MANY_PIXELS
    assert error.metadata["limit"] == str(pixels - 1)
    assert error.metadata["actual"] == str(pixels)
    assert decode(T1_JPEG, max_pixels=pixels).width == 1280


def test_rotated_photo_counts_the_same_pixels(t1_small: Image.Image) -> None:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    data = encode(t1_small.transpose(Image.Transpose.ROTATE_90), "PNG", exif=exif.tobytes())
    assert decode(data, max_pixels=640 * 442).bgr.shape == (442, 640, 3)
    assert refusal(data, max_pixels=640 * 442 - 1).reason is Reason.IMAGE_TOO_MANY_PIXELS


def _unsupported_inputs() -> dict[str, bytes]:
    small = Image.new("RGB", (32, 32), (10, 200, 30))
    return {
        "ico": encode(small, "ICO"),
        "tga": encode(small, "TGA"),
        "ppm": encode(small, "PPM"),
        "qoi": encode(small, "QOI"),
        "pcx": encode(small, "PCX"),
        "pdf": b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n%%EOF\n",
        "psd-signature": b"8BPS\x00\x01" + bytes(64),
        "svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
        "text": b"hello, this is not a photo\n",
        "random": np.random.default_rng(20240601).bytes(4096),
        "one-byte": b"\x00",
    }


UNSUPPORTED = _unsupported_inputs()


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_unsupported_formats(name: str) -> None:
    error = refusal(UNSUPPORTED[name])
    assert error.reason is Reason.UNSUPPORTED_IMAGE_FORMAT
    assert error.metadata.get("format")


def test_unsupported_format_is_named_when_its_signature_is_known() -> None:
    assert refusal(UNSUPPORTED["ico"]).metadata == {"format": "ICO"}
    assert refusal(UNSUPPORTED["psd-signature"]).metadata == {"format": "PSD"}
    assert refusal(UNSUPPORTED["text"]).metadata == {"format": "unknown"}


def _corrupt_inputs() -> dict[str, tuple[bytes, str]]:
    with Image.open(io.BytesIO(T1_JPEG)) as image:
        small = image.convert("RGB").resize((160, 110))
    png = encode(small, "PNG")
    idat = png.index(b"IDAT")
    damaged_png = bytearray(png)
    damaged_png[idat + 200 : idat + 400] = bytes(200)  # Breaks the zlib stream and the CRC.
    gif = encode(small, "GIF")
    webp = encode(small, "WEBP")
    tiff = encode(small, "TIFF")
    return {
        "truncated-jpeg": (T1_JPEG[: len(T1_JPEG) // 2], "JPEG"),
        "jpeg-headers-only": (T1_JPEG[:700], "JPEG"),
        "jpeg-signature-then-zeros": (b"\xff\xd8\xff" + bytes(100), "JPEG"),
        "truncated-png": (png[: len(png) // 2], "PNG"),
        "png-cut-inside-ihdr": (png[:20], "PNG"),
        "png-damaged-idat": (bytes(damaged_png), "PNG"),
        "truncated-gif": (gif[: len(gif) // 2], "GIF"),
        "truncated-webp": (webp[: len(webp) // 2], "WEBP"),
        "truncated-tiff": (tiff[: len(tiff) // 2], "TIFF"),
        "bmp-signature-then-junk": (b"BM" + bytes(60), "BMP"),
    }


CORRUPT = _corrupt_inputs()


@pytest.mark.parametrize("name", sorted(CORRUPT))
def test_corrupt_images(name: str) -> None:
    data, fmt = CORRUPT[name]
    error = refusal(data)
    assert error.reason is Reason.CORRUPT_IMAGE
    assert error.metadata == {"format": fmt}


def test_truncated_heif_is_corrupt(t1_small: Image.Image) -> None:
    data = encode(t1_small, "HEIF", quality=50)
    error = refusal(data[: len(data) // 2])
    assert error.reason is Reason.CORRUPT_IMAGE
    assert error.metadata == {"format": "HEIF"}


def test_truncated_images_stay_refused_globally() -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


# Decompression bombs.


def test_bomb_header_is_refused_before_any_allocation() -> None:
    # 50000 x 50000 RGB claims 7.5 GB of pixels in a file of a few dozen bytes.
    bomb = png_from_chunks(50_000, 50_000, color_type=2, idat=zlib.compress(bytes(100)))
    assert len(bomb) < 200
    before = peak_rss_mib()
    error = refusal(bomb)
    assert error.reason is Reason.IMAGE_TOO_MANY_PIXELS
    assert error.metadata["actual"] == "2500000000"
    assert error.metadata["width"] == error.metadata["height"] == "50000"
    assert peak_rss_mib() - before < 200


def test_dense_bomb_is_refused_before_any_allocation() -> None:
    # Unlike the tiny-IDAT bomb, whose pages a real decode would barely touch, this one's zlib
    # stream really inflates to 400 MB of pixels (several GB on the way to BGR), so a decode
    # that slipped past the limit would show in the peak RSS.
    bomb = dense_bomb(20_000)
    assert len(bomb) < 1024 * 1024
    before = peak_rss_mib()
    error = refusal(bomb)
    assert error.reason is Reason.IMAGE_TOO_MANY_PIXELS
    assert peak_rss_mib() - before < 200


# Hostile input in general.


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's TIFF reader warns on bad tags.
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "HEIF"])
def test_damaged_bytes_never_raise_anything_but_facescore_errors(fmt: str) -> None:
    small = Image.new("RGB", (40, 30))
    small.paste((200, 40, 40), (0, 0, 20, 30))
    data = encode(small, fmt)
    rng = np.random.default_rng(7)
    variants = [data[:cut] for cut in range(1, len(data), max(1, len(data) // 40))]
    for _ in range(150):
        mutated = bytearray(data)
        for position in rng.integers(0, len(data), size=int(rng.integers(1, 8))):
            mutated[position] = int(rng.integers(0, 256))
        variants.append(bytes(mutated))
    for variant in variants:
        try:
            decoded = decode_image(variant, MAX_BYTES, MAX_PIXELS)
        except FaceScoreError as error:
            assert error.reason in {
                Reason.CORRUPT_IMAGE,
                Reason.UNSUPPORTED_IMAGE_FORMAT,
                Reason.IMAGE_TOO_MANY_PIXELS,
            }
        else:
            assert decoded.bgr.dtype == np.uint8 and decoded.bgr.shape[2] == 3


def test_jpeg_scans_are_counted_from_the_markers() -> None:
    with Image.open(io.BytesIO(T1_JPEG)) as image:
        progressive = encode(image.convert("RGB"), "JPEG", progressive=True)
    assert jpeg_scan_count(T1_JPEG, 100) == 1
    assert 5 <= jpeg_scan_count(progressive, 100) <= 20
    # The decoder decodes it as ever: the count only refuses what repeats scans by the hundred.
    assert decode(progressive).format == "JPEG"


def test_too_many_jpeg_scans_are_refused_before_decoding() -> None:
    with Image.open(io.BytesIO(T1_JPEG)) as image:
        progressive = encode(image.convert("RGB"), "JPEG", progressive=True)
    last = progressive.rindex(b"\xff\xda")
    repeated = progressive[:last] + progressive[last:-2] * 50 + b"\xff\xd9"
    with pytest.raises(FaceScoreError) as refused:
        decode_image(repeated, MAX_BYTES, MAX_PIXELS, max_jpeg_scans=40)
    assert refused.value.reason == Reason.IMAGE_TOO_COMPLEX
    assert refused.value.metadata["measure"] == "jpeg_scans"


def test_a_jpeg_decodes_at_the_scale_asked_with_its_original_size(t1_small: Image.Image) -> None:
    big = t1_small.resize((2560, 1768))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # stored turned: shown 1768 wide, 2560 high
    data = encode(big, "JPEG", quality=95, exif=exif.tobytes())
    scaled = decode_image(data, MAX_BYTES, MAX_PIXELS, fit=640)
    assert (scaled.original_width, scaled.original_height) == (1768, 2560)
    assert (scaled.width, scaled.height) == (442, 640)  # 1/4: the smallest DCT scale >= 640
    full = decode_image(data, MAX_BYTES, MAX_PIXELS)
    assert full.scale == (1.0, 1.0)
    reduced = np.asarray(Image.fromarray(full.bgr).reduce(4), np.int16)
    assert np.abs(scaled.bgr.astype(np.int16) - reduced).mean() < 3
    at_least_half = decode_image(data, MAX_BYTES, MAX_PIXELS, fit=640, min_scale=0.5)
    assert (at_least_half.width, at_least_half.height) == (884, 1280)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("min_scale", [0.5, 1.0])
def test_boxes_are_the_pixels_of_the_whole_decode(
    t1_small: Image.Image, min_scale: float, orientation: int
) -> None:
    """Only the boxes are converted, in the photo's own (EXIF-turned) pixels, at the DCT
    scale asked, whichever way the photo is stored (only the boxes are turned, pixel for
    pixel as the whole photo would be); a box reaching past the edge is cut at it."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    data = encode(t1_small.resize((2560, 1768)), "JPEG", quality=95, exif=exif.tobytes())
    boxes = [(100.0, 200.5, 700.2, 900.9), (1500.0, 1500.0, 1900.0, 2700.0)]
    whole = decode_image(data, MAX_BYTES, MAX_PIXELS, fit=1, min_scale=min_scale)
    with lossless_cuts() as answered, answered_by("_jpeg_bgr") as reduced:
        scale, cut = decode_boxes(data, MAX_BYTES, MAX_PIXELS, boxes, min_scale=min_scale)
    # At full size the boxes are cut from the compressed photo; reduced, libturbojpeg
    # decodes the whole photo straight to BGR.
    assert answered == ([True] if min_scale == 1.0 else [])
    assert reduced == ([] if min_scale == 1.0 else [True])
    assert scale == whole.scale == (min_scale, min_scale)
    for box, (pixels, corner) in zip(boxes, cut, strict=True):
        left, top, right, bottom = box_pixels(box, scale, (whole.width, whole.height))
        assert corner == (left, top)
        assert pixels.shape == (bottom - top, right - left, 3)
        assert np.array_equal(pixels, whole.bgr[top:bottom, left:right])
    # The second box ends past the photo's lower edge (or its right edge, shown turned).
    assert bottom == whole.height or right == whole.width


@contextlib.contextmanager
def answered_by(shortcut: str) -> Iterator[list[bool]]:
    """Whether each call of `shortcut`, a libturbojpeg path of services.common.images that
    answers None where Pillow must decode, answered."""
    answered: list[bool] = []
    real = getattr(images, shortcut)

    def spy(*args: Any) -> Any:
        result = real(*args)
        answered.append(result is not None)
        return result

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(images, shortcut, spy)
        yield answered


def lossless_cuts() -> contextlib.AbstractContextManager[list[bool]]:
    """Whether each full-size JPEG decode_boxes ran was answered by a lossless cut."""
    return answered_by("_jpeg_regions")


@pytest.mark.parametrize(
    ("name", "mode", "options", "lossless"),
    [
        ("4:4:4", "RGB", {"subsampling": 0}, True),
        ("4:2:2", "RGB", {"subsampling": 1}, True),
        ("4:2:0 progressive", "RGB", {"subsampling": 2, "progressive": True}, True),
        ("grey", "L", {}, True),
        ("CMYK, which libturbojpeg cannot turn into BGR", "CMYK", {}, False),
    ],
)
def test_full_size_boxes_are_cut_losslessly_from_every_usual_jpeg(
    t1_small: Image.Image, name: str, mode: str, options: dict[str, Any], lossless: bool
) -> None:
    """Whatever the chroma subsampling (MCUs of 8 or 16 pixels) or scan layout, the boxes cut
    from the compressed photo are the whole decode's pixels; a JPEG it cannot cut is decoded
    whole, with the same answer."""
    data = encode(t1_small.resize((1999, 1381)).convert(mode), "JPEG", quality=92, **options)
    boxes = [(3.0, 5.0, 405.5, 610.0), (1207.7, 33.3, 1999.0, 1381.0), (0.0, 0.0, 1.0, 1.0)]
    whole = decode_image(data, MAX_BYTES, MAX_PIXELS)
    with lossless_cuts() as answered:
        scale, cut = decode_boxes(data, MAX_BYTES, MAX_PIXELS, boxes, min_scale=1.0)
    assert answered == [lossless], name
    assert scale == (1.0, 1.0)
    for box, (pixels, corner) in zip(boxes, cut, strict=True):
        left, top, right, bottom = box_pixels(box, scale, (whole.width, whole.height))
        assert corner == (left, top)
        assert np.array_equal(pixels, whole.bgr[top:bottom, left:right]), name


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize(("mode", "fit"), [("RGB", None), ("RGB", 640), ("RGB", 300), ("L", 640)])
def test_jpegs_decoded_by_libturbojpeg_are_pillows_pixels(
    t1_small: Image.Image,
    monkeypatch: pytest.MonkeyPatch,
    orientation: int,
    mode: str,
    fit: int | None,
) -> None:
    """libturbojpeg decodes a JPEG (at full size, 1/2, 1/4 or 1/8) straight to BGR: the
    same pixels, turned the same way, as Pillow's decode and colour swap."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    image = t1_small.resize((2001, 1393)).convert(mode)
    data = encode(image, "JPEG", quality=90, exif=exif.tobytes())
    with answered_by("_jpeg_bgr") as answered:
        turbo = decode_image(data, MAX_BYTES, MAX_PIXELS, fit=fit)
        monkeypatch.setattr(images, "_turbojpeg", lambda: None)
        pillow = decode_image(data, MAX_BYTES, MAX_PIXELS, fit=fit)
    assert answered == [True, False]
    assert turbo.scale == pillow.scale and turbo.original_size == pillow.original_size
    assert turbo.bgr.flags.c_contiguous
    assert np.array_equal(turbo.bgr, pillow.bgr)


@pytest.mark.parametrize("min_scale", [0.5, 1.0])
def test_without_libturbojpeg_boxes_come_from_pillows_decode(
    t1_small: Image.Image, monkeypatch: pytest.MonkeyPatch, min_scale: float
) -> None:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 8
    data = encode(t1_small.resize((1600, 1200)), "JPEG", quality=90, exif=exif.tobytes())
    boxes = [(100.0, 100.0, 500.0, 600.0)]
    with_turbo = decode_boxes(data, MAX_BYTES, MAX_PIXELS, boxes, min_scale=min_scale)
    monkeypatch.setattr(images, "_turbojpeg", lambda: None)
    with lossless_cuts() as cut, answered_by("_jpeg_bgr") as reduced:
        without = decode_boxes(data, MAX_BYTES, MAX_PIXELS, boxes, min_scale=min_scale)
    assert cut + reduced == [False]
    assert with_turbo[0] == without[0] == (min_scale, min_scale)
    assert np.array_equal(with_turbo[1][0][0], without[1][0][0])
    assert with_turbo[1][0][1] == without[1][0][1]


def test_formats_without_dct_scaling_shrink_by_a_box_filter(t1_small: Image.Image) -> None:
    decoded = decode(encode(t1_small.resize((1920, 1326)), "PNG"))
    small = shrink(decoded, 640)
    assert (small.width, small.height) == (640, 442)
    assert (small.original_width, small.original_height) == (1920, 1326)
    assert small.sha256 == decoded.sha256
    assert small.bgr.flags.c_contiguous
    # Pillow's box filter, within one level (their rounding differs).
    boxed = np.asarray(Image.fromarray(decoded.bgr).reduce(3)).astype(np.int16)
    assert np.abs(small.bgr.astype(np.int16) - boxed).max() <= 1
    # A size the factor does not divide: Pillow's size, the partial block one pixel.
    odd = shrink(decode(encode(t1_small.resize((1999, 1381)), "PNG")), 640)
    assert (odd.width, odd.height) == (667, 461)


@pytest.mark.parametrize("turn", list(Image.Transpose))
def test_turned_pixels_are_pillows(turn: Image.Transpose) -> None:
    """OpenCV turns decoded pixels as Pillow's transpose would, a slice of rows and columns
    (a region of a decode) included."""
    bgr = np.random.default_rng(7).integers(0, 256, (61, 97, 3), np.uint8)
    for pixels in (bgr, bgr[5:50, 3:90]):
        pillow = np.asarray(Image.fromarray(pixels).transpose(turn))
        turned = images._turned(pixels, turn)
        assert turned.flags.c_contiguous
        assert np.array_equal(turned, pillow)


def _pillows_pixels(data: bytes) -> Any:
    """The photo as Pillow decodes it (no libheif or libturbojpeg shortcut): the reference."""
    return images._decode(
        data, MAX_BYTES, MAX_PIXELS, DEFAULT_MAX_JPEG_SCANS, None, 0.0, lambda im, *_: _to_bgr(im)
    )[0]


@pytest.mark.parametrize("tile", [0, 256])
@pytest.mark.parametrize("orientation", [1, 6, 8])
def test_heif_decoded_straight_to_bgr_is_pillows_pixels(
    t1_small: Image.Image, orientation: int, tile: int
) -> None:
    """libheif decodes an HEIF photo straight to BGR: Pillow's pixels, turned the same way;
    one HEVC image, or a grid of tiles as phones store them (edge tiles cut short here)."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    turned = t1_small.transpose(Image.Transpose.ROTATE_90)
    data = encode(turned, "HEIF", exif=exif.tobytes(), tile_size=tile)
    assert (b"grid" in data) == bool(tile)  # the grid's item in the file's item list
    with answered_by("_heif_bgr") as answered:
        decoded = decode(data)
    assert answered == [True]
    assert np.array_equal(decoded.bgr, _pillows_pixels(data))


def test_heif_with_alpha_is_composited_by_pillow(t1_small: Image.Image) -> None:
    rgba = t1_small.convert("RGBA")
    rgba.putalpha(0)
    data = encode(rgba, "HEIF")
    with answered_by("_heif_bgr") as answered:
        decoded = decode(data)
    assert answered == []
    assert (decoded.bgr == 255).all()  # fully transparent: white, not what lies beneath
