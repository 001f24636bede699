"""Test images: rendered text pages and solid colours, encoded like a caller would."""

from __future__ import annotations

import io
import struct
import textwrap
import zlib

from PIL import Image, ImageDraw, ImageFont

_TEXT = (
    "Kafka carries each request to the orchestrator, which batches work for the right model "
    "and publishes the answer back to the stream. The quick brown fox jumps over the lazy dog. "
) * 8


def text_page(width: int = 600, height: int = 800, font_size: int = 22) -> Image.Image:
    """A white page of black printed text, upright."""
    page = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(page)
    font = ImageFont.load_default(size=font_size)
    y = 20
    for line in textwrap.wrap(_TEXT, 45):
        draw.text((20, y), line, fill="black", font=font)
        y += int(font_size * 1.4)
    return page


def encode(image: Image.Image, fmt: str = "PNG", **kwargs: object) -> bytes:
    """Image to bytes in a container format."""
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def rotated_page(clockwise_degrees: int, fmt: str = "PNG") -> bytes:
    """A text page turned clockwise by 0/90/180/270 degrees."""
    return encode(text_page().rotate(-clockwise_degrees, expand=True), fmt)


def solid(rgb: tuple[int, int, int], size: int = 16, fmt: str = "PNG") -> bytes:
    """A one-colour image."""
    return encode(Image.new("RGB", (size, size), rgb), fmt)


def png_declaring(width: int, height: int) -> bytes:
    """A PNG that declares a size and carries almost no data: a decompression bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of ``width`` x ``height`` black pixels: small on the wire, huge decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def jpeg_repeating_a_scan(width: int, height: int, repeats: int) -> bytes:
    """A progressive grey JPEG whose first AC scan's header is repeated ``repeats`` times before its end
    (no data each: libjpeg takes each for a scan of zeros, and walks every block of the image for it)."""
    data = encode(Image.new("L", (width, height), 128), "JPEG", progressive=True, quality=50)
    at = 0
    while True:
        at = data.index(b"\xff\xda", at + 2)
        header = data[at : at + 2 + int.from_bytes(data[at + 2 : at + 4], "big")]
        components = header[4]
        first, approximation = header[5 + 2 * components], header[7 + 2 * components] >> 4
        if first > 0 and approximation == 0:  # an AC scan that is not a refinement
            break
    end = data.rindex(b"\xff\xd9")
    return data[:end] + header * repeats + data[end:]


def bmp_rle(width: int, height: int, *, rle4: bool = False) -> bytes:
    """A run-length BMP whose every row is one pixel, then end of line: Pillow decodes it in Python,
    padding each row a byte at a time."""
    body = b"\x01\x05\x00\x00" * height + b"\x00\x01"
    bits, compression, colours = (4, 2, 16) if rle4 else (8, 1, 256)
    palette = b"".join(struct.pack("<BBBB", i, i, i, 0) for i in range(colours))
    offset = 14 + 40 + len(palette)
    dib = struct.pack(
        "<IiiHHIIiiII", 40, width, height, 1, bits, compression, len(body), 2835, 2835, colours, 0
    )
    return b"BM" + struct.pack("<IHHI", offset + len(body), 0, 0, offset) + dib + palette + body


def tiff_with_strips(strips: int) -> bytes:
    """An uncompressed 1 x ``strips`` grey TIFF of one-row strips, all pointing at the same bytes:
    Pillow makes one Python object per strip while opening it, before any size check."""
    tags: list[tuple[int, int, int, int | None]] = [(256, 4, 1, 1), (257, 4, 1, strips), (258, 3, 1, 8)]
    tags += [(259, 3, 1, 1), (262, 3, 1, 1)]
    tags += [(273, 3, strips, None), (277, 3, 1, 1), (278, 4, 1, 1)]
    pixels_at = 8 + 2 + 12 * len(tags) + 4
    offsets_at = pixels_at + 64
    out = bytearray(b"II*\x00" + struct.pack("<IH", 8, len(tags)))
    for tag, kind, count, value in tags:
        if value is None:
            out += struct.pack("<HHII", tag, kind, count, offsets_at)
        elif kind == 3:
            out += struct.pack("<HHIHH", tag, kind, count, value, 0)
        else:
            out += struct.pack("<HHII", tag, kind, count, value)
    return bytes(out) + b"\0\0\0\0" + bytes(64) + struct.pack("<H", pixels_at) * strips


def png_with_broken_exif(width: int, height: int) -> bytes:
    """A PNG whose EXIF says "rotate 90°" next to an ImageWidth tag of the wrong type (Pillow's
    exif_transpose raises struct.error on it)."""
    exif = b"II*\x00" + struct.pack("<IH", 8, 2)
    exif += struct.pack("<HHI4s", 0x0100, 7, 4, b"abcd") + struct.pack("<HHIHH", 0x0112, 3, 1, 6, 0)
    exif += b"\0\0\0\0"
    plain = encode(Image.new("RGB", (width, height), (10, 20, 30)))
    chunk = struct.pack(">I", len(exif)) + b"eXIf" + exif + struct.pack(">I", zlib.crc32(b"eXIf" + exif))
    at = plain.index(b"IDAT") - 4
    return plain[:at] + chunk + plain[at:]


def png_with_chunks(extra: int) -> bytes:
    """A small PNG carrying ``extra`` empty private ancillary chunks before its image data: Pillow
    reads each one in Python."""
    plain = encode(Image.new("RGB", (4, 4), (1, 2, 3)))
    at = plain.index(b"IDAT") - 4
    empty = struct.pack(">I", 0) + b"prVt" + struct.pack(">I", zlib.crc32(b"prVt"))
    return plain[:at] + empty * extra + plain[at:]
