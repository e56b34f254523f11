"""Bytes <-> arrays: decoding uploads safely, encoding maps as PNG, npz and overlays.

Decoding never trusts the upload: the pixel count is checked from the header before any pixel is
decoded (decompression bombs), truncation is an error (not grey padding), EXIF orientation is
applied, and every mode becomes RGB uint8.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from isal import isal_zlib
from PIL import Image, ImageOps, UnidentifiedImageError

from server.protocol import ApiError

ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Image file bytes -> RGB uint8 (h, w, 3), upright; an :class:`ApiError` on any problem."""
    return image_pixels(open_image(data, max_pixels))


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Read the image's header only (cheap): its format and size are checked, no pixel decoded."""
    if not data:
        raise ApiError(400, "empty_body", "the request body is empty: send the image bytes")
    try:
        # Only the formats we promise: never hand untrusted bytes to every PIL plugin.
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as error:
        raise ApiError(413, "image_too_large", f"image rejected as too large: {error}") from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise ApiError(
            400, "invalid_image", "the body is not an image this server can read "
            "(send JPEG, PNG, WebP, GIF, BMP or TIFF)"
        ) from None  # fmt: skip
    width, height = image.size
    if width * height > max_pixels:
        raise ApiError(
            413, "image_too_large",
            f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}",
        )  # fmt: skip
    if width == 0 or height == 0:
        raise ApiError(400, "invalid_image", f"image has zero size ({width}x{height})")
    return image


def image_pixels(image: Image.Image) -> np.ndarray:
    """An opened image (``open_image``) -> RGB uint8 (h, w, 3), upright."""
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        return np.asarray(to_rgb(image), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as error:
        raise ApiError(
            400,
            "invalid_image",
            f"the image is truncated or corrupt ({error}); send the whole file",
        ) from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: 16/32-bit grey is scaled (not clipped), alpha is laid on white."""
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = _value_range(image.mode, float(values.max(initial=0.0)))
        grey = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode == "P" and "transparency" in image.info or image.mode in ALPHA_MODES:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _value_range(mode: str, largest: float) -> float:
    """The white level of a high-depth grey image: its mode says it, or its values must."""
    if mode.startswith("I;16"):
        return 65535.0
    if mode == "F":
        return 1.0 if largest <= 1.0 else 255.0
    return 65535.0 if largest > 255 else 255.0  # mode "I" carries no bit depth


def to_uint8(kind: str, values: np.ndarray) -> np.ndarray:
    """A map at image size -> its uint8 wire form (normals: v = round((n + 1) * 127.5))."""
    if kind == "classes":
        return values.astype(np.uint8)
    if kind == "probability":
        scaled = values * np.float32(255.0)
    else:  # the same float32 steps as round((clip(n) + 1) * 127.5), in one scratch array
        scaled = np.clip(values, -1.0, 1.0)
        scaled += np.float32(1.0)
        scaled *= np.float32(127.5)
    return np.rint(scaled, out=scaled).astype(np.uint8)


def encode_png(pixels: np.ndarray, compress_level: int) -> bytes:
    """uint8 (h, w) or (h, w, 3) -> PNG bytes; level 0-9 trades size for CPU time.

    Written here rather than by PIL, whose encoder picks a filter per row by trying them all.
    One "Up" filter for every row (a NumPy subtraction; dense maps are smooth, so most
    differences are 0), then deflate, which releases the GIL (``deflate``). Files about as
    small as PIL's, in a third to a thirteenth of its time (demo maps, 128x128 and 480x640;
    docs/benchmarks.md, server section). Any PNG reader decodes the same pixels.
    """
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, -1)  # (h, w * channels)
    filtered = np.empty((height, rows.shape[1] + 1), np.uint8)  # each row: filter byte, bytes
    filtered[:, 0] = PNG_FILTER_UP
    filtered[0, 1:] = rows[0]  # the first row's "above" is zeros
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # uint8 arithmetic wraps mod 256
    colour_type = PNG_GREY if pixels.ndim == 2 else PNG_RGB
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"".join((
        PNG_SIGNATURE,
        _png_chunk(b"IHDR", header),
        _png_chunk(b"IDAT", deflate(filtered.data, compress_level)),
        _png_chunk(b"IEND", b""),
    ))  # fmt: skip


def deflate(data: bytes | memoryview, level: int) -> bytes:
    """A zlib stream, as PNG's IDAT holds. Levels 1-3: ISA-L's igzip, about 4x faster than
    zlib's level 1 on our maps and about as small; 0 (stored) and 4-9: zlib's own levels."""
    if ISAL_LEVELS[0] <= level <= ISAL_LEVELS[1]:
        return isal_zlib.compress(data, level)
    return zlib.compress(data, level)


ISAL_LEVELS = (1, 3)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_GREY, PNG_RGB = 0, 2  # IHDR colour types
PNG_FILTER_UP = 2


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(kind))
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def encode_npz(arrays: dict[str, np.ndarray]) -> bytes:
    """Arrays -> one uncompressed ``.npz`` body (``numpy.load(io.BytesIO(body))`` reads it)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def heat_colours() -> np.ndarray:
    """(256, 3) uint8 ramp for probabilities: black -> red -> yellow -> white."""
    v = np.linspace(0.0, 1.0, 256)
    rgb = np.stack([np.clip(3 * v, 0, 1), np.clip(3 * v - 1, 0, 1), np.clip(3 * v - 2, 0, 1)], 1)
    return np.rint(rgb * 255).astype(np.uint8)


def colourise(kind: str, wire: np.ndarray, palette: tuple | None) -> np.ndarray:
    """uint8 wire map -> RGB uint8 (h, w, 3) for people to look at."""
    if kind == "classes":
        colours = np.zeros((256, 3), np.uint8)
        colours[: len(palette)] = np.asarray(palette, np.uint8)
        return colours[wire]
    if kind == "probability":
        return heat_colours()[wire]
    return wire  # normals are already RGB-encoded


def overlay(rgb: np.ndarray, colour: np.ndarray, alpha: float) -> np.ndarray:
    """Blend ``colour`` over the image: ``alpha`` 0 shows the image, 1 the map only."""
    blended = (1.0 - alpha) * rgb.astype(np.float32) + alpha * colour.astype(np.float32)
    return np.rint(blended).astype(np.uint8)
