"""Telling payload kinds apart by their first bytes (magic numbers)."""

from __future__ import annotations

_IMAGE = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (b"GIF8", "image/gif"),
)
_AUDIO = (
    (b"fLaC", "audio/flac"),
    (b"ID3", "audio/mpeg"),
    (b"OggS", "audio/ogg"),
    (b"\x1aE\xdf\xa3", "audio/webm"),
)


def sniff(data: bytes) -> str | None:
    """MIME type of an image or audio payload, or None for anything else."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "audio/wav"
    for magic, mime in _IMAGE + _AUDIO:
        if data.startswith(magic):
            return mime
    if len(data) > 2 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0:
        return "audio/mpeg"  # MPEG audio frame sync without an ID3 tag
    return None


def modality_of(data: bytes) -> str:
    """``vision``, ``audio`` or ``text`` for a payload."""
    mime = sniff(data)
    if mime is None:
        return "text"
    return "vision" if mime.startswith("image/") else "audio"
