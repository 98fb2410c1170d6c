"""Data checks on the one decoder every untrusted byte goes through (downloads and uploads)."""

from __future__ import annotations

import pytest
from conftest import draw_image, image_bytes
from PIL import Image

from whatsthat.images import (
    MAX_DECODE_BYTES,
    TARGET_PIXELS,
    ImageError,
    decode_cost,
    load_image,
    phash,
    phash_distance,
    resize_max,
    sniff,
)


def test_plain_jpeg_and_path(tmp_path):
    data = image_bytes(draw_image("red", 64))
    assert load_image(data).mode == "RGB"
    p = tmp_path / "x.jpg"
    p.write_bytes(data)
    assert load_image(p).size == load_image(data).size


@pytest.mark.parametrize(
    ("data", "reason", "words"),
    [
        (b"", "empty", "empty"),
        (b"<!DOCTYPE html><html><body>hi</body></html>", "not-image", "web page"),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>', "svg", "SVG"),
        (b"%PDF-1.4 ...", "not-image", "not an image"),
    ],
)
def test_non_images_are_refused_with_a_reason(data, reason, words):
    with pytest.raises(ImageError) as e:
        load_image(data)
    assert e.value.reason == reason and words in str(e.value)


def test_truncated_jpeg():
    data = image_bytes(draw_image("red", 200))
    with pytest.raises(ImageError) as e:
        load_image(data[: len(data) // 2])
    assert e.value.reason in ("truncated", "corrupt")


def test_caps_on_bytes_and_pixels():
    data = image_bytes(draw_image("red", 64))
    with pytest.raises(ImageError, match="limit"):
        load_image(data, max_bytes=100)
    big = image_bytes(Image.new("L", (3000, 3000)), "PNG")  # compresses to a few KB: a classic bomb shape
    with pytest.raises(ImageError) as e:
        load_image(big, max_decode_bytes=20_000_000)  # 9 MP of L + its RGB copy: 34.3 MiB
    assert e.value.reason == "too-many-pixels" and "34.3 MB of memory" in str(e.value)


def test_the_bomb_guard_counts_memory_at_the_scale_of_the_decode():
    # a 50 MP PNG must be decoded whole (and copied to RGB): refused, with what it would cost
    png = image_bytes(Image.new("1", (10_000, 5_000)), "PNG")
    with pytest.raises(ImageError) as e:
        load_image(png)
    assert e.value.reason == "too-many-pixels" and "50 megapixels" in str(e.value) and "memory" in str(e.value)
    assert decode_cost("1", (10_000, 5_000)) > MAX_DECODE_BYTES
    assert decode_cost("RGB", (8_000, 6_000)) < MAX_DECODE_BYTES  # a 48 MP HEIC decodes straight to RGB


def test_a_100_megapixel_jpeg_is_decoded_small_not_refused():
    data = image_bytes(draw_image("blue", 400).resize((12_500, 8_000)), "JPEG")
    im = load_image(data)
    assert im.mode == "RGB" and im.width / im.height == pytest.approx(12_500 / 8_000, rel=0.01)
    assert TARGET_PIXELS / 4 <= im.width * im.height <= 2 * TARGET_PIXELS
    assert decode_cost("RGB", (12_500, 8_000)) > MAX_DECODE_BYTES  # what a full decode would have needed


def test_a_big_png_is_reduced_and_keeps_its_exif_rotation():
    exif = Image.Exif()
    exif[0x0112] = 6
    data = image_bytes(Image.new("RGB", (6_000, 5_000), (0, 128, 0)), "PNG", exif=exif)
    im = load_image(data)
    assert im.width * im.height <= 2 * TARGET_PIXELS
    assert im.height > im.width  # rotated as the EXIF says, after the reduction


def _heic(im: Image.Image, **kwargs) -> bytes:
    from pillow_heif import register_heif_opener

    register_heif_opener()  # to write one; load_image registers it by itself to read
    return image_bytes(im, "HEIF", **kwargs)


def test_heic_from_an_iphone_is_decoded_upright():
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _heic(Image.new("RGB", (40, 20), (0, 128, 0)), exif=exif.tobytes())
    assert sniff(data) == "HEIF"
    im = load_image(data)
    assert im.mode == "RGB" and im.size == (20, 40)
    r, g, b = im.getpixel((10, 20))
    assert g > 100 and r < 40 and b < 40


def test_a_truncated_heic_is_corrupt_not_a_crash():
    data = _heic(draw_image("red", 64))
    with pytest.raises(ImageError) as e:
        load_image(data[: len(data) // 2])
    assert e.value.reason in ("truncated", "corrupt")


def test_avif_is_accepted():
    im = draw_image("red", 64)
    data = image_bytes(im, "AVIF")
    assert sniff(data) == "AVIF" and load_image(data).size == im.size


def test_modes_are_flattened_to_rgb():
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))  # fully transparent red -> white, not black
    assert load_image(image_bytes(rgba, "PNG")).getpixel((5, 5)) == (255, 255, 255)
    pal = Image.new("P", (10, 10), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.info["transparency"] = 0
    assert load_image(image_bytes(pal, "PNG", transparency=0)).getpixel((1, 1)) == (255, 255, 255)
    cmyk = draw_image("blue", 32).convert("CMYK")
    assert load_image(image_bytes(cmyk, "JPEG")).mode == "RGB"
    grey16 = Image.new("I;16", (8, 8))
    grey16.putpixel((0, 0), 4000)
    assert load_image(image_bytes(grey16, "PNG")).mode == "RGB"


def test_exif_orientation_is_applied():
    im = Image.new("RGB", (40, 20), (0, 128, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display", as phones write it
    out = load_image(image_bytes(im, "JPEG", exif=exif))
    assert out.size == (20, 40)


def test_animated_gif_gives_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = image_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    r, g, b = load_image(buf).getpixel((8, 8))
    assert r > 200 and b < 50


def test_resize_and_phash():
    im = draw_image("green", 300)
    small = resize_max(im, 100)
    assert max(small.size) == 100 and resize_max(small, 400) is small
    assert phash_distance(phash(im), phash(small)) <= 6  # a resized copy is a near duplicate
    assert phash_distance(phash(im), phash(draw_image("red", 300))) > 10
    assert sniff(b"\x89PNG\r\n\x1a\n....") == "PNG" and sniff(b"hello") is None


def test_a_corrupt_file_message_names_no_python_object():
    # a GIF signature followed by garbage: Pillow's message would name "<_io.BytesIO object at 0x...>"
    with pytest.raises(ImageError) as info:
        load_image(b"GIF89a" + b"0" * 30)
    assert info.value.reason == "corrupt"
    assert "BytesIO" not in str(info.value) and " at 0x" not in str(info.value)
