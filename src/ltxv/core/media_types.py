"""Which media type bytes are, from their first bytes (never a name or a declared
Content-Type): intake decides with it what an input is, and the client what to declare
when it uploads one. Dependency-free, so that both can import it."""

from __future__ import annotations

# ISO base media brands that mean QuickTime rather than MP4.
QUICKTIME_BRANDS = (b"qt  ",)
# Top-level atoms an old QuickTime file may begin with instead of `ftyp`.
QUICKTIME_ATOMS = (b"moov", b"mdat", b"wide", b"free", b"skip")


def sniff(data: bytes) -> str | None:
    """The media type the bytes begin like, among those a profile can accept."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[4:8] == b"ftyp":
        return "video/quicktime" if data[8:12] in QUICKTIME_BRANDS else "video/mp4"
    if data[4:8] in QUICKTIME_ATOMS:
        return "video/quicktime"
    if data.startswith(b"\x1a\x45\xdf\xa3"):
        # EBML: WebM names its DocType in the header; other Matroska files are refused.
        return "video/webm" if b"webm" in data[:64] else None
    return None
