"""The Voila application `whatsthat serve` runs in-process: Voila, with its tornado settings honoured.

Voila builds tornado's Application first and only then applies `--Voila.tornado_settings` to it. Most
settings are read per request, so that works for them; but tornado decides at construction whether to
add its gzip transform, so `compress_response` silently did nothing, and every visitor's browser
fetched Voila's ~5 MB of JavaScript and CSS uncompressed (Heroku's router does not compress either).
Over a phone's connection those megabytes are seconds (bench/app_bench.py, the "network" rows).

This subclass hands the configured `tornado_settings` (`whatsthat.web.serve.tornado_settings`) to the
Application's constructor, so every one of them takes effect the way tornado documents it. With
`compress_response`, tornado gzips every compressible response (HTML, JavaScript, CSS, JSON; not
images, not websocket frames). On Binder, Voila runs inside Jupyter Server, which passes its own
`tornado_settings` to the constructor already (.jupyter/jupyter_server_config.json).
"""

from __future__ import annotations

from typing import Any

from voila.app import Voila


class PageVoila(Voila):
    """Voila whose `tornado_settings` reach tornado's Application when it is built, not after."""

    def init_settings(self) -> dict[str, Any]:
        return {**super().init_settings(), **self.tornado_settings}
