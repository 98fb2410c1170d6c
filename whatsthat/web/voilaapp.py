"""The Voila application `whatsthat serve` runs in-process: Voila, with its settings honoured and its page guarded.

Four things differ from `voila.app.Voila`, each through one of Voila's or tornado's own hooks:

- **Tornado settings at construction.** Voila builds tornado's Application first and only then applies
  `--Voila.tornado_settings` to it. Most settings are read per request, so that works for them; but
  tornado decides at construction whether to add its gzip transform, so `compress_response` silently
  did nothing, and every visitor's browser fetched Voila's ~5 MB of JavaScript and CSS uncompressed
  (Heroku's router does not compress either). `init_settings` hands them to the constructor.
- **The page's handler** (`PageHandler`, a subclass of Voila's own, put in its place by
  `init_handlers`): before Voila starts or hands out a kernel, it asks the kernel manager
  (`whatsthat.web.kernelpool.PageKernelManager`) whether one fits. If not, the visitor gets the small
  busy page (HTTP 503, Retry-After) and no kernel starts. Link-preview robots that say who they are get
  the page's preview without a kernel. It tells the manager which kernel each page got and when its
  HTML was sent, so a kernel no websocket joins can be shut down soon after. And it sets the XSRF
  cookie Voila's own page needs to shut its kernel down when its tab closes (voila-dashboards/voila#1458).
- **The preview picture** (`/whatsthat/preview.png`) the page's Open Graph tags point to, drawn once from
  the model card by `python -m whatsthat.web.preview`.
- **A graceful stop** (`stop_gracefully`, for SIGTERM): no new page, classifications in flight finish,
  then Voila stops as before (its kernels shut down, the pages' websockets close, and the pages show
  their "went to sleep" banner).

On Binder, Voila runs inside Jupyter Server, which passes its own `tornado_settings` to the constructor
already (.jupyter/jupyter_server_config.json); a Binder session has one visitor, and none of the rest.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import tornado.web
from traitlets import Bool, Float, Unicode
from voila.app import Voila
from voila.tornado.handler import TornadoVoilaHandler

from whatsthat.web.admission import client_address, is_preview_robot
from whatsthat.web.preview import PICTURE_PATH, RETRY_AFTER, busy_page, page_meta, robot_page

SHUTDOWN_GRACE = 15.0  # s for classifications in flight at a stop; Heroku kills everything 30 s after SIGTERM
RELAY = 0.5  # s for the last answers to travel from their kernels to their pages before the kernels go


class PageVoila(Voila):
    """Voila whose tornado settings reach tornado when it is built, with admission control on the page."""

    trust_forwarded_for = Bool(False, config=True,
                               help="take a client's address from X-Forwarded-For (only behind a router that sets it)")  # fmt: skip
    public_url = Unicode("", config=True, help="the site's public address, for absolute links in link previews")
    shutdown_grace = Float(SHUTDOWN_GRACE, config=True, help="seconds a stop waits for classifications in flight")

    def init_settings(self) -> dict[str, Any]:
        settings = {**super().init_settings(), **self.tornado_settings}
        resources = self.voila_configuration.resources or {}
        meta = resources.get("whatsthat") if isinstance(resources, dict) else None
        settings["whatsthat"] = PageSettings(meta or page_meta({}), self.trust_forwarded_for, self.public_url)
        start = getattr(self.kernel_manager, "start_measuring", None)
        if start is not None:  # PageKernelManager: measure the memory as soon as the server runs
            start()
        return settings

    def init_handlers(self) -> list:
        handlers = []
        for spec in super().init_handlers():
            if len(spec) >= 2 and spec[1] is TornadoVoilaHandler:
                spec = (spec[0], PageHandler, *spec[2:])
            handlers.append(spec)
        return [(f"{self.server_url.rstrip('/')}/{PICTURE_PATH}", PictureHandler), *handlers]

    def stop_gracefully(self) -> None:
        """From a signal handler: drain, then stop the loop (Voila then shuts its kernels down)."""
        loop = getattr(self, "ioloop", None)
        if loop is None:  # not listening yet
            raise SystemExit(0)
        loop.add_callback_from_signal(self._drain_then_stop)

    async def _drain_then_stop(self) -> None:
        km = self.kernel_manager
        drain = getattr(km, "drain", None)
        if drain is None:  # another kernel manager: stop as Voila does
            self.ioloop.stop()
            return
        drain()
        deadline = time.monotonic() + self.shutdown_grace
        busy = km.busy_kernels()
        self.log.info("stopping: no new pages; %d classification(s) in flight get up to %.0fs to finish",
                      len(busy), self.shutdown_grace)  # fmt: skip
        while busy and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            busy = km.busy_kernels()
        if busy:
            self.log.warning("stopping with %d kernel(s) still busy after %.0fs", len(busy), self.shutdown_grace)
        await asyncio.sleep(RELAY)
        self.ioloop.stop()


class PageSettings:
    """What the page's handlers share: the preview's values, whom to trust, where the picture is."""

    def __init__(self, meta: dict[str, Any], trust_forwarded_for: bool, public_url: str) -> None:
        self.meta = meta
        self.trust_forwarded_for = trust_forwarded_for
        self.public_url = public_url.rstrip("/") + "/" if public_url else ""
        self._picture: Path | None = None
        self._lock = asyncio.Lock()
        self._dir: tempfile.TemporaryDirectory | None = None

    def base(self, request: Any) -> str:
        """The site's address as this request reached it (behind a trusted router, with its scheme)."""
        if self.public_url:
            return self.public_url
        scheme = request.protocol
        if self.trust_forwarded_for:
            scheme = request.headers.get("X-Forwarded-Proto", scheme).split(",")[-1].strip() or scheme
        return f"{scheme}://{request.host}/"

    def client(self, request: Any) -> str:
        return client_address(request.remote_ip, request.headers.get_list("X-Forwarded-For"),
                              trust_forwarded=self.trust_forwarded_for)  # fmt: skip

    async def picture(self) -> Path:
        """The preview picture, drawn on the first request by a short-lived process (the server never imports Pillow)."""
        async with self._lock:
            if self._picture is None or not self._picture.is_file():
                self._dir = self._dir or tempfile.TemporaryDirectory(prefix="whatsthat-preview-")
                out = Path(self._dir.name) / "preview.png"
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "whatsthat.web.preview", "--meta", json.dumps(self.meta), "--out", str(out))
                if await proc.wait() != 0 or not out.is_file():
                    raise tornado.web.HTTPError(500, "the preview picture could not be drawn")
                self._picture = out
            return self._picture


class PageHandler(TornadoVoilaHandler):
    """Voila's page handler, asking the kernel manager first and telling it which kernel the page got.

    Voila's handler gets its kernel from `self.kernel_manager` (from the pool, or newly started) and
    says which only in the page it renders. This handler's `kernel_manager` is therefore, for the one
    request it admitted, a view of the manager that notes the kernel it hands out (`_RequestKernels`).
    """

    def initialize(self, **kwargs: Any) -> None:
        super().initialize(**kwargs)
        self._client: str | None = None  # set once admitted
        self._kernel_id: str | None = None

    @property
    def kernel_manager(self) -> Any:
        km = self.settings["kernel_manager"]
        return _RequestKernels(km, self._got_kernel) if self._client is not None else km

    def _got_kernel(self, kernel_id: str) -> None:
        if self._client is not None and self._kernel_id is None:
            self._kernel_id = kernel_id
            self.settings["kernel_manager"].handed(self._client, kernel_id)

    @tornado.web.authenticated
    async def get(self, path: str | None = None) -> None:
        if path:  # Voila sends other paths to its file handler: no kernel, nothing to guard
            await super().get(path)
            return
        page: PageSettings = self.settings["whatsthat"]
        km = self.settings["kernel_manager"]
        if is_preview_robot(self.request.headers.get("User-Agent")):
            self.log.info("link preview for %s (%s): no kernel", page.client(self.request),
                          self.request.headers.get("User-Agent", "")[:80])  # fmt: skip
            self.set_header("Content-Type", "text/html; charset=UTF-8")
            self.finish(robot_page(page.meta, page.base(self.request)))
            return
        client = page.client(self.request)
        admit = getattr(km, "admit", None)
        refusal = admit(client) if admit is not None else None
        if refusal is not None:
            self.log.warning("busy page for %s, no kernel started: %s", client, refusal)
            self.set_status(503)
            self.set_header("Retry-After", str(RETRY_AFTER))
            self.set_header("Content-Type", "text/html; charset=UTF-8")
            self.set_header("Cache-Control", "no-store")
            self.finish(busy_page(page.meta, page.base(self.request)))
            return
        self._client = client if admit is not None else None
        # Voila's page shuts its kernel down when the tab closes (a beacon to /voila/api/shutdown/ID), sending
        # the _xsrf cookie's value; but Voila's page never sets that cookie, so the beacon is refused (403) and
        # every closed tab's kernel lived until the culler (voila-dashboards/voila#1458). Reading the token
        # sets the cookie, on this response, before Voila writes any of the page.
        _ = self.xsrf_token
        try:
            await super().get(path)
        finally:  # the page was sent, or its request failed or was dropped: Voila's rendering has ended either way
            if self._client is not None:
                if self._kernel_id is not None:
                    km.page_sent(self._kernel_id)  # its websocket must come within the join timeout now
                else:
                    km.release(self._client)


class _RequestKernels:
    """The kernel manager as one admitted page request sees it: notes the kernel Voila hands it.

    Voila's handler calls `get_rendered_notebook` (a preheated kernel) or `start_kernel` (a new one);
    everything else goes to the manager unchanged.
    """

    def __init__(self, manager: Any, on_kernel: Any) -> None:
        self._manager, self._on_kernel = manager, on_kernel

    async def get_rendered_notebook(self, *args: Any, **kwargs: Any) -> Any:
        render_task, rendered, kernel_id = await self._manager.get_rendered_notebook(*args, **kwargs)
        self._on_kernel(kernel_id)
        return render_task, rendered, kernel_id

    async def start_kernel(self, *args: Any, **kwargs: Any) -> str:
        kernel_id = await self._manager.start_kernel(*args, **kwargs)
        self._on_kernel(kernel_id)
        return kernel_id

    def __getattr__(self, name: str) -> Any:
        return getattr(self._manager, name)


class PictureHandler(tornado.web.RequestHandler):
    """The preview picture the Open Graph tags point to (PNG, cached by browsers and robots for a day)."""

    async def get(self) -> None:
        path = await self.settings["whatsthat"].picture()
        self.set_header("Content-Type", "image/png")
        self.set_header("Cache-Control", "public, max-age=86400")
        self.finish(path.read_bytes())

    async def head(self) -> None:
        path = await self.settings["whatsthat"].picture()
        self.set_header("Content-Type", "image/png")
        self.set_header("Content-Length", str(path.stat().st_size))
        self.finish()
