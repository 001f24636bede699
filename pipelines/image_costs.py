"""What an image container will cost to decode, read from its bytes before decoding it.

A pixel limit bounds most formats, but not all of the work: some files cost far
more than their pixels, and they cost it on a decode thread every tenant shares.

- A JPEG's work is its pixels times its scans. A progressive file may repeat a
  scan header thousands of times at 10 bytes each, and libjpeg walks every block
  of the image once per scan. Scans are counted from the markers.
- Pillow decodes run-length BMP (RLE4/RLE8) in Python, a few interpreter steps
  per pixel, holding the GIL: those get a pixel limit of their own.
- Pillow builds one Python object per strip or tile of a TIFF, while opening it
  and before the pixel check can run: 7.8 million one-row strips of a 15 KB
  (gzipped) file took 18 s and 2.3 GB just to open. The first image's strip and
  tile counts are read from its directory before Pillow sees the file.
"""

from __future__ import annotations

import re
import struct

from PIL import ImageFile

from altlas.schemas.errors import PayloadTooLargeError

#: Most scans a JPEG may have (libjpeg's progressive default is 10 for colour, 6 for grey) ...
MAX_JPEG_SCANS = 64
#: ... and at most this many times the largest image allowed, in pixels times scans.
MAX_JPEG_SCAN_WORK = 16
#: Marker segments read when counting scans (a file needs this only when 0xFF 0xDA bytes outnumber
#: the scans allowed, which a real file's thumbnail or ICC profile comes nowhere near).
MAX_JPEG_SEGMENTS = 4096
#: Pixels of a run-length BMP: Pillow decodes those in Python, about 0.13 µs a pixel.
MAX_RLE_BMP_PIXELS = 2 * 1024 * 1024
#: Strips or tiles the first image of a TIFF may have (scanners write strips of 8-64 KB).
MAX_TIFF_CHUNKS = 65_536

_SOS = b"\xff\xda"
#: A marker: 0xFF fill bytes, then a code that is not a stuffed zero or a restart (those sit in scan data).
_MARKER = re.compile(rb"\xff+([^\x00\xff\xd0-\xd7])")
_STRIP_OFFSETS, _TILE_OFFSETS = 273, 324


def before_open(data: bytes) -> None:
    """Refuse what Pillow cannot even open cheaply."""
    chunks = tiff_chunks(data)
    if chunks > MAX_TIFF_CHUNKS:
        raise PayloadTooLargeError(f"a TIFF of {chunks} strips or tiles; at most {MAX_TIFF_CHUNKS}")


def after_open(data: bytes, opened: ImageFile.ImageFile, max_pixels: int) -> None:
    """Refuse what would cost far more to decode than its pixels say (the pixels are checked already)."""
    width, height = opened.size
    if opened.format == "JPEG":
        _check_scans(data, width * height, max_pixels)
    elif opened.tile and opened.tile[0][0] == "bmp_rle" and width * height > MAX_RLE_BMP_PIXELS:
        raise PayloadTooLargeError(
            f"a run-length BMP of {width}x{height} pixels; at most {MAX_RLE_BMP_PIXELS} pixels "
            "for run-length BMPs"
        )


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


def tiff_chunks(data: bytes) -> int:
    """The most strips or tiles the first image of a TIFF (or BigTIFF) declares; 0 for anything else."""
    head = data[:4]
    if head in (b"II*\x00", b"MM\x00*"):
        order = "<" if head[:2] == b"II" else ">"
        count, entry, first = "H", "HHI", 4
    elif head in (b"II+\x00", b"MM\x00+"):
        order = "<" if head[:2] == b"II" else ">"
        count, entry, first = "Q", "HHQ", 8
    else:
        return 0
    try:
        (ifd,) = struct.unpack_from(order + ("I" if first == 4 else "Q"), data, first)
        (entries,) = struct.unpack_from(order + count, data, ifd)
        size = struct.calcsize(order + count)
        width = 12 if first == 4 else 20
        most = 0
        for i in range(entries):
            tag, _, declared = struct.unpack_from(order + entry, data, ifd + size + width * i)
            if tag in (_STRIP_OFFSETS, _TILE_OFFSETS):
                most = max(most, declared)
        return most
    except struct.error:  # truncated: Pillow says what is wrong with it
        return 0
