"""Image bytes to pixels, safely.

Pixel counts are checked from the header, before any decompression, so a tiny
file that declares 50,000 x 50,000 pixels is rejected without allocating
gigabytes; files that cost far more than their pixels (JPEG scans, run-length
BMP, TIFF strips) are bounded from their bytes too (``image_costs.py``). EXIF
orientation is applied so boxes and crops refer to the image as a person sees
it; an EXIF block too broken to apply is ignored, since the pixels are fine.
Whatever else Pillow raises on a file is that file's fault: INVALID_PAYLOAD.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from altlas.pipelines.decode_once import memoized
from altlas.pipelines.image_costs import after_open, before_open
from altlas.schemas.errors import ErrorCode, InvalidRequestError, PayloadTooLargeError

_ORIENTATION = 0x0112  # the EXIF tag

#: Container formats accepted on the wire (Pillow's names).
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF")


def decode_image(data: bytes, *, max_pixels: int, mode: str = "RGB") -> Image.Image:
    """Decode, bound-check, EXIF-rotate and convert an encoded image (once per plan: decode_once.py)."""
    return memoized("image", data, (max_pixels, mode), lambda: _decode_image(data, max_pixels, mode))


def _decode_image(data: bytes, max_pixels: int, mode: str) -> Image.Image:
    if not data:
        raise InvalidRequestError("empty image payload")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            before_open(data)
            opened = Image.open(io.BytesIO(data), formats=FORMATS)
            width, height = opened.size
            if width <= 0 or height <= 0:
                raise InvalidRequestError(f"image declares an empty size {width}x{height}")
            if width * height > max_pixels:
                raise PayloadTooLargeError(
                    f"image declares {width}x{height} = {width * height} pixels, limit is {max_pixels}"
                )
            after_open(data, opened, max_pixels)
            opened.load()
            image = _upright(opened)
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
    except Exception as exc:  # struct.error, TypeError, OverflowError...: still the file's doing
        raise InvalidRequestError(
            f"corrupt image: {type(exc).__name__}: {exc}", code=ErrorCode.INVALID_PAYLOAD
        ) from exc
    return image


def _upright(opened: Image.Image) -> Image.Image:
    """The image as a person sees it; as stored when its EXIF orientation cannot be applied."""
    try:
        if opened.getexif().get(_ORIENTATION, 1) == 1:  # exif_transpose copies even when upright
            return opened
        return ImageOps.exif_transpose(opened)
    except Exception:  # an EXIF block with mistyped or looping tags: the pixels are fine
        return opened
