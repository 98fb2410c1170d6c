"""Gather: download throughput against a local server that answers each image after a delay.

    python bench/gather_bench.py [--images 200] [--latency 0.2] [--runs 3]

Real `gather()` (download, verify, resize, hash, dedupe, manifest) over 127.0.0.1; only the search
engine is replaced, by a backend that returns the local URLs. Sequential = 1 worker.
"""

from __future__ import annotations

import argparse
import http.server
import io
import random
import sys
import tempfile
import threading
import time

from common import machine, median, table
from PIL import Image, ImageDraw

from whatsthat.dataset.gather import gather
from whatsthat.dataset.search import SearchResult


def make_images(n: int) -> list[bytes]:
    """Distinct pictures (random rectangles), so none is dropped as a near duplicate."""
    out = []
    for i in range(n):
        rng = random.Random(i)
        im = Image.new("RGB", (320, 240), tuple(rng.randrange(256) for _ in range(3)))
        d = ImageDraw.Draw(im)
        for _ in range(12):
            x, y = rng.randrange(300), rng.randrange(220)
            d.rectangle([x, y, x + rng.randrange(10, 120), y + rng.randrange(10, 120)],
                        fill=tuple(rng.randrange(256) for _ in range(3)))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def serve(payloads: list[bytes], latency: float) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            time.sleep(latency)  # the remote server's think time + network round trip
            body = payloads[int(self.path.strip("/").split(".")[0])]
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class LocalSearch:
    name = "local"

    def __init__(self, base: str, n: int):
        self.urls = [f"{base}/{i}.jpg" for i in range(n)]

    def search(self, query: str, max_results: int) -> list[SearchResult]:
        half = len(self.urls) // 2
        urls = self.urls[:half] if query == "a" else self.urls[half:]
        return [SearchResult(u) for u in urls[:max_results]]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=16)
    args = ap.parse_args()

    server = serve(make_images(args.images), args.latency)
    backend = LocalSearch(f"http://127.0.0.1:{server.server_port}", args.images)
    rows, medians = [], {}
    try:
        for name, workers, runs in [("sequential", 1, 1), ("concurrent", args.workers, args.runs)]:
            times = []
            for _ in range(runs):
                with tempfile.TemporaryDirectory() as out:
                    t = time.perf_counter()
                    summary = gather({"a": "a", "b": "b"}, out, per_query=args.images, backend=backend,
                                     workers=workers, progress=False)
                    times.append(time.perf_counter() - t)
                    if summary.downloaded != args.images:
                        sys.exit(f"expected {args.images} downloads, got {summary.downloaded}:\n{summary.table()}")
            medians[name] = median(times)
            rows.append([name, workers, runs, f"{medians[name]:.2f}", f"{args.images / medians[name]:.1f}"])
    finally:
        server.shutdown()
    print(f"# gather: {args.images} images, {args.latency * 1000:.0f} ms server latency each; {machine()}")
    print(table(["mode", "workers", "runs", "median s", "images/s"], rows))
    print(f"\nconcurrent is {medians['sequential'] / medians['concurrent']:.1f}x faster than sequential")


if __name__ == "__main__":
    main()
