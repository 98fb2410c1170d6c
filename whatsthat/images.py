"""Turn untrusted bytes (a download, an upload) into a clean RGB picture, or say exactly why not.

Used by gather (web downloads) and by the app (visitors' uploads), so both apply the same rules:
magic-byte sniffing, a byte cap, a decompression-bomb guard, a full decode (catches truncation),
EXIF orientation, first frame of animations, and every colour mode flattened to RGB.
"""

from __future__ import annotations

import hashlib
import io
import struct
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from whatsthat.errors import WhatsthatError

MAX_BYTES = 20 * 1024 * 1024  # bigger than any photo a phone sends; bounds memory per upload
MAX_PIXELS = 40_000_000  # ~ 8000x5000; decoding more is a decompression bomb, not a photo

# Formats PIL decodes that we accept, by their first bytes. Anything else (HTML, SVG, PDF, ...) is
# refused before PIL sees it, so a web page served as "photo.jpg" never becomes a training image.
_MAGIC = [
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
]


class ImageError(WhatsthatError):
    """Bytes that are not a usable image. `reason` is a short stable code (for manifests/summaries)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def sniff(data: bytes) -> str | None:
    """The image format named by the magic bytes at the start of `data`, or None."""
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _describe_non_image(data: bytes) -> str:
    head = data[:512].lstrip().lower()
    if head.startswith(b"<?xml") and b"<svg" in head or head.startswith(b"<svg"):
        return "svg"
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
        return "html"
    return "unknown"


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MB"  # binary megabytes, as file managers and phones count them


def load_image(
    source: bytes | str | Path, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS
) -> Image.Image:
    """Decode `source` (bytes or a file path) into an upright RGB image, or raise ImageError."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        try:
            size = path.stat().st_size
        except OSError as e:
            raise ImageError("unreadable", f"cannot read {path}: {e.strerror or e}") from e
        if size > max_bytes:
            raise ImageError("too-large", f"file is {_mib(size)}; the limit is {_mib(max_bytes)}")
        data = path.read_bytes()
    else:
        data = bytes(source)
    if not data:
        raise ImageError("empty", "the file is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ImageError("too-large", f"file is {_mib(len(data))}; the limit is {_mib(max_bytes)}")
    if sniff(data) is None:
        kind = _describe_non_image(data)
        if kind == "svg":
            raise ImageError("svg", "SVG drawings are not supported; please use a photo (JPEG, PNG, GIF, WebP)")
        if kind == "html":
            raise ImageError("not-image", "this is a web page (HTML), not an image")
        raise ImageError("not-image", "this is not an image file (JPEG, PNG, GIF, WebP, BMP or TIFF expected)")
    try:
        im = Image.open(io.BytesIO(data))
        w, h = im.size
        if w * h > max_pixels:
            raise ImageError("too-many-pixels", f"image is {w}x{h} pixels; the limit is {max_pixels / 1e6:.0f} megapixels")
        if getattr(im, "is_animated", False):
            im.seek(0)  # animated GIF/WebP: the first frame stands for the whole
        im.load()  # full decode: truncated and corrupt files fail here, not later in training
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError("too-many-pixels", f"image is too large to decode safely ({e})") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, struct.error, IndexError, TypeError, EOFError) as e:
        # PIL's decoders raise all of these on malformed files; each means "corrupt", not a bug here
        msg = f"{type(e).__name__}: {e}" if not str(e) else str(e)
        if "truncated" in msg.lower():
            raise ImageError("truncated", "the image file is truncated (incomplete download?)") from e
        raise ImageError("corrupt", f"the image file is corrupt: {msg}") from e
    if im.width < 1 or im.height < 1:
        raise ImageError("corrupt", "the image has no pixels")
    im = ImageOps.exif_transpose(im)  # phone photos store "rotate me" in EXIF rather than in pixels
    return to_rgb(im)


def to_rgb(im: Image.Image) -> Image.Image:
    """Flatten any mode (P+transparency, RGBA, LA, CMYK, L, I;16, ...) to RGB on a white background."""
    if im.mode == "RGB":
        return im
    if im.mode == "P" and "transparency" in im.info or im.mode in ("PA", "LA", "La", "RGBa"):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        background = Image.new("RGB", im.size, (255, 255, 255))
        background.paste(im, mask=im.getchannel("A"))
        return background
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit/float greyscale: scale into 8 bits rather than clipping to white
        im = im.convert("F")
        lo, hi = im.getextrema()
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        im = im.point(lambda v: (v - lo) * scale).convert("L")
    return im.convert("RGB")


def resize_max(im: Image.Image, max_side: int) -> Image.Image:
    """Shrink so the longer side is at most `max_side`, keeping aspect ratio; never enlarges."""
    if max(im.size) <= max_side:
        return im
    out = im.copy()
    out.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return out


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def phash(im: Image.Image) -> str:
    """Perceptual hash (64-bit, hex): resized or recompressed copies land within a few bits."""
    import imagehash  # imported here: only gather/import need it, not the web app

    return str(imagehash.phash(im))


def phash_distance(a: str, b: str) -> int:
    """Hamming distance between two hex perceptual hashes."""
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def encode_jpeg(im: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
