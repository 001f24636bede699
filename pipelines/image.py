"""Image bytes to pixels, safely.

Pixel counts are checked from the header, before any decompression, so a tiny
file that declares 50,000 x 50,000 pixels is rejected without allocating
gigabytes. A JPEG's work is its pixels times its scans: a progressive file may
repeat a scan thousands of times at 10 bytes each, and libjpeg walks every
block of the image for each one, on a decode thread every tenant shares. So
scans are counted from the markers before decoding too, and bounded. Pillow
decodes run-length BMP in Python, a few interpreter steps per pixel, so those
get a pixel limit of their own (``MAX_RLE_BMP_PIXELS``). EXIF
orientation is applied so boxes and crops refer to the image as a person sees
it.
"""

from __future__ import annotations

import io
import re
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from altlas.pipelines.decode_once import memoized
from altlas.schemas.errors import ErrorCode, InvalidRequestError, PayloadTooLargeError

_ORIENTATION = 0x0112  # the EXIF tag

#: Container formats accepted on the wire (Pillow's names).
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF")

#: Most scans a JPEG may have (libjpeg's progressive default is 10 for colour, 6 for grey) ...
MAX_JPEG_SCANS = 64
#: ... and at most this many times the largest image allowed, in pixels times scans.
MAX_JPEG_SCAN_WORK = 16

#: Pixels of a run-length BMP (RLE4/RLE8): Pillow decodes those in Python, about 0.13 µs a pixel.
MAX_RLE_BMP_PIXELS = 2 * 1024 * 1024
#: Marker segments read when counting scans (a file needs this only when 0xFF 0xDA bytes outnumber
#: the scans allowed, which a real file's thumbnail or ICC profile comes nowhere near).
MAX_JPEG_SEGMENTS = 4096

_SOS = b"\xff\xda"
#: A marker: 0xFF fill bytes, then a code that is not a stuffed zero or a restart (those sit in scan data).
_MARKER = re.compile(rb"\xff+([^\x00\xff\xd0-\xd7])")


def decode_image(data: bytes, *, max_pixels: int, mode: str = "RGB") -> Image.Image:
    """Decode, bound-check, EXIF-rotate and convert an encoded image (once per plan: decode_once.py)."""
    return memoized("image", data, (max_pixels, mode), lambda: _decode_image(data, max_pixels, mode))


def _decode_image(data: bytes, max_pixels: int, mode: str) -> Image.Image:
    if not data:
        raise InvalidRequestError("empty image payload")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data), formats=FORMATS)
            width, height = opened.size
            if width <= 0 or height <= 0:
                raise InvalidRequestError(f"image declares an empty size {width}x{height}")
            if width * height > max_pixels:
                raise PayloadTooLargeError(
                    f"image declares {width}x{height} = {width * height} pixels, limit is {max_pixels}"
                )
            if opened.format == "JPEG":
                _check_scans(data, width * height, max_pixels)
            elif opened.tile and opened.tile[0][0] == "bmp_rle" and width * height > MAX_RLE_BMP_PIXELS:
                raise PayloadTooLargeError(
                    f"a run-length BMP of {width}x{height} pixels; at most {MAX_RLE_BMP_PIXELS} "
                    "pixels for run-length BMPs"
                )
            opened.load()
            image: Image.Image = opened
            if opened.getexif().get(_ORIENTATION, 1) != 1:  # exif_transpose copies even when upright
                image = ImageOps.exif_transpose(opened)
            if image.mode != mode:
                image = image.convert(mode)
    except (InvalidRequestError, PayloadTooLargeError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PayloadTooLargeError(f"image too large: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise InvalidRequestError(f"not a supported image ({'/'.join(FORMATS)})") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InvalidRequestError(f"corrupt image: {exc}", code=ErrorCode.INVALID_PAYLOAD) from exc
    return image


def _check_scans(data: bytes, pixels: int, max_pixels: int) -> None:
    """Refuse a JPEG whose scans would cost more than a few decodes of the largest image allowed."""
    allowed = max(1, min(MAX_JPEG_SCANS, MAX_JPEG_SCAN_WORK * max_pixels // max(pixels, 1)))
    if data.count(_SOS) <= allowed:  # an upper bound, at C speed: most files stop here
        return
    scans = jpeg_scans(data, allowed)
    if scans is None:
        raise PayloadTooLargeError(f"a JPEG with over {MAX_JPEG_SEGMENTS} marker segments")
    if scans > allowed:
        raise PayloadTooLargeError(
            f"a JPEG of {pixels} pixels with more than {allowed} scans; decoding cost grows with "
            f"pixels times scans, and {allowed} is the most allowed at this size"
        )


def jpeg_scans(data: bytes, limit: int) -> int | None:
    """The scans (SOS segments) of a JPEG up to its end of image, counting no further than ``limit + 1``;
    None when it has more than ``MAX_JPEG_SEGMENTS`` marker segments before that.

    Marker segments are skipped by their length, so 0xFF 0xDA bytes inside an
    EXIF thumbnail, an ICC profile or a comment are not taken for scans; inside
    scan data a marker can only be a real one (0xFF is stuffed there).
    """
    scans, pos = 0, 2  # after SOI
    for _ in range(MAX_JPEG_SEGMENTS):
        found = _MARKER.search(data, pos)
        if found is None:
            return scans
        code, pos = found.group(1)[0], found.end()
        if code == 0xD9:  # end of image: libjpeg reads no further
            return scans
        if code in (0xD8, 0x01):  # SOI, TEM: no length follows
            continue
        if code == 0xDA:
            scans += 1
            if scans > limit:
                return scans
        pos += int.from_bytes(data[pos : pos + 2], "big")
    return None
