"""What a shared link shows, and the two small pages the server sends without a kernel.

When someone pastes the page's address into Slack, Discord, WhatsApp, X or a search engine, a robot
fetches it and reads its Open Graph and Twitter card tags: a title, a description and a picture. This
module makes them from the model card (the classes), once per server:

- `page_meta(card)`: title, description and classes, the values every tag is made of;
- `meta_tags(meta, base)`: the tags themselves (Voila's page carries them through the `whatsthat`
  template, `whatsthat/web/templates`; the pages below carry them too);
- `draw_picture(meta, path)`: the 1200x630 PNG the tags point to, drawn with Pillow, in a process of its
  own (`python -m whatsthat.web.preview`) so that the server never imports Pillow;
- `busy_page`: "Busy right now, try again in a minute", sent with HTTP 503 when no kernel fits;
- `robot_page`: the preview alone, for robots that say who they are (they never run the page's JavaScript).

Standard library only at import: the server imports this module.
"""

from __future__ import annotations

import argparse
import html
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TITLE = "What's that?"  # the page's title (whatsthat.web.app shows it too)
PICTURE_PATH = "whatsthat/preview.png"  # below the server's base URL
PICTURE_SIZE = (1200, 630)  # what Open Graph and Twitter's large card show without cropping
RETRY_AFTER = 60  # seconds, in the busy page's Retry-After and its text


def page_meta(card: dict, title: str = TITLE) -> dict[str, Any]:
    """Title, description and classes from a model card (JSON-friendly: it travels to Voila's template)."""
    classes = [str(c) for c in card.get("classes") or []]
    if classes:
        named = classes[0] if len(classes) == 1 else ", ".join(classes[:-1]) + " or " + classes[-1]
        description = f"Upload a photo and a small neural network says whether it shows {named}."
    else:
        description = "Upload a photo and a small neural network says what it shows."
    return {"title": title, "description": description, "classes": classes, "picture": PICTURE_PATH}


def meta_tags(meta: dict[str, Any], base: str = "/") -> str:
    """Open Graph and Twitter card tags for `meta`; `base` is the site's address ("https://host/", or "/").

    Robots want absolute addresses; a page rendered before any request knows only its path (`base` "/").
    """
    base = base if base.endswith("/") else base + "/"
    picture = base + str(meta.get("picture", PICTURE_PATH))
    tags = [
        ("name", "description", meta["description"]),
        ("property", "og:type", "website"),
        ("property", "og:title", meta["title"]),
        ("property", "og:description", meta["description"]),
        ("property", "og:image", picture),
        ("property", "og:image:width", str(PICTURE_SIZE[0])),
        ("property", "og:image:height", str(PICTURE_SIZE[1])),
        ("property", "og:image:alt", f"{meta['title']} {meta['description']}"),
        ("name", "twitter:card", "summary_large_image"),
        ("name", "twitter:title", meta["title"]),
        ("name", "twitter:description", meta["description"]),
        ("name", "twitter:image", picture),
    ]
    if base.startswith(("http://", "https://")):
        tags.append(("property", "og:url", base))
    return "\n".join(f'<meta {attr}="{name}" content="{html.escape(value, quote=True)}">' for attr, name, value in tags)


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
{tags}
<style>
body {{ font-family: system-ui, sans-serif; max-width: 36em; margin: 12vh auto; padding: 0 1em; color: #263238; }}
h1 {{ font-size: 1.6em; }} p {{ line-height: 1.5; }}
button {{ font-size: 1em; padding: .5em 1.2em; border-radius: 4px; border: 0; background: #1976d2; color: #fff; }}
</style>
</head>
<body>
{body}
</body>
</html>
"""


def busy_page(meta: dict[str, Any], base: str = "/", retry_after: int = RETRY_AFTER) -> str:
    """The page a visitor gets when no kernel fits: it says so, and tries again by itself."""
    body = f"""<h1>Busy right now, try again in a minute</h1>
<p>{html.escape(meta['title'])} has as many visitors as it can hold at the moment. This page tries again by itself
in <span id="wait">{retry_after}</span> seconds.</p>
<p><button id="again" onclick="location.reload()">Try again now</button></p>
<script>
let left = {retry_after};
setInterval(() => {{ left -= 1; document.getElementById("wait").textContent = Math.max(left, 0);
                     if (left === 0) location.reload(); }}, 1000);
</script>"""
    return _PAGE.format(title=html.escape(meta["title"]), tags=meta_tags(meta, base), body=body)


def robot_page(meta: dict[str, Any], base: str = "/") -> str:
    """The page's preview without the page: what a link-preview robot reads."""
    picture = html.escape(base.rstrip("/") + "/" + str(meta.get("picture", PICTURE_PATH)), quote=True)
    body = (f"<h1>{html.escape(meta['title'])}</h1>\n<p>{html.escape(meta['description'])}</p>\n"
            f'<p><img src="{picture}" alt="" width="600" height="315"></p>')  # fmt: skip
    return _PAGE.format(title=html.escape(meta["title"]), tags=meta_tags(meta, base), body=body)


def draw_picture(meta: dict[str, Any], path: str | Path) -> Path:
    """Draw the 1200x630 preview picture for `meta` into `path` (PNG); returns `path`."""
    from PIL import Image, ImageDraw, ImageFont

    width, height = PICTURE_SIZE
    image = Image.new("RGB", PICTURE_SIZE, (245, 247, 250))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, width, 14), fill=(25, 118, 210))
    big, middle, small = (ImageFont.load_default(size=s) for s in (96, 44, 32))
    draw.text((80, 90), str(meta["title"]), font=big, fill=(38, 50, 56))
    draw.text((80, 230), "Upload a photo. The model says which it shows:", font=small, fill=(84, 110, 122))
    classes = [str(c) for c in meta.get("classes") or []]
    x, y = 80, 300
    for name in classes[:12]:
        label = name if len(name) <= 24 else name[:23] + "…"
        box = draw.textbbox((0, 0), label, font=middle)
        w, h = box[2] - box[0] + 48, box[3] - box[1] + 32
        if x + w > width - 80:
            x, y = 80, y + h + 20
        if y + h > height - 40:
            break
        draw.rounded_rectangle((x, y, x + w, y + h), radius=18, fill=(255, 255, 255), outline=(25, 118, 210), width=3)
        draw.text((x + 24, y + 16 - box[1]), label, font=middle, fill=(25, 118, 210))
        x += w + 20
    out = Path(path)
    image.save(out, format="PNG", optimize=True)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m whatsthat.web.preview --meta JSON --out PATH`: draw the picture (the server runs this once)."""
    ap = argparse.ArgumentParser(prog="python -m whatsthat.web.preview", description=main.__doc__)
    ap.add_argument("--meta", required=True, help="page_meta() as JSON")
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)
    try:
        meta = json.loads(args.meta)
    except json.JSONDecodeError as e:
        ap.error(f"--meta is not JSON: {e}")
    draw_picture(meta, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
