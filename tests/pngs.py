"""Hand-built PNGs for hostile-input tests: headers that lie, and decompression bombs."""

from __future__ import annotations

import struct
import zlib


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_from_chunks(width: int, height: int, color_type: int, idat: bytes) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def dense_bomb(side: int = 20_000) -> bytes:
    """A grayscale PNG under 1 MB whose data really inflates to side x side pixels."""
    compressor = zlib.compressobj(9)
    rows = bytes(side + 1) * 1000  # Filter byte plus a row of black, 1000 rows at a time.
    idat = b"".join(compressor.compress(rows) for _ in range(side // 1000)) + compressor.flush()
    return png_from_chunks(side, side, color_type=0, idat=idat)
