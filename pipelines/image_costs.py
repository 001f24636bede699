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
  (gzipped) file took 18 s and 2.3 GB just to open, and it reads each entry of
  a directory in Python. The first directory's entries, and its strip and tile
  counts, are read before Pillow sees the file, with the headers Pillow accepts.
- Pillow reads a PNG's chunks one by one in Python too: 1.3 million empty
  ancillary chunks fit a 16 MB message and cost about 6 s. Chunks are counted
  first (writers make IDAT chunks of 8-64 KB: a few hundred for a large image).
"""

from __future__ import annotations

import re
import struct

from PIL import ImageFile, JpegImagePlugin

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
#: Entries its directory may have (real files have a few dozen; Pillow reads each in Python, thrice).
MAX_TIFF_ENTRIES = 4096
#: Chunks a PNG may have, all kinds together.
MAX_PNG_CHUNKS = 4096
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: The TIFF headers Pillow opens (TiffImagePlugin.PREFIXES), two of them malformed but accepted.
_TIFF_PREFIXES = (b"MM\x00*", b"II*\x00", b"MM*\x00", b"II\x00*", b"MM\x00+", b"II+\x00")

_SOS = b"\xff\xda"
#: A marker: 0xFF, then a code that is not a stuffed zero, a restart (those sit in scan data) or another
#: 0xFF (fill). One 0xFF only: ``\xff+`` would retry at every byte of a long run of fill, quadratically.
_MARKER = re.compile(rb"\xff([^\x00\xff\xd0-\xd7])")
_STRIP_OFFSETS, _TILE_OFFSETS = 273, 324


def before_open(data: bytes) -> None:
    """Refuse what Pillow cannot even open cheaply."""
    entries, chunks = tiff_directory(data)
    if entries > MAX_TIFF_ENTRIES:
        raise PayloadTooLargeError(f"a TIFF directory of {entries} entries; at most {MAX_TIFF_ENTRIES}")
    if chunks > MAX_TIFF_CHUNKS:
        raise PayloadTooLargeError(f"a TIFF of {chunks} strips or tiles; at most {MAX_TIFF_CHUNKS}")
    if data[:8] == _PNG_SIGNATURE and png_chunks(data) > MAX_PNG_CHUNKS:
        raise PayloadTooLargeError(f"a PNG of more than {MAX_PNG_CHUNKS} chunks")


def after_open(data: bytes, opened: ImageFile.ImageFile, max_pixels: int) -> None:
    """Refuse what would cost far more to decode than its pixels say (the pixels are checked already)."""
    width, height = opened.size
    if isinstance(opened, JpegImagePlugin.JpegImageFile):  # MPO files (several JPEGs) included
        _check_scans(data, width * height, max_pixels)
    elif opened.tile and opened.tile[0][0] == "bmp_rle":
        if width * height > MAX_RLE_BMP_PIXELS:
            raise PayloadTooLargeError(
                f"a run-length BMP of {width}x{height} pixels; at most {MAX_RLE_BMP_PIXELS} pixels "
                "for run-length BMPs"
            )
        # Pillow's loop runs once per byte pair, drawn or not: the data may not be much longer than
        # the pixels it draws (two bytes a pixel, an end of line a row).
        if len(data) > 2 * width * height + 4 * height + 1024:
            raise PayloadTooLargeError(f"a run-length BMP of {len(data)} bytes for {width}x{height} pixels")


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


def tiff_directory(data: bytes) -> tuple[int, int]:
    """How many entries the first directory of a TIFF (or BigTIFF) has, and the most strips or tiles it
    declares; (0, 0) for anything else. The file is read as Pillow reads it: byte order from the first
    two bytes, BigTIFF when the third is 0x2B."""
    if data[:4] not in _TIFF_PREFIXES:
        return 0, 0
    order = ">" if data[:2] == b"MM" else "<"
    big = data[2] == 0x2B
    count, entry, width = ("Q", "HHQ", 20) if big else ("H", "HHI", 12)
    try:
        (ifd,) = struct.unpack_from(order + ("Q" if big else "I"), data, 8 if big else 4)
        (entries,) = struct.unpack_from(order + count, data, ifd)
        if entries > MAX_TIFF_ENTRIES:
            return entries, 0
        first = ifd + struct.calcsize(order + count)
        most = 0
        for i in range(entries):
            tag, _, declared = struct.unpack_from(order + entry, data, first + width * i)
            if tag in (_STRIP_OFFSETS, _TILE_OFFSETS):
                most = max(most, declared)
        return entries, most
    except struct.error:  # truncated: Pillow says what is wrong with it
        return 0, 0


def png_chunks(data: bytes) -> int:
    """The chunks of a PNG up to its end (IEND or the data's), counting no further than
    ``MAX_PNG_CHUNKS + 1``: each is a length, a type, the data and a CRC."""
    count, pos = 0, len(_PNG_SIGNATURE)
    while pos + 8 <= len(data) and count <= MAX_PNG_CHUNKS:
        (length,) = struct.unpack_from(">I", data, pos)
        count += 1
        if data[pos + 4 : pos + 8] == b"IEND":
            break
        pos += 12 + length
    return count
