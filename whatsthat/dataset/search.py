"""Image search backends: a query in, image URLs out, behind one small interface.

Search engines rate-limit scrapers, so every backend retries a bounded number of times with
exponential backoff, pauses between queries, and ends with a WhatsthatError whose message says what
went wrong. `sleep` is injectable so tests never wait.
"""

from __future__ import annotations

import html
import http.client
import json
import logging
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from whatsthat.errors import WhatsthatError

log = logging.getLogger(__name__)

USER_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
)
BACKENDS = ("ddg", "bing")
TRANSIENT_RETRIES = 1  # retries for failures other than rate limits (those get `retries`)


@dataclass(frozen=True)
class SearchResult:
    """One image found by a search: the image URL, its title, a thumbnail URL, the page it is on."""

    url: str
    title: str = ""
    thumbnail: str | None = None
    source: str = ""


@runtime_checkable
class SearchBackend(Protocol):
    """Anything with a `name` and `search(query, max_results)` can feed gather."""

    name: str

    def search(self, query: str, max_results: int) -> list[SearchResult]: ...


class _RateLimited(Exception):
    """Internal: the engine asked us to slow down (retry after backoff)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class _Transient(Exception):
    """Internal: a failure worth retrying (timeout, 5xx, connection reset)."""


class _Pacer:
    """Pauses between queries and retries with exponential backoff: the shared politeness policy."""

    def __init__(self, *, retries: int, backoff: float, pause: float, sleep: Callable[[float], None]):
        self.retries = retries
        self.backoff = backoff
        self.pause = pause
        self.sleep = sleep
        self._last: float | None = None

    def wait_turn(self) -> None:
        # Back-to-back queries are what gets a scraper rate-limited; space them out.
        if self._last is not None and self.pause > 0:
            remaining = self.pause - (time.monotonic() - self._last)
            if remaining > 0:
                self.sleep(remaining)
        self._last = time.monotonic()

    def call(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run `fn`, retrying rate limits up to `retries` times and other failures once; else WhatsthatError."""
        transient = 0
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except (_RateLimited, _Transient) as e:
                transient += isinstance(e, _Transient)
                # patience cures a rate limit; a network that is down or a broken server it rarely does
                if attempt == self.retries or transient > TRANSIENT_RETRIES:
                    kind = "rate-limited" if isinstance(e, _RateLimited) else "failed"
                    attempts = f"{attempt + 1} attempt{'s' if attempt else ''}"
                    raise WhatsthatError(
                        f"{what} {kind} after {attempts}: {e}. "
                        "Wait a few minutes and re-run (finished downloads are kept), "
                        "or try the other backend (--backend bing / ddg)."
                    ) from e
                delay = self.backoff * 2**attempt
                if isinstance(e, _RateLimited) and e.retry_after:
                    delay = max(delay, min(e.retry_after, 120.0))
                log.info("%s: %s; retrying in %.1fs", what, e, delay)
                self.sleep(delay)
        raise AssertionError("unreachable")  # the loop either returns or raises


class DuckDuckGoBackend:
    """DuckDuckGo (and friends) image search through the `ddgs` package."""

    name = "ddg"

    def __init__(
        self,
        *,
        ddgs_factory: Callable[..., Any] | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 2.0,
        pause: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self._factory = ddgs_factory
        self.timeout = timeout
        self._pacer = _Pacer(retries=retries, backoff=backoff, pause=pause, sleep=sleep)

    def _ddgs(self) -> Any:
        if self._factory is not None:
            return self._factory(timeout=self.timeout)
        from ddgs import DDGS  # imported here: importing whatsthat must stay cheap and offline

        return DDGS(timeout=max(1, round(self.timeout)))

    def search(self, query: str, max_results: int) -> list[SearchResult]:
        """Up to `max_results` image results for `query`; WhatsthatError if the search keeps failing."""
        from ddgs.exceptions import DDGSException, RatelimitException, TimeoutException

        ddgs = self._ddgs()

        def once() -> list[dict[str, Any]]:
            try:
                return ddgs.images(query, max_results=max_results)
            except RatelimitException as e:
                raise _RateLimited(str(e) or "rate limit") from e
            except TimeoutException as e:
                raise _Transient(f"timed out ({e})") from e
            except DDGSException as e:
                if isinstance(e.args[0] if e.args else None, RatelimitException):
                    raise _RateLimited(str(e)) from e  # ddgs wraps an engine's exception in its first arg
                if "no results" in str(e).lower():
                    # ddgs 9 turns a throttled (non-200) answer into "No results found.", and every
                    # real query finds something, so this is worth a patient retry, not a silent []
                    raise _RateLimited("no results (DuckDuckGo answers so when it rate-limits)") from e
                raise _Transient(str(e) or type(e).__name__) from e

        self._pacer.wait_turn()
        raw = self._pacer.call(f"DuckDuckGo search for {query!r}", once)
        results: list[SearchResult] = []
        seen: set[str] = set()
        for item in raw or []:
            url = item.get("image") if isinstance(item, dict) else None
            if not url or url in seen:
                continue
            seen.add(url)
            results.append(
                SearchResult(
                    url=url,
                    title=str(item.get("title") or ""),
                    thumbnail=item.get("thumbnail") or None,
                    source=str(item.get("url") or ""),
                )
            )
        return results[:max_results]


# Bing puts each result's metadata in an HTML-escaped JSON attribute: m="{&quot;murl&quot;:...}"
_BING_META = re.compile(r'\bm="(\{[^"]*\})"')


def parse_bing_page(page: str) -> list[SearchResult]:
    """The image results on one Bing /images/async page (malformed entries are skipped)."""
    results = []
    for match in _BING_META.finditer(page):
        try:
            meta = json.loads(html.unescape(match.group(1)))
        except json.JSONDecodeError:
            log.debug("skipping a Bing result with unparseable metadata: %.80s", match.group(1))
            continue
        url = meta.get("murl") if isinstance(meta, dict) else None
        if isinstance(url, str) and url.startswith(("http://", "https://")):
            results.append(
                SearchResult(
                    url=url,
                    title=str(meta.get("t") or ""),
                    thumbnail=meta.get("turl"),
                    source=str(meta.get("purl") or ""),
                )
            )
    return results


class BingBackend:
    """A small scraper of Bing's image results pages (no API key needed)."""

    name = "bing"
    page_size = 35

    def __init__(
        self,
        *,
        base_url: str = "https://www.bing.com/images/async",
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 2.0,
        pause: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
        max_pages: int = 20,
    ):
        self.base_url = base_url
        self.timeout = timeout
        self.max_pages = max_pages
        self._pacer = _Pacer(retries=retries, backoff=backoff, pause=pause, sleep=sleep)

    def _fetch(self, query: str, first: int) -> str:
        params = urllib.parse.urlencode({"q": query, "first": first, "count": self.page_size, "mmasync": 1})
        req = urllib.request.Request(
            f"{self.base_url}?{params}", headers={"User-Agent": USER_AGENT, "Accept-Language": "en-US,en;q=0.8"}
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                if resp.status == 202:
                    # Bing answers 202 with an empty body when it throttles a client
                    raise _RateLimited("HTTP 202 (throttled)")
                return resp.read().decode("utf-8", errors="replace")
        except urllib.error.HTTPError as e:
            e.close()
            if e.code == 429:
                raise _RateLimited("HTTP 429 Too Many Requests", _retry_after(e.headers.get("Retry-After"))) from e
            if e.code >= 500 or e.code == 408:
                raise _Transient(f"HTTP {e.code}") from e
            raise WhatsthatError(f"Bing search for {query!r} failed: HTTP {e.code} {e.reason}") from e
        except TimeoutError as e:
            raise _Transient("timed out") from e
        except urllib.error.URLError as e:
            raise _Transient(f"network error: {e.reason}") from e
        except (ConnectionError, http.client.HTTPException) as e:
            # a server closing mid-response raises these rather than URLError
            raise _Transient(f"connection error: {e}") from e

    def search(self, query: str, max_results: int) -> list[SearchResult]:
        """Up to `max_results` image results for `query`, paging until Bing has no new ones."""
        results: list[SearchResult] = []
        seen: set[str] = set()
        first = 1
        for _ in range(self.max_pages):
            if len(results) >= max_results:
                break
            self._pacer.wait_turn()
            page = self._pacer.call(f"Bing search for {query!r}", lambda f=first: self._fetch(query, f))
            found = parse_bing_page(page)
            new = [r for r in found if r.url not in seen]
            if not new:
                break  # past the last page Bing repeats itself or returns nothing
            for r in new:
                seen.add(r.url)
            results.extend(new)
            first += len(found)
        return results[:max_results]


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None  # an HTTP-date: fall back to our own backoff rather than parse dates


def get_backend(name: str, **kwargs: Any) -> SearchBackend:
    """The search backend called `name` ("ddg" or "bing"); kwargs go to its constructor."""
    key = name.strip().lower()
    if key in ("ddg", "duckduckgo"):
        return DuckDuckGoBackend(**kwargs)
    if key == "bing":
        return BingBackend(**kwargs)
    raise WhatsthatError(f"unknown search backend {name!r}; choose one of: {', '.join(BACKENDS)}")
