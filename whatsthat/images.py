"""Turn untrusted bytes (a download, an upload) into a clean RGB picture, or say exactly why not.

Used by gather (web downloads) and by the app's model process (visitors' uploads), so both apply the
same rules: magic-byte sniffing, a byte cap, a decompression-bomb guard, a full decode (catches
truncation), EXIF orientation, first frame of animations, and every colour mode flattened to RGB.

Phone photos: iPhones send HEIC (decoded by pillow-heif, registered on first use), and phones take
48-200 megapixel photos. Nothing downstream needs more than a few megapixels (the model sees 224 px,
thumbnails 192, the dataset 400), so a big JPEG is decoded at 1/2, 1/4 or 1/8 scale by libjpeg itself
(PIL's draft mode: the DCT is cut short, the full-size bitmap never exists), and any other big picture
is reduced right after decoding. The bomb guard is what a decode would really cost in memory, at the
scale it will actually be decoded, rather than a pixel count: a 200 MP JPEG is cheap, a 50 MP PNG
that must be decoded whole is not.
"""

from __future__ import annotations

import hashlib
import io
import math
import stat
import struct
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from whatsthat.errors import WhatsthatError

MAX_BYTES = 40 * 1024 * 1024  # a 200 MP phone JPEG is 20-40 MB; bounds memory per upload
# Memory one decode may take: a 48 MP HEIC decodes to 138 MiB of RGB. A small dyno (512 MB) must still
# hold the model beside it, so a 50 MP PNG that needs ~190 MiB (decode + RGB copy) is refused.
MAX_DECODE_BYTES = 160 * 2**20
# Decode big JPEGs at the largest 1/2^k scale that still has at least this many pixels, and reduce
# other big pictures to about this size right after decoding: far more than any use here needs.
TARGET_PIXELS = 12_000_000

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
# ISO base media files (HEIF family): bytes 4-8 are "ftyp", then the major brand.
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}
# Bytes per pixel of the bitmap PIL decodes into, by mode (anything unlisted: 4, the widest common one).
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 2, "La": 2, "PA": 2, "I;16": 2, "I;16B": 2, "I;16L": 2, "RGB": 3,
               "YCbCr": 3, "LAB": 3, "HSV": 3}


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
    if data[4:8] == b"ftyp":
        if data[8:12] in _HEIF_BRANDS:
            return "HEIF"
        if data[8:12] in _AVIF_BRANDS:
            return "AVIF"
    return None


def _register_heif() -> None:
    # pillow-heif's documented way to teach PIL to open HEIC: a plugin registration, done once and only
    # when a HEIC arrives (the web page's kernels never decode images and never import it)
    from pillow_heif import register_heif_opener

    register_heif_opener()


def decode_cost(mode: str, size: tuple[int, int]) -> int:
    """Bytes of memory a decode of `size` pixels in `mode` takes, with the RGB copy made afterwards."""
    pixels = size[0] * size[1]
    return pixels * (_MODE_BYTES.get(mode, 4) + (0 if mode == "RGB" else 3))


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
    source: bytes | str | Path,
    max_bytes: int = MAX_BYTES,
    max_decode_bytes: int = MAX_DECODE_BYTES,
    target_pixels: int = TARGET_PIXELS,
) -> Image.Image:
    """Decode `source` (bytes or a file path) into an upright RGB image, or raise ImageError.

    Pictures above `target_pixels` come back scaled down to about that many (cheaply, see the module
    docstring); a decode that would need more than `max_decode_bytes` of memory is refused.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        try:
            st = path.stat()
            if stat.S_ISDIR(st.st_mode):
                raise ImageError("folder", f"{path} is a folder, not an image file")
            if st.st_size > max_bytes:
                raise ImageError("too-large", f"file is {_mib(st.st_size)}; the limit is {_mib(max_bytes)}")
            data = path.read_bytes()
        except OSError as e:  # ImageError is not an OSError: the two above pass through
            raise ImageError("unreadable", f"cannot read {path}: {e.strerror or e}") from e
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
        raise ImageError("not-image", "this is not an image file (JPEG, PNG, GIF, WebP, HEIC, BMP or TIFF expected)")
    fmt = sniff(data)
    if fmt == "HEIF":
        _register_heif()
    # PIL's own guard counts declared pixels (a warning above 89 MP, an error above 179 MP), so it would
    # refuse a 200 MP phone photo that draft mode decodes in 20 MB. decode_cost below replaces it, and
    # Image.MAX_IMAGE_PIXELS is the setting Pillow documents for turning its pixel count off.
    Image.MAX_IMAGE_PIXELS = None
    try:
        im = Image.open(io.BytesIO(data))
        w, h = im.size
        if fmt == "JPEG" and w * h > target_pixels:
            # libjpeg decodes at 1/2, 1/4 or 1/8 scale: draft picks the smallest that is still >= the request
            scale = math.sqrt(target_pixels / (w * h))
            im.draft(im.mode, (max(1, int(w * scale)), max(1, int(h * scale))))
        cost = decode_cost(im.mode, im.size)
        if cost > max_decode_bytes:
            raise ImageError(
                "too-many-pixels",
                f"image is {w}x{h} pixels ({w * h / 1e6:.0f} megapixels): decoding it would take "
                f"{_mib(cost)} of memory, over the {_mib(max_decode_bytes)} limit (a JPEG of it would do)",
            )
        if getattr(im, "is_animated", False):
            im.seek(0)  # animated GIF/WebP: the first frame stands for the whole
        im.load()  # full decode: truncated and corrupt files fail here, not later in training
        # not a JPEG (or a huge one even at 1/8): shrink by an integer factor, averaging factor x factor
        # blocks (cheap, one pass), before the EXIF rotation and RGB copies below double the memory
        if im.width * im.height > target_pixels * 2 and im.mode in ("L", "RGB", "RGBA", "LA", "CMYK", "I", "F"):
            reduced = im.reduce(math.ceil(math.sqrt(im.width * im.height / target_pixels)))
            reduced.info = im.info  # keeps the EXIF orientation that exif_transpose reads below
            im = reduced
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError("too-many-pixels", f"image is too large to decode safely ({e})") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, struct.error, IndexError, TypeError, EOFError) as e:
        # PIL's decoders raise all of these on malformed files; each means "corrupt", not a bug here
        msg = f"{type(e).__name__}: {e}" if not str(e) else str(e)
        if "truncated" in msg.lower():
            raise ImageError("truncated", "the image file is truncated (incomplete download?)") from e
        if isinstance(e, UnidentifiedImageError):  # its text names an in-memory buffer: useless to a reader
            msg = "its header looks like an image, but no decoder can read it"
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
