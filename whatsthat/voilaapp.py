"""The Voila application `whatsthat serve` runs in-process: Voila, with its responses gzipped.

A page view fetches about 5 MB of Voila's JavaScript and CSS (some 95 requests), and every visitor's
browser fetches all of it the first time. Voila sends it uncompressed: its `tornado_settings` are
applied after tornado's Application is built, and tornado decides at construction whether to add the
gzip transform, so `--Voila.tornado_settings={'compress_response': True}` silently does nothing.
Heroku's router does not compress either. Over a phone's connection those megabytes are seconds
(bench/app_bench.py measures the page over an emulated 4G link).

This subclass puts `compress_response` into the settings the Application is built with. Tornado then
gzips every compressible response (HTML, JavaScript, CSS, JSON; not images, not websocket frames).
On Binder, Voila runs inside Jupyter Server, whose `tornado_settings` do reach the constructor; the
repository's .jupyter/jupyter_server_config.json sets the same there.
"""

from __future__ import annotations

from typing import Any

from voila.app import Voila


class PageVoila(Voila):
    """Voila whose web application gzips its responses."""

    def init_settings(self) -> dict[str, Any]:
        return {**super().init_settings(), "compress_response": True}
