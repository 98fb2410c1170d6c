"""Search backends, faked at their boundary: a fake DDGS object, and Bing pointed at a local server."""

from __future__ import annotations

import pytest
from ddgs.exceptions import DDGSException, RatelimitException, TimeoutException
from imageserver import FakeDDGS, ImageServer, Reply, bing_page

from whatsthat.dataset.search import (
    BingBackend,
    DuckDuckGoBackend,
    SearchBackend,
    SearchResult,
    get_backend,
    parse_bing_page,
)
from whatsthat.errors import WhatsthatError


def ddg_item(i: int) -> dict:
    return {
        "image": f"https://img.example/{i}.jpg",
        "title": f"t{i}",
        "thumbnail": f"https://th/{i}",
        "url": f"https://p/{i}",
    }


class Sleeps(list):
    """An injectable sleep that records instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def server():
    with ImageServer() as s:
        yield s


# --- DuckDuckGo --------------------------------------------------------------------------------


def test_ddg_maps_results_and_drops_bad_items():
    fake = FakeDDGS({"bears": [ddg_item(1), {"title": "no image key"}, ddg_item(1), ddg_item(2), "junk"]})
    backend = DuckDuckGoBackend(ddgs_factory=fake, timeout=3, sleep=Sleeps())
    results = backend.search("bears", 10)
    assert results == [
        SearchResult("https://img.example/1.jpg", "t1", "https://th/1", "https://p/1"),
        SearchResult("https://img.example/2.jpg", "t2", "https://th/2", "https://p/2"),
    ]
    assert fake.calls == [("bears", 10)]
    assert fake.made_with == [{"timeout": 3}]
    assert isinstance(backend, SearchBackend) and backend.name == "ddg"


def test_ddg_respects_max_results():
    fake = FakeDDGS({"q": [ddg_item(i) for i in range(30)]})
    assert len(DuckDuckGoBackend(ddgs_factory=fake, sleep=Sleeps()).search("q", 7)) == 7


def test_ddg_retries_rate_limits_with_exponential_backoff():
    fake = FakeDDGS({"q": [ddg_item(1)]}, errors=[RatelimitException("202 Ratelimit"), TimeoutException("timed out")])
    sleeps = Sleeps()
    results = DuckDuckGoBackend(ddgs_factory=fake, backoff=2.0, retries=3, sleep=sleeps).search("q", 5)
    assert [r.url for r in results] == ["https://img.example/1.jpg"]
    assert sleeps == [2.0, 4.0]
    assert len(fake.calls) == 3


def test_ddg_gives_up_with_a_clear_error():
    fake = FakeDDGS({}, errors=[RatelimitException("403 Ratelimit")] * 10)
    sleeps = Sleeps()
    with pytest.raises(WhatsthatError, match=r"DuckDuckGo search for 'q' rate-limited after 3 attempts.*other backend"):
        DuckDuckGoBackend(ddgs_factory=fake, retries=2, backoff=1.0, sleep=sleeps).search("q", 5)
    assert sleeps == [1.0, 2.0]
    assert len(fake.calls) == 3


def test_ddg_other_errors_are_retried_then_reported():
    fake = FakeDDGS({}, errors=[DDGSException("https://duckduckgo.com/i.js 418 I'm a teapot")] * 5)
    with pytest.raises(WhatsthatError, match="failed after 2 attempts: .*teapot"):
        DuckDuckGoBackend(ddgs_factory=fake, retries=1, sleep=Sleeps()).search("q", 5)


def test_ddg_no_results_is_retried_as_a_likely_rate_limit():
    fake = FakeDDGS({"q": [ddg_item(1)]}, errors=[DDGSException("No results found.")])
    sleeps = Sleeps()
    assert len(DuckDuckGoBackend(ddgs_factory=fake, sleep=sleeps).search("q", 5)) == 1
    assert sleeps == [2.0]
    fake = FakeDDGS({}, errors=[DDGSException("No results found.")] * 5)
    with pytest.raises(WhatsthatError, match="'nothing' rate-limited after 2 attempts: no results"):
        DuckDuckGoBackend(ddgs_factory=fake, retries=1, sleep=Sleeps()).search("nothing", 5)


def test_ddg_wrapped_engine_rate_limit():
    fake = FakeDDGS({}, errors=[DDGSException(RatelimitException("429"))] * 5)
    with pytest.raises(WhatsthatError, match="rate-limited after 1 attempt: "):
        DuckDuckGoBackend(ddgs_factory=fake, retries=0, sleep=Sleeps()).search("q", 5)


def test_ddg_default_factory_builds_a_real_client_without_searching():
    from ddgs.ddgs import DDGS  # the real class (the package's DDGS is a lazy proxy)

    backend = DuckDuckGoBackend(timeout=3.0)
    assert isinstance(backend._ddgs(), DDGS)


def test_ddg_pauses_between_queries():
    fake = FakeDDGS({"a": [ddg_item(1)], "b": [ddg_item(2)]})
    sleeps = Sleeps()
    backend = DuckDuckGoBackend(ddgs_factory=fake, pause=5.0, sleep=sleeps)
    backend.search("a", 5)
    assert sleeps == []  # the first query goes straight away
    backend.search("b", 5)
    assert len(sleeps) == 1 and 4.0 < sleeps[0] <= 5.0


# --- Bing --------------------------------------------------------------------------------------


def bing_pages(server: ImageServer, pages: dict[int, list[str]], fail: list[Reply] | None = None) -> str:
    """Route /images/async: answer by `first`; queued `fail` replies come first. Returns the base URL."""
    fail = list(fail or [])

    def handler(params: dict[str, str], hit: int) -> Reply:
        if fail:
            return fail.pop(0)
        return Reply(bing_page(pages.get(int(params["first"]), [])), content_type="text/html; charset=utf-8")

    return server.route("/images/async", handler)


def test_parse_bing_page_reads_murl_and_skips_junk():
    page = bing_page(["https://a.example/1.jpg", "https://a.example/2.png?x=1&y=2"]).decode()
    page += '<a m="{&quot;murl&quot;:&quot;data:image/png;base64,AAAA&quot;}">'  # not http(s)
    results = parse_bing_page(page)
    assert [r.url for r in results] == ["https://a.example/1.jpg", "https://a.example/2.png?x=1&y=2"]
    assert results[0].title == "picture 0"
    assert results[0].thumbnail == "https://tse.example/th0"
    assert results[0].source == "https://example.org/page0"
    assert parse_bing_page("<html>nothing here</html>") == []


def test_bing_pages_until_enough(server):
    urls = [f"https://img.example/{i}.jpg" for i in range(6)]
    base = bing_pages(server, {1: urls[:3], 4: urls[3:5], 6: urls[5:]})
    sleeps = Sleeps()
    backend = BingBackend(base_url=base, pause=0.0, sleep=sleeps)
    results = backend.search("grizzly bear", 5)
    assert [r.url for r in results] == urls[:5]
    assert [p["first"] for _, p in server.queries] == ["1", "4"]
    path, params = server.queries[0]
    assert params["q"] == "grizzly bear" and params["count"] == "35" and params["mmasync"] == "1"
    assert backend.name == "bing" and isinstance(backend, SearchBackend)


def test_bing_stops_when_no_new_results(server):
    urls = ["https://img.example/a.jpg", "https://img.example/b.jpg"]
    base = bing_pages(server, {1: urls, 3: urls})  # Bing repeats its last page when it runs out
    results = BingBackend(base_url=base, pause=0.0, sleep=Sleeps()).search("q", 100)
    assert [r.url for r in results] == urls
    assert server.hits["/images/async"] == 2


def test_bing_sends_a_browser_user_agent(server):
    base = bing_pages(server, {})
    assert BingBackend(base_url=base, pause=0.0, sleep=Sleeps()).search("q", 5) == []
    assert server.headers[0]["User-Agent"].startswith("Mozilla/5.0")


def test_bing_backs_off_on_429_and_202(server):
    urls = ["https://img.example/a.jpg"]
    throttled = [
        Reply(b"", status=429, content_type="text/plain", headers={"Retry-After": "7"}),
        Reply(b"", status=202),
    ]
    base = bing_pages(server, {1: urls}, fail=throttled)
    sleeps = Sleeps()
    results = BingBackend(base_url=base, pause=0.0, backoff=1.0, sleep=sleeps).search("q", 1)
    assert [r.url for r in results] == urls
    assert sleeps == [7.0, 2.0]  # Retry-After wins over a shorter backoff; then backoff doubles


def test_bing_gives_up_after_bounded_retries(server):
    base = bing_pages(server, {}, fail=[Reply(b"busy", status=503, content_type="text/plain")] * 10)
    sleeps = Sleeps()
    with pytest.raises(WhatsthatError, match=r"Bing search for 'q' failed after 2 attempts: HTTP 503"):
        BingBackend(base_url=base, retries=3, backoff=0.5, pause=0.0, sleep=sleeps).search("q", 5)
    assert sleeps == [0.5]  # a broken server gets one retry; rate limits get `retries`
    assert server.hits["/images/async"] == 2


def test_bing_client_errors_are_not_retried(server):
    base = bing_pages(server, {}, fail=[Reply(b"no", status=403, content_type="text/plain")])
    with pytest.raises(WhatsthatError, match="HTTP 403"):
        BingBackend(base_url=base, pause=0.0, sleep=Sleeps()).search("q", 5)
    assert server.hits["/images/async"] == 1


def test_bing_timeout_is_reported(server):
    base = bing_pages(server, {}, fail=[Reply(bing_page([]), content_type="text/html", delay=1.5)] * 2)
    with pytest.raises(WhatsthatError, match="failed after 2 attempts: timed out"):
        BingBackend(base_url=base, timeout=0.3, retries=1, pause=0.0, sleep=Sleeps()).search("q", 5)


def test_bing_unreachable_server_is_reported():
    with pytest.raises(WhatsthatError, match="network error"):
        BingBackend(base_url="http://127.0.0.1:9/nothing", retries=0, pause=0.0, sleep=Sleeps()).search("q", 5)


def test_bing_pauses_between_pages(server):
    base = bing_pages(server, {1: ["https://img.example/a.jpg"], 2: ["https://img.example/b.jpg"]})
    sleeps = Sleeps()
    BingBackend(base_url=base, pause=3.0, sleep=sleeps).search("q", 2)
    assert len(sleeps) == 1 and 2.0 < sleeps[0] <= 3.0


# --- get_backend -------------------------------------------------------------------------------


def test_get_backend_by_name():
    assert isinstance(get_backend("ddg"), DuckDuckGoBackend)
    assert isinstance(get_backend("DuckDuckGo"), DuckDuckGoBackend)
    bing = get_backend("bing", timeout=3.0)
    assert isinstance(bing, BingBackend) and bing.timeout == 3.0


def test_get_backend_unknown_name():
    with pytest.raises(WhatsthatError, match="unknown search backend 'google'; choose one of: ddg, bing"):
        get_backend("google")
