"""A local web for gather/search tests: a threaded HTTP server on 127.0.0.1 serving generated images.

`ImageServer` serves whatever routes a test adds (bytes, a status, a content type, a delay, N
failures before success, or a callable) and counts hits per path, so tests can assert what was
(re-)downloaded. `add_catalog` fills it with every case gather must handle; `bing_page` renders a
Bing-like results page; `FakeDDGS` stands in for ddgs.DDGS. Nothing here touches the real internet.
"""

from __future__ import annotations

import html
import itertools
import json
import random
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from conftest import draw_image, image_bytes
from PIL import Image, ImageFilter

from whatsthat import images


@dataclass
class Reply:
    """What a route answers: status, headers, body (no Content-Length when `length` is False)."""

    body: bytes = b""
    status: int = 200
    content_type: str | None = "image/jpeg"
    delay: float = 0.0
    length: bool = True
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[dict[str, str], int], Reply]  # (query params, hit number starting at 1) -> Reply


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # the default listen backlog (5) drops connections from 16 parallel workers


class ImageServer:
    """Threaded HTTP server on a random free port; use as a context manager (starts and stops it)."""

    def __init__(self) -> None:
        self.routes: dict[str, Handler] = {}
        self.hits: Counter[str] = Counter()
        self.queries: list[tuple[str, dict[str, str]]] = []  # (path, query params) of every request
        self.headers: list[dict[str, str]] = []  # request headers, in the same order
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- routes -------------------------------------------------------------------------------
    def route(self, path: str, handler: Handler) -> str:
        """Serve `path` with `handler`; returns the full URL."""
        self.routes[path] = handler
        return self.url(path)

    def add(self, path: str, body: bytes = b"", *, fail_first: int = 0, fail_status: int = 500, **reply: object) -> str:
        """Serve fixed bytes at `path` (after `fail_first` answers of `fail_status`); returns the URL."""

        def handler(_params: dict[str, str], hit: int) -> Reply:
            if hit <= fail_first:
                return Reply(b"server error", status=fail_status, content_type="text/plain")
            return Reply(body, **reply)  # type: ignore[arg-type]

        return self.route(path, handler)

    def url(self, path: str) -> str:
        assert self._httpd is not None, "start the server first"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}{path}"

    # --- lifecycle ----------------------------------------------------------------------------
    def __enter__(self) -> ImageServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                parts = urllib.parse.urlsplit(self.path)
                params = dict(urllib.parse.parse_qsl(parts.query))
                with server._lock:
                    server.hits[parts.path] += 1
                    hit = server.hits[parts.path]
                    server.queries.append((parts.path, params))
                    server.headers.append(dict(self.headers.items()))
                handler = server.routes.get(parts.path)
                reply = handler(params, hit) if handler else Reply(b"not found", 404, "text/plain")
                try:
                    if reply.delay:
                        time.sleep(reply.delay)
                    self.send_response(reply.status)
                    if reply.content_type:
                        self.send_header("Content-Type", reply.content_type)
                    if reply.length:
                        self.send_header("Content-Length", str(len(reply.body)))
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test): expected, nothing to report

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (base signature)
                pass  # keep test output clean; hits are counted instead

        # HTTP/1.0: the connection closes after each reply, so a body without Content-Length works
        Handler.protocol_version = "HTTP/1.0"
        self._httpd = _Server(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True  # a handler still sleeping (slow route) must not block stop
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="imageserver", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._httpd is not None and self._thread is not None
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


# --- generated pictures ----------------------------------------------------------------------


def pattern(seed: int, size: int = 96) -> Image.Image:
    """A smooth random colour field: any two are far apart in phash, and a resized copy stays close.

    (conftest's simple drawings are too alike for near-duplicate tests: two 'green' ones are often
    within 1-3 bits, and hard block edges make a resized copy drift by up to 8 bits.)
    """
    rng = random.Random(f"pattern-{seed}")
    small = Image.new("RGB", (8, 8))
    small.putdata([tuple(rng.randrange(256) for _ in range(3)) for _ in range(64)])
    im = small.resize((size + rng.randrange(size // 2), size), Image.Resampling.BICUBIC)
    return im.filter(ImageFilter.GaussianBlur(size * 0.03))


def assert_distinct(pictures: dict[str, Image.Image], min_bits: int = 9) -> None:
    """Guard: generated 'different' pictures must not look like near-duplicates to gather."""
    hashes = {name: images.phash(images.to_rgb(im)) for name, im in pictures.items()}
    for a, b in itertools.combinations(hashes, 2):
        d = images.phash_distance(hashes[a], hashes[b])
        assert d >= min_bits, f"test images {a} and {b} are only {d} bits apart"


def big_pixels_png(width: int = 9000, height: int = 5000) -> bytes:
    """A small file whose decode needs more than images.MAX_DECODE_BYTES (a decompression bomb in spirit)."""
    return image_bytes(Image.new("1", (width, height)), "PNG")


@dataclass(frozen=True)
class Case:
    """One catalog URL and what gather must make of it."""

    path: str
    label: str
    status: str  # "ok" or "failed"; "" for a duplicate group (which member survives depends on timing)
    reason: str = ""  # the failure reason, or for a group the duplicate reason of the losers
    group: str = ""  # URLs showing the same picture: exactly one ends ok, the others duplicate


def add_catalog(server: ImageServer, *, max_bytes: int) -> list[Case]:
    """Serve every case gather must handle; returns them with the expected outcome."""
    pal = pattern(5).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    pictures = {
        "red": draw_image("red", 120, seed=1),
        "blue": draw_image("blue", 120, seed=2),
        "big": pattern(1, 600),
        "octet": pattern(2),
        "untyped": pattern(3),
        "cmyk": pattern(4).convert("CMYK"),
        "palette": pal,
        "gray": pattern(6).convert("L"),
        "dup": pattern(7),
        "orig": pattern(8, 300),
        "flaky": pattern(9),
        "gif": pattern(10),
    }
    assert_distinct(pictures)
    jpeg = {name: image_bytes(im, "JPEG", quality=90) for name, im in pictures.items() if name != "palette"}
    full = image_bytes(pictures["blue"], "JPEG")
    noise = random.Random(0).randbytes(max_bytes + 1000)

    server.add("/red.jpg", jpeg["red"])
    server.add("/blue.png", image_bytes(pictures["blue"], "PNG"), content_type="image/png")
    server.add("/big.jpg", jpeg["big"])
    server.add("/octet.jpg", jpeg["octet"], content_type="application/octet-stream")
    server.add("/untyped", image_bytes(pictures["untyped"], "PNG"), content_type=None)
    server.add("/cmyk.jpg", jpeg["cmyk"])
    server.add("/palette.png", image_bytes(pictures["palette"], "PNG", transparency=0), content_type="image/png")
    server.add("/gray.jpg", jpeg["gray"])
    server.add("/anim.gif", image_bytes(pictures["gif"], "GIF"), content_type="image/gif")
    server.add("/dup-a.jpg", jpeg["dup"])
    server.add("/dup-b.jpg", jpeg["dup"])
    server.add("/orig.jpg", jpeg["orig"])
    server.add("/orig-small.jpg", image_bytes(pictures["orig"].reduce(2), "JPEG", quality=80))
    server.add("/flaky.jpg", jpeg["flaky"], fail_first=1)
    server.add("/page-as.jpg", b"<!DOCTYPE html><html><body>not a photo</body></html>")
    server.add("/page.html", b"<html><body>hi</body></html>", content_type="text/html; charset=utf-8")
    server.add("/slow.jpg", jpeg["red"], delay=3.0)
    server.add("/truncated.jpg", full[: len(full) // 2])
    server.add("/huge.jpg", b"\xff\xd8\xff" + noise)
    server.add("/huge-stream.jpg", b"\xff\xd8\xff" + noise, length=False)
    server.add("/pixels.png", big_pixels_png(), content_type="image/png")
    server.add("/empty.jpg", b"")
    # "/missing.jpg" has no route: 404
    return [
        Case("/red.jpg", "red", "ok"),
        Case("/blue.png", "blue", "ok"),
        Case("/big.jpg", "blue", "ok"),
        Case("/octet.jpg", "red", "ok"),
        Case("/untyped", "red", "ok"),
        Case("/cmyk.jpg", "blue", "ok"),
        Case("/palette.png", "red", "ok"),
        Case("/gray.jpg", "blue", "ok"),
        Case("/anim.gif", "blue", "ok"),
        Case("/dup-a.jpg", "red", "", "exact-duplicate", group="dup"),
        Case("/dup-b.jpg", "red", "", "exact-duplicate", group="dup"),
        Case("/orig.jpg", "blue", "", "near-duplicate", group="orig"),
        Case("/orig-small.jpg", "blue", "", "near-duplicate", group="orig"),
        Case("/flaky.jpg", "red", "failed", "http-500"),
        Case("/page-as.jpg", "red", "failed", "not-image"),
        Case("/page.html", "blue", "failed", "content-type"),
        Case("/slow.jpg", "red", "failed", "timeout"),
        Case("/truncated.jpg", "blue", "failed", "truncated"),
        Case("/huge.jpg", "red", "failed", "too-large"),
        Case("/huge-stream.jpg", "blue", "failed", "too-large"),
        Case("/pixels.png", "red", "failed", "too-many-pixels"),
        Case("/empty.jpg", "blue", "failed", "empty"),
        Case("/missing.jpg", "red", "failed", "http-404"),
    ]


def bing_page(urls: list[str], *, junk: bool = True) -> bytes:
    """A page shaped like Bing's /images/async answer: one <a class="iusc" m="{json}"> per result."""
    parts = ["<!DOCTYPE html><html><body><ul>"]
    for i, u in enumerate(urls):
        meta = {
            "cid": f"c{i}",
            "purl": f"https://example.org/page{i}",
            "murl": u,
            "turl": f"https://tse.example/th{i}",
            "t": f"picture {i}",
        }
        parts.append(
            f'<li><div class="imgpt"><a class="iusc" style="height:100px" m="{html.escape(json.dumps(meta))}" '
            f'href="/images/search?view=detailV2"><img src="x"></a></div></li>'
        )
    if junk:
        parts.append('<a class="iusc" m="{not json at all}">broken</a>')
        parts.append(f'<a class="iusc" m="{html.escape(json.dumps({"t": "no murl"}))}">no url</a>')
    parts.append("</ul></body></html>")
    return "".join(parts).encode()


class FakeDDGS:
    """Stands in for ddgs.DDGS: canned results per query; queued exceptions are raised first."""

    def __init__(self, results: dict[str, list[dict]], errors: list[Exception] | None = None):
        self.results = results
        self.errors = list(errors or [])
        self.calls: list[tuple[str, int]] = []
        self.made_with: list[dict] = []

    def __call__(self, **kwargs) -> FakeDDGS:  # the factory
        self.made_with.append(kwargs)
        return self

    def images(self, query: str, max_results: int = 10) -> list[dict]:
        self.calls.append((query, max_results))
        if self.errors:
            raise self.errors.pop(0)
        return self.results.get(query, [])[:max_results]
