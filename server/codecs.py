"""Bytes <-> arrays: opening and decoding uploads safely, encoding maps as PNG and npz.

Decoding never trusts the upload: the pixel count is checked from the header before any pixel
is decoded (decompression bombs), truncation is an error (not grey padding), EXIF orientation
is applied, and every mode becomes RGB uint8. A JPEG can be decoded at 1/2, 1/4 or 1/8 of its
size in the DCT domain (libjpeg's scaled IDCT), which costs a fraction of a full decode.
Encoders take maps band by band (``server/maps.py``), so that no whole-size copy is made.
"""

from __future__ import annotations

import io
import re
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from isal import isal_zlib
from PIL import Image, UnidentifiedImageError

from server.errors import InvalidInput, TooLarge

ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height
# EXIF orientation -> the stored (h, w, 3) pixels turned upright (views; PIL's Transpose).
UPRIGHT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: a.transpose(1, 0, 2)[:, ::-1],
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
    8: lambda a: a.transpose(1, 0, 2)[::-1],
}
DCT_SCALES = (8, 4, 2, 1)
BAND_PIXELS = 1 << 20
"""Pixels converted to RGB at a time (``decode``): a band's copies, not the image's, are extra."""
JPEG_FILL = bytes(16)
"""Bytes after a sequential JPEG's scan where its end marker was: the decoder's look-ahead
past the last code (libjpeg reads up to 57 bits ahead); too few to stand in for a missing
part of the scan (``_scan_must_end``)."""
SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # a marker; not stuffing, RSTn or fill


@dataclass(frozen=True)
class Upload:
    """An upload whose header was read: ``width`` and ``height`` upright (after ``orientation``,
    EXIF's, 1 when absent or malformed), the bytes its decoder holds besides the pixels."""

    image: Image.Image
    width: int
    height: int
    body_bytes: int
    orientation: int = 1

    @property
    def format(self) -> str:
        return self.image.format or ""

    @property
    def transposed(self) -> bool:
        """Whether the stored pixels are the upright image turned a quarter (EXIF 5-8)."""
        return (self.width, self.height) != self.image.size

    def dct_scale(self, min_width: int, min_height: int) -> int:
        """The largest of 1/8, 1/4, 1/2 a JPEG can be decoded at with both upright sides at
        least the minimum; 1 for every other format, and for JPEGs PIL cannot scale."""
        if self.format != "JPEG" or len(self.image.tile) != 1:
            return 1
        fits = min(self.width // max(min_width, 1), self.height // max(min_height, 1))
        return next((s for s in DCT_SCALES if fits >= s), 1)

    def scaled_size(self, scale: int) -> tuple[int, int]:
        """Upright size when decoded at ``1/scale`` (libjpeg rounds up)."""
        return -(-self.width // scale), -(-self.height // scale)

    @property
    def coefficient_bytes(self) -> int:
        """A progressive (multi-scan) JPEG's DCT coefficients, which libjpeg holds for the whole
        image at full size whatever the scale it outputs: 2 bytes per pixel per component."""
        if self.format != "JPEG" or not self.image.info.get("progressive"):
            return 0
        return 2 * self.width * self.height * max(getattr(self.image, "layers", 3), 1)


def open_upload(data: bytes, max_pixels: int) -> Upload:
    """Read the image's header only (cheap): its format and size are checked, no pixel decoded."""
    if not data:
        raise InvalidInput("empty_body", "the request body is empty: send the image bytes")
    try:
        # Only the formats we promise: never hand untrusted bytes to every PIL plugin.
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as error:
        raise TooLarge("image_too_large", f"image rejected as too large: {error}") from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise InvalidInput(
            "invalid_image",
            "the body is not an image this server can read "
            "(send JPEG, PNG, WebP, GIF, BMP or TIFF)",
        ) from None
    width, height = image.size
    if width * height > max_pixels:
        raise TooLarge(
            "image_too_large",
            f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}",
        )
    if width == 0 or height == 0:
        raise InvalidInput("invalid_image", f"image has zero size ({width}x{height})")
    orientation = _orientation(image)
    if orientation in TRANSPOSED_ORIENTATIONS:
        width, height = height, width
    if image.format == "JPEG":
        image = _scan_must_end(image, data)
    return Upload(image, width, height, len(data), orientation)


def _orientation(image: Image.Image) -> int:
    """EXIF's orientation: 1-8 as a number, else 1 (a string such as "6", a malformed block).
    Read from the header only: a PNG's EXIF may follow its pixels, and PIL's ``getexif`` then
    decodes the whole image to find it, before any limit is checked: such a PNG is upright."""
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # a malformed EXIF block
        return 1
    return orientation if type(orientation) is int and orientation in UPRIGHT else 1


def _scan_must_end(image: Image.Image, data: bytes) -> Image.Image:
    """A sequential JPEG whose header promises more rows than its scan holds is an error, not
    grey rows: libjpeg fills what is missing once it meets the end marker (EOI). Such an image
    is opened again on its bytes up to the marker, with ``JPEG_FILL`` in its place, so that a
    scan that stops short leaves the decoder wanting data: the truncation PIL reports. A whole
    scan decodes to the same pixels. Progressive files (many scans, read to EOI before any
    output) are left as they are."""
    if image.info.get("progressive"):
        return image
    start = image.fp.tell()  # PIL stops reading at the first scan's data
    end = SCAN_END.search(data, start)
    if end is None or data[end.start() + 1] != 0xD9:  # no marker, or more scans follow
        return image
    stripped = Image.open(io.BytesIO(data[: end.start()] + JPEG_FILL), formats=("JPEG",))
    return stripped if stripped.size == image.size else image


def decode(upload: Upload, scale: int = 1) -> np.ndarray:
    """The upload's pixels -> RGB uint8 (h, w, 3), upright; JPEGs at ``1/scale`` in the DCT.

    The decoded image is converted a band at a time into the array and then closed, so that
    the memory held beyond the array is the decoder's image (``Plan.cost_bytes`` counts both).
    """
    image = upload.image
    try:
        if scale > 1:
            stored = image.size
            image.draft(None, (stored[0] // scale, stored[1] // scale))
        image.load()
        rgb = rgb_array(image)
    except (OSError, ValueError, SyntaxError) as error:
        raise InvalidInput(
            "invalid_image", f"the image is truncated or corrupt ({error}); send the whole file"
        ) from None
    finally:
        image.close()  # its pixels and the body it read from
    turn = UPRIGHT.get(upload.orientation)
    return rgb if turn is None else np.ascontiguousarray(turn(rgb))


def rgb_array(image: Image.Image) -> np.ndarray:
    """A loaded image of any mode -> RGB uint8 (h, w, 3), ``BAND_PIXELS`` at a time (rows, or
    parts of a row for images wider than a band) so that no whole-image copy is made."""
    width, height = image.size
    out = np.empty((height, width, 3), np.uint8)
    top = _grey_top(image)
    rows = max(1, BAND_PIXELS // max(width, 1))
    columns = min(width, BAND_PIXELS)
    for y in range(0, height, rows):
        for x in range(0, width, columns):
            box = (x, y, min(x + columns, width), min(y + rows, height))
            band = image if box == (0, 0, width, height) else image.crop(box)
            out[box[1] : box[3], box[0] : box[2]] = np.asarray(to_rgb(band, top))
    return out


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Image file bytes -> RGB uint8 (h, w, 3), upright, at full size."""
    return decode(open_upload(data, max_pixels))


def to_rgb(image: Image.Image, top: float | None = None) -> Image.Image:
    """Any PIL mode -> RGB: 16/32-bit grey is scaled (not clipped) to white at ``top`` (default:
    the image's own, ``_grey_top``), alpha is laid on white; an RGB image is itself."""
    if _is_deep_grey(image):
        values = np.asarray(image, dtype=np.float64)
        top = _grey_top(image) if top is None else top
        grey = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode == "P" and "transparency" in image.info or image.mode in ALPHA_MODES:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _is_deep_grey(image: Image.Image) -> bool:
    return image.mode.startswith("I;16") or image.mode in ("I", "F")


def _grey_top(image: Image.Image) -> float | None:
    """The white level of a high-depth grey image (the whole image's, for every band of it);
    ``None`` for other modes."""
    if not _is_deep_grey(image):
        return None
    largest = image.getextrema()[1] if image.mode in ("I", "F") else 0.0
    return _value_range(image.mode, float(largest))


def _value_range(mode: str, largest: float) -> float:
    """The white level of a high-depth grey image: its mode says it, or its values must."""
    if mode.startswith("I;16"):
        return 65535.0
    if mode == "F":
        return 1.0 if largest <= 1.0 else 255.0
    return 65535.0 if largest > 255 else 255.0  # mode "I" carries no bit depth


def encode_png(pixels: np.ndarray, compress_level: int) -> bytes:
    """uint8 (h, w) or (h, w, 3) -> PNG bytes; level 0-9 trades size for CPU time."""
    return encode_png_bands([pixels], pixels.shape[1], pixels.shape[0], compress_level)


def encode_png_bands(
    bands: Iterable[np.ndarray], width: int, height: int, compress_level: int
) -> bytes:
    """A map given as bands of rows (each uint8 (rows, w) or (rows, w, 3)) -> one PNG.

    Written here rather than by PIL, whose encoder picks a filter per row by trying them all:
    one "Up" filter for every row (a NumPy subtraction; dense maps are smooth, so most
    differences are 0), then deflate, which releases the GIL. On camera-size maps 8-26 times
    faster than PIL's and OpenCV's encoders with files up to 18% smaller, 1.5-1.9 times faster
    than the same filter with zlib-ng's deflate, and up to 4 times faster than fpng
    (docs/benchmarks.md, camera-size images). Any PNG reader decodes the same pixels.

    The pixels are what is promised, not the bytes: ISA-L's deflate once gave one 70x45 class
    map 913 bytes on a pool thread and 914 on the event loop, in one process (a CI run of
    tests/server/test_render.py); both decode to the same pixels. Compare PNGs by decoding them.
    """
    compressor = compressobj(compress_level)
    idat, above, colour_type = [], None, PNG_GREY
    for band in bands:
        colour_type = PNG_GREY if band.ndim == 2 else PNG_RGB
        rows = band.reshape(band.shape[0], -1)  # (rows, w * channels)
        filtered = np.empty((rows.shape[0], rows.shape[1] + 1), np.uint8)
        filtered[:, 0] = PNG_FILTER_UP
        if above is None:
            filtered[0, 1:] = rows[0]  # the first row's "above" is zeros
        else:
            np.subtract(rows[0], above, out=filtered[0, 1:])
        np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # uint8 arithmetic wraps
        above = rows[-1].copy()
        idat.append(compressor.compress(filtered.data))
    idat.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"".join(
        (
            PNG_SIGNATURE,
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", b"".join(idat)),
            _png_chunk(b"IEND", b""),
        )
    )


def compressobj(level: int):
    """A zlib stream compressor, as PNG's IDAT holds. Levels 1-3: ISA-L's igzip, 10-20 times
    faster than zlib's level 1 on our maps and about as small; 0 (stored) and 4-9: zlib's."""
    if ISAL_LEVELS[0] <= level <= ISAL_LEVELS[1]:
        return isal_zlib.compressobj(level)
    return zlib.compressobj(level)


ISAL_LEVELS = (1, 3)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_GREY, PNG_RGB = 0, 2  # IHDR colour types
PNG_FILTER_UP = 2


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(kind))
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


@dataclass(frozen=True)
class NpzEntry:
    """One array of a streamed npz: its name, shape, dtype, and its bytes in row bands."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    bands: Iterable[np.ndarray]


def encode_npz(arrays: dict[str, np.ndarray]) -> bytes:
    """Arrays -> one uncompressed ``.npz`` body (``numpy.load(io.BytesIO(body))`` reads it)."""
    entries = [NpzEntry(k, v.shape, v.dtype, [v]) for k, v in arrays.items()]
    return b"".join(stream_npz(entries))


def stream_npz(entries: Iterable[NpzEntry]) -> Iterator[bytes]:
    """An uncompressed ``.npz`` (a zip of ``.npy`` files) as a stream of chunks, produced as
    the bands come: nothing but the band in hand is held. The zip is written for a reader that
    cannot seek back (sizes and CRCs follow each file: zip "data descriptors"), which is what
    ``numpy.load`` and every zip reader read."""
    sink = _Chunks()
    with zipfile.ZipFile(sink, mode="w", compression=zipfile.ZIP_STORED) as archive:
        for entry in entries:
            with archive.open(f"{entry.name}.npy", mode="w", force_zip64=True) as member:
                member.write(_npy_header(entry.shape, entry.dtype))
                yield sink.take()
                for band in entry.bands:
                    member.write(np.ascontiguousarray(band, entry.dtype).data.cast("B"))
                    yield sink.take()
    yield sink.take()


def _npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
        "fortran_order": False,
        "shape": tuple(shape),
    }
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


class _Chunks(io.RawIOBase):
    """A write-only, unseekable file that hands out what was written since the last ``take``."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._written = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        chunk = bytes(data)  # a copy: zipfile may reuse its buffers
        self._parts.append(chunk)
        self._written += len(chunk)
        return len(chunk)

    def tell(self) -> int:  # zipfile asks where it is; it never seeks
        return self._written

    def take(self) -> bytes:
        parts, self._parts = self._parts, []
        return b"".join(parts)
