"""The page under real traffic (issue 29): `whatsthat serve` from the serving venv, plain GETs and Chromium.

- a kernel no websocket joins is shut down after the join timeout; a visitor's is kept;
- one client address holds at most --per-client kernels (behind a trusted router, the address is
  X-Forwarded-For's);
- above the memory cap a new visitor gets the busy page (HTTP 503, Retry-After, no kernel), and gets in
  once a slot frees;
- the page carries Open Graph and Twitter card tags, and the preview picture they point to exists;
- a page whose kernel was culled, or whose server restarted, says so with a banner and recovers;
- SIGTERM to every process of the server (Heroku's stop) lets the classification in flight finish, the
  page then shows the banner, and every process is gone well before Heroku's 30 s.

Traffic only to 127.0.0.1, a few dozen requests in all; each server here lives for one test or module.
"""

from __future__ import annotations

import math
import re
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
from browser_support import (
    classify,
    free_port,
    kernel_factories_of,
    kernels_of,
    model_processes_of,
    pick_model_and_photo,
    running_server,
    upload,
)

pytestmark = pytest.mark.browser

JOIN = 6  # s: the shared server's join timeout, short so a test can watch it
ASLEEP = "This page went to sleep. Reload to classify again."
TAG = re.compile(r'<meta (?:property|name)="([^"]+)" content="([^"]*)">')


@pytest.fixture(scope="module")
def model_and_photo(request) -> tuple[Path, tuple[str, bytes], str]:
    return pick_model_and_photo(request)


@pytest.fixture(scope="module")
def server(chromium, model_and_photo, tmp_path_factory):
    """Behind a (pretend) trusted router, two kernels per client, no memory cap, a short join timeout."""
    extra = (f"--join-timeout={JOIN}", "--per-client=2", "--trust-forwarded-for", "--memory-mb=100000")
    with running_server(model_and_photo, tmp_path_factory.mktemp("traffic"), 600, 60, extra) as srv:
        wait_for(lambda: "memory budget" in srv.log_text(), 120, "the memory measurement", srv)
        yield srv


def get(url: str, **headers: str) -> tuple[int, dict[str, str], str]:
    """(status, headers, body) of one plain GET, as a robot sends it."""
    request = urllib.request.Request(url, headers={"User-Agent": "test (plain GET)", **headers})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, dict(r.headers), r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode("utf-8", "replace")


def wait_for(check, timeout: float, what: str, server=None) -> float:
    """Seconds until `check()` holds; fails with the server's log otherwise."""
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout:
            log = server.log_text()[-6000:] if server is not None else ""
            pytest.fail(f"{what}: not within {timeout:.0f}s\n{log}")
        time.sleep(0.2)
    return time.monotonic() - t0


def handed_out(server) -> list[str]:
    """The kernels Voila handed to pages, in order (its own log line)."""
    return re.findall(r"Using pre-heated kernel: ([0-9a-f-]{36})", server.log_text())


def open_page(browser, url: str, **context_args):
    context = browser.new_context(**context_args)
    page = context.new_page()
    response = page.goto(url + "/", wait_until="domcontentloaded", timeout=120_000)
    return context, page, response


def close_tab(context, page) -> None:
    """As a visitor closing the tab: Voila's page sends its kernel's shutdown beacon."""
    page.close(run_before_unload=True)
    time.sleep(0.5)
    context.close()


def test_the_page_carries_link_preview_tags_and_the_picture_exists(server):
    status, _, body = get(server.url + "/")
    assert status == 200
    tags = dict(TAG.findall(body))
    assert tags["og:title"] == "What&#x27;s that?" and "<title>What's that?</title>" in body
    assert "whether it shows" in tags["og:description"] and tags["og:description"] == tags["twitter:description"]
    assert tags["og:image"] == tags["twitter:image"] == "/whatsthat/preview.png"
    assert tags["twitter:card"] == "summary_large_image" and tags["og:image:width"] == "1200"
    status, headers, _ = get(server.url + "/whatsthat/preview.png")
    assert status == 200 and headers["Content-Type"] == "image/png"
    with urllib.request.urlopen(server.url + "/whatsthat/preview.png", timeout=60) as r:
        png = r.read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[16:20], "big") == 1200  # IHDR width


def test_a_link_preview_robot_gets_the_preview_without_a_kernel(server):
    before = len(handed_out(server))
    status, _, body = get(server.url + "/", **{"User-Agent": "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)"})
    assert status == 200
    tags = dict(TAG.findall(body))
    assert tags["og:image"] == f"{server.url}/whatsthat/preview.png"  # absolute, from the request
    assert "jupyter-config-data" not in body  # not Voila's page
    assert len(handed_out(server)) == before and "link preview for" in server.log_text()


def test_a_kernel_no_websocket_joins_is_shut_down_in_the_set_time(server, browser):
    # a real visitor at the same moment: their kernel must stay
    context, page, _ = open_page(browser, server.url, extra_http_headers={"X-Forwarded-For": "203.0.113.7"})
    page.get_by_role("button", name="Classify").wait_for(timeout=120_000)
    status, _, _ = get(server.url + "/", **{"X-Forwarded-For": "198.51.100.1"})  # curl: no websocket, ever
    sent = time.monotonic()
    assert status == 200
    robot = handed_out(server)[-1]
    wait_for(lambda: f"kernel {robot}: no page opened its websocket within {JOIN}s" in server.log_text(),
             JOIN + 10, "the robot's kernel shut down", server)  # fmt: skip
    took = time.monotonic() - sent
    assert JOIN - 0.5 <= took <= JOIN + 5, took
    wait_for(lambda: len(server.kernels()) == 2, 10, "the visitor's kernel and the preheated one", server)
    time.sleep(1)
    upload(page, server.photo)
    assert classify(page, "Prediction:").startswith(f"Prediction: {server.expected}")  # still working
    close_tab(context, page)


def test_one_client_holds_at_most_per_client_kernels(server):
    wait_for(lambda: len(server.kernels()) == 1, JOIN + 30, "only the preheated kernel left", server)
    assert get(server.url + "/", **{"X-Forwarded-For": "192.0.2.10"})[0] == 200
    # the router appends what it saw: a client cannot pose as another by writing the header itself
    assert get(server.url + "/", **{"X-Forwarded-For": "6.6.6.6, 192.0.2.10"})[0] == 200
    status, headers, body = get(server.url + "/", **{"X-Forwarded-For": "192.0.2.10"})
    assert status == 503 and headers["Retry-After"] == "60"
    assert "Busy right now, try again in a minute" in body and 'property="og:image"' in body
    assert "busy page for 192.0.2.10, no kernel started: 192.0.2.10 already holds 2 kernels" in server.log_text()
    assert get(server.url + "/", **{"X-Forwarded-For": "192.0.2.11"})[0] == 200  # anyone else still gets in
    # once the robots' kernels are shut down (join timeout), the client gets in again
    wait_for(lambda: get(server.url + "/", **{"X-Forwarded-For": "192.0.2.10"})[0] == 200, JOIN + 30,
             "192.0.2.10 admitted again", server)  # fmt: skip


def admission_lines(server) -> list[str]:
    return [line[-260:] for line in server.log_text().splitlines() if "memory budget" in line or "busy page" in line]


def measured(server) -> dict[str, float]:
    """The server's start measurement from its log: server, model, factory, kernel MB and the headroom."""
    line = re.search(r"measured: server (\d+) MB \+ model process (\d+) MB \+ kernel factory (\d+) MB; "
                     r"kernels ([\d, ]+) MB; (\d+) MB kept free", server.log_text())  # fmt: skip
    assert line, server.log_text()[-3000:]
    server_mb, model, factory, kernels, headroom = line.groups()
    return {"fixed": float(server_mb) + float(model) + float(factory),
            "kernel": max(float(k) for k in kernels.split(",")), "headroom": float(headroom)}  # fmt: skip


def test_busy_page_at_the_memory_cap_and_the_visitor_gets_in_once_a_slot_frees(browser, model_and_photo, tmp_path):
    # a budget with room for the preheated kernel and one visitor, from what a first server measures here (PSS
    # splits the pages the servers of this machine share: measured with the same servers around, it agrees)
    with running_server(model_and_photo, tmp_path / "measure", 600, 60) as first:
        wait_for(lambda: "memory budget" in first.log_text(), 120, "the memory measurement", first)
        m = measured(first)
    budget = math.ceil(m["fixed"] + m["headroom"] + 2.5 * m["kernel"])
    with running_server(model_and_photo, tmp_path / "small", 600, 60, (f"--memory-mb={budget}", "--per-client=0")) as small:
        wait_for(lambda: "memory budget" in small.log_text(), 120, "the memory measurement", small)
        tabs = []
        while True:  # visitors arrive until the memory is full (the same machine measures within a few MB)
            context, page, response = open_page(browser, small.url)
            if response.status != 200:
                break
            page.get_by_role("button", name="Classify").wait_for(timeout=120_000)
            tabs.append((context, page))
            time.sleep(3)  # a measurement with this visitor's kernel in it
            assert len(tabs) <= 3, "\n".join([str((budget, m)), *admission_lines(small)])
        assert len(tabs) >= 1, (budget, m, admission_lines(small))
        assert response.status == 503 and response.headers["retry-after"] == "60"
        assert page.get_by_role("heading", name="Busy right now, try again in a minute").is_visible()
        kernels = len(small.kernels())
        assert kernels == len(tabs) + 1  # the visitors' and the preheated one: none started for the busy page
        assert re.search(r"busy page for 127\.0\.0\.1, no kernel started: \d+ kernels running or starting, "
                         rf"about \d+ MB; one more \(\d+ MB\) would leave less than \d+ MB of the {budget} MB budget",
                         small.log_text())  # fmt: skip
        # a visitor leaves; the waiting one presses "Try again now" and gets the page
        close_tab(*tabs.pop())
        wait_for(lambda: len(small.kernels()) == kernels - 1, 30, "the leaving visitor's kernel shut down", small)
        time.sleep(3)  # a measurement without it
        with page.expect_navigation():
            page.get_by_role("button", name="Try again now").click()
        page.get_by_role("button", name="Classify").wait_for(timeout=120_000)
        upload(page, small.photo)
        assert classify(page, "Prediction:").startswith(f"Prediction: {small.expected}")
        for c, p in [*tabs, (context, page)]:
            close_tab(c, p)


def test_a_culled_kernel_shows_the_banner_and_the_page_recovers(browser, model_and_photo, tmp_path):
    with running_server(model_and_photo, tmp_path, 8, 2, ("--per-client=0",)) as srv:
        # two visitors leave their tabs open; one had already chosen a photo
        ctx_a, idle, _ = open_page(browser, srv.url)
        ctx_b, chose, _ = open_page(browser, srv.url)
        for page in (idle, chose):
            page.get_by_role("button", name="Classify").wait_for(timeout=120_000)
        upload(chose, srv.photo)
        kernels = handed_out(srv)[-2:]
        wait_for(lambda: all(f"({k}) with 1 connections" in srv.log_text() for k in kernels), 60,
                 "both kernels culled", srv)  # fmt: skip
        # the first comes back and clicks Classify: the banner, never a silent Classify
        idle.get_by_role("button", name="Classify").click()
        banner = idle.locator("#whatsthat-asleep")
        banner.wait_for(timeout=15_000)
        assert ASLEEP in banner.inner_text()
        with idle.expect_navigation():
            banner.get_by_role("button", name="Reload").click()
        idle.get_by_role("button", name="Classify").wait_for(timeout=120_000)
        upload(idle, srv.photo)
        assert classify(idle, "Prediction:").startswith(f"Prediction: {srv.expected}")
        # the second clicks Classify to classify its photo again: the page reloads itself, keeps the
        # photo and classifies it, with nothing more to do
        with chose.expect_navigation(timeout=60_000):
            chose.get_by_role("button", name="Classify").click()
        label = chose.locator(".widget-label").filter(has_text="Prediction:")
        label.wait_for(timeout=120_000)
        assert label.inner_text().startswith(f"Prediction: {srv.expected}")
        assert chose.locator("#whatsthat-asleep").count() == 0  # a new page
        close_tab(ctx_a, idle)
        close_tab(ctx_b, chose)


def test_a_server_restarted_under_an_open_page_shows_the_banner(browser, model_and_photo, tmp_path):
    port = free_port()
    with running_server(model_and_photo, tmp_path / "first", 600, 60, port=port) as first:
        context, page, _ = open_page(browser, first.url)
        page.get_by_role("button", name="Classify").wait_for(timeout=120_000)
    # the server is gone (a restart, a redeploy): the page says so at once, without waiting for a click
    banner = page.locator("#whatsthat-asleep")
    banner.wait_for(timeout=20_000)
    assert ASLEEP in banner.inner_text()
    with running_server(model_and_photo, tmp_path / "second", 600, 60, port=port) as second:
        page.get_by_role("button", name="Classify").click()  # still the banner, not a silent click
        assert banner.is_visible()
        with page.expect_navigation():
            banner.get_by_role("button", name="Reload").click()
        page.get_by_role("button", name="Classify").wait_for(timeout=120_000)
        upload(page, second.photo)
        assert classify(page, "Prediction:").startswith(f"Prediction: {second.expected}")
        close_tab(context, page)


def test_a_kernel_that_died_before_its_page_connected_is_shut_down_and_the_page_reloads(browser, model_and_photo,
                                                                                       tmp_path):
    """A kernel's process dies (a crash, the OOM killer) after its page's HTML went out, before the page's
    JavaScript connected. jupyter_server restarts it empty, which could only show "model not found": the
    server shuts it down (and refills the pool), and the page reloads by itself into a working kernel."""
    with running_server(model_and_photo, tmp_path, 600, 60, ("--per-client=0",)) as srv:
        context = browser.new_context()
        page = context.new_page()
        held: list = []  # Voila's JavaScript, held back until the kernels have died
        page.route("**/voila/static/voila.js", lambda route: held.append(route))
        page.goto(srv.url + "/", wait_until="commit", timeout=120_000)
        deadline = time.monotonic() + 60
        while not held and time.monotonic() < deadline:
            page.wait_for_timeout(100)  # lets Playwright deliver the route
        assert held, "the page never asked for voila.js"
        wait_for(lambda: len(srv.kernels()) == 2 and srv.log_text().count("Kernel pool of app.ipynb is filled") == 2,
                 60, "the pool refilled", srv)  # fmt: skip
        dead = srv.kernels()  # the page's kernel and the pool's next one
        for kernel in dead:
            kernel.send_signal(signal.SIGKILL)
        wait_for(lambda: srv.log_text().count("restarted, it would hold none of its page's widgets") == 2, 60,
                 "both restarted kernels shut down", srv)  # fmt: skip
        with page.expect_navigation(timeout=60_000):  # the page reloads by itself: no banner to click
            held[0].continue_()
            page.unroute("**/voila/static/voila.js")
        page.get_by_role("button", name="Classify").wait_for(timeout=120_000)
        upload(page, srv.photo)
        assert classify(page, "Prediction:").startswith(f"Prediction: {srv.expected}")
        # nothing empty is left behind: the new page's kernel and the refilled pool's
        wait_for(lambda: len(srv.kernels()) == 2, 30, "two kernels", srv)
        assert not {k.pid for k in dead} & {k.pid for k in srv.kernels()}
        close_tab(context, page)


# What Voila's widget manager (@jupyter-widgets/jupyterlab-manager) writes in place of the app when it cannot
# find the page's widgets in the kernel, put where the app is: CI once got it with ten pages loading at
# once, and no test can make the widget manager fail that way on demand.
WIDGETS_NEVER_CAME = """
if (%s) {
  sessionStorage.setItem("test-broken", "1");
  var failed = "Error displaying widget: model not found";
  new MutationObserver(function () {  // and again whenever the widget manager renders there after all
    var output = document.querySelector("#rendered_cells .jp-OutputArea-output");
    if (!output || (output.childElementCount === 0 && output.textContent === failed)) return;
    output.textContent = failed;
    output.classList.add("jupyter-widgets");
  }).observe(document, {childList: true, subtree: true, characterData: true});
}
"""


@pytest.mark.parametrize("fails", ["once", "every time"])
def test_a_page_whose_widgets_never_came_reloads_once_then_shows_the_banner(server, browser, fails):
    context = browser.new_context(extra_http_headers={"X-Forwarded-For": f"203.0.113.{20 + len(fails)}"})
    when = '!sessionStorage.getItem("test-broken")' if fails == "once" else "true"
    context.add_init_script(WIDGETS_NEVER_CAME % when)
    page = context.new_page()
    loads: list[str] = []
    page.on("load", lambda _: loads.append(page.url))
    page.goto(server.url + "/", wait_until="load", timeout=120_000)
    deadline = time.monotonic() + 60
    while len(loads) < 2 and time.monotonic() < deadline:
        page.wait_for_timeout(200)
    assert len(loads) == 2, f"the page did not reload by itself: {loads}"  # no button to click
    if fails == "once":  # the reloaded page works
        page.get_by_role("button", name="Classify").wait_for(timeout=120_000)
        upload(page, server.photo)
        assert classify(page, "Prediction:").startswith(f"Prediction: {server.expected}")
        assert page.locator("#whatsthat-asleep").count() == 0
    else:  # broken again within the minute: the banner with its Reload button, not a loop of reloads
        banner = page.locator("#whatsthat-asleep")
        banner.wait_for(timeout=30_000)
        assert "This page did not finish loading. Reload to try again." in banner.inner_text()
        assert banner.get_by_role("button", name="Reload").is_visible()
        page.wait_for_timeout(5_000)
        assert len(loads) == 2, loads
    close_tab(context, page)


# The app's output lost on the server: Voila drops a cell's output that comes later than nbclient's
# iopub_timeout after the cell ("Timeout waiting for IOPub output"), and app.ipynb's one output is the whole
# app. CI once served such a page with ten pages loading at once (serve.py now waits 60 s, not 4). No test
# can make a kernel that late on demand: this takes the app's output (Voila's cell-output script) out of
# the page as it arrives, which leaves what such a page has, the app's cell with nothing in it.
APP_NEVER_CAME = """
if (!sessionStorage.getItem("test-empty")) {
  sessionStorage.setItem("test-empty", "1");
  new MutationObserver(function (records) {
    records.forEach(function (r) { r.addedNodes.forEach(function (n) {
      if (n.nodeName === "SCRIPT" && n.type === "application/vnd.voila.cell-output+json") n.remove();
    }); });
  }).observe(document, {childList: true, subtree: true});
}
"""


def test_a_page_that_came_without_its_app_reloads_once_and_a_working_page_never(server, browser):
    context = browser.new_context(extra_http_headers={"X-Forwarded-For": "203.0.113.30"})
    context.add_init_script(APP_NEVER_CAME)
    page = context.new_page()
    loads: list[float] = []
    page.on("load", lambda _: loads.append(time.monotonic()))
    page.goto(server.url + "/", wait_until="load", timeout=120_000)
    page.wait_for_timeout(5_000)
    assert page.locator("#rendered_cells .jp-OutputArea-output").count() == 0  # what the visitor saw: nothing
    deadline = time.monotonic() + 90  # 45 s after the kernel connection (asleep.js APPEAR_MS), and a margin
    while len(loads) < 2 and time.monotonic() < deadline:
        page.wait_for_timeout(500)
    assert len(loads) == 2, "the empty page did not reload by itself"
    page.get_by_role("button", name="Classify").wait_for(timeout=120_000)
    upload(page, server.photo)
    assert classify(page, "Prediction:").startswith(f"Prediction: {server.expected}")
    # the working page stays: past the 45 s the empty page got, it has not reloaded, and shows no banner
    page.wait_for_timeout(max(0.0, loads[1] + 50 - time.monotonic()) * 1000)
    assert len(loads) == 2 and page.locator("#whatsthat-asleep").count() == 0
    close_tab(context, page)


def test_sigterm_to_every_process_finishes_the_classification_in_flight_then_all_stop(browser, model_and_photo,
                                                                                      tmp_path):  # fmt: skip
    """Heroku's stop: SIGTERM to every process of the dyno at once, SIGKILL 30 s later."""
    with running_server(model_and_photo, tmp_path, 600, 60) as srv:
        context, page, _ = open_page(browser, srv.url)
        page.get_by_role("button", name="Classify").wait_for(timeout=120_000)
        upload(page, srv.photo)
        model = srv.model_process()
        processes = [psutil.Process(srv.proc.pid), *model_processes_of(srv.proc), *kernel_factories_of(srv.proc),
                     *kernels_of(srv.proc)]  # fmt: skip
        model.send_signal(signal.SIGSTOP)  # the classification goes out and waits: in flight at the stop
        try:
            page.get_by_role("button", name="Classify").click()
            page.locator(".widget-label").filter(has_text="Classifying").wait_for(timeout=30_000)
            time.sleep(1.0)
            t0 = time.monotonic()
            for p in processes:
                p.send_signal(signal.SIGTERM)
        finally:
            model.send_signal(signal.SIGCONT)
        label = page.locator(".widget-label").filter(has_text="Prediction:")
        label.wait_for(timeout=25_000)  # the answer still reached the page
        assert label.inner_text().startswith(f"Prediction: {srv.expected}")
        page.locator("#whatsthat-asleep").wait_for(timeout=25_000)  # then the page says the server went
        _, alive = psutil.wait_procs(processes, timeout=max(1.0, 25 - (time.monotonic() - t0)))
        assert alive == [], [p.cmdline() for p in alive]
        took = time.monotonic() - t0
        print(f"\nevery process gone {took:.1f} s after SIGTERM")
        assert took < 25, took  # Heroku's SIGKILL comes at 30 s
        assert srv.proc.wait(timeout=5) == 0
        assert "classification(s) in flight get up to 15s" in srv.log_text()
        context.close()
